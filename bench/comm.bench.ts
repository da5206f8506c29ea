/**
 * Communication benchmark, in one run against the same broker (the embedded one, then a
 * Mosquitto of its own with MOSQUITTO_LATENCY_SETTINGS when mosquitto is installed, or the broker
 * at TETHRAL_BENCH_MQTT_URL as it is configured there):
 * - bareMsgsPerSec: QoS 0 telemetry from 1,000 simulated devices, the limit: on Mosquitto as a
 *   bare mqtt.js subscriber receives it; on the embedded broker, which runs in the hub's thread, as
 *   the broker hands it to a hub that only counts it (see `brokerAlone`);
 * - hubMsgsPerSec: the same traffic through the hub's whole ingest pipeline (device identified
 *   and authenticated, heartbeat, state merge, events, written behind to a SQLite file);
 * - ingestRatio: hub / bare (target ≥ 0.75);
 * - each rate is the median of PASSES passes of ROUNDS rounds (all kept: bareRuns, hubRuns), after
 *   a warm-up pass of WARM_UP_ROUNDS rounds on the same connections, not counted (its rates are
 *   kept as warmUpBareMsgsPerSec / warmUpHubMsgsPerSec, no target). The hub's first messages pay
 *   for compiling its pipeline (V8's optimising compiler, on threads of its own) and for bringing
 *   each device online, once per start, where a bare subscriber has next to nothing to compile;
 *   and one pass of two seconds on two shared cores moves by a fifth from run to run. Until
 *   2026-12-08 each rate was one pass, the first (see the README's Benchmark);
 * - commandP50Ms / commandP99Ms: commands at 1,000 per second for 5 s, after 1 s of them not
 *   counted, each waited for until the device's answer (QoS 1 both ways), from `sendCommand` to
 *   the answer (target p99 ≤ 10 ms);
 * - singleCommandP50Ms: then 30 commands one at a time, 100 ms apart (no target).
 * On a Mosquitto of its own, all of it again on one with Mosquitto's defaults, for the record
 * (mosquitto.defaults, no target): what the setting is worth.
 * The devices run in a worker thread (bench/comm-devices.ts), the hub in the main thread.
 * Run with `npm run bench:comm`; writes bench/results/comm.json. Not a test: nothing asserts a time.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { Hub } from "../src/core/hub";
import { Intake } from "../src/core/intake";
import { MqttAdapter } from "../src/protocols/mqtt";
import type { AdapterContext, ProtocolCounters } from "../src/protocols/types";
import { SqliteStore } from "../src/store/sqlite";
import { type Collections, recordCollections } from "./gc";
import { percentile } from "./stats";
import { DeviceWorker } from "./devices-worker";
import { targetOf, writeResults } from "./results";
import { program, startMosquitto } from "../test/mosquitto";

const DEVICES = 1000;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 100);
/** Rounds published and counted before the measured passes, on the same connections (see the header). */
const WARM_UP_ROUNDS = Number(process.env.BENCH_WARM_UP_ROUNDS ?? 50);
/** Measured passes of ROUNDS rounds each: a rate is their median. */
const PASSES = Number(process.env.BENCH_PASSES ?? 3);
const COMMANDS_PER_SEC = 1000;
const COMMAND_SECONDS = 5;
const COMMAND_WARMUP_SECONDS = 1;
const SINGLE_COMMANDS = 30;
const SINGLE_COMMAND_GAP_MS = 100;
const TARGETS = { embedded: { ingestRatio: targetOf("comm", "ingestRatio"), commandP99Ms: targetOf("comm", "commandP99Ms") }, mosquitto: { ingestRatio: targetOf("comm", "mosquitto.ingestRatio"), commandP99Ms: targetOf("comm", "mosquitto.commandP99Ms") } };

interface Result {
  bareMsgsPerSec: number;
  hubMsgsPerSec: number;
  ingestRatio: number;
  /** Each measured pass's rate, in order: the figures above are their medians. */
  bareRuns: number[];
  hubRuns: number[];
  /** The warm-up passes' rates (WARM_UP_ROUNDS rounds, not counted in the figures above; no target). */
  warmUpBareMsgsPerSec: number;
  warmUpHubMsgsPerSec: number;
  commandP50Ms: number;
  commandP99Ms: number;
  /** The collections during the counted commands (see bench/gc.ts): what the p99 is made of. */
  commandCollections: Collections;
  /**
   * Bytes written to storage during the counted commands, per command (no target): the store's
   * rows for them (written before a command is sent, then its status changes) and the devices'
   * presence. Null where the system does not count them (see storageWriteBytes).
   */
  commandDiskBytes: number | null;
  /** One command at a time, one every SINGLE_COMMAND_GAP_MS: the median round trip (no target). */
  singleCommandP50Ms: number;
  messages: number;
  bareReceived: number;
  /** What bareMsgsPerSec measured: the broker alone handing messages to a hub that only counts them (embedded), or a bare subscriber (Mosquitto). */
  baseline: "broker alone" | "bare subscriber";
  hubReceived: number;
  commands: number;
}


