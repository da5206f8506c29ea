import type { Hub } from "../core";
import type { TelemetryAnswer } from "../core/telemetry";

/** One numeric key's small chart in the Devices sidebar. */
export interface KeyChart {
  key: string;
  /** The value the device reported last (its state), or the last bucket's average. */
  last: number | null;
  /** The lowest and highest value reported in the range (not of the averages). */
  min: number;
  max: number;
  /** `[bucket start in epoch ms, average]`, oldest first. */
  points: Array<[number, number]>;
}

export interface DeviceCharts {
  deviceId: string;
  /** The range drawn (epoch ms): from the first point of the last 24 hours to now. */
  from: number;
  to: number;
  interval: string;
  /** The interval in ms, for drawing. */
  intervalMs: number;
  charts: KeyChart[];
}

const DAY_MS = 24 * 3_600_000;
/** About this many buckets across a chart: a line a sidebar can draw, whatever the range. */
const BUCKETS = 96;
/** Bucket lengths to choose from: 15 minutes for a full day, finer for a device that began reporting lately. */
const INTERVALS: Array<[string, number]> = [
  ["10s", 10_000],
  ["30s", 30_000],
  ["1m", 60_000],
  ["5m", 300_000],
  ["15m", 900_000],
];
/** Keys charted per device: a sidebar has room for a dozen. */
export const MAX_CHARTS = 12;

/**
 * The Devices sidebar's charts of a device (the admin endpoint
 * `GET /tethral/hubs/:id/devices/:device/telemetry`): each numeric key over the last 24 hours,
 * averaged in buckets, with the last value and the range's min and max. The range starts at the
 * device's first point of the day, so a device that began reporting an hour ago shows an hour of
 * detail rather than a dot at the right edge; 96 buckets of 15 minutes for a full day.
 * NOT_FOUND for an unknown device; UNAVAILABLE for a hub without a database.
 */
export async function deviceCharts(hub: Hub, deviceId: string, now = Date.now()): Promise<DeviceCharts> {
  // Read before the queries: what was reported by now is in their answers (each flushes what is
  // written behind first), so the last value lies within the range drawn; a report that lands
  // while they run shows at the next refresh.
  const properties = hub.getState(deviceId).properties;
  const firsts = await hub.telemetry(deviceId, { from: now - DAY_MS, to: now, limit: 1 });
  const numeric = Object.keys(firsts.series)
    .filter((key) => typeof firsts.series[key]![0]?.value === "number")
    .sort()
    .slice(0, MAX_CHARTS);
  const start = Math.min(now, ...numeric.map((key) => Date.parse(firsts.series[key]![0]!.ts)));
  const [interval, ms] = INTERVALS.find(([, length]) => (now - start) / length <= BUCKETS) ?? INTERVALS[INTERVALS.length - 1]!;
  const from = Math.floor(start / ms) * ms;
  if (numeric.length === 0) return { deviceId, from, to: now, interval, intervalMs: ms, charts: [] };
  const query = { keys: numeric, from, to: now, interval };
  const [avg, min, max] = await Promise.all([
    hub.telemetry(deviceId, { ...query, agg: "avg" }),
    hub.telemetry(deviceId, { ...query, agg: "min" }),
    hub.telemetry(deviceId, { ...query, agg: "max" }),
  ]);
  const charts: KeyChart[] = [];
  for (const key of numeric) {
    const points = numbers(avg, key);
    if (points.length === 0) continue;
    const reported = properties[key];
    charts.push({
      key,
      last: typeof reported === "number" ? reported : points[points.length - 1]![1],
      min: Math.min(...numbers(min, key).map((p) => p[1])),
      max: Math.max(...numbers(max, key).map((p) => p[1])),
      points,
    });
  }
  return { deviceId, from, to: now, interval, intervalMs: ms, charts };
}

/** A key's numeric points as `[ms, value]` (a key that also held text answers those as text: left out). */
function numbers(answer: TelemetryAnswer, key: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const p of answer.series[key] ?? []) if (typeof p.value === "number") out.push([Date.parse(p.ts), p.value]);
  return out;
}
