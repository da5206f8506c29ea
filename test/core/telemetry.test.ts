import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManualClock } from "../../src/core/clock";
import { Hub, type HubOptions } from "../../src/core/hub";
import { Intake } from "../../src/core/intake";
import { parseTelemetryQuery, resolutionFor } from "../../src/core/telemetry-query";
import { SqliteStore } from "../../src/store/sqlite";
import { assertCode, assertRejectsCode } from "../helpers";

const T0 = Date.UTC(2026, 11, 1, 10, 0, 0);
const DAY = 24 * 3600 * 1000;

describe("telemetry queries (CONTRACT §7): the checks", () => {
  it("defaults to the last 24 hours up to now, raw points, 1000 per key", () => {
    const q = parseTelemetryQuery({}, T0);
    assert.deepEqual(q, { keys: null, from: T0 - DAY, to: T0, interval: null, intervalMs: 0, agg: null, limit: 1000 });
  });

  it("takes ISO times and epoch milliseconds, keys as a list or comma-separated, and avg by default with an interval", () => {
    const q = parseTelemetryQuery({ keys: " temperature, humidity,,temperature", from: "2026-12-01T09:00:00Z", to: String(T0), interval: "15m", limit: "20" }, T0);
    assert.deepEqual(q.keys, ["temperature", "humidity"]);
    assert.equal(q.from, T0 - 3_600_000);
    assert.equal(q.to, T0);
    assert.equal(q.intervalMs, 15 * 60_000);
    assert.equal(q.agg, "avg");
    assert.equal(q.limit, 20);
    assert.deepEqual(parseTelemetryQuery({ keys: ["a", "b"], interval: "1d", agg: "last" }, T0).keys, ["a", "b"]);
    // ISO forms, with and without a zone: without one it is UTC, whatever the server's time zone.
    const zone = process.env.TZ;
    try {
      for (const tz of ["America/New_York", "Asia/Tokyo", "UTC"]) {
        process.env.TZ = tz;
        assert.equal(parseTelemetryQuery({ from: "2026-12-01T00:00:00", to: "2026-12-01T10:30" }, T0).from, Date.UTC(2026, 11, 1), tz);
        assert.equal(parseTelemetryQuery({ from: "2026-12-01T00:00", to: "2026-12-01t10:30:00.5z" }, T0).to, Date.UTC(2026, 11, 1, 10, 30, 0, 500), tz);
        assert.equal(parseTelemetryQuery({ from: "2026-12-01T01:00:00.123456+01:00", to: "2026-12-01 10:30:00-0230" }, T0).from, Date.UTC(2026, 11, 1, 0, 0, 0, 123), tz);
        assert.equal(parseTelemetryQuery({ from: "2026-11-30", to: "2026-12-01 10:30:00-0230" }, T0).to, Date.UTC(2026, 11, 1, 13, 0), tz);
      }
    } finally {
      if (zone === undefined) delete process.env.TZ;
      else process.env.TZ = zone;
    }
    // A leap day is a day.
    assert.equal(parseTelemetryQuery({ from: "2024-02-29T00:00:00Z", to: "2024-03-01" }, T0).from, Date.UTC(2024, 1, 29));
  });

  for (const [input, field] of [
    [{ from: "yesterday" }, "from"],
    [{ to: "2026-13-45T99:00:00Z" }, "to"],
    // Days a month does not have: Date.parse would roll them over into the next month.
    [{ from: "2026-02-30T00:00:00Z" }, "from"],
    // Text around a time: Date.parse reads the first as June 12th, the second as September 12th.
    [{ from: "2026-12-07junk" }, "from"],
    [{ from: "2026-12-07 September" }, "from"],
    [{ to: "2026-12-07T25:00:00Z" }, "to"],
    [{ to: "2026-12-07T10:00:00+24:00" }, "to"],
    [{ from: "2026-04-31T10:00:00Z" }, "from"],
    [{ to: "2025-02-29" }, "to"],
    [{ from: T0 + 1, to: T0 }, "from"],
    [{ from: -5 }, "from"],
    [{ interval: "fortnight" }, "interval"],
    [{ interval: "500ms" }, "interval"],
    [{ interval: "400d" }, "interval"],
    [{ interval: "1m", agg: "median" }, "agg"],
    [{ agg: "avg" }, "agg"],
    [{ limit: 0 }, "limit"],
    [{ limit: "10001" }, "limit"],
    [{ limit: 2.5 }, "limit"],
    [{ keys: 7 }, "keys"],
    [{ keys: ["x".repeat(257)] }, "keys"],
    // Past 9999-12-31T23:59:59.999Z: an answer could not say it in ISO-8601's four-digit years.
    [{ to: 253_402_300_800_000 }, "to"],
    [{ to: "253402300800000" }, "to"],
  ] as const) {
    it(`refuses ${JSON.stringify(input).slice(0, 60)} naming ${field}`, () => {
      assertCode(() => parseTelemetryQuery(input as never, T0), "INVALID", field);
    });
  }

  it("reads the coarsest resolution that divides the interval and covers the range (the same buckets from the fewest rows)", () => {
    const retention = { raw: 7 * DAY, "1m": 90 * DAY, "1h": 3 * 365 * DAY };
    const q = (from: number, interval: string) => parseTelemetryQuery({ from, to: T0, interval }, T0);
    assert.equal(resolutionFor(parseTelemetryQuery({}, T0), retention, T0), "raw");
    assert.equal(resolutionFor(q(T0 - DAY, "30s"), retention, T0), "raw", "no roll-up divides 30 s");
    assert.equal(resolutionFor(q(T0 - DAY, "15m"), retention, T0), "1m", "minutes divide 15 minutes");
    assert.equal(resolutionFor(q(T0 - DAY, "1h"), retention, T0), "1h", "no raw point for an hourly day");
    assert.equal(resolutionFor(q(T0 - 30 * DAY, "1h"), retention, T0), "1h");
    assert.equal(resolutionFor(q(T0 - 365 * DAY, "1d"), retention, T0), "1h");
    assert.equal(resolutionFor(q(T0 - 120 * DAY, "15m"), { ...retention, "1m": 90 * DAY }, T0), "1m", "nothing covers it: the coarsest that divides");
    assert.equal(resolutionFor(q(T0 - 30 * DAY, "90s"), retention, T0), "raw", "only raw divides 90 s, whatever is left of it");
    assert.equal(resolutionFor(q(T0 - 5 * 365 * DAY, "1d"), retention, T0), "1h", "nothing covers it: the coarsest roll-up that divides");
  });
});