/** Messages per second from the start of publishing to the last message counted. */
async function rate(count: () => number, publish: () => Promise<number>): Promise<{ perSec: number; received: number; sent: number }> {
  const before = count();
  const started = performance.now();
  const sent = await publish();
  let last = count();
  let lastAt = performance.now();
  // Done when all arrived, or nothing more came for a second (QoS 0 may drop under load).
  while (last - before < sent && performance.now() - lastAt < 1000) {
    await new Promise((r) => setTimeout(r, 5));
    const now = count();
    if (now !== last) {
      last = now;
      lastAt = performance.now();
    }
  }
  const received = last - before;
  return { perSec: Math.round(received / ((lastAt - started) / 1000)), received, sent };
}

const ids = Array.from({ length: DEVICES }, (_, i) => `bench-${String(i).padStart(4, "0")}`);

/** A context that takes everything and does nothing but count what it is handed: the broker alone, for the baseline. */
function idleContext(received: { count: number }): AdapterContext {
  const counters: ProtocolCounters = { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0, rejected: 0, errors: 0 };
  return {
    receive: (m) => {
      received.count++;
      return { ok: true, deviceId: m.deviceId, status: "online", changed: false };
    },
    authenticate: (_p, deviceId) => ({ ok: true, deviceId, known: true }),
    connected: () => undefined,
    disconnected: () => undefined,
    reject: () => undefined,
    twin: () => null,
    twins: () => [],
    counters,
    maxPayloadBytes: 256 * 1024,
    warn: (m) => console.warn(m),
    // Never busy: the bare run measures the broker alone.
    intake: new Intake(Number.MAX_SAFE_INTEGER, 0),
    stored: () => Promise.resolve(true),
  };
}

async function bare(url: string, root: string, deviceList: Array<{ id: string; token: string | null }>, subscriberAuth: { username?: string; password?: string }) {
  const subscriber = await mqtt.connectAsync(url, { ...subscriberAuth, reconnectPeriod: 0 });
  let received = 0;
  subscriber.on("message", () => received++);
  await subscriber.subscribeAsync(`${root}/devices/+/telemetry`, { qos: 0 });
  const r = await publishCounted(url, root, deviceList, () => received);
  await subscriber.endAsync(true);
  return r;
}

/** The simulated devices publish ROUNDS rounds to `url`, after WARM_UP_ROUNDS not counted: the rates at which `count` saw them arrive. */
async function publishCounted(url: string, root: string, deviceList: Array<{ id: string; token: string | null }>, count: () => number) {
  const devices = new DeviceWorker();
  try {
    await devices.call({ op: "connect", url, devices: deviceList, root });
    return await warmThenRate(devices, count);
  } finally {
    await devices.close();
  }
}

/**
 * A warm-up pass of WARM_UP_ROUNDS, then PASSES measured passes of ROUNDS, all counted by `count`:
 * the median pass's rate, what it received of what was sent, and every pass's rate.
 */
async function warmThenRate(devices: DeviceWorker, count: () => number): Promise<{ perSec: number; received: number; sent: number; runs: number[]; warmUpPerSec: number }> {
  const warmUp = await rate(count, () => devices.call<number>({ op: "publish", rounds: WARM_UP_ROUNDS }));
  const passes: Array<{ perSec: number; received: number; sent: number }> = [];
  for (let i = 0; i < PASSES; i++) passes.push(await rate(count, () => devices.call<number>({ op: "publish", rounds: ROUNDS })));
  const median = [...passes].sort((a, b) => a.perSec - b.perSec)[Math.floor(passes.length / 2)]!;
  return { ...median, runs: passes.map((p) => p.perSec), warmUpPerSec: warmUp.perSec };
}

