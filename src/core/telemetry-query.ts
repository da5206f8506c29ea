import { invalid } from "./errors";
import { AGGREGATES, type Aggregate, RESOLUTION_MS, type Resolution } from "./ports/store";
import { parseTime } from "./validation";

/** A telemetry query as a flow or the REST API gives it (CONTRACT §7): strings or typed values. */
export interface TelemetryQueryInput {
  /** Keys as a list or comma-separated; absent or empty = every key the device has. */
  keys?: string | string[] | null;
  /** ISO-8601 or epoch ms; default 24 hours before `to`. */
  from?: string | number | Date | null;
  /** ISO-8601 or epoch ms; default now. */
  to?: string | number | Date | null;
  /** `30s`, `1m`, `15m`, `1h`, `1d`...; absent = raw points. */
  interval?: string | null;
  /** Default `avg` when there is an interval. */
  agg?: string | null;
  /** Points per key: default 1000, at most 10000. */
  limit?: number | string | null;
}

/** A checked query: what the store is asked, per key. */
export interface TelemetryQuery {
  keys: string[] | null;
  from: number;
  to: number;
  interval: string | null;
  intervalMs: number;
  agg: Aggregate | null;
  limit: number;
}

export const DEFAULT_TELEMETRY_LIMIT = 1000;
export const MAX_TELEMETRY_LIMIT = 10_000;
const DAY_MS = 24 * 3600 * 1000;
/** The longest bucket a query may ask for (a year of days is 365 buckets; longer is never useful). */
const MAX_INTERVAL_MS = 366 * DAY_MS;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: DAY_MS, w: 7 * DAY_MS };
/** Keys are top-level property names: the same limit as the state's keys. */
const MAX_KEY_LENGTH = 256;
const MAX_KEYS = 100;

/** Checks a query; INVALID names the parameter at fault. */
export function parseTelemetryQuery(input: TelemetryQueryInput, now: number): TelemetryQuery {
  if (typeof input !== "object" || input === null) throw invalid("query", "must be an object");
  const to = input.to === undefined || input.to === null || input.to === "" ? now : timeOf(input.to, "to");
  const from = input.from === undefined || input.from === null || input.from === "" ? to - DAY_MS : timeOf(input.from, "from");
  if (from > to) throw invalid("from", "must not be after to");
  const keys = keysOf(input.keys);
  let interval: string | null = null;
  let intervalMs = 0;
  if (input.interval !== undefined && input.interval !== null && input.interval !== "") {
    if (typeof input.interval !== "string") throw invalid("interval", "must be a duration such as 30s, 1m, 15m, 1h or 1d");
    const m = /^([1-9][0-9]{0,8})(ms|s|m|h|d|w)$/.exec(input.interval.trim());
    if (!m) throw invalid("interval", "must be a duration such as 30s, 1m, 15m, 1h or 1d");
    intervalMs = Number(m[1]) * UNIT_MS[m[2]!]!;
    if (intervalMs < 1000) throw invalid("interval", "must be at least 1s");
    if (intervalMs > MAX_INTERVAL_MS) throw invalid("interval", "must be at most 366d");
    interval = `${m[1]}${m[2]}`;
  }
  let agg: Aggregate | null = null;
  if (input.agg !== undefined && input.agg !== null && input.agg !== "") {
    if (typeof input.agg !== "string" || !(AGGREGATES as readonly string[]).includes(input.agg)) {
      throw invalid("agg", `must be one of ${AGGREGATES.join(", ")}`);
    }
    if (interval === null) throw invalid("agg", "needs an interval (raw points are not aggregated)");
    agg = input.agg as Aggregate;
  } else if (interval !== null) {
    agg = "avg";
  }
  let limit = DEFAULT_TELEMETRY_LIMIT;
  if (input.limit !== undefined && input.limit !== null && input.limit !== "") {
    limit = typeof input.limit === "string" && /^[0-9]{1,6}$/.test(input.limit.trim()) ? Number(input.limit) : (input.limit as number);
    if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1 || limit > MAX_TELEMETRY_LIMIT) {
      throw invalid("limit", `must be a whole number from 1 to ${MAX_TELEMETRY_LIMIT}`);
    }
  }
  return { keys, from, to, interval, intervalMs, agg, limit };
}

/** Retention of each resolution, in ms (0 = kept for ever), as the hub is set. */
export interface ResolutionRetention {
  raw: number;
  "1m": number;
  "1h": number;
}

/**
 * Where a query reads: a resolution whose bucket divides the interval and whose retention reaches
 * back to `from`. Every such resolution gives the same buckets (a bucket is whole whatever it is
 * read from), so the coarsest is taken: it reads the fewest rows (a 30-day hourly query reads 720
 * hour rows, not 43,200 minute rows, and a 1-hour interval over today no raw point). Raw points
 * when no roll-up divides the interval; the coarsest roll-up that divides it when none reaches
 * back far enough.
 */
export function resolutionFor(q: TelemetryQuery, retention: ResolutionRetention, now: number): Resolution {
  if (q.intervalMs === 0) return "raw";
  const covers = (r: Resolution): boolean => retention[r] === 0 || q.from >= now - retention[r];
  const dividing: Resolution[] = ["raw"];
  for (const r of ["1m", "1h"] as const) if (q.intervalMs % RESOLUTION_MS[r] === 0) dividing.push(r);
  for (let i = dividing.length - 1; i >= 0; i--) if (covers(dividing[i]!)) return dividing[i]!;
  return dividing[dividing.length - 1]!;
}

/** A time in a query (`from`, `to`, `since`; README "Times"), as epoch ms: a 400 naming `field` unless 1970 to the end of 9999. */
export function timeOf(value: string | number | Date, field: string): number {
  let ms: number;
  if (value instanceof Date) ms = value.getTime();
  else if (typeof value === "number") ms = value;
  else if (typeof value === "string" && /^[0-9]{1,15}$/.test(value.trim())) ms = Number(value);
  else if (typeof value === "string") ms = parseTime(value);
  else ms = Number.NaN;
  // Up to the end of year 9999: the answer says its times in ISO-8601's four-digit years (until
  // 2026-12-08 a later time was taken, and echoed as +010000-…, which no query takes back).
  if (!Number.isFinite(ms) || !Number.isInteger(ms) || ms < 0 || ms > LAST_ISO_MS) {
    throw invalid(field, "must be an ISO-8601 time or epoch milliseconds, from 1970 to the end of 9999");
  }
  return ms;
}

/** 9999-12-31T23:59:59.999Z. */
const LAST_ISO_MS = 253_402_300_799_999;

function keysOf(keys: TelemetryQueryInput["keys"]): string[] | null {
  if (keys === undefined || keys === null || keys === "") return null;
  const list = typeof keys === "string" ? keys.split(",") : Array.isArray(keys) ? keys : null;
  if (list === null) throw invalid("keys", "must be a list of keys or a comma-separated text");
  const out: string[] = [];
  for (const raw of list) {
    if (typeof raw !== "string") throw invalid("keys", "must be a list of keys or a comma-separated text");
    const key = raw.trim();
    if (key.length === 0) continue;
    if (key.length > MAX_KEY_LENGTH) throw invalid("keys", `a key has at most ${MAX_KEY_LENGTH} characters`);
    if (!out.includes(key)) out.push(key);
  }
  if (out.length > MAX_KEYS) throw invalid("keys", `at most ${MAX_KEYS} keys per query`);
  return out.length > 0 ? out : null;
}
