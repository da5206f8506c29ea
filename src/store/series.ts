import { invalid } from "../core/errors";
import { plainConstructor } from "../core/plain";
import { type BucketQuery, type PointRow, type PointValue, RESOLUTION_MS, type SeriesPoint } from "../core/ports/store";

/**
 * What both stores share about time series: how a value is split into the `num` and `val`
 * columns (see migration 3), the checks a point passes before it is written, the roll-up
 * columns and their merge, and the range of rows a bucket query reads.
 */

/** Longest string a point may hold (CONTRACT §7). */
export const MAX_POINT_TEXT = 256;

export const ROLLUP_TABLES = { "1m": "ts_rollup_1m", "1h": "ts_rollup_1h" } as const;

/** A roll-up row's columns after the series it belongs to, in `RollupRow` order from `bucket` on. */
const ROLLUP_VALUE_COLS = [
  "bucket", "n", "nn", "sum_v", "min_v", "max_v", "first_ts", "first_num", "first_val", "last_ts", "last_num", "last_val",
];

/** A roll-up table's columns: the series id (both stores: migrations 5 and 6), then the values. */
export const ROLLUP_COLS: readonly string[] = ["series_id", ...ROLLUP_VALUE_COLS];

/**
 * The statements both stores run on a device's series; `p` is the dialect's placeholder for the
 * device id (`?` or `$1`). `keys`: the names of its keys that still have rows. `deletes`: its
 * points, roll-ups and series, the series last (deleteDevice).
 */
export function deviceSeriesSql(p: string): { keys: string; deletes: string[] } {
  return {
    keys: `SELECT k.name FROM ts_series s JOIN ts_keys k ON k.id = s.key_id WHERE s.device_id = ${p} AND (
          EXISTS (SELECT 1 FROM ts_points x WHERE x.series_id = s.id)
          OR EXISTS (SELECT 1 FROM ts_rollup_1m x WHERE x.series_id = s.id)
          OR EXISTS (SELECT 1 FROM ts_rollup_1h x WHERE x.series_id = s.id))`,
    deletes: [
      ...["ts_points", "ts_rollup_1m", "ts_rollup_1h"].map((t) => `DELETE FROM ${t} WHERE series_id IN (SELECT id FROM ts_series WHERE device_id = ${p})`),
      `DELETE FROM ts_series WHERE device_id = ${p}`,
    ],
  };
}

/**
 * The upsert tail that merges a batch's roll-up row into a stored one (alias `r`). NULL-safe:
 * a side without numbers has NULL sum/min/max and must not erase the other's. Two points of a
 * series never share a time, so first/last ties cannot happen.
 */
export const MERGE_ROLLUP = mergeRollup("r.sum_v + excluded.sum_v");

/**
 * A roll-up row merged into the stored one; `sum` adds the two sums (SQLite's REAL arithmetic
 * gives Infinity past the largest double, PostgreSQL's refuses: see postgres-series.ts).
 */
export function mergeRollup(sum: string): string {
  return `ON CONFLICT (series_id, bucket) DO UPDATE SET
    n = r.n + excluded.n,
    nn = r.nn + excluded.nn,
    sum_v = CASE WHEN excluded.sum_v IS NULL THEN r.sum_v WHEN r.sum_v IS NULL THEN excluded.sum_v ELSE ${sum} END,
    min_v = CASE WHEN r.min_v IS NULL OR excluded.min_v < r.min_v THEN excluded.min_v ELSE r.min_v END,
    max_v = CASE WHEN r.max_v IS NULL OR excluded.max_v > r.max_v THEN excluded.max_v ELSE r.max_v END,
    first_ts = CASE WHEN excluded.first_ts < r.first_ts THEN excluded.first_ts ELSE r.first_ts END,
    first_num = CASE WHEN excluded.first_ts < r.first_ts THEN excluded.first_num ELSE r.first_num END,
    first_val = CASE WHEN excluded.first_ts < r.first_ts THEN excluded.first_val ELSE r.first_val END,
    last_ts = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_ts ELSE r.last_ts END,
    last_num = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_num ELSE r.last_num END,
    last_val = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_val ELSE r.last_val END`;
}

/**
 * A point checked and split into its columns: key, ts, num (a number, else null), val (JSON
 * text of a boolean or string, else null). INVALID names the point, as `points[3].value`.
 */
export function pointColumns(p: PointRow, i: number): [string, number, number | null, string | null] {
  const ts = checkPoint(p, i);
  const v = p.value;
  return typeof v === "number" ? [p.key, ts, v, null] : [p.key, ts, null, pointText(v)];
}

/**
 * Checks a point as `pointColumns` does, without building anything (the hot path): its time.
 * `pointText` gives a point's text value once it is checked.
 */
