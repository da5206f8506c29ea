/**
 * Peer benchmark (issue 15): Tethral against what an integrator builds by hand, in one run,
 * on the same Mosquitto and the same messages.
 * - plain: Node-RED (the version this package installs) running a flow of an `mqtt in` node
 *   (QoS 0, `tethral/devices/+/telemetry`) wired to a function node that parses each report,
 *   keeps the device's latest values in flow context and counts it;
 * - tethral: the runtime as `npm start` runs it (dist/runtime/start.js, its shipped flows, the
 *   SQLite file, device tokens off, TETHRAL_MQTT_URL naming the broker), its 1,000 devices
 *   registered: each report is identified, merged into the device's state, heartbeat and events,
 *   and written behind.
 * The load: 1,000 simulated devices (mqtt.js clients in a worker thread) each publishing ROUNDS
 * QoS 0 reports of about 100 bytes, while the side is frozen (SIGSTOP) and the broker, which
 * caps nothing it holds for a subscriber, keeps them. The figure is how fast the side takes that
 * backlog in once woken: messages processed a second, until the count (the function's, or the
 * hub's `messagesIn` less refusals and errors) reaches what was sent or stops moving for 3 s;
 * ratio is tethral ÷ plain. Each side is measured twice, alternately, and its better run kept.
 * (Until 2026-12-05 the devices published while the side ran: on two cores the load generator
 * then competed with the side and capped both at its own rate, 33–40k msg/s here, so a side able
 * to do more could not show it.)
 * Only on Mosquitto: on the embedded broker the hub takes messages in-process, where a plain flow
 * would need a broker of its own, so that comparison would measure the broker, not the flow.
 * Needs mosquitto and a build (`npm run build`); writes bench/results/peer.json.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { closedPort, until } from "../test/helpers";
import { program, startMosquitto } from "../test/mosquitto";
import { DeviceWorker } from "./devices-worker";
import { type Proc, getJson, ready, startBuiltRuntime, startProcess } from "./runtime-process";
import { targetOf, writeResults } from "./results";

const DEVICES = 1000;
const ROUNDS = Number(process.env.TETHRAL_BENCH_PEER_ROUNDS ?? 200);
const RUNS = Number(process.env.TETHRAL_BENCH_PEER_RUNS ?? 2);
const ROOT = join(__dirname, "..");
const NODE_RED = join(ROOT, "node_modules", "node-red", "red.js");
const STALL_MS = 3000;
const SETTLE_MS = 1000;

interface Side {
  msgsPerSec: number;
  processed: number;
  sent: number;
  /** processed ÷ sent: what the broker did not drop (QoS 0) and the side took in. */
  delivered: number;
  seconds: number;
  /** The side's process CPU (all its threads) per message processed, its idle use taken out; null where /proc is missing. */
  cpuUsPerMsg: number | null;
}

/** A process's CPU time so far (user and system, all its threads), ms; null where /proc is missing. */
function cpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime, in clock ticks of 1/100 s (USER_HZ, 100 on Linux).
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return null;
  }
}

/** Resolves once a process has used no CPU for 300 ms (the broker has taken every publish in). */
async function quiet(pid: number): Promise<void> {
  let last = cpuMs(pid);
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 300));
    const now = cpuMs(pid);
    if (now === last) return;
    last = now;
  }
}

/**
 * Measures how fast a side takes in a backlog: the side is frozen (SIGSTOP) while the devices
 * publish ROUNDS reports each and the broker holds them for it, then woken (SIGCONT), and timed
 * until its count has them all (or stops moving for 3 s). So the load generator, which shares the
 * two cores, is not running while a side works, and neither side can be faster than it.
 */