/**
 * A full collection between the baseline and the hub, so that each is measured on the heap it
 * made. Added when the baselines were bare subscribers: on the embedded broker (until 2026-12-06)
 * the subscriber and aedes' queue for it (150 MB live at its peak) left about 290 MB of dead
 * objects in the old generation, which V8 would collect only later, during the hub's run. Each
 * scavenge visits every old-generation page, so the hub's command round trips paid for the
 * baseline's garbage: 6–9 ms scavenges with it, 3–5 ms without, measured on 2026-12-05. The
 * Mosquitto baseline's subscriber still leaves its garbage. The hub's own garbage (its ingest
 * run's) stays for its command run. Needs --expose-gc (npm run bench:comm has it).
 */
function collectBaselineGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("bench:comm needs node --expose-gc (npm run bench:comm passes it)");
  gc();
}

async function throughHub(hub: Hub, url: string, root: string, withTokens: boolean) {
  const deviceList: Array<{ id: string; token: string | null }> = [];
  for (const id of ids) {
    const d = await hub.registerDevice({ id, protocol: "mqtt", heartbeatTimeout: 600 });
    deviceList.push({ id, token: withTokens ? d.token! : null });
  }
  const devices = new DeviceWorker();
  await devices.call({ op: "connect", url, devices: deviceList, root });
  const ingest = await warmThenRate(devices, () => hub.statistics().messages.received);
  await hub.flush();

  await devices.call({ op: "answer" });
  // The device list is subscribed; give the broker a moment to record the subscriptions.
  await new Promise((r) => setTimeout(r, 200));
  // One second at the same rate first, not counted: the first commands run the command path
  // cold (compiled on first use, the SQLite statements prepared), which is a start-up cost, not
  // the round trip at 1,000 a second that the p99 is about.
  const failures = await commandsAt(hub, COMMAND_WARMUP_SECONDS, null);
  const spans: [number, number][] = [];
  const collections = recordCollections();
  const writtenBefore = storageWriteBytes();
  failures.push(...(await commandsAt(hub, COMMAND_SECONDS, spans)));
  const writtenAfter = storageWriteBytes();
  const commandCollections = await collections.stop(spans);
  const latencies = spans.map(([s, e]) => e - s);
  // Then one command at a time, as an operator sends them: nothing else keeps the hub writing.
  const single: number[] = [];
  for (let i = 0; i < SINGLE_COMMANDS; i++) {
    await new Promise((r) => setTimeout(r, SINGLE_COMMAND_GAP_MS));
    const sent = performance.now();
    const c = await hub.sendCommand(ids[i % ids.length]!, { command: "set", params: { level: i }, wait: true, timeout: 5 });
    if (c.status === "succeeded") single.push(performance.now() - sent);
    else failures.push(c.status);
  }
  await devices.close();
  latencies.sort((a, b) => a - b);
  single.sort((a, b) => a - b);
  if (failures.length > 0) console.warn(`${failures.length} commands did not succeed: ${[...new Set(failures)].join(", ")}`);
  // Through the store's database write-ahead log, and its checkpoints into the file.
  const commandDiskBytes = writtenBefore === null || writtenAfter === null || latencies.length === 0 ? null : Math.round((writtenAfter - writtenBefore) / latencies.length);
  return { ingest, commandP50Ms: percentile(latencies, 50), commandP99Ms: percentile(latencies, 99), commandCollections, commandDiskBytes, commands: latencies.length, singleCommandP50Ms: single.length > 0 ? percentile(single, 50) : Number.NaN };
}

/**
 * Bytes this process has had the kernel send to storage so far (Linux: /proc/self/io
 * `write_bytes`, counted when a page is dirtied, so a write is counted even if the disk gets it
 * later); null where there is no such count.
 */
function storageWriteBytes(): number | null {
  try {
    const found = /^write_bytes: (\d+)$/m.exec(readFileSync("/proc/self/io", "utf8"));
    return found ? Number(found[1]) : null;
  } catch {
    return null;
  }
}

