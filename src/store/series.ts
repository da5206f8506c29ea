import { invalid } from "../core/errors";
import { type BucketQuery, type PointRow, type PointValue, RESOLUTION_MS, type SeriesPoint } from "../core/ports/store";

/**
 * What both stores share about time series: how a value is split into the `num` and `val`
 * columns (see migration 3), the checks a point passes before it is written, the roll-up
 * columns and their merge, and the range of rows a bucket query reads.
 */

/** Longest string a point may hold (CONTRACT §7). */
export const MAX_POINT_TEXT = 256;

export const ROLLUP_TABLES = { "1m": "ts_rollup_1m", "1h": "ts_rollup_1h" } as const;

export const ROLLUP_COLS = [
  "device_id", "key_id", "bucket", "n", "nn", "sum_v", "min_v", "max_v",
  "first_ts", "first_num", "first_val", "last_ts", "last_num", "last_val",
];

/**
 * The upsert tail that merges a batch's roll-up row into a stored one (alias `r`). NULL-safe:
 * a side without numbers has NULL sum/min/max and must not erase the other's. Two points of a
 * series never share a time, so first/last ties cannot happen.
 */
export const MERGE_ROLLUP = `ON CONFLICT (device_id, key_id, bucket) DO UPDATE SET
    n = r.n + excluded.n,
    nn = r.nn + excluded.nn,
    sum_v = CASE WHEN excluded.sum_v IS NULL THEN r.sum_v WHEN r.sum_v IS NULL THEN excluded.sum_v ELSE r.sum_v + excluded.sum_v END,
    min_v = CASE WHEN r.min_v IS NULL OR excluded.min_v < r.min_v THEN excluded.min_v ELSE r.min_v END,
    max_v = CASE WHEN r.max_v IS NULL OR excluded.max_v > r.max_v THEN excluded.max_v ELSE r.max_v END,
    first_ts = CASE WHEN excluded.first_ts < r.first_ts THEN excluded.first_ts ELSE r.first_ts END,
    first_num = CASE WHEN excluded.first_ts < r.first_ts THEN excluded.first_num ELSE r.first_num END,
    first_val = CASE WHEN excluded.first_ts < r.first_ts THEN excluded.first_val ELSE r.first_val END,
    last_ts = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_ts ELSE r.last_ts END,
    last_num = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_num ELSE r.last_num END,
    last_val = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_val ELSE r.last_val END`;

/**
 * A point checked and split into its columns: key, ts, num (a number, else null), val (JSON
 * text of a boolean or string, else null). INVALID names the point, as `points[3].value`.
 */
export function pointColumns(p: PointRow, i: number): [string, number, number | null, string | null] {
  const at = `points[${i}]`;
  if (typeof p.deviceId !== "string" || p.deviceId.length === 0) throw invalid(`${at}.deviceId`, "must be a device id");
  if (typeof p.key !== "string" || p.key.length === 0) throw invalid(`${at}.key`, "must be a non-empty text");
  if (!Number.isSafeInteger(p.ts) || p.ts < 0) throw invalid(`${at}.ts`, "must be epoch milliseconds");
  const v = p.value;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw invalid(`${at}.value`, "must be a finite number");
    return [p.key, p.ts, v, null];
  }
  if (typeof v === "boolean") return [p.key, p.ts, null, v ? "true" : "false"];
  if (typeof v === "string") {
    if (v.length > MAX_POINT_TEXT) throw invalid(`${at}.value`, `a text has at most ${MAX_POINT_TEXT} characters`);
    return [p.key, p.ts, null, JSON.stringify(v)];
  }
  throw invalid(`${at}.value`, "must be a number, a boolean or a text");
}

/** A stored value again: the number, or the boolean or string its JSON text holds. */
export function pointValue(num: unknown, val: unknown): PointValue {
  if (val === null || val === undefined) return typeof num === "number" ? num : Number(num);
  return JSON.parse(val as string) as PointValue;
}