async function measure(devices: DeviceWorker, count: () => Promise<number>, pid: number, brokerPid: number): Promise<Side> {
  // The side's CPU while idle (its timers, and the polling of its count below), to take out.
  const idleFrom = cpuMs(pid);
  const idleStarted = performance.now();
  for (let i = 0; i < 50; i++) {
    await count();
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const idleTo = cpuMs(pid);
  const idlePerMs = idleFrom === null || idleTo === null ? 0 : (idleTo - idleFrom) / (performance.now() - idleStarted);
  const before = await count();
  process.kill(pid, "SIGSTOP");
  let sent: number;
  try {
    sent = await devices.call<number>({ op: "publish", rounds: ROUNDS, typical: true });
    await quiet(brokerPid);
  } finally {
    process.kill(pid, "SIGCONT");
  }
  const cpuFrom = cpuMs(pid);
  const started = performance.now();
  let last = before;
  let lastMoved = started;
  let processed: number;
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    const now = await count();
    if (now !== last) {
      last = now;
      lastMoved = performance.now();
    }
    processed = now - before;
    if (processed >= sent || performance.now() - lastMoved > STALL_MS) break;
  }
  const seconds = (lastMoved - started) / 1000;
  // What the side does after taking a message in (Tethral's writes behind) is its cost too:
  // the CPU is read a second after the count stopped moving.
  const settled = lastMoved + SETTLE_MS;
  if (settled > performance.now()) await new Promise((resolve) => setTimeout(resolve, settled - performance.now()));
  const cpuTo = cpuMs(pid);
  const cpuUsPerMsg = cpuFrom === null || cpuTo === null || processed === 0 ? null : Number((((cpuTo - cpuFrom - idlePerMs * (performance.now() - started)) * 1000) / processed).toFixed(2));
  return { msgsPerSec: Math.round(processed / seconds), processed, sent, delivered: Number((processed / sent).toFixed(3)), seconds: Number(seconds.toFixed(2)), cpuUsPerMsg };
}

const FUNCTION = `const report = JSON.parse(msg.payload);
const id = msg.topic.split("/")[2];
const latest = flow.get("latest") || {};
latest[id] = Object.assign(latest[id] || {}, report, { at: Date.now() });
flow.set("latest", latest);
flow.set("count", (flow.get("count") || 0) + 1);
return null;`;

async function plainFlow(broker: { port: number }, scratch: string): Promise<{ url: string; proc: Proc }> {
  const dir = join(scratch, "node-red");
  rmSync(dir, { recursive: true, force: true });
  const port = await closedPort();
  const tab = "peer-tab";
  const flows = [
    { id: tab, type: "tab", label: "peer" },
    { id: "peer-broker", type: "mqtt-broker", name: "mosquitto", broker: "127.0.0.1", port: String(broker.port), clientid: "", autoConnect: true, usetls: false, protocolVersion: "4", keepalive: "60", cleansession: true },
    { id: "peer-in", type: "mqtt in", z: tab, name: "", topic: "tethral/devices/+/telemetry", qos: "0", datatype: "utf8", broker: "peer-broker", nl: false, rap: true, rh: 0, inputs: 0, x: 100, y: 40, wires: [["peer-fn"]] },
    { id: "peer-fn", type: "function", z: tab, name: "parse and count", func: FUNCTION, outputs: 0, x: 300, y: 40, wires: [] },
    { id: "peer-get", type: "http in", z: tab, url: "/count", method: "get", upload: false, swaggerDoc: "", x: 100, y: 100, wires: [["peer-read"]] },
    { id: "peer-read", type: "function", z: tab, name: "count", func: 'msg.payload = { count: flow.get("count") || 0 }; return msg;', outputs: 1, x: 300, y: 100, wires: [["peer-res"]] },
    { id: "peer-res", type: "http response", z: tab, statusCode: "", headers: {}, x: 500, y: 100, wires: [] },
  ];
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "flows.json"), JSON.stringify(flows));
  writeFileSync(
    join(dir, "settings.js"),
    `module.exports = { uiHost: "127.0.0.1", uiPort: ${port}, flowFile: "flows.json", credentialSecret: false, logging: { console: { level: "warn" } }, editorTheme: { tours: false } };\n`,
  );
  const proc = startProcess([NODE_RED, "--userDir", dir, "--settings", join(dir, "settings.js")], {}, dir);
  const url = `http://127.0.0.1:${port}/count`;
  try {
    await until(ready(proc, async () => (await getJson(url)).status === 200), "Node-RED with the plain flow", 60_000);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { url, proc };
}