/** Commands at COMMANDS_PER_SEC for `seconds`, each waited for; the [sent, answered] times of those that succeeded go to `spans`. */
async function commandsAt(hub: Hub, seconds: number, spans: [number, number][] | null): Promise<string[]> {
  const failures: string[] = [];
  const inFlight: Promise<void>[] = [];
  const tickMs = 10;
  const perTick = (COMMANDS_PER_SEC * tickMs) / 1000;
  const ticks = (seconds * 1000) / tickMs;
  const start = performance.now();
  for (let t = 0; t < ticks; t++) {
    // Paced against the clock, not the previous tick: a slow tick must not lower the rate.
    const due = start + t * tickMs;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    for (let k = 0; k < perTick; k++) {
      const id = ids[(t * perTick + k) % ids.length]!;
      const sent = performance.now();
      inFlight.push(
        hub.sendCommand(id, { command: "set", params: { level: k }, wait: true, timeout: 5 }).then((c) => {
          if (c.status === "succeeded") spans?.push([sent, performance.now()]);
          else failures.push(c.status);
        }),
      );
    }
  }
  await Promise.all(inFlight);
  return failures;
}

function result(b: Awaited<ReturnType<typeof warmThenRate>>, baseline: Result["baseline"], h: Awaited<ReturnType<typeof throughHub>>): Result {
  return {
    bareMsgsPerSec: b.perSec,
    hubMsgsPerSec: h.ingest.perSec,
    ingestRatio: Number((h.ingest.perSec / b.perSec).toFixed(3)),
    bareRuns: b.runs,
    hubRuns: h.ingest.runs,
    warmUpBareMsgsPerSec: b.warmUpPerSec,
    warmUpHubMsgsPerSec: h.ingest.warmUpPerSec,
    commandP50Ms: Number(h.commandP50Ms.toFixed(2)),
    commandP99Ms: Number(h.commandP99Ms.toFixed(2)),
    commandCollections: h.commandCollections,
    commandDiskBytes: h.commandDiskBytes,
    singleCommandP50Ms: Number(h.singleCommandP50Ms.toFixed(2)),
    messages: b.sent,
    bareReceived: b.received,
    baseline,
    hubReceived: h.ingest.received,
    commands: h.commands,
  };
}

/**
 * The embedded broker's baseline: the same adapter and broker in this thread, handing each message
 * to a hub that only counts it (`idleContext`). The hub's figure is the same path with the real
 * hub behind it, so the ratio is what the hub's pipeline costs on top of the broker.
 *
 * Until 2026-12-06 this baseline was a bare mqtt.js subscriber, as on Mosquitto. But the embedded
 * broker runs in the hub's own thread, so that subscriber's messages cost this thread the
 * broker's delivery to a socket and mqtt.js's parsing of them, work the hub never does: it
 * received 8,594–14,000 msg/s, and the hub in the same runs 3.6–5.0 times as many, a "ratio"
 * that measured the baseline's own cost and no limit at all.
 */
async function brokerAlone(): ReturnType<typeof warmThenRate> {
  const received = { count: 0 };
  const broker = new MqttAdapter({ port: 0 });
  await broker.start(idleContext(received));
  try {
    return await publishCounted(`mqtt://127.0.0.1:${broker.port}`, "tethral", ids.map((id) => ({ id, token: "any-token-accepted" })), () => received.count);
  } finally {
    await broker.stop();
  }
}

async function embedded(dir: string): Promise<Result> {
  const b = await brokerAlone();
  collectBaselineGarbage();

  const adapter = new MqttAdapter({ port: 0 });
  const hub = new Hub({ store: new SqliteStore({ path: join(dir, "embedded.sqlite") }), protocols: [adapter], onWarning: (m) => console.warn(m) });
  await hub.start();
  const h = await throughHub(hub, `mqtt://127.0.0.1:${adapter.port}`, "tethral", true);
  await hub.stop();
  return result(b, "broker alone", h);
}

async function mosquitto(url: string, dir: string, file = "mosquitto.sqlite"): Promise<Result> {
  const root = `tethral-bench-${process.pid}-${Date.now()}`;
  const b = await bare(url, root, ids.map((id) => ({ id, token: null })), {});
  collectBaselineGarbage();
  const hub = new Hub({
    store: new SqliteStore({ path: join(dir, file) }),
    protocols: [new MqttAdapter({ url, root })],
    onWarning: (m) => console.warn(m),
  });
  await hub.start();
  const h = await throughHub(hub, url, root, false);
  await hub.stop();
  return result(b, "bare subscriber", h);
}

