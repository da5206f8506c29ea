import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import helper from "node-red-node-test-helper";
import tethralHub from "../../src/nodes/tethral-hub";
import tethralState from "../../src/nodes/tethral-state";
import { until } from "../helpers";
import { FIXTURES, type FlowEntry, type Loaded, type Msg, lastStatus, loadWithCatch, withCatalogue } from "./harness";

helper.init(require.resolve("node-red"));

const { tab, hub, catcher, errors, out } = FIXTURES;

const state = (extra: Msg = {}): FlowEntry => ({ id: "st1", type: "tethral-state", z: "tab1", hub: "hub1", operation: "get", wires: [["out"]], ...extra });

function load(nodes: FlowEntry[]): Promise<Loaded> {
  return loadWithCatch([tethralHub, withCatalogue(tethralState, "tethral-state")], nodes);
}

const errorCode = (msg: Msg) => (msg.error as { code?: string } | undefined)?.code;
const green = (text: string) => ({ fill: "green", shape: "dot", text });

describe("tethral-state node", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  type State = { deviceId: string; status: string; properties: Msg; desired: Msg; delta: Msg; version: number };
  type Entry = { deviceId: string; from: Msg; to: Msg; reason: string; causeId: string | null };

  it("gets a device's state, by msg.deviceId or the node's device", async () => {
    const t = await load([state(), state({ id: "st2", deviceId: "boiler-1" })]);
    await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    await t.hub.registerDevice({ id: "boiler-2", protocol: "mqtt" });
    t.hub.ingest("boiler-1", { kind: "telemetry", data: { temperature: 21.5 } });

    const m = await t.ok("st2", { keep: "me" });
    const s = m.payload as State;
    assert.equal(s.deviceId, "boiler-1");
    assert.deepEqual(s.properties, { temperature: 21.5 });
    assert.equal(s.status, "online");
    assert.equal(m.keep, "me");
    assert.deepEqual(lastStatus(t.node("st2")), green(`boiler-1 v${s.version} online`));

    const other = await t.ok("st2", { deviceId: "boiler-2" });
    assert.equal((other.payload as State).deviceId, "boiler-2", "msg.deviceId overrides the node's device");
    const plain = await t.ok("st1", { deviceId: "boiler-2" });
    assert.equal((plain.payload as State).status, "unknown");
  });

  it("sets desired values and status, with the msg as the cause", async () => {
    const t = await load([state({ operation: "set" })]);
    await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    t.hub.ingest("boiler-1", { kind: "telemetry", data: { setpoint: 20 } });
    const before = t.hub.getState("boiler-1").version;

    const m = await t.ok("st1", { deviceId: "boiler-1", payload: { desired: { setpoint: 22 } }, topic: "heat", _msgid: "abc123" });
    const s = m.payload as State;
    assert.deepEqual(s.desired, { setpoint: 22 });
    assert.deepEqual(s.delta, { setpoint: 22 });
    assert.equal(s.version, before + 1);
    assert.equal(m.topic, "heat");
    assert.equal(m.deviceId, "boiler-1");
    assert.deepEqual(t.hub.getState("boiler-1").desired, { setpoint: 22 });
    assert.deepEqual(lastStatus(t.node("st1")), green(`set boiler-1 v${before + 1}`));
    const last = (await t.hub.stateHistory("boiler-1", 1))[0]!;
    assert.equal(last.causeId, "abc123", "the change is traced to the msg");

    const maint = await t.ok("st1", { deviceId: "boiler-1", payload: { status: "maintenance", expectedVersion: before + 1 } });
    assert.equal((maint.payload as State).status, "maintenance");
    assert.equal(t.hub.getDevice("boiler-1").status, "maintenance");
  });

  it("sends a stale expectedVersion to a Catch node as CONFLICT, changing nothing", async () => {
    const t = await load([state({ operation: "set", deviceId: "boiler-1" })]);
    await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    const first = await t.ok("st1", { payload: { desired: { setpoint: 21 } } });
    const version = (first.payload as State).version;
    await t.ok("st1", { payload: { desired: { setpoint: 22 }, expectedVersion: version } });

    const m = await t.caught("st1", { payload: { desired: { setpoint: 30 }, expectedVersion: version }, keep: "me" });
    assert.equal(errorCode(m), "CONFLICT");
    assert.equal(m.keep, "me", "the Catch node gets the original msg");
    assert.deepEqual(m.payload, { desired: { setpoint: 30 }, expectedVersion: version });
    assert.match(String((m.error as { message: string }).message), /version/);
    assert.deepEqual(t.hub.getState("boiler-1").desired, { setpoint: 22 });
    assert.equal(t.hub.getState("boiler-1").version, version + 1);
    assert.deepEqual(lastStatus(t.node("st1")), { fill: "red", shape: "ring", text: "CONFLICT" });
  });

  it("answers history: the node's count (default 10), or msg.limit", async () => {
    const t = await load([state({ operation: "history", deviceId: "boiler-1" }), state({ id: "st2", operation: "history", count: "3" })]);
    await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    for (let i = 1; i <= 12; i++) await t.hub.setState("boiler-1", { desired: { step: i } });

    const dflt = await t.ok("st1", { keep: 1 });
    const entries = dflt.payload as Entry[];
    assert.equal(entries.length, 10);
    assert.deepEqual(entries.at(-1)!.to, { desired: { step: 12 } }, "oldest first, newest last");
    assert.equal(dflt.keep, 1);
    assert.deepEqual(lastStatus(t.node("st1")), green("10 changes of boiler-1"));

    assert.equal(((await t.ok("st2", { deviceId: "boiler-1" })).payload as Entry[]).length, 3, "the node's count");
    assert.equal(((await t.ok("st2", { deviceId: "boiler-1", limit: 5 })).payload as Entry[]).length, 5, "msg.limit overrides");
    assert.equal(((await t.ok("st1", { limit: "2" })).payload as Entry[]).length, 2, "digit text counts");
    assert.equal(((await t.ok("st1", { limit: 0 })).payload as Entry[]).length, 0);
    assert.equal(errorCode(await t.caught("st1", { limit: -1 })), "INVALID");
    assert.equal(errorCode(await t.caught("st1", { limit: "many" })), "INVALID");
    assert.equal(errorCode(await t.caught("st1", { deviceId: "ghost" })), "NOT_FOUND");
  });

  it("lists states with a {status, limit, offset} filter, and answers statistics", async () => {
    const t = await load([state({ operation: "list" })]);
    for (const id of ["a", "b", "c", "d"]) await t.hub.registerDevice({ id, protocol: "mqtt" });
    t.hub.ingest("a", { kind: "heartbeat" });
    t.hub.ingest("c", { kind: "heartbeat" });

    const all = await t.ok("st1", { payload: 1_700_000_000_000 });
    assert.equal((all.payload as { total: number }).total, 4, "a payload that is no filter lists everything");
    assert.deepEqual(lastStatus(t.node("st1")), green("4 states"));

    const online = await t.ok("st1", { payload: { status: "online" } });
    const ids = (online.payload as { states: State[] }).states.map((s) => s.deviceId).sort();
    assert.deepEqual(ids, ["a", "c"]);
    assert.equal((online.payload as { total: number }).total, 2);

    const page = await t.ok("st1", { payload: { limit: "1", offset: 1 } });
    assert.equal((page.payload as { states: State[] }).states.length, 1);
    // Lists show at most twice a second, as device reads do: the status comes round to the latest.
    await until(() => JSON.stringify(lastStatus(t.node("st1"))) === JSON.stringify(green("1 of 4 states")), "the latest list in the status", 2000);

    assert.equal(errorCode(await t.caught("st1", { payload: { status: "asleep" } })), "INVALID");
    assert.equal(errorCode(await t.caught("st1", { payload: { staus: "online" } })), "INVALID", "a misspelt key");
    assert.equal(errorCode(await t.caught("st1", { payload: { limit: -3 } })), "INVALID");

    const stats = await t.ok("st1", { operation: "statistics", keep: true });
    const s = stats.payload as { total: number; byStatus: Record<string, number>; anomalies: unknown };
    assert.equal(s.total, 4);
    assert.equal(s.byStatus.online, 2);
    assert.ok(s.anomalies, "anomaly counts come along");
    assert.equal(stats.keep, true);
    assert.deepEqual(lastStatus(t.node("st1")), green("4 devices"));
  });

  it("sends refusals to a Catch node with the original msg and the error's code", async () => {
    const t = await load([state()]);
    await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    const cases: Array<[Msg, string]> = [
      [{}, "INVALID"], // get without a device
      [{ operation: "set", payload: { desired: { a: 1 } } }, "INVALID"],
      [{ operation: "history" }, "INVALID"],
      [{ operation: "nap", deviceId: "boiler-1" }, "INVALID"],
      [{ operation: 3, deviceId: "boiler-1" }, "INVALID"],
      [{ deviceId: ["boiler-1"] }, "INVALID"],
      [{ operation: "set", deviceId: "boiler-1", payload: "22" }, "INVALID"],
      [{ operation: "set", deviceId: "boiler-1", payload: { desired: 22 } }, "INVALID"],
      [{ operation: "set", deviceId: "boiler-1", payload: { setpoint: 22 } }, "INVALID"],
      [{ operation: "set", deviceId: "boiler-1", payload: { status: "asleep" } }, "INVALID"],
      [{ operation: "set", deviceId: "boiler-1", payload: { expectedVersion: -1 } }, "INVALID"],
      [{ deviceId: "ghost" }, "NOT_FOUND"],
      [{ operation: "set", deviceId: "ghost", payload: { desired: { a: 1 } } }, "NOT_FOUND"],
      [{ operation: "set", deviceId: "boiler-1", payload: { desired: { a: 1 }, expectedVersion: 99 } }, "CONFLICT"],
    ];
    for (const [msg, code] of cases) {
      const m = await t.caught("st1", { ...msg, keep: "me" });
      assert.equal(errorCode(m), code, JSON.stringify(msg));
      assert.equal(m.keep, "me", "the Catch node gets the original message");
      assert.equal((m.error as { source: { id: string } }).source.id, "st1");
      assert.deepEqual(lastStatus(t.node("st1")), { fill: "red", shape: "ring", text: code });
    }
    // The device's own read of its desired state: a token or protocol that is no text, in the node's words.
    for (const [msg, words] of [
      [{ operation: "desired", deviceId: "boiler-1", token: 42 }, "msg.token must be a string: the device's token"],
      [{ operation: "desired", deviceId: "boiler-1", protocol: 7 }, "msg.protocol must be a string: the protocol the device read over"],
    ] as const) {
      const m = await t.caught("st1", msg);
      assert.equal(errorCode(m), "INVALID");
      assert.equal((m.error as { message: string }).message, words);
    }
    assert.equal(t.hub.getState("boiler-1").version, 0, "nothing changed");
  });

  it("shares one hub between nodes, and a redeploy that removes one releases only it", async () => {
    const setter = state({ operation: "set", deviceId: "boiler-1" });
    const getter = state({ id: "st2", operation: "get", deviceId: "boiler-1" });
    const t = await load([setter, getter]);
    assert.equal(t.hubNode.userCount(), 2);
    await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    await t.ok("st1", { payload: { desired: { mode: "eco" } } });
    const m = await t.ok("st2", {});
    assert.deepEqual((m.payload as State).desired, { mode: "eco" }, "the other node sees the same hub");

    const st1 = t.node("st1");
    await helper.setFlows([tab, hub, getter, catcher, errors, out], "nodes");
    assert.equal(t.hubNode.userCount(), 1, "the removed node let go of the hub");
    assert.deepEqual(lastStatus(st1), {}, "and cleared its status");
    assert.equal(t.hubNode.hubStatus().state, "running");
    assert.equal(await t.hubNode.acquire(), t.hub);
  });

  it("stops with the hub on a full stop", async () => {
    const t = await load([state({ operation: "statistics" })]);
    await t.ok("st1", {});
    assert.equal(t.hubNode.userCount(), 1);
    await helper.unload();
    assert.equal(t.hubNode.hubStatus().state, "stopped");
  });
});