async function tethral(broker: { url: string }, scratch: string): Promise<{ api: string; pid: number; stop: () => Promise<void> }> {
  const { api, proc, stop } = await startBuiltRuntime(join(scratch, "tethral"), { TETHRAL_MQTT_URL: broker.url, TETHRAL_DEVICE_TOKENS: "off" }, scratch);
  try {
    await registerAll(api);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { api, pid: proc.child.pid!, stop };
}

async function registerAll(api: string): Promise<void> {
  for (let i = 0; i < DEVICES; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, DEVICES - i) }, async (_, k) => {
        const id = `peer-${i + k}`;
        const res = await fetch(`${api}/devices`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id, name: id, protocol: "mqtt", heartbeatTimeout: 3600 }) });
        if (res.status !== 201) throw new Error(`register ${id}: ${res.status} ${await res.text()}`);
      }),
    );
  }
}

async function hubCount(api: string): Promise<number> {
  const { body } = await getJson(`${api}/communication/statistics`);
  const mqtt = (body as { protocols: Record<string, { messagesIn: number; rejected: number; errors: number }> }).protocols.mqtt;
  return mqtt ? mqtt.messagesIn - mqtt.rejected - mqtt.errors : 0;
}

async function main(): Promise<void> {
  if (!program("mosquitto")) {
    console.log("bench:peer: skipped (it needs mosquitto: apt-get install mosquitto)");
    return;
  }
  const target = targetOf("peer", "mosquitto.ratio");
  const scratch = mkdtempSync(join(tmpdir(), "tethral-bench-peer-"));
  // No cap on what the broker holds for a subscriber that is behind (its default drops QoS 0
  // messages past 1,000 queued): each side gets every message of its backlog.
  const broker = await startMosquitto(["max_queued_messages 0"]);
  const ids = Array.from({ length: DEVICES }, (_, i) => ({ id: `peer-${i}`, token: null }));
  const plainRuns: Side[] = [];
  const hubRuns: Side[] = [];
  try {
    for (let run = 0; run < RUNS; run++) {
      {
        const { url, proc } = await plainFlow(broker, scratch);
        const devices = new DeviceWorker();
        try {
          await devices.call({ op: "connect", url: broker.url, devices: ids, root: "tethral" });
          await new Promise((resolve) => setTimeout(resolve, 1000));
          plainRuns.push(await measure(devices, async () => ((await getJson(url)).body as { count: number }).count, proc.child.pid!, broker.pid));
          console.log(`  plain flow, run ${run + 1}: ${JSON.stringify(plainRuns.at(-1))}`);
        } finally {
          await devices.close();
          await proc.stop();
        }
      }
      {
        const { api, pid, stop } = await tethral(broker, scratch);
        const devices = new DeviceWorker();
        try {
          await devices.call({ op: "connect", url: broker.url, devices: ids, root: "tethral" });
          await new Promise((resolve) => setTimeout(resolve, 1000));
          hubRuns.push(await measure(devices, () => hubCount(api), pid, broker.pid));
          console.log(`  tethral, run ${run + 1}: ${JSON.stringify(hubRuns.at(-1))}`);
        } finally {
          await devices.close();
          await stop();
        }
      }
    }
  } finally {
    await broker.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
  const best = (runs: Side[]) => runs.reduce((a, b) => (b.msgsPerSec > a.msgsPerSec ? b : a));
  const plain = best(plainRuns);
  const hub = best(hubRuns);
  const ratio = Number((hub.msgsPerSec / plain.msgsPerSec).toFixed(2));
  console.log(`\nTethral peer benchmark, Node ${process.version}: ${DEVICES.toLocaleString("en-US")} devices × ${ROUNDS} QoS 0 reports of about 100 bytes, on Mosquitto`);
  console.log(`  plain Node-RED mqtt in → function: ${plain.msgsPerSec.toLocaleString("en-US")} msg/s (${plain.processed} of ${plain.sent})`);
  console.log(`  tethral (npm start, SQLite, tokens off): ${hub.msgsPerSec.toLocaleString("en-US")} msg/s (${hub.processed} of ${hub.sent})`);
  console.log(`  ratio ${ratio} (target ≥ ${target}): ${ratio >= target ? "met" : "MISSED"}`);
  console.log(`\nwrote ${writeResults("peer", { devices: DEVICES, rounds: ROUNDS, mosquitto: { plain, tethral: hub, ratio, plainRuns, tethralRuns: hubRuns } })}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