describe("the intake valve", () => {
  it("turns busy at the high-water mark and ready at the low one, telling its listeners once each way", () => {
    const intake = new Intake(100, 50);
    const seen: boolean[] = [];
    const off = intake.onChange((busy) => seen.push(busy));
    for (const rows of [10, 99, 100, 120, 80, 51, 50, 60, 99]) intake.backlog(rows);
    assert.deepEqual(seen, [true, false]);
    assert.equal(intake.busy, false);
    intake.backlog(150);
    off();
    intake.release();
    assert.deepEqual(seen, [true, false, true], "an unsubscribed listener hears nothing");
    assert.equal(intake.busy, false, "released");
    assert.equal(intake.statistics().pauses, 2);
  });
});

describe("telemetry series in a hub with a store (SQLite file)", () => {
  let dir: string;
  const hubs: Hub[] = [];
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "tethral-series-"));
  });
  afterEach(async () => {
    for (const hub of hubs.splice(0)) await hub.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  async function open(options: HubOptions = {}): Promise<Hub> {
    const hub = new Hub({ heartbeat: { resolutionMs: 0 }, onWarning: () => undefined, ...options, store: new SqliteStore({ path: join(dir, "hub.sqlite") }) });
    await hub.start();
    hubs.push(hub);
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    return hub;
  }

  it("a query with no end sees the points of a burst stamped ahead of the clock (one a millisecond)", async () => {
    const clock = new ManualClock(T0);
    const hub = await open({ clock });
    for (let step = 1; step <= 5; step++) hub.ingest("d1", { kind: "telemetry", data: { step } });
    const answer = await hub.telemetry("d1", { keys: "step" });
    assert.deepEqual(answer.series.step!.map((p) => p.value), [1, 2, 3, 4, 5]);
    assert.equal(answer.to, new Date(T0 + 4).toISOString(), "its end is the newest point's time");
    const until = await hub.telemetry("d1", { keys: "step", to: T0 + 1 });
    assert.deepEqual(until.series.step!.map((p) => p.value), [1, 2], "an end given is kept");
  });

  it("keeps numbers, booleans and short strings as points, at strictly increasing times per device; nested objects and long strings are not series", async () => {
    const clock = new ManualClock(T0);
    const hub = await open({ clock });
    hub.ingest("d1", { kind: "telemetry", data: { t: 20.5, on: true, mode: "eco", nested: { a: 1 }, long: "x".repeat(257), nothing: null } });
    // Same millisecond: the second report's points come a millisecond later, none replaces another.
    hub.ingest("d1", { kind: "telemetry", data: { t: 21, on: false } });
    clock.advance(1000);
    hub.ingest("d1", { kind: "telemetry", data: { t: 22 } });
    assert.deepEqual(await hub.telemetryKeys("d1"), ["mode", "on", "t"]);
    const raw = await hub.telemetry("d1", { from: T0 - 1000, to: T0 + 5000 });
    assert.deepEqual(raw.series, {
      mode: [{ ts: new Date(T0).toISOString(), value: "eco" }],
      on: [
        { ts: new Date(T0).toISOString(), value: true },
        { ts: new Date(T0 + 1).toISOString(), value: false },
      ],
      t: [
        { ts: new Date(T0).toISOString(), value: 20.5 },
        { ts: new Date(T0 + 1).toISOString(), value: 21 },
        { ts: new Date(T0 + 1000).toISOString(), value: 22 },
      ],
    });
    assert.equal(raw.interval, null);
    assert.equal(raw.agg, null);
    assert.deepEqual(hub.getState("d1").properties.nested, { a: 1 }, "nested objects still merge into the state");
    const avg = await hub.telemetry("d1", { keys: "t,mode", from: T0 - 1000, to: T0 + 5000, interval: "1m" });
    assert.deepEqual(avg.series.t, [{ ts: new Date(T0).toISOString(), value: (20.5 + 21 + 22) / 3 }]);
    assert.deepEqual(avg.series.mode, [], "a string series has no average");
    const last = await hub.telemetry("d1", { keys: "mode", from: T0 - 1000, to: T0 + 5000, interval: "1m", agg: "last" });
    assert.deepEqual(last.series.mode, [{ ts: new Date(T0).toISOString(), value: "eco" }]);
  });

  it("refuses bad queries before reading, answers an unknown device NOT_FOUND and an unknown key an empty series", async () => {
    const hub = await open();
    await assertRejectsCode(() => hub.telemetry("d1", { interval: "often" }), "INVALID", "interval");
    await assertRejectsCode(() => hub.telemetry("nobody", {}), "NOT_FOUND");
    await assertRejectsCode(() => hub.telemetryKeys("nobody"), "NOT_FOUND");
    assert.deepEqual((await hub.telemetry("d1", { keys: "nothing-here" })).series, { "nothing-here": [] });
    // A key named __proto__ is a key like any other: an empty series of the answer's own, in its JSON too.
    const proto = await hub.telemetry("d1", { keys: "__proto__,x" });
    assert.equal(JSON.stringify(proto.series), '{"__proto__":[],"x":[]}');
    assert.equal(Object.getPrototypeOf(proto.series), Object.prototype);
    assert.equal(parseTelemetryQuery({ to: 253_402_300_799_999 }, T0).to, 253_402_300_799_999, "the last millisecond of 9999");
  });

  it("writes no state history for telemetry values by default, and one per report when asked", async () => {
    const plain = await open();
    plain.ingest("d1", { kind: "telemetry", data: { t: 1 } });
    plain.ingest("d1", { kind: "telemetry", data: { t: 2 } });
    plain.ingest("d1", { kind: "state", data: { properties: { firmware: "2.0" } } });
    const reasons = (await plain.stateHistory("d1")).map((h) => h.reason);
    assert.ok(!reasons.includes("telemetry"), `no telemetry entries: ${reasons.join(", ")}`);
    assert.ok(reasons.includes("state"), "a state report is still history");
    assert.equal((await plain.telemetry("d1", { keys: "t" })).series.t!.length, 2, "the values are in the series");
    await plain.stop();
    hubs.splice(0);
    rmSync(dir, { recursive: true, force: true });
    dir = mkdtempSync(join(tmpdir(), "tethral-series-"));
    const every = await open({ state: { historyOfReports: true } });
    every.ingest("d1", { kind: "telemetry", data: { t: 1 } });
    every.ingest("d1", { kind: "telemetry", data: { t: 2 } });
    assert.equal((await every.stateHistory("d1")).filter((h) => h.reason === "telemetry").length, 2);
  });

  it("does not store state.changed or message.received by default, yet lists recent ones; stores message.received when asked", async () => {
    const hub = await open();
    hub.ingest("d1", { kind: "telemetry", data: { t: 1 } });
    await hub.flush();
    const listed = (await hub.eventHistory({ deviceId: "d1" })).map((e) => e.type);
    assert.ok(listed.includes("state.changed"), `recent state.changed listed from memory: ${listed.join(", ")}`);
    const store = (hub as unknown as { persistence: { store: SqliteStore } }).persistence.store;
    const stored = (await store.events({ limit: 100 }, Date.now())).map((e) => e.type);
    assert.ok(!stored.includes("state.changed") && !stored.includes("message.received"), `stored: ${stored.join(", ")}`);
    assert.ok(stored.includes("device.registered"));
    await hub.stop();
    hubs.splice(0);
    rmSync(dir, { recursive: true, force: true });
    dir = mkdtempSync(join(tmpdir(), "tethral-series-"));
    const all = await open({ persistence: { unstoredEventTypes: [] } });
    all.ingest("d1", { kind: "telemetry", data: { t: 1 } });
    await all.flush();
    const kept = (await (all as unknown as { persistence: { store: SqliteStore } }).persistence.store.events({ limit: 100 }, Date.now())).map((e) => e.type);
    assert.ok(kept.includes("message.received") && kept.includes("state.changed"), `every type stored: ${kept.join(", ")}`);
  });

  it("slows the intake when the backlog reaches its mark, never drops a point, and shows it in health and metrics", async () => {
    const clock = new ManualClock(T0);
    // No timer flushes on a manual clock: the backlog grows until the test flushes.
    const hub = await open({ clock, persistence: { intakeHighWater: 300, flushPoints: 1_000_000, flushRows: 1_000_000 } });
    let n = 0;
    while (!hub.intake.busy) {
      hub.ingest("d1", { kind: "telemetry", data: { a: n, b: n, c: n } });
      clock.advance(1);
      n++;
    }
    // Three points a report, and the online change's history row and event: busy at the mark.
    const health = hub.health().components.store as { status: string; intake: { busy: boolean }; backlog: { rows: number } };
    assert.equal(health.intake.busy, true);
    assert.ok(health.backlog.rows >= 300 && health.backlog.rows < 303, `${health.backlog.rows} rows wait`);
    assert.equal(hub.statistics().store!.pending.points, 3 * n);
    const metrics = (await hub.metrics.exposition()).text;
    assert.match(metrics, /^tethral_intake_busy 1$/m);
    assert.match(metrics, new RegExp(`^tethral_store_backlog_rows ${health.backlog.rows}$`, "m"));
    await hub.flush();
    assert.equal(hub.intake.busy, false, "ready again once written");
    assert.equal((await hub.telemetry("d1", { keys: "a", from: T0, to: T0 + 1000 })).series.a!.length, n);
    assert.deepEqual(hub.statistics().store!.dropped, { history: 0, events: 0, points: 0 });
    assert.match((await hub.metrics.exposition()).text, new RegExp(`^tethral_store_points_written_total ${3 * n}$`, "m"));
  });
});