function table(name: string, r: Result, targets: { ingestRatio: number; commandP99Ms: number }): void {
  console.log(`\n${name}`);
  console.log(`  bareMsgsPerSec   ${r.bareMsgsPerSec.toLocaleString("en")}  (${r.bareReceived}/${r.messages} received)`);
  console.log(`  hubMsgsPerSec    ${r.hubMsgsPerSec.toLocaleString("en")}  (${r.hubReceived}/${r.messages} ingested)`);
  console.log(`  ingestRatio      ${r.ingestRatio}  (target ≥ ${targets.ingestRatio})`);
  console.log(`  passes           bare ${r.bareRuns.map((n) => n.toLocaleString("en")).join(", ")}; hub ${r.hubRuns.map((n) => n.toLocaleString("en")).join(", ")}  (medians above)`);
  console.log(`  warm-up pass     bare ${r.warmUpBareMsgsPerSec.toLocaleString("en")}, hub ${r.warmUpHubMsgsPerSec.toLocaleString("en")} msg/s  (${WARM_UP_ROUNDS} rounds first, not counted)`);
  console.log(`  commandP50Ms     ${r.commandP50Ms}`);
  console.log(`  commandP99Ms     ${r.commandP99Ms}  (target ≤ ${targets.commandP99Ms}; ${r.commands} commands at ${COMMANDS_PER_SEC}/s)`);
  const c = r.commandCollections;
  console.log(`  commandsCollected ${c.hit} met a scavenge (${c.scavenges}, p50 ${c.scavengeP50Ms} ms, max ${c.scavengeMaxMs} ms), ${c.hitByOthers} another collection (${c.others}); p99 of those that met none ${c.p99WithoutMs} ms`);
  if (r.commandDiskBytes !== null) console.log(`  commandDiskBytes ${r.commandDiskBytes.toLocaleString("en")}  (written to storage per command, database and its log)`);
  console.log(`  singleCommandP50Ms ${r.singleCommandP50Ms}  (${SINGLE_COMMANDS} commands one at a time, ${SINGLE_COMMAND_GAP_MS} ms apart)`);
}

/**
 * Mosquitto as this README recommends running it for devices that take commands: `set_tcp_nodelay
 * true`. With its default (false) the broker holds a small packet back while one it sent is not yet
 * acknowledged by TCP, and the receiver's kernel delays that acknowledgement (about 40 ms on
 * Linux) when it has nothing to send: a command's QoS 1 PUBACK to the hub then holds the device's
 * answer back until the hub next writes. Measured with two bare mqtt.js clients, one command every
 * 100 ms: p50 43 ms with the default, 1.1 ms with the setting.
 */
const MOSQUITTO_LATENCY_SETTINGS = ["set_tcp_nodelay true"];

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tethral-bench-comm-"));
  try {
    // BENCH_ONLY=mosquitto skips the embedded broker (for profiling one of them).
    const only = process.env.BENCH_ONLY;
    const out = (only === "mosquitto" ? {} : await embedded(dir)) as Result & { mosquitto?: Result & { broker: string; defaults?: Result } };
    if (only !== "mosquitto") table("embedded broker (aedes)", out, TARGETS.embedded);
    if (only !== "embedded" && process.env.TETHRAL_BENCH_MQTT_URL) {
      // A broker of the caller's, measured as it is configured.
      const url = process.env.TETHRAL_BENCH_MQTT_URL;
      out.mosquitto = { ...(await mosquitto(url, dir)), broker: url };
      table(`Mosquitto (${url}, as configured there)`, out.mosquitto, TARGETS.mosquitto);
    } else if (only !== "embedded" && program("mosquitto")) {
      const tuned = await startMosquitto(MOSQUITTO_LATENCY_SETTINGS);
      try {
        out.mosquitto = { ...(await mosquitto(tuned.url, dir)), broker: `own, ${MOSQUITTO_LATENCY_SETTINGS.join(", ")}` };
      } finally {
        await tuned.stop();
      }
      table(`Mosquitto (own, ${MOSQUITTO_LATENCY_SETTINGS.join(", ")})`, out.mosquitto, TARGETS.mosquitto);
      // The same on Mosquitto's defaults, for the record (no target): what the setting is worth.
      const plain = await startMosquitto();
      try {
        out.mosquitto.defaults = await mosquitto(plain.url, dir, "defaults.sqlite");
      } finally {
        await plain.stop();
      }
      table("Mosquitto (own, its defaults: for the record, no target)", out.mosquitto.defaults, TARGETS.mosquitto);
    } else if (only !== "embedded") {
      console.log("\nMosquitto: skipped (mosquitto is not installed: apt-get install mosquitto; or set TETHRAL_BENCH_MQTT_URL)");
    }
    writeResults("comm", { devices: DEVICES, ...out });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