export function checkPoint(p: PointRow, i: number): number {
  return checkPointOf(p.deviceId, p.key, p.ts, p.value, i);
}

/** `checkPoint` of a point given by its fields (a point of a `PointBatch`). */
export function checkPointOf(deviceId: unknown, key: unknown, ts: number, v: unknown, i: number): number {
  if (typeof deviceId !== "string" || deviceId.length === 0) throw invalid(`points[${i}].deviceId`, "must be a device id");
  if (typeof key !== "string" || key.length === 0) throw invalid(`points[${i}].key`, "must be a non-empty text");
  if (!Number.isSafeInteger(ts) || ts < 0) throw invalid(`points[${i}].ts`, "must be epoch milliseconds");
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw invalid(`points[${i}].value`, "must be a finite number");
  } else if (typeof v === "string") {
    if (v.length > MAX_POINT_TEXT) throw invalid(`points[${i}].value`, `a text has at most ${MAX_POINT_TEXT} characters`);
  } else if (typeof v !== "boolean") {
    throw invalid(`points[${i}].value`, "must be a number, a boolean or a text");
  }
  return ts;
}

/** The JSON text of a checked point's boolean or string value. */
export function pointText(v: PointRow["value"]): string {
  return typeof v === "boolean" ? (v ? "true" : "false") : JSON.stringify(v);
}

/** A stored value again: the number, or the boolean or string its JSON text holds. */
export function pointValue(num: unknown, val: unknown): PointValue | null {
  if (val !== null && val !== undefined) return JSON.parse(val as string) as PointValue;
  // A sum past the largest double (stored points are finite): SQLite reads it as Infinity,
  // PostgreSQL's JSON as "Infinity" (see postgres-series.ts), and JSON has no such number.
  const n = typeof num === "number" ? num : Number(num);
  return Number.isFinite(n) ? n : null;
}

/** Numbers and texts in a roll-up row as `RollupBuilder.take` gives it: the series, then the columns from `bucket` on. */
export const ROLLUP_ROW_WIDTH = 13;

const orNull = (n: number): number | null => (Number.isNaN(n) ? null : n);

/** Buckets a series' key in `RollupBuilder` leaves room for: 2^26 minutes is 127 years from 1970. */
const BUCKETS_PER_SERIES = 2 ** 26;
/** Series below this have a numeric key in `RollupBuilder` (with BUCKETS_PER_SERIES, under 2^53). */
const MAX_SERIES_KEY = 2 ** 27;
/** Rows a builder makes room for at first; it doubles as it needs. */
const FIRST_ROWS = 1024;

/**
 * One resolution's roll-up rows for a batch, one per (series, bucket): the points actually
 * inserted are added here and the rows are upserted once, with `mergeRollup`. A series is a
 * number: SQLite's series id, or an index the PostgreSQL writer gives each (device, key) of
 * its batch.
 *
 * The rows are kept in columns of numbers, NaN standing for "no number" (a stored one is
 * always finite), found by one map from (series, bucket) to the row: a batch of 300,000 points
 * over 30,000 series makes 30,000 rows a resolution, and a row object and a map per series cost
 * more than the points' own arithmetic.
 */
export class RollupBuilder {
  /** Row by (series, bucket): a number while it fits in one exactly, else a text. */
  private readonly rowOf = new Map<number | string, number>();
  private rows = 0;
  private series = new Float64Array(FIRST_ROWS);
  private bucket = new Float64Array(FIRST_ROWS);
  private n = new Float64Array(FIRST_ROWS);
  private nn = new Float64Array(FIRST_ROWS);
  private sum = new Float64Array(FIRST_ROWS);
  private min = new Float64Array(FIRST_ROWS);
  private max = new Float64Array(FIRST_ROWS);
  private firstTs = new Float64Array(FIRST_ROWS);
  private firstNum = new Float64Array(FIRST_ROWS);
  private lastTs = new Float64Array(FIRST_ROWS);
  private lastNum = new Float64Array(FIRST_ROWS);
  private firstVal: (string | null)[] = [];
  private lastVal: (string | null)[] = [];
  /** The row the last point went to: points come in series and time order, so the next one usually goes there too. */
  private last = -1;

  constructor(private readonly ms: number) {}

