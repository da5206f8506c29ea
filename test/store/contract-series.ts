import assert from "node:assert/strict";
import { isTethralError } from "../../src/core/errors";
import {
  AGGREGATES,
  type Aggregate,
  type BucketQuery,
  type PointRow,
  type PointValue,
  type Resolution,
  type RetentionPolicy,
  type SeriesPoint,
  type Store,
  type WriteBatch,
} from "../../src/core/ports/store";
import { deviceRow, T0 } from "./fixtures";

/**
 * The time-series part of the store contract (CONTRACT §7), run by `describeStoreContract` on
 * every store. Expected buckets are computed here from the points themselves: whole buckets
 * of the interval (aligned to the epoch) whose start lies in [from rounded down, to].
 */

const MIN = 60_000;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** Hour-aligned, so buckets of 1h and 2h have known edges. */
const H0 = T0 - (T0 % (2 * HOUR));

const NO_RETENTION: RetentionPolicy = {
  historyMaxAgeMs: 0, historyMaxPerDevice: 0, eventsMaxAgeMs: 0, eventsMaxRows: 0, commandsMaxAgeMs: 0,
  pointsMaxAgeMs: 0, rollups1mMaxAgeMs: 0, rollups1hMaxAgeMs: 0,
};

const batch = (points: PointRow[]): WriteBatch => ({ presence: [], states: [], history: [], events: [], points });
const pt = (deviceId: string, key: string, ts: number, value: PointValue): PointRow => ({ deviceId, key, ts, value });

/** What a bucket query must answer, computed from the points of the series. */
export function expectedBuckets(points: readonly SeriesPoint[], q: Pick<BucketQuery, "from" | "to" | "intervalMs" | "agg" | "limit">): SeriesPoint[] {
  const iv = q.intervalMs;
  const start = Math.floor(q.from / iv) * iv;
  const end = Math.floor(q.to / iv) * iv + iv;
  const groups = new Map<number, SeriesPoint[]>();
  for (const p of points) {
    if (p.ts < start || p.ts >= end) continue;
    const b = Math.floor(p.ts / iv) * iv;
    groups.set(b, [...(groups.get(b) ?? []), p]);
  }
  const out: SeriesPoint[] = [];
  for (const b of [...groups.keys()].sort((x, y) => x - y)) {
    const group = groups.get(b)!.sort((x, y) => x.ts - y.ts);
    const nums = group.map((p) => p.value).filter((v): v is number => typeof v === "number");
    const sum = nums.reduce((a, v) => a + v, 0);
    const value: Record<Aggregate, PointValue | null | undefined> = {
      count: group.length,
      first: group[0]!.value,
      last: group[group.length - 1]!.value,
      sum: nums.length ? sum : undefined,
      avg: nums.length ? sum / nums.length : undefined,
      min: nums.length ? Math.min(...nums) : undefined,
      max: nums.length ? Math.max(...nums) : undefined,
    };
    const v = value[q.agg];
    if (v !== undefined) out.push({ ts: b, value: v });
  }
  return out.slice(0, q.limit);
}

/** Equal, numbers within a relative 1e-9 (sums are added in another order by SQL). */
function assertSeries(actual: SeriesPoint[], expected: SeriesPoint[], what: string): void {
  const close = (a: PointValue | null, e: PointValue | null) =>
    typeof a === "number" && typeof e === "number" ? Math.abs(a - e) <= 1e-9 * Math.max(1, Math.abs(e)) : a === e;
  const ok = actual.length === expected.length && actual.every((p, i) => p.ts === expected[i]!.ts && close(p.value, expected[i]!.value));
  assert.ok(ok, `${what}\nactual:   ${JSON.stringify(actual)}\nexpected: ${JSON.stringify(expected)}`);
}

async function refusal(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  return assert.fail("expected the promise to reject");
}

