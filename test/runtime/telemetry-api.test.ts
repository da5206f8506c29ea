import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { type Json, type RuntimeChild, START_LIMIT_MS, assertErrorAnswer, call, spawnRuntime } from "./spawn-runtime";

/**
 * CONTRACT §7 over the REST API: `GET /api/devices/{id}/telemetry` and `/telemetry/keys` in the
 * runtime (`npm start`'s flows, its SQLite file), fed by an HTTP device's reports. Every answer
 * is checked against the OpenAPI document by `call`.
 */
const HOUR = 3_600_000;

describe("REST API: telemetry time series (flows/flows.json in the runtime, SQLite)", function () {
  this.timeout(START_LIMIT_MS + 30_000);
  let scratch = "";
  let rt: RuntimeChild;
  let token = "";
  let started = 0;
  const get = (route: string) => call(rt.api, "GET", route);
  const report = async (data: object) => {
    const res = await call(rt.api, "POST", "/devices/meter-1/telemetry", data, { authorization: `Bearer ${token}` });
    assert.equal(res.status, 204, JSON.stringify(res.body));
  };

  before(async () => {
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-telemetry-"));
    rt = await spawnRuntime(path.join(scratch, "user"));
    const created = await call(rt.api, "POST", "/devices", { id: "meter-1", protocol: "http", heartbeatTimeout: 600 });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    token = created.body.token as string;
    started = Date.now();
    // The device's own route, POST /devices/{id}/telemetry, is what feeds the series.
    for (const [power, on] of [[5, true], [7.5, false], [10, true], [12.5, true]] as const) {
      await report({ power, on, label: "kitchen", nested: { a: 1 } });
      await new Promise((r) => setTimeout(r, 5));
    }
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed" && rt) console.log(`--- the runtime's log ---\n${rt.output().slice(-6000)}`);
  });

  after(async () => {
    await rt?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("GET /api/devices/{id}/telemetry/keys: 200 {keys}, sorted; 404 for an unknown device", async () => {
    const res = await get("/devices/meter-1/telemetry/keys");
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { keys: ["label", "on", "power"] });
    assertErrorAnswer(await get("/devices/ghost/telemetry/keys"), "NOT_FOUND", 404);
  });

  it("GET /api/devices/{id}/telemetry: every key's raw points over the last 24 hours by default", async () => {
    const res = await get("/devices/meter-1/telemetry");
    assert.equal(res.status, 200);
    const body = res.body as Json;
    assert.equal(body.deviceId, "meter-1");
    assert.equal(body.interval, null);
    assert.equal(body.agg, null);
    assert.equal(Date.parse(body.to) - Date.parse(body.from), 24 * HOUR);
    assert.ok(Date.parse(body.to) >= started);
    assert.deepEqual(Object.keys(body.series).sort(), ["label", "on", "power"]);
    assert.deepEqual(body.series.power.map((p: Json) => p.value), [5, 7.5, 10, 12.5], "oldest first");
    assert.deepEqual(body.series.on.map((p: Json) => p.value), [true, false, true, true]);
    assert.deepEqual(body.series.label.map((p: Json) => p.value), ["kitchen", "kitchen", "kitchen", "kitchen"]);
    const times = body.series.power.map((p: Json) => Date.parse(p.ts));
    assert.ok(times.every((t: number, i: number) => t >= started - 1000 && (i === 0 || t > times[i - 1])), "each report its own time");
  });

  it("keys, from, to, interval, agg and limit: buckets at their start, an unknown key empty", async () => {
    const raw = (await get("/devices/meter-1/telemetry?keys=power")).body.series.power as Array<{ ts: string; value: number }>;
    const first = Date.parse(raw[0]!.ts);
    const last = Date.parse(raw.at(-1)!.ts);
    // What the raw points say, grouped by the hour they fell in.
    const sums = new Map<number, number[]>();
    for (const p of raw) {
      const bucket = Math.floor(Date.parse(p.ts) / HOUR) * HOUR;
      sums.set(bucket, [...(sums.get(bucket) ?? []), p.value]);
    }
    const expect = (f: (v: number[]) => number) => [...sums].map(([ts, v]) => ({ ts: new Date(ts).toISOString(), value: f(v) }));

    const avg = await get(`/devices/meter-1/telemetry?keys=power,ghost&from=${first}&to=${new Date(last).toISOString()}&interval=1h`);
    assert.equal(avg.status, 200, JSON.stringify(avg.body));
    assert.equal(avg.body.interval, "1h");
    assert.equal(avg.body.agg, "avg", "avg by default");
    assert.equal(avg.body.from, new Date(first).toISOString());
    assert.deepEqual(avg.body.series.power, expect((v) => v.reduce((a, b) => a + b, 0) / v.length));
    assert.deepEqual(avg.body.series.ghost, [], "an unknown key answers an empty series");

    for (const [agg, f] of [["max", (v: number[]) => Math.max(...v)], ["min", (v: number[]) => Math.min(...v)], ["count", (v: number[]) => v.length], ["last", (v: number[]) => v.at(-1)!]] as const) {
      const res = await get(`/devices/meter-1/telemetry?keys=power&interval=1h&agg=${agg}`);
      assert.deepEqual(res.body.series.power, expect(f), agg);
    }
    // Repeated keys, as list filters take them.
    const repeated = await get("/devices/meter-1/telemetry?keys=on&keys=label&interval=1d&agg=count&limit=1");
    assert.deepEqual(Object.keys(repeated.body.series), ["on", "label"]);
    assert.equal(repeated.body.series.on.length, 1);
    assert.ok(repeated.body.series.on[0].value >= 1);
    const limited = await get("/devices/meter-1/telemetry?keys=power&limit=2");
    assert.deepEqual(limited.body.series.power.map((p: Json) => p.value), [5, 7.5], "the oldest first");
    const before = await get(`/devices/meter-1/telemetry?to=${started - HOUR}`);
    assert.deepEqual(before.body.series.power, [], "nothing before the reports");
  });

  it("400 INVALID naming the parameter; 404 for an unknown device", async () => {
    const cases: Array<[string, string]> = [
      ["from=yesterday", "from"],
      ["to=2026-13-45T00:00:00Z", "to"],
      ["from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "from"],
      ["interval=5%20minutes", "interval"],
      ["interval=0s", "interval"],
      ["interval=1h&agg=median", "agg"],
      ["agg=max", "agg"],
      ["limit=0", "limit"],
      ["limit=10001", "limit"],
      ["limit=ten", "limit"],
      ["from=1&from=2", "from"],
      ["intervall=1h", "intervall"],
    ];
    for (const [q, field] of cases) {
      const res = await get(`/devices/meter-1/telemetry?${q}`);
      assertErrorAnswer(res, "INVALID", 400);
      assert.equal(res.body.error.details?.[0]?.field, field, `${q}: ${JSON.stringify(res.body)}`);
    }
    assertErrorAnswer(await get("/devices/ghost/telemetry"), "NOT_FOUND", 404);
    assertErrorAnswer(await get("/devices/statistics/telemetry"), "NOT_FOUND", 404);
  });

  it("leaves POST /api/devices/{id}/telemetry a device's report: its token checked, its values kept", async () => {
    const refused = await call(rt.api, "POST", "/devices/meter-1/telemetry", { power: 99 }, { authorization: "Bearer wrong" });
    assertErrorAnswer(refused, "UNAUTHORIZED", 401);
    await report({ power: 20 });
    const state = (await get("/devices/meter-1/state")).body;
    assert.equal(state.properties.power, 20);
    const series = (await get("/devices/meter-1/telemetry?keys=power")).body.series.power as Json[];
    assert.deepEqual(series.map((p) => p.value), [5, 7.5, 10, 12.5, 20], "the refused report is no point");
  });

  it("keeps the series across a restart of the runtime", async () => {
    const user = path.join(scratch, "user");
    await rt.stop();
    rt = await spawnRuntime(user);
    const series = (await get("/devices/meter-1/telemetry?keys=power")).body.series.power as Json[];
    assert.deepEqual(series.map((p) => p.value), [5, 7.5, 10, 12.5, 20]);
  });
});

describe("REST API: telemetry time series without a database", function () {
  this.timeout(START_LIMIT_MS + 30_000);
  let scratch = "";
  let rt: RuntimeChild;

  before(async () => {
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-telemetry-memory-"));
    rt = await spawnRuntime(path.join(scratch, "user"), { TETHRAL_DB: ":memory:" });
  });

  after(async () => {
    await rt?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("answers 503 UNAVAILABLE, saying why, and 404 for an unknown device first", async () => {
    const created = await call(rt.api, "POST", "/devices", { id: "meter-1", protocol: "http" });
    assert.equal(created.status, 201);
    for (const route of ["/devices/meter-1/telemetry", "/devices/meter-1/telemetry/keys"]) {
      const res = await call(rt.api, "GET", route);
      assertErrorAnswer(res, "UNAVAILABLE", 503);
      assert.match(res.body.error.message, /store|memory/);
    }
    assertErrorAnswer(await call(rt.api, "GET", "/devices/ghost/telemetry"), "NOT_FOUND", 404);
  });
});
