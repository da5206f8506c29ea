import type { Clock } from "./clock";
import { TethralError, errorMessage, notFound } from "./errors";
import type { PointValue, SeriesPoint, Store } from "./ports/store";
import type { DeviceRecord, DeviceRegistry } from "./registry";
import { type ResolutionRetention, type TelemetryQuery, type TelemetryQueryInput, parseTelemetryQuery, resolutionFor } from "./telemetry-query";
import type { JsonObject } from "./types";
import type { Persistence } from "./write-behind";

export type { TelemetryQueryInput } from "./telemetry-query";

/** CONTRACT §7: the answer of a telemetry query. */
export interface TelemetryAnswer {
  deviceId: string;
  from: string;
  to: string;
  interval: string | null;
  agg: string | null;
  /** A value is null where a bucket's sum, or the average made of it, passed the largest double. */
  series: Record<string, Array<{ ts: string; value: PointValue | null }>>;
}

/** Strings longer than this are not series (they still merge into the state). */
export const MAX_POINT_TEXT = 256;

/**
 * Telemetry time series (CONTRACT §7): every top-level number, boolean and short string of a
 * telemetry report becomes a point handed to the write-behind store, which keeps the points
 * and their roll-ups; queries are checked here and read from the store. A device's points get
 * strictly increasing times (two reports in one millisecond are a millisecond apart), so no
 * point replaces another. Without a store there are no series.
 */
export class TimeSeries {
  private readonly stats = { points: 0, queries: 0 };

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly persistence: Persistence | null,
    private readonly clock: Clock,
    private readonly retention: () => ResolutionRetention,
  ) {}

  /** True when reports are kept as series (the hub has a store). */
  get enabled(): boolean {
    return this.persistence !== null;
  }

  /** Keeps the scalar values of a telemetry report as points at `now`. */
  record(record: DeviceRecord, properties: JsonObject, now: number): void {
    const p = this.persistence;
    if (p === null) return;
    let ts = 0;
    for (const key in properties) {
      if (!Object.hasOwn(properties, key)) continue;
      const value = properties[key];
      const t = typeof value;
      if (t === "number" ? !Number.isFinite(value) : t === "string" ? (value as string).length > MAX_POINT_TEXT : t !== "boolean") continue;
      if (ts === 0) {
        // The state manager took the report first, so the device has a state record.
        const s = record.state;
        ts = s === undefined || now > s.pointTs ? now : s.pointTs + 1;
        if (s !== undefined) s.pointTs = ts;
      }
      p.addPoint(record.id, key, ts, value as PointValue);
      this.stats.points++;
    }
  }

  /** CONTRACT §7: raw points or buckets of a device's series. */
  async query(deviceId: string, input: TelemetryQueryInput): Promise<TelemetryAnswer> {
    // A device's points get strictly increasing times: a burst of more than one report a
    // millisecond is stamped a few ms ahead of the clock. A query's default end covers them.
    const record = this.registry.record(deviceId);
    const now = Math.max(this.clock.now(), record?.state?.pointTs ?? 0);
    const q = parseTelemetryQuery(input, now);
    if (!record) throw notFound("device", deviceId);
    const store = await this.readable();
    const keys = q.keys ?? (await store.telemetryKeys(deviceId));
    const source = resolutionFor(q, this.retention(), now);
    const series: TelemetryAnswer["series"] = {};
    this.stats.queries++;
    const answers = await Promise.all(keys.map((key) => this.read(store, deviceId, key, q, source)));
    keys.forEach((key, i) => {
      // Defined, not assigned: a key named __proto__ is a series too (assigned, it set the answer's prototype and was left out).
      Object.defineProperty(series, key, { value: answers[i]!.map((p) => ({ ts: new Date(p.ts).toISOString(), value: p.value })), enumerable: true, writable: true, configurable: true });
    });
    return { deviceId, from: new Date(q.from).toISOString(), to: new Date(q.to).toISOString(), interval: q.interval, agg: q.agg, series };
  }

  /** The keys a device has reported (that still have points or roll-ups), sorted. */
  async keys(deviceId: string): Promise<string[]> {
    if (!this.registry.has(deviceId)) throw notFound("device", deviceId);
    return (await this.readable()).telemetryKeys(deviceId);
  }

  statistics(): { points: number; queries: number } {
    return { ...this.stats };
  }

  private read(store: Store, deviceId: string, key: string, q: TelemetryQuery, source: ReturnType<typeof resolutionFor>): Promise<SeriesPoint[]> {
    const base = { deviceId, key, from: q.from, to: q.to, limit: q.limit };
    return q.agg === null ? store.points(base) : store.buckets({ ...base, source, intervalMs: q.intervalMs, agg: q.agg });
  }

  /** The store, once what waits to be written is (a query sees every point taken before it). */
  private async readable(): Promise<Store> {
    const p = this.persistence;
    if (p === null) throw new TethralError("UNAVAILABLE", "telemetry series need a store: this hub keeps its data in memory only");
    if (p.isDegraded) throw new TethralError("UNAVAILABLE", "the database is unavailable: telemetry series cannot be read now");
    try {
      await p.flushPending();
    } catch (err) {
      throw new TethralError("UNAVAILABLE", `the database is unavailable: telemetry series cannot be read now (${errorMessage(err)})`);
    }
    return p.store;
  }
}