export function describeSeriesContract(current: () => Store): void {
  describe("time series", function () {
    let store: Store;

    beforeEach(async function () {
      store = current();
      for (const id of ["d1", "d2", "d3"]) await store.upsertDevice(deviceRow(id));
    });

    it("round-trips every kind of value exactly, in a series of mixed types", async function () {
      const values: PointValue[] = [
        0, 1, -1, 21.5, 0.1 + 0.2, -1e-300, 1.7976931348623157e308, Number.MAX_SAFE_INTEGER, -123456789.125,
        true, false, "", "on", "true", "42", "null", '{"a":[1,2]}', "quote ' \" back \\ slash; DROP TABLE ts_points;--",
        "héllo wörld 🌡️ 温度", "nul\u0000inside", "lone \ud800 surrogate", "x".repeat(256),
      ];
      const points = values.map((v, i) => pt("d1", "mixed", T0 + i * 1000, v));
      await store.writeBatch(batch(points));
      const back = await store.points({ deviceId: "d1", key: "mixed", from: 0, to: T0 + DAY, limit: 1000 });
      assert.deepEqual(back, points.map((p) => ({ ts: p.ts, value: p.value })));
      assert.deepEqual(await store.telemetryKeys("d1"), ["mixed"]);
    });

    it("refuses a value that is not a point as INVALID, writing nothing of the batch", async function () {
      for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, "y".repeat(257), { a: 1 } as unknown as PointValue]) {
        const err = await refusal(store.writeBatch(batch([pt("d1", "ok", T0, 1), pt("d1", "bad", T0 + 1, bad)])));
        assert.ok(isTethralError(err) && err.code === "INVALID", String(err));
        assert.match(err.details[0]?.field ?? "", /points\[1\]\.value/);
      }
      assert.deepEqual(await store.points({ deviceId: "d1", key: "ok", from: 0, to: T0 + DAY, limit: 10 }), []);
      assert.deepEqual(await store.telemetryKeys("d1"), []);
    });

    it("answers raw points of one series in [from, to], oldest first, at most limit", async function () {
      const times = [T0 + 5, T0 + 17, T0 + 1000, T0 + 1001, T0 + 59_999, T0 + 60_000, T0 + 3_600_123];
      // Written newest first and in two batches: the answer is still by time.
      const points = times.map((ts, i) => pt("d1", "temperature", ts, i * 1.5));
      await store.writeBatch(batch(points.slice(3).reverse()));
      await store.writeBatch(batch([...points.slice(0, 3).reverse(), pt("d2", "temperature", T0 + 20, 99), pt("d1", "humidity", T0 + 20, 50)]));
      const q = { deviceId: "d1", key: "temperature", limit: 100 };
      const all = await store.points({ ...q, from: 0, to: T0 + DAY });
      assert.deepEqual(all.map((p) => p.ts), times);
      assert.deepEqual(all.map((p) => p.value), times.map((_, i) => i * 1.5));
      const inclusive = await store.points({ ...q, from: T0 + 17, to: T0 + 59_999 });
      assert.deepEqual(inclusive.map((p) => p.ts), [T0 + 17, T0 + 1000, T0 + 1001, T0 + 59_999]);
      const limited = await store.points({ ...q, from: T0 + 6, to: T0 + DAY, limit: 2 });
      assert.deepEqual(limited.map((p) => p.ts), [T0 + 17, T0 + 1000]);
      assert.deepEqual(await store.points({ ...q, from: T0 + 18, to: T0 + 999 }), []);
      assert.deepEqual(await store.points({ ...q, key: "unknown", from: 0, to: T0 + DAY }), []);
      assert.deepEqual(await store.points({ ...q, deviceId: "d3", from: 0, to: T0 + DAY }), []);
    });

    describe("buckets", function () {
      // Irregular times over five hours, numbers and strings mixed, a bucket of strings only
      // (H0 + 2h10m..2h20m) and a gap (no point in the fourth hour).
      const series: SeriesPoint[] = [];
      for (let i = 0, ts = H0 - 7 * MIN; ts < H0 + 5 * HOUR; i++) {
        ts += 1000 + ((i * 7919) % 97) * 1700;
        if (ts >= H0 + 3 * HOUR && ts < H0 + 4 * HOUR) continue;
        const textOnly = ts >= H0 + 2 * HOUR + 10 * MIN && ts < H0 + 2 * HOUR + 20 * MIN;
        const value: PointValue = textOnly || i % 11 === 0 ? `s${i}` : i % 13 === 0 ? i % 2 === 0 : Math.round(Math.sin(i) * 1000) / 8;
        series.push({ ts, value });
      }
      // Three batches: the last holds older points in buckets the first two already filled, so
      // roll-ups merge first, last, min and max across batches.
      const third = series.filter((_, i) => i % 3 === 0);
      const rest = series.filter((_, i) => i % 3 !== 0);
      const half = Math.floor(rest.length / 2);

      beforeEach(async function () {
        const rows = (ps: SeriesPoint[]) => ps.map((p) => pt("d1", "t", p.ts, p.value!));
        await store.writeBatch(batch(rows(rest.slice(0, half))));
        await store.writeBatch(batch(rows(rest.slice(half))));
        await store.writeBatch(batch([...rows(third), pt("d2", "t", H0 + 10, 1e6), pt("d1", "other", H0 + 10, 1e6)]));
      });

      const cases: { source: Resolution; intervalMs: number; from: number; to: number }[] = [
        { source: "raw", intervalMs: 90_000, from: H0 - 10 * MIN + 1234, to: H0 + HOUR + 45_000 },
        { source: "raw", intervalMs: 15 * MIN, from: H0, to: H0 + 5 * HOUR },
        { source: "1m", intervalMs: MIN, from: H0 + 2 * HOUR + 5 * MIN + 30_000, to: H0 + 2 * HOUR + 25 * MIN - 1 },
        { source: "1m", intervalMs: 5 * MIN, from: H0 - 10 * MIN, to: H0 + 4 * HOUR + 7 * MIN },
        { source: "1m", intervalMs: HOUR, from: H0 + 30 * MIN, to: H0 + 5 * HOUR },
        { source: "1h", intervalMs: HOUR, from: H0 - HOUR, to: H0 + 5 * HOUR },
        { source: "1h", intervalMs: 2 * HOUR, from: H0 + 90 * MIN, to: H0 + 4 * HOUR },
        { source: "1h", intervalMs: DAY, from: H0 - 2 * DAY, to: H0 + DAY },
      ];
      for (const c of cases) {
        it(`every aggregate from ${c.source}, interval ${c.intervalMs / 1000}s, matches the points`, async function () {
          for (const agg of AGGREGATES) {
            const q: BucketQuery = { deviceId: "d1", key: "t", limit: 1000, agg, ...c };
            const expected = expectedBuckets(series, q);
            assert.ok(expected.length > 0 || agg === "sum", `the case has buckets for ${agg}`);
            assertSeries(await store.buckets(q), expected, `${agg} from ${c.source} every ${c.intervalMs} ms`);
          }
        });
      }

      it("every source gives the same buckets where they divide the interval", async function () {
        for (const agg of AGGREGATES) {
          const base = { deviceId: "d1", key: "t", limit: 1000, agg, intervalMs: HOUR, from: H0 + 20 * MIN, to: H0 + 4 * HOUR + 1 };
          const raw = await store.buckets({ ...base, source: "raw" });
          assertSeries(await store.buckets({ ...base, source: "1m" }), raw, `${agg}: 1m and raw`);
          assertSeries(await store.buckets({ ...base, source: "1h" }), raw, `${agg}: 1h and raw`);
        }
      });

      it("leaves out buckets without numbers for avg, min, max and sum, but counts and gives first/last of them", async function () {
        const q = { deviceId: "d1", key: "t", limit: 1000, source: "1m" as const, intervalMs: 10 * MIN, from: H0 + 2 * HOUR + 10 * MIN, to: H0 + 2 * HOUR + 10 * MIN };
        assert.deepEqual(await store.buckets({ ...q, agg: "avg" }), []);
        const count = await store.buckets({ ...q, agg: "count" });
        assert.equal(count.length, 1);
        assert.ok((count[0]!.value as number) > 0);
        assert.equal(typeof (await store.buckets({ ...q, agg: "first" }))[0]!.value, "string");
      });

      it("applies the limit to buckets, the oldest first", async function () {
        const q: BucketQuery = { deviceId: "d1", key: "t", limit: 3, agg: "count", source: "1m", intervalMs: 10 * MIN, from: H0, to: H0 + 5 * HOUR };
        assertSeries(await store.buckets(q), expectedBuckets(series, q), "limited");
        assert.equal((await store.buckets(q)).length, 3);
      });

      it("a retried batch changes neither the points nor the roll-ups", async function () {
        const snapshot = async () => {
          const out: unknown[] = [await store.points({ deviceId: "d1", key: "t", from: 0, to: H0 + DAY, limit: 10_000 })];
          for (const source of ["1m", "1h"] as const) {
            for (const agg of AGGREGATES) out.push(await store.buckets({ deviceId: "d1", key: "t", limit: 1000, agg, source, intervalMs: HOUR, from: H0 - HOUR, to: H0 + 6 * HOUR }));
            out.push(await store.buckets({ deviceId: "d1", key: "t", limit: 1000, agg: "count", source, intervalMs: source === "1m" ? MIN : HOUR, from: H0 - HOUR, to: H0 + 6 * HOUR }));
          }
          return out;
        };
        const before = await snapshot();
        const again = third.map((p) => pt("d1", "t", p.ts, p.value!));
        await store.writeBatch(batch(again));
        // And a batch holding one point twice next to points already stored.
        await store.writeBatch(batch([again[0]!, again[0]!, ...again.slice(0, 5)]));
        assert.deepEqual(await snapshot(), before);
      });

      it("merges roll-ups across batches: an older point becomes first, new extremes count", async function () {
        const q = { deviceId: "d1", key: "t", limit: 10, source: "1h" as const, intervalMs: HOUR, from: H0 + HOUR, to: H0 + HOUR };
        const first = await store.buckets({ ...q, agg: "first" });
        const max = await store.buckets({ ...q, agg: "max" });
        await store.writeBatch(batch([pt("d1", "t", H0 + HOUR, "earliest"), pt("d1", "t", H0 + 2 * HOUR - 1, 1e9), pt("d1", "t", H0 + HOUR + 1, -1e9)]));
        assert.deepEqual(await store.buckets({ ...q, agg: "first" }), [{ ts: H0 + HOUR, value: "earliest" }]);
        assert.deepEqual(await store.buckets({ ...q, agg: "last" }), [{ ts: H0 + HOUR, value: 1e9 }]);
        assert.deepEqual(await store.buckets({ ...q, agg: "max" }), [{ ts: H0 + HOUR, value: 1e9 }]);
        assert.deepEqual(await store.buckets({ ...q, agg: "min" }), [{ ts: H0 + HOUR, value: -1e9 }]);
        assert.notDeepEqual(first, [{ ts: H0 + HOUR, value: "earliest" }]);
        assert.notDeepEqual(max, [{ ts: H0 + HOUR, value: 1e9 }]);
      });
    });

    it("keeps every point whose sum passes the largest double, in one batch or many, small or large: such a sum, and the average made of it, is null", async function () {
      // Until 2026-12-08 PostgreSQL refused the roll-up's sum (value out of range: overflow) and
      // set the batch's points aside: 1 of 10 such reports kept, where SQLite kept 10.
      const big = 1e308;
      for (let i = 0; i < 4; i++) await store.writeBatch(batch([pt("d1", "big", H0 + i * 1000, big)]));
      await store.writeBatch(batch(Array.from({ length: 4 }, (_, i) => pt("d2", "big", H0 + i * 1000, big))));
      // Past ONE_STATEMENT_POINTS (PostgreSQL's COPY path, its roll-ups summed here), two of them huge.
      const many = Array.from({ length: 2500 }, (_, i) => pt("d3", "big", H0 + i, i < 2 ? -big : 1));
      await store.writeBatch(batch(many));
      // And one small point after: the bucket's sum stays out of range.
      await store.writeBatch(batch([pt("d1", "big", H0 + 5000, 1)]));
      const expected: Record<string, { n: number; max: number; min: number }> = { d1: { n: 5, max: big, min: 1 }, d2: { n: 4, max: big, min: big }, d3: { n: 2500, max: 1, min: -big } };
      for (const [deviceId, e] of Object.entries(expected)) {
        assert.equal((await store.points({ deviceId, key: "big", from: 0, to: H0 + DAY, limit: 10_000 })).length, e.n, `${deviceId}: every point kept`);
        for (const source of ["raw", "1m", "1h"] as const) {
          const q = { deviceId, key: "big", limit: 10, source, intervalMs: HOUR, from: H0, to: H0 };
          const one = async (agg: Aggregate) => (await store.buckets({ ...q, agg })).map((b) => b.value);
          const what = `${deviceId} from ${source}`;
          assert.deepEqual(await one("count"), [e.n], `${what}: count`);
          assert.deepEqual(await one("max"), [e.max], `${what}: max`);
          assert.deepEqual(await one("min"), [e.min], `${what}: min`);
          if (deviceId !== "d3") {
            assert.deepEqual(await one("sum"), [null], `${what}: sum`);
            assert.deepEqual(await one("avg"), [null], `${what}: avg`);
          } else {
            // -2e308 would be out of range, but the sum is (-big) + (-big) + 2,498: out of range too.
            assert.deepEqual(await one("sum"), [null], `${what}: sum`);
          }
        }
      }
      // A bucket of ordinary values beside them is summed as before.
      await store.writeBatch(batch([pt("d1", "big", H0 + HOUR, 2), pt("d1", "big", H0 + HOUR + 1, 3)]));
      const next = { deviceId: "d1", key: "big", limit: 10, source: "1h" as const, intervalMs: HOUR, from: H0 + HOUR, to: H0 + HOUR };
      assert.deepEqual((await store.buckets({ ...next, agg: "sum" })).map((b) => b.value), [5]);
    });

    it("lists a device's keys sorted, and none for a device without series", async function () {
      await store.writeBatch(batch([pt("d1", "zeta", T0, 1), pt("d1", "Alpha", T0, 2), pt("d1", "beta", T0, true), pt("d1", "émoji🌡", T0, "x"), pt("d2", "other", T0, 1)]));
      await store.writeBatch(batch([pt("d1", "beta", T0 + 1, false)]));
      assert.deepEqual(await store.telemetryKeys("d1"), ["Alpha", "beta", "zeta", "émoji🌡"]);
      assert.deepEqual(await store.telemetryKeys("d3"), []);
      assert.deepEqual(await store.telemetryKeys("nobody"), []);
    });

    it("skips points of a device that does not exist, and they do not come back with it", async function () {
      await store.writeBatch(batch([pt("ghost", "t", T0, 1), pt("d1", "t", T0, 2)]));
      await store.upsertDevice(deviceRow("ghost"));
      assert.deepEqual(await store.telemetryKeys("ghost"), []);
      assert.deepEqual(await store.points({ deviceId: "ghost", key: "t", from: 0, to: T0 + DAY, limit: 10 }), []);
      assert.equal((await store.points({ deviceId: "d1", key: "t", from: 0, to: T0 + DAY, limit: 10 })).length, 1);
    });

    it("keeps each device's roll-ups its own where devices report the same key in the same bucket, and adds a later batch's points to an earlier one's buckets", async function () {
      await store.upsertDevice(deviceRow("d3"));
      // d1, d2 and d3 follow one another in the batch's key order with the same key and buckets.
      await store.writeBatch(batch([pt("d2", "t", H0 + 1000, 10), pt("d1", "t", H0, 1), pt("d3", "t", H0 + 2000, 100), pt("d1", "t", H0 + 3000, 2)]));
      // The next batch goes on in the bucket of the last series the one before wrote (d3's).
      await store.writeBatch(batch([pt("d3", "t", H0 + 4000, 200)]));
      await store.writeBatch(batch([pt("d1", "t", H0 + 5000, 4)]));
      const q = { key: "t", from: H0, to: H0 + HOUR - 1, limit: 10, intervalMs: HOUR };
      const expected = { d1: [7, 3], d2: [10, 1], d3: [300, 2] };
      for (const source of ["1m", "1h"] as const) {
        for (const [deviceId, [sum, count]] of Object.entries(expected)) {
          assert.deepEqual(await store.buckets({ ...q, deviceId, source, agg: "sum" }), [{ ts: H0, value: sum }], `${deviceId} sum from ${source}`);
          assert.deepEqual(await store.buckets({ ...q, deviceId, source, agg: "count" }), [{ ts: H0, value: count }], `${deviceId} count from ${source}`);
        }
      }
    });

    it("puts a series' points that follow one another in a batch into their own buckets, and another key's into its own rows", async function () {
      // "u" comes after "t" in key order, its point in the bucket of t's last one.
      await store.writeBatch(batch([pt("d1", "t", H0, 1), pt("d1", "t", H0 + MIN, 2), pt("d1", "t", H0 + MIN + 1000, 3), pt("d1", "t", H0 + HOUR, 4), pt("d1", "u", H0 + HOUR + 2000, 10)]));
      const q = { deviceId: "d1", key: "t", from: H0, to: H0 + 2 * HOUR - 1, limit: 10, agg: "sum" as const };
      assert.deepEqual(await store.buckets({ ...q, source: "1m", intervalMs: MIN }), [
        { ts: H0, value: 1 },
        { ts: H0 + MIN, value: 5 },
        { ts: H0 + HOUR, value: 4 },
      ]);
      assert.deepEqual(await store.buckets({ ...q, source: "1h", intervalMs: HOUR }), [
        { ts: H0, value: 6 },
        { ts: H0 + HOUR, value: 4 },
      ]);
      for (const [source, intervalMs] of [["1m", MIN], ["1h", HOUR]] as const) {
        assert.deepEqual(await store.buckets({ ...q, key: "u", source, intervalMs }), [{ ts: H0 + HOUR, value: 10 }], `u from ${source}`);
      }
    });

    it("skips points that come for a device after it was removed, though its series were written before", async function () {
      await store.writeBatch(batch([pt("d1", "t", T0, 1), pt("d2", "t", T0, 1)]));
      await store.deleteDevice("d1");
      await store.writeBatch(batch([pt("d1", "t", T0 + MIN, 2), pt("d2", "t", T0 + MIN, 2)]));
      await store.upsertDevice(deviceRow("d1"));
      assert.deepEqual(await store.telemetryKeys("d1"), []);
      assert.deepEqual(await store.points({ deviceId: "d1", key: "t", from: 0, to: T0 + DAY, limit: 10 }), []);
      assert.equal((await store.points({ deviceId: "d2", key: "t", from: 0, to: T0 + DAY, limit: 10 })).length, 2);
    });

    it("deleteDevice removes the device's points, roll-ups and keys, and nothing of another device", async function () {
      const rows = [0, 1, 2, 3].flatMap((i) => [pt("d1", "t", T0 + i * HOUR, i), pt("d1", "s", T0 + i * HOUR, `v${i}`), pt("d2", "t", T0 + i * HOUR, i)]);
      await store.writeBatch(batch(rows));
      await store.deleteDevice("d1");
      await store.upsertDevice(deviceRow("d1"));
      const q = { key: "t", from: 0, to: T0 + DAY, limit: 100, agg: "count" as const, intervalMs: HOUR };
      assert.deepEqual(await store.telemetryKeys("d1"), []);
      assert.deepEqual(await store.points({ ...q, deviceId: "d1" }), []);
      for (const source of ["raw", "1m", "1h"] as const) {
        assert.deepEqual(await store.buckets({ ...q, deviceId: "d1", source }), []);
        assert.equal((await store.buckets({ ...q, deviceId: "d2", source })).length, 4);
      }
      assert.deepEqual(await store.telemetryKeys("d2"), ["t"]);
    });

    describe("purge", function () {
      const now = T0 + 30 * DAY;
      // Five devices x two keys, a point every 20 minutes for 12 days up to now.
      const devices = ["d1", "d2", "d3", "d4", "d5"];
      beforeEach(async function () {
        for (const id of devices) await store.upsertDevice(deviceRow(id));
        const rows: PointRow[] = [];
        for (let ts = now - 12 * DAY; ts <= now; ts += 20 * MIN) for (const d of devices) for (const k of ["a", "b"]) rows.push(pt(d, k, ts, ts % 7));
        await store.writeBatch(batch(rows));
      });

      const count = async (deviceId: string, key: string, source: Resolution) => {
        const step = source === "1h" || source === "raw" ? HOUR : MIN;
        const answer = await store.buckets({ deviceId, key, source, agg: "count", intervalMs: step, from: 0, to: now + DAY, limit: 10_000 });
        return { buckets: answer.length, oldest: answer[0]?.ts ?? null };
      };

      it("removes nothing with a policy of zeros", async function () {
        assert.deepEqual(await store.purge(NO_RETENTION, now, 1000), { history: 0, events: 0, commands: 0, points: 0, rollups: 0 });
      });

      it("removes points and each roll-up resolution by age, in rounds of at most batchSize of each kind", async function () {
        const policy = { ...NO_RETENTION, pointsMaxAgeMs: 2 * DAY, rollups1mMaxAgeMs: 5 * DAY, rollups1hMaxAgeMs: 9 * DAY };
        const batchSize = 37;
        let points = 0;
        let rollups = 0;
        for (let round = 0; ; round++) {
          assert.ok(round < 1000, "purge finishes");
          const r = await store.purge(policy, now, batchSize);
          assert.ok(r.points <= batchSize && r.rollups <= 2 * batchSize, JSON.stringify(r));
          points += r.points;
          rollups += r.rollups;
          if (r.points === 0 && r.rollups === 0) break;
        }
        // Per series: points older than 2 days (10 days x 72), 1m buckets older than 5 days
        // (7 days x 72), 1h buckets older than 9 days (3 days x 24).
        assert.equal(points, 10 * 10 * 72);
        assert.equal(rollups, 10 * (7 * 72 + 3 * 24));
        for (const d of devices) {
          for (const k of ["a", "b"]) {
            const raw = await store.points({ deviceId: d, key: k, from: 0, to: now, limit: 10_000 });
            assert.equal(raw[0]!.ts, now - 2 * DAY);
            assert.deepEqual(await count(d, k, "1m"), { buckets: 5 * 72 + 1, oldest: now - 5 * DAY });
            assert.deepEqual(await count(d, k, "1h"), { buckets: 9 * 24 + 1, oldest: now - 9 * DAY });
          }
        }
        assert.deepEqual(await store.purge(policy, now, batchSize), { history: 0, events: 0, commands: 0, points: 0, rollups: 0 });
      });

      it("a series purged of everything leaves the device's keys", async function () {
        const policy = { ...NO_RETENTION, pointsMaxAgeMs: 1, rollups1mMaxAgeMs: 1, rollups1hMaxAgeMs: 1 };
        while (Object.values(await store.purge(policy, now + DAY, 500)).some((n) => n > 0));
        assert.deepEqual(await store.telemetryKeys("d1"), []);
        await store.writeBatch(batch([pt("d1", "b", now + DAY, 1)]));
        assert.deepEqual(await store.telemetryKeys("d1"), ["b"]);
      });
    });
  });
}
