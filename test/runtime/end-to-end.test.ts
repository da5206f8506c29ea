import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Simulation } from "../../src/runtime/simulate";
import { startTestPostgres } from "../store/pg-harness";
import { type Json, type RuntimeChild, START_LIMIT_MS, call, fixedPorts, spawnRuntime } from "./spawn-runtime";
import { until } from "../helpers";

const PROTOCOLS = ["mqtt", "coap", "websocket"] as const;
type Protocol = (typeof PROTOCOLS)[number];


/**
 * The whole runtime, as `npm start` runs it, driven by `npm run simulate`'s devices over real
 * sockets: an MQTT, a CoAP and a WebSocket device each register through the REST API, report,
 * go offline after their heartbeat timeout, come back and answer a command; state and events
 * are read over REST; then the runtime restarts on the same user dir and ports, and the fleet,
 * its state, history, events and commands are all still there, and the devices reconnect with
 * the tokens they were given before the restart.
 */
// On the embedded SQLite file, and in CI (TETHRAL_TEST_PG_URL) on a PostgreSQL database of its own.
const STORES: Array<{ name: string; kind: string; database: () => Promise<{ env: NodeJS.ProcessEnv; drop: () => Promise<void> }> }> = [
  { name: "SQLite", kind: "sqlite", database: async () => ({ env: {}, drop: async () => undefined }) },
];
if (process.env.TETHRAL_TEST_PG_URL) {
  STORES.push({
    name: "PostgreSQL",
    kind: "postgres",
    database: async () => {
      const pg = await startTestPostgres();
      return { env: { TETHRAL_DB: pg.url }, drop: () => pg.stop() };
    },
  });
}

