/**
 * Core engine benchmark: a registry of 1,000,000 devices on this machine.
 * Run with `npm run bench:core` (needs --expose-gc for the heap figure). Prints a table and
 * writes bench/results/core.json. Not a test: nothing here asserts a time.
 */
import { getHeapSpaceStatistics } from "node:v8";
import { Hub, ManualClock, type TethralEvent } from "../src/core";
import { type Collections, recordCollections, round2 } from "./gc";
import { percentile } from "./stats";
import { targetOf, writeResults } from "./results";

const DEVICES = Number(process.env.BENCH_DEVICES ?? 1_000_000);
const MANUFACTURERS = 100; // a filter on one manufacturer returns 1% of the fleet
const TARGETS = {
  registerPerSec: targetOf("core", "registerPerSec"),
  heartbeatsPerSec: targetOf("core", "heartbeatsPerSec"),
  indexedFilterP99Ms: targetOf("core", "indexedFilterP99Ms"),
  heapBytesPerDevice: targetOf("core", "heapBytesPerDevice"),
  eventsDeliveredPerSec: targetOf("core", "eventsDeliveredPerSec"),
};

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) {
    g();
    g();
  }
}

function fmt(n: number): string {
  return n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(2);
}

/**
 * What the filter's p99 is made of (see bench/gc.ts), with `emptyScavengeMs`: a scavenge's cost is
 * the objects it keeps (the matches built so far) plus a part that grows with the old generation:
 * V8 visits every old-generation page to find the ones with pointers into the young generation
 * (seen with perf in ScavengerCollector::CollectGarbage). `emptyScavengeMs` measures that part
 * alone: the median of five scavenges forced with nothing young left to keep.
 */
type FilterScavenges = Collections & { emptyScavengeMs: number; oldGenerationMB: number };

function filterScavenges(c: Collections): FilterScavenges {
  const oldSpace = getHeapSpaceStatistics().find((sp) => sp.space_name === "old_space");
  return { ...c, emptyScavengeMs: round2(emptyScavengeMs()), oldGenerationMB: Math.round((oldSpace?.space_size ?? 0) / 1e6) };
}

/** The median of five forced scavenges one after another (the later ones find nothing to keep); NaN without --expose-gc. */
function emptyScavengeMs(): number {
  const g = (globalThis as { gc?: (o: { type: "minor" }) => void }).gc;
  if (!g) return Number.NaN;
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const s = performance.now();
    g({ type: "minor" });
    times.push(performance.now() - s);
  }
  return percentile(times.sort((a, b) => a - b), 50);
}