describe("tethral-state node: telemetry series (a real SQLite store)", function () {
  let dir = "";
  beforeEach(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "tethral-state-series-"));
    await helper.startServer();
  });
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
    rmSync(dir, { recursive: true, force: true });
  });

  type Answer = { deviceId: string; from: string; to: string; interval: string | null; agg: string | null; series: Record<string, Array<{ ts: string; value: unknown }>> };
  const HOUR = 3_600_000;

  /** The nodes with a hub that keeps its data in an SQLite file of its own. */
  const loadStored = (nodes: FlowEntry[]) => loadWithCatch([tethralHub, withCatalogue(tethralState, "tethral-state")], nodes, { storage: "sqlite", sqliteFile: path.join(dir, "fleet.sqlite") });

  /** boiler-1 reporting a temperature three times, a boolean and a text alongside. */
  async function reports(t: Loaded): Promise<void> {
    await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    for (const [temperature, burner] of [[20, true], [22.5, false], [24, true]] as const) {
      t.hub.ingest("boiler-1", { kind: "telemetry", data: { temperature, burner, mode: "eco", nested: { no: 1 } } });
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  it("answers raw points and buckets for msg.payload's query, the keys, and passes the msg on", async () => {
    const t = await loadStored([state({ operation: "telemetry", deviceId: "boiler-1" }), state({ id: "st2", operation: "telemetry-keys", deviceId: "boiler-1" })]);
    const started = Date.now();
    await reports(t);

    const keys = await t.ok("st2", { keep: "me" });
    assert.deepEqual(keys.payload, ["burner", "mode", "temperature"], "scalar keys, sorted; nested objects are no series");
    assert.equal(keys.keep, "me");
    assert.deepEqual(lastStatus(t.node("st2")), green("3 keys of boiler-1"));

    // An inject node's timestamp: every key, the last 24 hours, raw.
    const all = await t.ok("st1", { payload: Date.now(), topic: "t" });
    const a = all.payload as Answer;
    assert.equal(a.deviceId, "boiler-1");
    assert.equal(a.interval, null);
    assert.equal(a.agg, null);
    assert.equal(Date.parse(a.to) - Date.parse(a.from), 24 * HOUR);
    assert.ok(Date.parse(a.to) >= started);
    assert.deepEqual(Object.keys(a.series).sort(), ["burner", "mode", "temperature"]);
    assert.deepEqual(a.series.temperature!.map((p) => p.value), [20, 22.5, 24], "oldest first");
    assert.deepEqual(a.series.burner!.map((p) => p.value), [true, false, true]);
    assert.deepEqual(a.series.mode!.map((p) => p.value), ["eco", "eco", "eco"]);
    assert.equal(all.topic, "t");
    assert.deepEqual(lastStatus(t.node("st1")), green("9 points of 3 keys of boiler-1"));

    // Buckets of an hour, max: what the raw points say, grouped by the hour they fell in.
    const raw = a.series.temperature!;
    const expected = new Map<number, number>();
    for (const p of raw) {
      const bucket = Math.floor(Date.parse(p.ts) / HOUR) * HOUR;
      expected.set(bucket, Math.max(expected.get(bucket) ?? -Infinity, p.value as number));
    }
    const hourly = (await t.ok("st1", { payload: { keys: "temperature", interval: "1h", agg: "max", from: raw[0]!.ts, to: Date.parse(raw.at(-1)!.ts) } })).payload as Answer;
    assert.equal(hourly.interval, "1h");
    assert.equal(hourly.agg, "max");
    assert.deepEqual(Object.keys(hourly.series), ["temperature"]);
    assert.deepEqual(hourly.series.temperature, [...expected].map(([ts, value]) => ({ ts: new Date(ts).toISOString(), value })));

    const avg = (await t.ok("st1", { payload: { keys: ["temperature", "ghost"], interval: "1d", limit: "1" } })).payload as Answer;
    assert.equal(avg.agg, "avg", "avg by default with an interval");
    assert.equal(avg.series.temperature!.length, 1, "limit: points per key");
    assert.deepEqual(avg.series.ghost, [], "an unknown key answers an empty series");
    const limited = (await t.ok("st1", { payload: { keys: "temperature", limit: 2 } })).payload as Answer;
    assert.deepEqual(limited.series.temperature!.map((p) => p.value), [20, 22.5]);
    const other = (await t.ok("st1", { deviceId: "boiler-1", payload: { keys: "mode", to: new Date(started - HOUR).toISOString() } })).payload as Answer;
    assert.deepEqual(other.series.mode, [], "nothing before the reports");
  });

  it("outputs {x, y, series} for Dashboard 2's ui-chart: one series per key, booleans as 1 and 0, text left out", async () => {
    const t = await loadStored([state({ operation: "telemetry", deviceId: "boiler-1", output: "chart" })]);
    await reports(t);
    const m = await t.ok("st1", { payload: { keys: "temperature,burner,mode" } });
    const points = m.payload as Array<{ x: number; y: number; series: string }>;
    assert.equal(m.action, "replace", "the chart shows the answered range, not what it drew before");
    assert.deepEqual(points.map((p) => [p.series, p.y]), [["temperature", 20], ["temperature", 22.5], ["temperature", 24], ["burner", 1], ["burner", 0], ["burner", 1]]);
    for (const p of points) assert.deepEqual(Object.keys(p).sort(), ["series", "x", "y"]);
    const xs = points.filter((p) => p.series === "temperature").map((p) => p.x);
    assert.ok(xs.every((x, i) => Number.isInteger(x) && x > Date.now() - 60_000 && (i === 0 || x > xs[i - 1]!)), `epoch ms, rising: ${xs.join(", ")}`);
    const empty = await t.ok("st1", { payload: { keys: "mode" } });
    assert.deepEqual(empty.payload, [], "nothing to plot");
  });

  it("sends refusals to a Catch node: INVALID naming the parameter, NOT_FOUND, UNAVAILABLE without a database", async () => {
    const t = await loadStored([state({ operation: "telemetry", deviceId: "boiler-1" })]);
    await reports(t);
    const field = (m: Msg) => (m.error as { cause?: { details?: Array<{ field: string }> } }).cause?.details?.[0]?.field;
    const cases: Array<[Msg, string, string | undefined]> = [
      [{ payload: { from: "yesterday" } }, "INVALID", "from"],
      [{ payload: { to: "2026-13-45T00:00:00Z" } }, "INVALID", "to"],
      [{ payload: { from: "2026-12-02T00:00:00Z", to: "2026-12-01T00:00:00Z" } }, "INVALID", "from"],
      [{ payload: { interval: "5 minutes" } }, "INVALID", "interval"],
      [{ payload: { interval: "1h", agg: "median" } }, "INVALID", "agg"],
      [{ payload: { agg: "max" } }, "INVALID", "agg"],
      [{ payload: { limit: 10_001 } }, "INVALID", "limit"],
      [{ payload: { limit: "many" } }, "INVALID", "limit"],
      [{ payload: { intervall: "1h" } }, "INVALID", "intervall"],
      [{ deviceId: "ghost" }, "NOT_FOUND", undefined],
      [{ operation: "telemetry-keys", deviceId: "ghost" }, "NOT_FOUND", undefined],
    ];
    for (const [msg, code, name] of cases) {
      const m = await t.caught("st1", { ...msg, keep: "me" });
      assert.equal(errorCode(m), code, JSON.stringify(msg));
      if (name) assert.equal(field(m), name, JSON.stringify(msg));
      assert.equal(m.keep, "me");
    }
    await helper.unload();
    const memory = await loadWithCatch([tethralHub, withCatalogue(tethralState, "tethral-state")], [state({ operation: "telemetry", deviceId: "boiler-1" })]);
    await memory.hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    const m = await memory.caught("st1", {});
    assert.equal(errorCode(m), "UNAVAILABLE");
    assert.match(String((m.error as { message: string }).message), /store|memory/);
  });
});