  /** A point that went in; `num` is null (or NaN) when the value is a text in `val`. */
  add(series: number, ts: number, num: number | null, val: string | null): void {
    const v = num === null ? Number.NaN : num;
    // Floor division rather than `%`, which V8 computes with a call for numbers this large.
    let bucket = Math.floor(ts / this.ms) * this.ms;
    if (bucket > ts) bucket -= this.ms;
    let r = this.last;
    if (r < 0 || this.bucket[r] !== bucket || this.series[r] !== series) {
      const no = bucket / this.ms;
      const key = series >= 0 && series < MAX_SERIES_KEY && no >= 0 && no < BUCKETS_PER_SERIES ? series * BUCKETS_PER_SERIES + no : `${series}:${no}`;
      const found = this.rowOf.get(key);
      if (found === undefined) {
        this.last = this.newRow(series, bucket, ts, v, val);
        this.rowOf.set(key, this.last);
        return;
      }
      this.last = r = found;
    }
    this.n[r] = this.n[r]! + 1;
    if (v === v) {
      if (this.nn[r] === 0) {
        this.sum[r] = this.min[r] = this.max[r] = v;
      } else {
        this.sum[r] = this.sum[r]! + v;
        if (v < this.min[r]!) this.min[r] = v;
        if (v > this.max[r]!) this.max[r] = v;
      }
      this.nn[r] = this.nn[r]! + 1;
    }
    if (ts < this.firstTs[r]!) {
      this.firstTs[r] = ts;
      this.firstNum[r] = v;
      this.firstVal[r] = val;
    }
    if (ts > this.lastTs[r]!) {
      this.lastTs[r] = ts;
      this.lastNum[r] = v;
      this.lastVal[r] = val;
    }
  }

  private newRow(series: number, bucket: number, ts: number, v: number, val: string | null): number {
    if (this.rows === this.series.length) this.grow();
    const r = this.rows++;
    this.series[r] = series;
    this.bucket[r] = bucket;
    this.n[r] = 1;
    this.nn[r] = v === v ? 1 : 0;
    this.sum[r] = this.min[r] = this.max[r] = this.firstNum[r] = this.lastNum[r] = v;
    this.firstTs[r] = this.lastTs[r] = ts;
    this.firstVal[r] = this.lastVal[r] = val;
    return r;
  }

  private grow(): void {
    const wider = (a: Float64Array) => {
      const b = new Float64Array(a.length * 2);
      b.set(a);
      return b;
    };
    this.series = wider(this.series);
    this.bucket = wider(this.bucket);
    this.n = wider(this.n);
    this.nn = wider(this.nn);
    this.sum = wider(this.sum);
    this.min = wider(this.min);
    this.max = wider(this.max);
    this.firstTs = wider(this.firstTs);
    this.firstNum = wider(this.firstNum);
    this.lastTs = wider(this.lastTs);
    this.lastNum = wider(this.lastNum);
  }

  /**
   * The rows built so far, flattened (ROLLUP_ROW_WIDTH values a row): series, bucket, n, nn,
   * sum, min, max, first ts, number and text, last ts, number and text. Empties the builder.
   */
  take(): { params: unknown[]; rows: number } {
    const rows = this.rows;
    const params = new Array<unknown>(rows * ROLLUP_ROW_WIDTH);
    for (let r = 0, o = 0; r < rows; r++) {
      const numbers = this.nn[r] !== 0;
      params[o++] = this.series[r];
      params[o++] = this.bucket[r];
      params[o++] = this.n[r];
      params[o++] = this.nn[r];
      params[o++] = numbers ? this.sum[r] : null;
      params[o++] = numbers ? this.min[r] : null;
      params[o++] = numbers ? this.max[r] : null;
      params[o++] = this.firstTs[r];
      params[o++] = orNull(this.firstNum[r]!);
      params[o++] = this.firstVal[r];
      params[o++] = this.lastTs[r];
      params[o++] = orNull(this.lastNum[r]!);
      params[o++] = this.lastVal[r];
    }
    this.clear();
    return { params, rows };
  }

  clear(): void {
    this.rowOf.clear();
    this.rows = 0;
    this.firstVal = [];
    this.lastVal = [];
    this.last = -1;
  }
}

/** Both resolutions' builders for a batch: every point goes to both. */
export class RollupBuilders {
  readonly "1m" = new RollupBuilder(RESOLUTION_MS["1m"]);
  readonly "1h" = new RollupBuilder(RESOLUTION_MS["1h"]);

  add(series: number, ts: number, num: number | null, val: string | null): void {
    this["1m"].add(series, ts, num, val);
    this["1h"].add(series, ts, num, val);
  }

  clear(): void {
    this["1m"].clear();
    this["1h"].clear();
  }
}

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

const SeriesPointOf = plainConstructor(function (this: SeriesPoint, ts: number, value: SeriesPoint["value"]) {
  this.ts = ts;
  this.value = value;
});

/**
 * A point or bucket as both stores read it: its time (a bucket's start), its number (or count),
 * and JSON text for any other value. Made by a constructor, not a literal: an answer's points are
 * all alive until the last is made, and a literal's allocation site would be pretenured (plain.ts).
 */
export function seriesPoint(ts: number, num: unknown, val: unknown): SeriesPoint {
  return new SeriesPointOf(ts, pointValue(num, val));
}