async function main(): Promise<void> {
  const clock = new ManualClock();
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  const hub = new Hub({ clock, heartbeat: { defaultTimeoutSec: 600, resolutionMs: 1000 } });
  // Ids as an adapter hands them over (the registry keeps these very strings).
  const ids = Array.from({ length: DEVICES }, (_, i) => `dev-${i}`);
  await hub.start();

  // Registration: validated input, indexes, heartbeat tracking and a device.registered event each.
  const capabilities = [["temperature", "humidity"], ["temperature"], ["power", "switch"], ["co2"]];
  const t0 = performance.now();
  for (let i = 0; i < DEVICES; i++) {
    await hub.registerDevice({
      id: ids[i],
      protocol: i % 3 === 0 ? "mqtt" : i % 3 === 1 ? "coap" : "websocket",
      manufacturer: `maker-${i % MANUFACTURERS}`,
      model: `model-${i % 7}`,
      capabilities: capabilities[i % 4],
      tags: [`floor-${i % 10}`],
    });
  }
  const registerPerSec = DEVICES / ((performance.now() - t0) / 1000);

  // First messages, staggered as a real fleet's are: each device reports every 60 s, in its own
  // second of the minute. The first message brings it online (state change and events).
  const CADENCE = 60;
  for (let sec = 0; sec < CADENCE; sec++) {
    if (sec > 0) clock.advance(1000);
    for (let i = sec; i < DEVICES; i += CADENCE) hub.ingest(ids[i]!, { kind: "telemetry", data: { temperature: 20 + (i % 10) } });
  }

  // Steady-state heartbeats of online devices: the O(1) path.
  const rounds = 3;
  const t1 = performance.now();
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < DEVICES; i++) hub.ingest(ids[i]!, { kind: "heartbeat" });
  }
  const heartbeatsPerSec = (rounds * DEVICES) / ((performance.now() - t1) / 1000);

  // Heap per device, including its state and one history entry per change so far.
  gc();
  const heapBytesPerDevice = (process.memoryUsage().heapUsed - heapBefore) / DEVICES;

  // Indexed filter returning 1% of the fleet, every match materialised. The young-generation
  // collections (scavenges) during it are recorded with their times, to tell the queries one
  // interrupted from the others (see scavenges below).
  const scavenges = recordCollections();
  const filterTimes: number[] = [];
  const filterSpans: [number, number][] = [];
  for (let i = 0; i < 200; i++) {
    const s = performance.now();
    const res = hub.listDevices({ manufacturer: `maker-${i % MANUFACTURERS}`, limit: DEVICES / MANUFACTURERS });
    const e = performance.now();
    filterTimes.push(e - s);
    filterSpans.push([s, e]);
    if (res.total !== DEVICES / MANUFACTURERS) throw new Error(`filter returned ${res.total}`);
  }
  const filterGc = filterScavenges(await scavenges.stop(filterSpans));
  filterTimes.sort((a, b) => a - b);
  const indexedFilterP99Ms = percentile(filterTimes, 99);
  const indexedFilterP50Ms = percentile(filterTimes, 50);
  // The same filter as the REST API asks it: total of the 1% and its first page of 100.
  const pageTimes: number[] = [];
  for (let i = 0; i < 200; i++) {
    const s = performance.now();
    const res = hub.listDevices({ manufacturer: `maker-${i % MANUFACTURERS}`, limit: 100 });
    pageTimes.push(performance.now() - s);
    if (res.devices.length !== 100) throw new Error(`page held ${res.devices.length}`);
  }
  pageTimes.sort((a, b) => a - b);
  const indexedFilterPageP99Ms = percentile(pageTimes, 99);

  // The fleet keeps its cadence while 1% (every 100th device) falls silent after the heartbeat
  // rounds above. Ten minutes later those 1% expire together in one tick; that tick also does
  // the tick's usual share of deadline refreshes for the devices that kept reporting.
  let offline = 0;
  const sub = hub.subscribe({ types: "device.offline" }, () => {
    offline++;
  });
  let sweepMs = 0;
  let ticks = 0;
  const tickTimes: number[] = [];
  for (let sec = CADENCE; offline === 0 && sec < CADENCE + 700; sec++) {
    const before = offline;
    const s = performance.now();
    clock.advance(1000);
    const took = performance.now() - s;
    if (offline > before) sweepMs = took;
    else tickTimes.push(took);
    ticks++;
    for (let i = sec % CADENCE; i < DEVICES; i += CADENCE) if (i % 100 !== 0) hub.ingest(ids[i]!, { kind: "heartbeat" });
  }
  sub.unsubscribe();
  if (offline !== DEVICES / 100) throw new Error(`expected ${DEVICES / 100} offline, saw ${offline}`);
  tickTimes.sort((a, b) => a - b);
  const ordinaryTickP99Ms = percentile(tickTimes, 99);
  await hub.stop();

  // Event delivery: 1000 filtered subscribers (900 per device, 100 by type pattern and priority).
  const busHub = new Hub({ clock });
  await busHub.start();
  const bus = busHub.events;
  let delivered = 0;
  const handler = (_e: TethralEvent) => {
    delivered++;
  };
  for (let i = 0; i < 900; i++) bus.subscribe({ types: "device.*", deviceId: `dev-${i % 100}` }, handler);
  for (let i = 0; i < 50; i++) bus.subscribe({ types: "device.*", minPriority: "high" }, handler);
  for (let i = 0; i < 50; i++) bus.subscribe({ types: ["device.offline", "device.online"] }, handler);
  const events = 200_000;
  const t3 = performance.now();
  for (let i = 0; i < events; i++) {
    bus.publish(
      i % 2 ? "device.online" : "device.offline",
      { previous: "unknown", lastSeen: null, timeout: 60, reason: "bench" } as never,
      { deviceId: `dev-${i % 100}`, priority: i % 4 === 0 ? "high" : "normal", source: "bench" },
    );
  }
  const eventsDeliveredPerSec = delivered / ((performance.now() - t3) / 1000);
  await busHub.stop();

  const results = {
    devices: DEVICES,
    registerPerSec: Math.round(registerPerSec),
    heartbeatsPerSec: Math.round(heartbeatsPerSec),
    indexedFilterP50Ms: Number(indexedFilterP50Ms.toFixed(2)),
    indexedFilterP99Ms: Number(indexedFilterP99Ms.toFixed(2)),
    indexedFilterPageP99Ms: Number(indexedFilterPageP99Ms.toFixed(2)),
    filterScavenges: filterGc,
    sweepMsPerTickAt1Pct: Number(sweepMs.toFixed(2)),
    ordinaryTickP99Ms: Number(ordinaryTickP99Ms.toFixed(2)),
    ticksSimulated: ticks,
    heapBytesPerDevice: Math.round(heapBytesPerDevice),
    eventsDeliveredPerSec: Math.round(eventsDeliveredPerSec),
  };
  const rows: [string, number, string][] = [
    ["registerPerSec", results.registerPerSec, `≥ ${fmt(TARGETS.registerPerSec)}`],
    ["heartbeatsPerSec", results.heartbeatsPerSec, `≥ ${fmt(TARGETS.heartbeatsPerSec)}`],
    ["indexedFilterP50Ms", results.indexedFilterP50Ms, ""],
    ["indexedFilterP99Ms", results.indexedFilterP99Ms, `≤ ${TARGETS.indexedFilterP99Ms} (all ${fmt(DEVICES / 100)} matches built)`],
    ["indexedFilterPageP99Ms", results.indexedFilterPageP99Ms, "(total + first page of 100)"],
    ["filterQueriesScavenged", filterGc.hit, `of 200 (scavenge p50 ${filterGc.scavengeP50Ms} ms; ${filterGc.hitByOthers} met another collection; p99 of those that met none ${filterGc.p99WithoutMs} ms)`],
    ["emptyScavengeMs", filterGc.emptyScavengeMs, `(nothing to keep, old generation ${fmt(filterGc.oldGenerationMB)} MB)`],
    ["sweepMsPerTickAt1Pct", results.sweepMsPerTickAt1Pct, `(${fmt(DEVICES / 100)} devices expire)`],
    ["ordinaryTickP99Ms", results.ordinaryTickP99Ms, "(a tick of deadline refreshes only)"],
    ["heapBytesPerDevice", results.heapBytesPerDevice, `≤ ${TARGETS.heapBytesPerDevice}`],
    ["eventsDeliveredPerSec", results.eventsDeliveredPerSec, `≥ ${fmt(TARGETS.eventsDeliveredPerSec)}`],
  ];
  console.log(`\nTethral core benchmark, ${fmt(DEVICES)} devices, Node ${process.version}`);
  console.log(`${"metric".padEnd(24)}${"value".padStart(14)}   target`);
  for (const [name, value, target] of rows) console.log(`${name.padEnd(24)}${(Number.isInteger(value) ? value.toLocaleString("en-US") : fmt(value)).padStart(14)}   ${target}`);
  if (!(globalThis as { gc?: unknown }).gc) console.log("(heap figure without --expose-gc is approximate)");
  console.log(`\nwrote ${writeResults("core", results)}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
