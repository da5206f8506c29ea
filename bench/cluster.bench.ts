/**
 * Cluster benchmark (CONTRACT §8, issue 14): what a cluster costs per message, and what a
 * member's death costs.
 * - The same load twice: DEVICES MQTT devices on a Mosquitto of the bench's own, RATE QoS 1
 *   telemetry messages a second for SECONDS, first to one runtime (TETHRAL_CLUSTER off), then to
 *   a cluster of three members; both on a fresh database of the PostgreSQL server, run as `npm
 *   start` runs them (the build's dist/runtime/start.js; before 2026-12-07 the sources through
 *   tsx, whose transpiled code is not what ships, see bench/run.mjs). The figure is CPU time per
 *   message: the members' utime + stime from /proc/<pid>/stat over the run (until every device's last report is in its state), ÷ messages.
 *   On a 2-core machine three members cannot go faster than one; the cost per message is what
 *   says how the cluster scales.
 * - Then, with the load still on and a few commands a second queued through the survivors, one
 *   member is killed (SIGKILL): failoverMs runs from the kill until both survivors agree every
 *   partition is theirs; every report the broker acknowledged during the failover window must be
 *   a stored point, and every command a member acknowledged (202) must end succeeded.
 * Needs a PostgreSQL server (TETHRAL_BENCH_PG_URL or TETHRAL_TEST_PG_URL) and mosquitto: without
 * them it says so in one line and exits 0. Run with `npm run bench:cluster`; writes
 * bench/results/cluster.json. Not a test: nothing asserts a time.
 */
import { cpus } from "node:os";
import { MqttDevice } from "../test/runtime/cluster-devices";
import { type Member, TestCluster, cpuMicros, register } from "../test/runtime/cluster-harness";
import { program } from "../test/mosquitto";
import { call } from "../test/runtime/spawn-runtime";
import { benchServer } from "./pg-database";
import { checkBuild } from "./runtime-process";
import { targetOf, writeResults } from "./results";

const DEVICES = Number(process.env.TETHRAL_BENCH_CLUSTER_DEVICES ?? 1000);
/** Messages a second, well within what one runtime sustains on PostgreSQL. */
const RATE = Number(process.env.TETHRAL_BENCH_CLUSTER_RATE ?? 1000);
const SECONDS = Number(process.env.TETHRAL_BENCH_CLUSTER_SECONDS ?? 30);
const PARTITIONS = 64;
const LEASE_SECONDS = 5;
const LEASE_MS = LEASE_SECONDS * 1000;
/** Commands a second during the failover run. */
const COMMAND_RATE = 20;
/** The load runs this long after the kill. */
const AFTER_KILL_MS = LEASE_MS + 10_000;
const TARGETS = {
  cpuRatio: targetOf("cluster", "cpuRatio"),
  failoverMs: targetOf("cluster", "failoverMs"),
  telemetryLostDuringFailover: targetOf("cluster", "telemetryLostDuringFailover"),
  telemetryDuplicatedDuringFailover: targetOf("cluster", "telemetryDuplicatedDuringFailover"),
  commandsLostDuringFailover: targetOf("cluster", "commandsLostDuringFailover"),
};
if (TARGETS.failoverMs > LEASE_MS + 2000) throw new Error("bench/targets.json: the failover target is at most the lease (5 s) + 2 s (issue 14)");
const TICK_MS = 100;
/** The idle measurement before the load. */
const IDLE_MS = Number(process.env.TETHRAL_BENCH_CLUSTER_IDLE_SECONDS ?? 10) * 1000;

interface LoadResult {
  members: number;
  messages: number;
  seconds: number;
  /** From the end of publishing until every device's last report was in its state. */
  drainMs: number;
  cpuSeconds: number;
  cpuUsPerMsg: number;
  /** Each member's share of the CPU time, seconds. */
  cpuSecondsPerMember: Record<string, number>;
  /** CPU ms a second of all members with the devices connected and silent: the fixed cost (beats, following the fleet). */
  idleCpuMsPerSec: number;
  /**
   * CPU µs per message beyond that fixed cost: (CPU over the run − idleCpuMsPerSec × the run's
   * span) ÷ messages. No target: it tells how much of cpuUsPerMsg comes with each message and
   * how much is the members' idle work spread over the messages.
   */
  marginalUsPerMsg: number;
}

function fmt(n: number, digits = 0): string {
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

async function pool<T>(items: T[], width: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i]!, i);
      }
    }),
  );
}

/** Publishes RATE messages a second, round-robin over the devices, until `stop()`. */
function load(devices: MqttDevice[]): { stop: () => number } {
  let sent = 0;
  let at = 0;
  const started = performance.now();
  const timer = setInterval(() => {
    // Catch up to the rate the clock says, so a late tick does not lower it.
    const due = Math.floor(((performance.now() - started) / 1000) * RATE) - sent;
    for (let i = 0; i < due; i++) {
      devices[at++ % devices.length]!.send();
      sent++;
    }
  }, TICK_MS);
  return {
    stop: () => {
      clearInterval(timer);
      return sent;
    },
  };
}