for (const store of STORES) describe(`end to end on ${store.name}: simulated devices, the REST API and a runtime restart`, function () {
  this.timeout(START_LIMIT_MS + 90_000);
  let scratch: string;
  let userDir: string;
  let env: NodeJS.ProcessEnv;
  let database: { env: NodeJS.ProcessEnv; drop: () => Promise<void> } | null = null;
  let rt: RuntimeChild | null = null;
  const sims = new Map<Protocol, Simulation>();
  const restored = new Map<Protocol, number>();
  const commandIds = new Map<Protocol, string>();
  const ids = (p: Protocol) => `e2e-${p}-001`;

  before(async () => {
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-e2e-"));
    userDir = path.join(scratch, "user");
    database = await store.database();
    env = { ...(await fixedPorts()), ...database.env };
    rt = await spawnRuntime(userDir, env);
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed" && rt) console.log(`--- the runtime's log ---\n${rt.output().slice(-6000)}`);
  });

  after(async () => {
    for (const sim of sims.values()) await sim.stop();
    await rt?.stop();
    await database?.drop();
    rmSync(scratch, { recursive: true, force: true });
  });

  it("each device registers through the REST API with its token and its reports reach its state", async () => {
    assert.equal((await call(rt!.api, "GET", "/health")).body.components.store.kind, store.kind);
    for (const protocol of PROTOCOLS) {
      const sim = new Simulation({
        api: rt!.api,
        protocol,
        devices: 1,
        prefix: `e2e-${protocol}-`,
        interval: 0.3,
        heartbeat: 1,
        // Up long enough to be seen online, then away for longer than the heartbeat timeout.
        drop: 1,
        dropUp: [2.5, 2.5],
        dropDown: [2.5, 2.5],
        summary: 0,
        log: () => undefined,
      });
      sim.on("restored", () => {
        restored.set(protocol, (restored.get(protocol) ?? 0) + 1);
      });
      sims.set(protocol, sim);
      await sim.start();
    }
    for (const protocol of PROTOCOLS) {
      const id = ids(protocol);
      const device = await call(rt!.api, "GET", `/devices/${id}`);
      assert.equal(device.status, 200, `${id} is registered`);
      assert.equal(device.body.protocol, protocol);
      assert.equal(device.body.token, undefined, "the token was answered once, to the simulator");
      const state = await until(
        async () => {
          const s = await call(rt!.api, "GET", `/devices/${id}/state`);
          return s.body.status === "online" && typeof s.body.properties.temperature === "number" ? s.body : false;
        },
        `${id} reporting`,
        15_000,
      );
      assert.equal(typeof state.properties.humidity, "number");
    }
    const comm = await call(rt!.api, "GET", "/communication/statistics");
    for (const protocol of PROTOCOLS) assert.ok(comm.body.protocols[protocol].messagesIn > 0, `${protocol} messages counted`);
  });

  it("each goes offline after its heartbeat timeout when it drops, and comes back online", async () => {
    for (const protocol of PROTOCOLS) {
      const id = ids(protocol);
      await until(async () => (await call(rt!.api, "GET", `/devices/${id}`)).body.status === "offline", `${id} offline`, 15_000);
    }
    for (const protocol of PROTOCOLS) {
      const id = ids(protocol);
      await until(async () => (await call(rt!.api, "GET", `/devices/${id}`)).body.status === "online", `${id} back online`, 15_000);
      assert.ok((restored.get(protocol) ?? 0) >= 1, `${id}: the simulator brought it back`);
      const history = await call(rt!.api, "GET", `/devices/${id}/state?history=50`);
      const statuses = history.body.history.map((h: Json) => h.to.status).filter(Boolean);
      assert.ok(statuses.includes("offline") && statuses.lastIndexOf("online") > statuses.indexOf("offline"), `${id}: ${statuses.join(" → ")}`);
      const events = await call(rt!.api, "GET", `/events?deviceId=${id}&type=device.*`);
      const types = events.body.events.map((e: Json) => e.type);
      for (const t of ["device.registered", "device.online", "device.offline"]) assert.ok(types.includes(t), `${id}: ${t} in ${types.join(", ")}`);
    }
  });

  it("each answers a command sent through the REST API", async () => {
    for (const protocol of PROTOCOLS) {
      const id = ids(protocol);
      // Queued (202) and followed: while the device is away the command waits for it, and an
      // attempt that meets a device just dropping is retried.
      const res = await call(rt!.api, "POST", `/devices/${id}/command`, { command: "ping", timeout: 2, retries: 5 });
      assert.equal(res.status, 202, `${id}: ${JSON.stringify(res.body)}`);
      const done = await until(
        async () => {
          const c = await call(rt!.api, "GET", `/commands/${res.body.id}`);
          return c.body.status === "succeeded" ? c.body : false;
        },
        `${id} answers`,
        30_000,
      );
      assert.equal(done.result.pong, true, `${id}: ${JSON.stringify(done)}`);
      commandIds.set(protocol, done.id);
      const events = await call(rt!.api, "GET", `/events?deviceId=${id}&type=command.*`);
      assert.ok(events.body.events.some((e: Json) => e.type === "command.succeeded"), `${id}: command.succeeded event`);
    }
  });

  it("after a restart the fleet, state, history, events and commands are all there, and the devices reconnect with their tokens", async () => {
    const before = new Map<string, Json>();
    for (const protocol of PROTOCOLS) {
      const id = ids(protocol);
      before.set(id, {
        device: (await call(rt!.api, "GET", `/devices/${id}`)).body,
        state: (await call(rt!.api, "GET", `/devices/${id}/state?history=1000`)).body,
        commands: (await call(rt!.api, "GET", `/events?deviceId=${id}&type=command.succeeded`)).body.events,
      });
    }
    // The stored ones: state.changed (one per report) is kept in memory only, by default.
    const eventIds: string[] = (await call(rt!.api, "GET", "/events?limit=10000")).body.events
      .filter((e: Json) => e.type !== "state.changed")
      .map((e: Json) => e.id);

    await rt!.stop();
    rt = null;
    const restartedAt = Date.now();
    // While the runtime is down the devices keep trying; the restarted one takes them back.
    rt = await spawnRuntime(userDir, env);

    const list = await call(rt.api, "GET", "/devices");
    assert.deepEqual(list.body.devices.map((d: Json) => d.id).sort(), PROTOCOLS.map(ids).sort());
    for (const protocol of PROTOCOLS) {
      const id = ids(protocol);
      const was = before.get(id)!;
      const device: Json = (await call(rt.api, "GET", `/devices/${id}`)).body;
      assert.equal(device.createdAt, was.device.createdAt);
      assert.equal(device.protocol, protocol);
      const state: Json = (await call(rt.api, "GET", `/devices/${id}/state?history=1000`)).body;
      assert.ok(state.version >= was.state.version, `${id} state version kept`);
      // The history from before, entry for entry (the devices may have added to it since). It
      // holds the status changes (online, offline, online again); the reported values are in the
      // time series (CONTRACT §7).
      assert.ok(was.state.history.length >= 3, `${id} has a history`);
      assert.deepEqual(state.history.slice(0, was.state.history.length), was.state.history, `${id} history kept`);
      assert.equal(typeof state.properties.temperature, "number");
      const command = await call(rt.api, "GET", `/commands/${commandIds.get(protocol)}`);
      assert.equal(command.status, 200, `${id}: the command from before the restart`);
      assert.equal(command.body.status, "succeeded");
      assert.equal(command.body.result.pong, true);
      const commandEvents: Json = (await call(rt.api, "GET", `/events?deviceId=${id}&type=command.succeeded`)).body.events;
      assert.deepEqual(commandEvents.map((e: Json) => e.id), was.commands.map((e: Json) => e.id), `${id}: command events kept`);
    }
    const after = new Set((await call(rt.api, "GET", "/events?limit=10000")).body.events.map((e: Json) => e.id));
    assert.deepEqual(eventIds.filter((e) => !after.has(e)), [], "every event from before the restart is kept");

    // The devices are back with the tokens they got before the restart, and answer commands.
    for (const protocol of PROTOCOLS) {
      const id = ids(protocol);
      await until(
        async () => {
          const s = (await call(rt!.api, "GET", `/devices/${id}/state`)).body;
          return s.status === "online" && Date.parse(s.reportedAt) > restartedAt;
        },
        `${id} reporting to the restarted runtime`,
        30_000,
      );
      const res = await call(rt.api, "POST", `/devices/${id}/command`, { command: "read", timeout: 2, retries: 5 });
      assert.equal(res.status, 202, `${id}: ${JSON.stringify(res.body)}`);
      const done = await until(
        async () => {
          const c = await call(rt!.api, "GET", `/commands/${res.body.id}`);
          return c.body.status === "succeeded" ? c.body : false;
        },
        `${id} answers after the restart`,
        30_000,
      );
      assert.equal(typeof done.result.temperature, "number");
    }
    const rejected = (await call(rt.api, "GET", "/communication/statistics")).body.protocols;
    for (const protocol of PROTOCOLS) assert.equal(rejected[protocol].rejected, 0, `${protocol}: no refused token after the restart`);
  });

  it("keeps every telemetry value as a time series: raw and aggregated queries, bad ones refused, and every point answered before a SIGKILL is there after it", async () => {
    // The devices stop first: a bucket holding `to` would otherwise count points that came after it.
    for (const sim of sims.values()) await sim.stop();
    sims.clear();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const before = new Map<string, Json>();
    const to = new Date().toISOString();
    for (const protocol of PROTOCOLS) {
      const id = ids(protocol);
      const keys = await call(rt!.api, "GET", `/devices/${id}/telemetry/keys`);
      assert.equal(keys.status, 200);
      for (const key of ["temperature", "humidity"]) assert.ok(keys.body.keys.includes(key), `${id}: ${key} in ${keys.body.keys}`);
      // Raw points, oldest first, every one a number the device sent.
      const raw = await call(rt!.api, "GET", `/devices/${id}/telemetry?keys=temperature,humidity&to=${encodeURIComponent(to)}&limit=10000`);
      assert.equal(raw.status, 200, JSON.stringify(raw.body));
      assert.equal(raw.body.deviceId, id);
      assert.equal(raw.body.interval, null);
      const temps: Json[] = raw.body.series.temperature;
      assert.ok(temps.length >= 10, `${id}: ${temps.length} temperature points`);
      assert.ok(temps.every((p: Json) => typeof p.value === "number"));
      assert.ok(temps.every((p: Json, i: number) => i === 0 || Date.parse(p.ts) > Date.parse(temps[i - 1].ts)), "oldest first, one point per time");
      // Aggregated: per-minute buckets agree with the raw points they sum up.
      const counts = await call(rt!.api, "GET", `/devices/${id}/telemetry?keys=temperature&to=${encodeURIComponent(to)}&interval=1m&agg=count`);
      assert.equal(counts.status, 200, JSON.stringify(counts.body));
      assert.equal(counts.body.interval, "1m");
      assert.equal(counts.body.agg, "count");
      const counted = counts.body.series.temperature.reduce((n: number, b: Json) => n + b.value, 0);
      assert.equal(counted, temps.length, `${id}: the 1-minute counts add up to the raw points`);
      const max = await call(rt!.api, "GET", `/devices/${id}/telemetry?keys=temperature&to=${encodeURIComponent(to)}&interval=1h&agg=max`);
      assert.equal(max.body.series.temperature.length, new Set(temps.map((p: Json) => Math.floor(Date.parse(p.ts) / 3_600_000))).size);
      assert.equal(Math.max(...max.body.series.temperature.map((b: Json) => b.value)), Math.max(...temps.map((p: Json) => p.value)));
      before.set(id, raw.body.series);
    }
    // Bad queries: 400 naming the parameter, nothing else; an unknown device 404.
    const id = ids("mqtt");
    for (const [query, field] of [
      ["interval=fortnight", "interval"],
      ["agg=median&interval=1m", "agg"],
      ["from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "from"],
      ["limit=0", "limit"],
      ["from=yesterday", "from"],
    ] as const) {
      const bad = await call(rt!.api, "GET", `/devices/${id}/telemetry?${query}`);
      assert.equal(bad.status, 400, `${query}: ${JSON.stringify(bad.body)}`);
      assert.equal(bad.body.error.code, "INVALID");
      assert.equal(bad.body.error.details[0].field, field, `${query} names ${field}`);
    }
    assert.equal((await call(rt!.api, "GET", "/devices/no-such-device/telemetry")).status, 404);

    // Killed with no chance to flush: what the queries above answered was already stored.
    await rt!.kill();
    rt = await spawnRuntime(userDir, env);
    for (const [device, series] of before) {
      const again = await call(rt.api, "GET", `/devices/${device}/telemetry?keys=temperature,humidity&to=${encodeURIComponent(to)}&limit=10000`);
      assert.equal(again.status, 200);
      assert.deepEqual(again.body.series, series, `${device}: every point from before the kill`);
    }
  });
});