/** A roll-up row being built from a batch's inserted points, in ROLLUP_COLS order. */
export type RollupRow = [
  deviceId: string, keyId: number, bucket: number, n: number, nn: number, sum: number | null, min: number | null,
  max: number | null, firstTs: number, firstNum: number | null, firstVal: string | null, lastTs: number,
  lastNum: number | null, lastVal: string | null,
];

/**
 * One resolution's roll-up rows for a batch, one per (device, key, bucket): the points
 * actually inserted are added here and the rows are upserted once, with MERGE_ROLLUP.
 */
export class RollupBuilder {
  /** Per device, rows by key id and bucket number (keyId * 2^26 + bucket / ms: below 2^53). */
  private readonly byDevice = new Map<string, Map<number, RollupRow>>();
  /** The row the last point went to: points come in key order, so the next one usually goes there too. */
  private last: RollupRow | null = null;

  constructor(private readonly ms: number) {}

  add(deviceId: string, keyId: number, ts: number, num: number | null, val: string | null): void {
    const bucket = ts - (ts % this.ms);
    let r = this.last;
    if (r === null || r[2] !== bucket || r[1] !== keyId || r[0] !== deviceId) {
      let rows = this.byDevice.get(deviceId);
      if (rows === undefined) {
        rows = new Map();
        this.byDevice.set(deviceId, rows);
      }
      const id = keyId * 67_108_864 + bucket / this.ms;
      r = rows.get(id) ?? null;
      if (r === null) {
        this.last = [deviceId, keyId, bucket, 1, num === null ? 0 : 1, num, num, num, ts, num, val, ts, num, val];
        rows.set(id, this.last);
        return;
      }
      this.last = r;
    }
    r[3]++;
    if (num !== null) {
      r[4]++;
      r[5] = r[5] === null ? num : r[5] + num;
      if (r[6] === null || num < r[6]) r[6] = num;
      if (r[7] === null || num > r[7]) r[7] = num;
    }
    if (ts < r[8]) {
      r[8] = ts;
      r[9] = num;
      r[10] = val;
    }
    if (ts > r[11]) {
      r[11] = ts;
      r[12] = num;
      r[13] = val;
    }
  }

  /** The rows built so far, flattened in ROLLUP_COLS order; empties the builder. */
  take(): { params: unknown[]; rows: number } {
    let rows = 0;
    for (const byKey of this.byDevice.values()) rows += byKey.size;
    const params = new Array<unknown>(rows * 14);
    let o = 0;
    for (const byKey of this.byDevice.values()) {
      for (const r of byKey.values()) {
        for (let c = 0; c < 14; c++) params[o++] = r[c];
      }
    }
    this.clear();
    return { params, rows };
  }

  clear(): void {
    this.byDevice.clear();
    this.last = null;
  }
}

export const rollupBuilders = () => ({ "1m": new RollupBuilder(RESOLUTION_MS["1m"]), "1h": new RollupBuilder(RESOLUTION_MS["1h"]) });

/**
 * The rows a bucket query reads: whole buckets, those whose start lies in [from rounded down to
 * the interval, to], so that every source gives the same buckets (a roll-up row cannot be cut
 * at `to`). `end` is exclusive. A roll-up source must divide the interval.
 */
export function bucketRange(q: BucketQuery): { start: number; end: number; interval: number } {
  const interval = Math.floor(q.intervalMs);
  if (!(interval > 0)) throw invalid("intervalMs", "must be a positive number of milliseconds");
  if (q.source !== "raw" && interval % RESOLUTION_MS[q.source] !== 0) {
    throw invalid("intervalMs", `must be a multiple of the ${q.source} roll-ups`);
  }
  const start = q.from - (q.from % interval);
  const end = q.to - (q.to % interval) + interval;
  return { start, end, interval };
}

/** A bucket row as both stores select it: start, number (or count), and JSON text for first/last. */
export function bucketPoint(b: unknown, num: unknown, val: unknown): SeriesPoint {
  return { ts: Number(b), value: pointValue(num, val) };
}