/** Until every device's state, read through `member`, has its last report (or `limitMs`). */
async function drained(member: Member, devices: MqttDevice[], limitMs: number): Promise<boolean> {
  const want = new Map(devices.map((d) => [d.id, d.seq]));
  const deadline = Date.now() + limitMs;
  while (Date.now() < deadline) {
    const res = await call(member.api, "GET", `/devices/states?limit=${devices.length + 10}`);
    const behind = (res.body.states as Array<{ deviceId: string; properties: { seq?: number } }>).filter(
      (s) => want.has(s.deviceId) && (s.properties.seq ?? 0) < want.get(s.deviceId)!,
    ).length;
    const missing = devices.length - (res.body.states as unknown[]).length;
    if (behind === 0 && missing <= 0) return true;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  return false;
}

/** Registers the devices through the members in turn and connects them; `devices` holds each as it connects. */
async function fleet(cluster: TestCluster, devices: MqttDevice[]): Promise<void> {
  const ids = Array.from({ length: DEVICES }, (_, i) => `bench-${String(i).padStart(5, "0")}`);
  await pool(ids, 25, async (id, i) => {
    const via = cluster.members[i % cluster.members.length]!;
    const { token } = await register(via, { id, name: id, protocol: "mqtt", heartbeatTimeout: 600 });
    const device = new MqttDevice(id, token, cluster.mosquitto.url);
    devices.push(device);
    await device.connect();
  });
}

/** The steady load on every member of `cluster`: CPU time per message. */
async function steady(cluster: TestCluster, devices: MqttDevice[]): Promise<LoadResult> {
  const members = cluster.live();
  // The registrations' own work (write-behind, followers reading them back) done first.
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const idle0 = members.reduce((sum, m) => sum + cpuMicros(m.pid), 0);
  const idleStarted = performance.now();
  await new Promise((resolve) => setTimeout(resolve, IDLE_MS));
  const idleCpuMsPerSec = (members.reduce((sum, m) => sum + cpuMicros(m.pid), 0) - idle0) / (performance.now() - idleStarted);
  // A warm-up the clock does not see: JIT, pools, the first state rows.
  const warm = load(devices);
  await new Promise((resolve) => setTimeout(resolve, 5000));
  warm.stop();
  await drained(members[0]!, devices, 60_000);
  const each0 = members.map((m) => cpuMicros(m.pid));
  const started = performance.now();
  const run = load(devices);
  await new Promise((resolve) => setTimeout(resolve, SECONDS * 1000));
  const messages = run.stop();
  const published = performance.now();
  if (!(await drained(members[0]!, devices, 120_000))) console.warn("  the members did not catch up within 2 minutes");
  const drainMs = performance.now() - published;
  const each = members.map((m, i) => cpuMicros(m.pid) - each0[i]!);
  const cpu = each.reduce((a, b) => a + b, 0);
  // idleCpuMsPerSec is CPU ms a wall second, so CPU µs a wall ms: × the span in ms.
  const idleDuring = idleCpuMsPerSec * (performance.now() - started);
  return {
    members: members.length,
    messages,
    seconds: Number(((published - started) / 1000).toFixed(1)),
    drainMs: Math.round(drainMs),
    cpuSeconds: Number((cpu / 1e6).toFixed(2)),
    cpuUsPerMsg: Number((cpu / messages).toFixed(1)),
    cpuSecondsPerMember: Object.fromEntries(members.map((m, i) => [m.id, Number((each[i]! / 1e6).toFixed(2))])),
    idleCpuMsPerSec: Number(idleCpuMsPerSec.toFixed(1)),
    marginalUsPerMsg: Number(((cpu - idleDuring) / messages).toFixed(1)),
  };
}

interface FailoverResult {
  failoverMs: number | null;
  telemetryAckedDuringFailover: number;
  telemetryLostDuringFailover: number;
  /** Reports stored more than once (a replay of what the previous owner had written): each message must be applied once. */
  telemetryDuplicatedDuringFailover: number;
  commandsAcknowledged: number;
  commandsRefused: number;
  commandsLostDuringFailover: number;
  commandOutcomes: Record<string, number>;
}

async function failover(cluster: TestCluster, devices: MqttDevice[]): Promise<FailoverResult> {
  const victim = cluster.member("m1");
  const survivors = [cluster.member("m2"), cluster.member("m3")];
  const firstSeq = new Map(devices.map((d) => [d.id, d.seq + 1]));
  const run = load(devices);
  const commands: string[] = [];
  let refused = 0;
  let n = 0;
  const sending: Promise<void>[] = [];
  const commandTimer = setInterval(() => {
    const device = devices[(n * 7919) % devices.length]!;
    const via = survivors[n++ % survivors.length]!;
    sending.push(
      call(via.api, "POST", `/devices/${device.id}/command`, { command: "echo", params: { n } }).then(
        (res) => {
          if (res.status === 202) commands.push(res.body.id);
          else refused++;
        },
        () => void refused++,
      ),
    );
  }, 1000 / COMMAND_RATE);
  await new Promise((resolve) => setTimeout(resolve, 5000));
  const killedAt = performance.now();
  await victim.kill();
  let failoverMs: number | null = null;
  const deadline = performance.now() + AFTER_KILL_MS;
  while (performance.now() < deadline) {
    if (failoverMs === null && (await cluster.settled(survivors.map((m) => m.id)))) failoverMs = Math.round(performance.now() - killedAt);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  clearInterval(commandTimer);
  run.stop();
  await Promise.all(sending);
  for (const d of devices) await d.stop();

  // Every report acknowledged from the start of this run: stored, once the write-behind is done.
  const reader = survivors[0]!;
  const from = new Date(Date.now() - 10 * 60_000).toISOString();
  let acked = 0;
  let lost = 0;
  let duplicated = 0;
  const lostDeadline = Date.now() + 30_000;
  await pool(devices, 20, async (d) => {
    const window = [...d.acked].filter((s) => s >= firstSeq.get(d.id)!);
    acked += window.length;
    for (;;) {
      const res = await call(reader.api, "GET", `/devices/${d.id}/telemetry?keys=seq&from=${encodeURIComponent(from)}&limit=10000`);
      const values: number[] = (res.body.series?.seq ?? []).map((p: { value: number }) => p.value);
      const have = new Set(values);
      const missing = window.filter((s) => !have.has(s)).length;
      if (missing === 0 || Date.now() > lostDeadline) {
        lost += missing;
        duplicated += values.length - have.size;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  });

  const outcomes: Record<string, number> = {};
  let commandsLost = 0;
  const commandDeadline = Date.now() + LEASE_MS + 30_000;
  await pool(commands, 20, async (id) => {
    for (;;) {
      const res = await call(reader.api, "GET", `/commands/${id}`);
      const status: string = res.body?.status ?? `http ${res.status}`;
      if (status === "succeeded" || ["failed", "timed_out", "expired", "cancelled", "superseded"].includes(status) || Date.now() > commandDeadline) {
        outcomes[status] = (outcomes[status] ?? 0) + 1;
        if (status !== "succeeded") commandsLost++;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  });
  return {
    failoverMs,
    telemetryAckedDuringFailover: acked,
    telemetryLostDuringFailover: lost,
    telemetryDuplicatedDuringFailover: duplicated,
    commandsAcknowledged: commands.length,
    commandsRefused: refused,
    commandsLostDuringFailover: commandsLost,
    commandOutcomes: outcomes,
  };
}

async function measure(server: string, mode: "single" | "cluster"): Promise<{ load: LoadResult; failover: FailoverResult | null }> {
  const cluster = await TestCluster.create(server, {
    members: mode === "single" ? 1 : 3,
    cluster: mode === "single" ? "off" : "on",
    partitions: PARTITIONS,
    leaseSeconds: LEASE_SECONDS,
    prefix: `tethral_bench_cluster_${mode}`,
    from: "build",
  });
  const devices: MqttDevice[] = [];
  try {
    await cluster.startAll();
    if (mode === "cluster") {
      const started = Date.now();
      while (!(await cluster.settled())) {
        if (Date.now() - started > 60_000) throw new Error(`the partitions did not settle in 60 s:\n${cluster.logs()}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    await fleet(cluster, devices);
    const result = await steady(cluster, devices);
    console.log(
      `  ${mode}: ${fmt(result.messages)} messages in ${result.seconds} s, ${result.cpuSeconds} CPU s (${JSON.stringify(result.cpuSecondsPerMember)}), ${result.cpuUsPerMsg} µs/msg (caught up ${result.drainMs} ms after the last); idle ${result.idleCpuMsPerSec} CPU ms/s, so ${result.marginalUsPerMsg} µs/msg beyond it`,
    );
    const fail = mode === "cluster" ? await failover(cluster, devices) : null;
    return { load: result, failover: fail };
  } finally {
    for (const d of devices) await d.stop();
    await cluster.stop();
  }
}

async function main(): Promise<void> {
  const server = benchServer();
  if (!server || !program("mosquitto")) {
    console.log("bench:cluster: skipped (it needs a PostgreSQL server in TETHRAL_BENCH_PG_URL or TETHRAL_TEST_PG_URL, and mosquitto)");
    return;
  }
  checkBuild();
  console.log(`Tethral cluster benchmark, Node ${process.version}, ${cpus().length} cores: ${fmt(DEVICES)} MQTT devices, ${fmt(RATE)} QoS 1 messages/s for ${SECONDS} s`);
  const single = await measure(server, "single");
  // TETHRAL_BENCH_CLUSTER_ONLY=single: the baseline alone, for tuning the load (no results written).
  if (process.env.TETHRAL_BENCH_CLUSTER_ONLY === "single") return;
  const cluster = await measure(server, "cluster");
  const f = cluster.failover!;
  const ratio = Number((cluster.load.cpuUsPerMsg / single.load.cpuUsPerMsg).toFixed(2));
  const pass = {
    cpuRatio: ratio <= TARGETS.cpuRatio,
    failoverMs: f.failoverMs !== null && f.failoverMs <= TARGETS.failoverMs,
    telemetryLostDuringFailover: f.telemetryLostDuringFailover <= TARGETS.telemetryLostDuringFailover,
    telemetryDuplicatedDuringFailover: f.telemetryDuplicatedDuringFailover <= TARGETS.telemetryDuplicatedDuringFailover,
    commandsLostDuringFailover: f.commandsLostDuringFailover <= TARGETS.commandsLostDuringFailover,
  };
  const results = {
    singleCpuUsPerMsg: single.load.cpuUsPerMsg,
    clusterCpuUsPerMsg: cluster.load.cpuUsPerMsg,
    cpuRatio: ratio,
    // No target: the ratio of what each message costs beyond the members' idle work.
    marginalRatio: Number((cluster.load.marginalUsPerMsg / single.load.marginalUsPerMsg).toFixed(2)),
    failoverMs: f.failoverMs,
    telemetryLostDuringFailover: f.telemetryLostDuringFailover,
    telemetryDuplicatedDuringFailover: f.telemetryDuplicatedDuringFailover,
    commandsLostDuringFailover: f.commandsLostDuringFailover,
    targets: TARGETS,
    pass,
    single: { ...single.load, note: "one runtime, TETHRAL_CLUSTER off, on the same kind of database and broker" },
    cluster: { ...cluster.load, ...f },
    devices: DEVICES,
    messagesPerSecond: RATE,
    seconds: SECONDS,
    partitions: PARTITIONS,
    leaseSeconds: LEASE_SECONDS,
    commandsPerSecondDuringFailover: COMMAND_RATE,
  };
  const mark = (ok: boolean) => (ok ? "met" : "MISSED");
  console.log(`\n${"".padEnd(40)}${"measured".padStart(12)}${"target".padStart(14)}`);
  console.log(`${"single runtime, CPU µs/msg".padEnd(40)}${fmt(single.load.cpuUsPerMsg, 1).padStart(12)}${"—".padStart(14)}`);
  console.log(`${"3 members, CPU µs/msg (all members)".padEnd(40)}${fmt(cluster.load.cpuUsPerMsg, 1).padStart(12)}${"".padStart(14)}`);
  console.log(`${"  ratio".padEnd(40)}${fmt(ratio, 2).padStart(12)}${`≤ ${TARGETS.cpuRatio}`.padStart(14)}  ${mark(pass.cpuRatio)}`);
  console.log(`${"  beyond idle: single / 3 members, µs".padEnd(40)}${`${fmt(single.load.marginalUsPerMsg, 1)} / ${fmt(cluster.load.marginalUsPerMsg, 1)}`.padStart(12)}${"—".padStart(14)}  (${fmt(results.marginalRatio, 2)}×)`);
  console.log(`${"failover ms (SIGKILL → all owned)".padEnd(40)}${String(f.failoverMs ?? "never").padStart(12)}${`≤ ${TARGETS.failoverMs}`.padStart(14)}  ${mark(pass.failoverMs)}`);
  console.log(`${"telemetry lost (of acked)".padEnd(40)}${`${f.telemetryLostDuringFailover} / ${fmt(f.telemetryAckedDuringFailover)}`.padStart(12)}${"0".padStart(14)}  ${mark(pass.telemetryLostDuringFailover)}`);
  console.log(`${"telemetry stored twice".padEnd(40)}${String(f.telemetryDuplicatedDuringFailover).padStart(12)}${"0".padStart(14)}  ${mark(pass.telemetryDuplicatedDuringFailover)}`);
  console.log(`${"commands lost (of acked)".padEnd(40)}${`${f.commandsLostDuringFailover} / ${f.commandsAcknowledged}`.padStart(12)}${"0".padStart(14)}  ${mark(pass.commandsLostDuringFailover)}`);
  console.log(`commands refused while their owner was dead (not acknowledged): ${f.commandsRefused}; outcomes ${JSON.stringify(f.commandOutcomes)}`);
  console.log(`\nwrote ${writeResults("cluster", results)}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
