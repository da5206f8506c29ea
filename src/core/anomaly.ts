import type { Clock, TimerHandle } from "./clock";
import type { EventBus } from "./events";
import { cloneJson, jsonEqual } from "./json";
import type { ChangeCause, StateObserver } from "./state";
import type { AnomalyData, AnomalyKind, DeviceStatus, JsonObject, JsonValue, Priority } from "./types";

export interface FlappingOptions {
  enabled: boolean;
  /** Online/offline transitions counted within this window. */
  windowSec: number;
  /** Flapping starts at this many transitions in the window… */
  threshold: number;
  /** …and clears once the window holds this many or fewer (hysteresis). */
  clearBelow: number;
}

export interface StuckOptions {
  enabled: boolean;
  /** Reports in a row carrying the same value. 0 disables this test. */
  reports: number;
  /** Seconds a value stayed the same while reports kept arriving. 0 disables this test. */
  seconds: number;
  /**
   * Follow numeric values only (the default): a reading that stops moving is a stuck sensor,
   * while a mode or a firmware string that stays put is normal.
   */
  numericOnly: boolean;
}

export interface OutlierOptions {
  enabled: boolean;
  /** EWMA smoothing factor of mean and variance, 0 < alpha ≤ 1. */
  alpha: number;
  /** A value this many standard deviations from the mean is an outlier. */
  zScore: number;
  /** Samples taken before any value is judged. */
  warmup: number;
  /**
   * Floor of the standard deviation used for the z-score. With the default 0, a property that
   * has never varied is not judged at all: there is no spread to measure a jump against.
   */
  minStddev: number;
}

export interface AnomalyOptions {
  flapping: FlappingOptions;
  stuck: StuckOptions;
  outlier: OutlierOptions;
  /** Properties followed per device (stuck and outlier); later ones are ignored. */
  maxPropertiesPerDevice: number;
}

export const DEFAULT_ANOMALY_OPTIONS: AnomalyOptions = {
  flapping: { enabled: true, windowSec: 300, threshold: 6, clearBelow: 2 },
  stuck: { enabled: true, reports: 30, seconds: 0, numericOnly: true },
  outlier: { enabled: true, alpha: 0.1, zScore: 4, warmup: 20, minStddev: 0 },
  maxPropertiesPerDevice: 64,
};

interface PropertyTrack {
  readonly key: string;
  value: JsonValue;
  sameCount: number;
  since: number;
  stuck: boolean;
  n: number;
  mean: number;
  variance: number;
  /** The device's next followed property: a short chain costs less than an array (64 bytes a device) or a Map. */
  next: PropertyTrack | null;
}

/** Per device, allocated on first need. */
interface DeviceTrack {
  transitions: number[] | null;
  flapping: boolean;
  clearTimer: TimerHandle | null;
  /** Followed properties, in the order first reported. */
  properties: PropertyTrack | null;
}

export interface AnomalyStatistics {
  detected: Record<AnomalyKind, number>;
  active: { flapping: number; stuck: number };
}

/**
 * Watches the state stream for flapping devices, stuck values and numeric outliers, and
 * publishes each as a `state.anomaly` event with its kind and figures. Flapping and stuck
 * values publish again with `active: false` when they clear.
 */
export class AnomalyDetector implements StateObserver {
  private readonly devices = new Map<string, DeviceTrack>();
  /** Devices whose status a retained message set: the transition out of it is not counted either (rare: kept apart from DeviceTrack). */
  private readonly replayed = new Set<string>();
  private readonly detected: Record<AnomalyKind, number> = { flapping: 0, stuck: 0, outlier: 0 };
  private activeFlapping = 0;
  private activeStuck = 0;

  constructor(
    private readonly bus: EventBus,
    private readonly clock: Clock,
    private readonly options: AnomalyOptions = DEFAULT_ANOMALY_OPTIONS,
  ) {}

  onStatus(deviceId: string, from: DeviceStatus, to: DeviceStatus, now: number, retained = false, cause?: ChangeCause): void {
    const f = this.options.flapping;
    if (!f.enabled) return;
    // A retained message is replayed at every resubscribe of the hub, so its transition happened
    // at an unknown time, maybe counted already; the way back out of it is then no flap either.
    if (this.replayed.delete(deviceId)) return;
    if (retained) {
      this.replayed.add(deviceId);
      return;
    }
    const flip = (from === "online" && to === "offline") || (from === "offline" && to === "online");
    if (!flip) return;
    const d = this.track(deviceId);
    (d.transitions ??= []).push(now);
    this.trim(d, now);
    // Still flapping but with no clear check pending (stop() cancelled it): arm it again.
    if (d.flapping && d.clearTimer === null) this.scheduleClearCheck(deviceId, d);
    if (!d.flapping && d.transitions.length >= f.threshold) {
      d.flapping = true;
      this.activeFlapping++;
      this.emit(
        deviceId,
        "high",
        {
          kind: "flapping",
          active: true,
          transitions: d.transitions.length,
          windowSec: f.windowSec,
        },
        cause,
      );
      this.scheduleClearCheck(deviceId, d);
    }
  }

  onReport(deviceId: string, properties: JsonObject, now: number, cause?: ChangeCause): void {
    const { stuck, outlier, maxPropertiesPerDevice } = this.options;
    if (!stuck.enabled && !outlier.enabled) return;
    let d: DeviceTrack | undefined;
    // A device reports its keys in the same order from one report to the next: the property
    // after the one just found is looked at first, and the chain walked only when it is not it.
    let hint: PropertyTrack | null | undefined;
    for (const key in properties) {
      if (!Object.hasOwn(properties, key)) continue;
      const value = properties[key] as JsonValue;
      d ??= this.track(deviceId);
      if (hint === undefined) hint = d.properties;
      let p: PropertyTrack | null;
      if (hint !== null && hint.key === key) p = hint;
      else {
        p = d.properties;
        let last: PropertyTrack | null = null;
        let count = 0;
        for (; p !== null && p.key !== key; p = p.next) {
          last = p;
          count++;
        }
        if (p === null) {
          hint = null;
          if (count >= maxPropertiesPerDevice) continue;
          // A copy: a caller that mutates and re-sends the same object must not look unchanged.
          p = { key, value: cloneJson(value), sameCount: 1, since: now, stuck: false, n: 0, mean: 0, variance: 0, next: null };
          if (last === null) d.properties = p;
          else last.next = p;
          if (typeof value === "number") this.learn(p, value);
          continue;
        }
      }
      hint = p.next;
      if (stuck.enabled && (!stuck.numericOnly || typeof value === "number")) this.checkStuck(deviceId, key, p, value, now, cause);
      if (outlier.enabled && typeof value === "number") this.checkOutlier(deviceId, key, p, value, cause);
    }
  }

  onForget(deviceId: string): void {
    this.replayed.delete(deviceId);
    const d = this.devices.get(deviceId);
    if (!d) return;
    if (d.clearTimer !== null) this.clock.clearTimeout(d.clearTimer);
    if (d.flapping) this.activeFlapping--;
    for (let p = d.properties; p !== null; p = p.next) if (p.stuck) this.activeStuck--;
    this.devices.delete(deviceId);
  }

  /** Devices flapping right now. */
  isFlapping(deviceId: string): boolean {
    return this.devices.get(deviceId)?.flapping ?? false;
  }

  statistics(): AnomalyStatistics {
    return { detected: { ...this.detected }, active: { flapping: this.activeFlapping, stuck: this.activeStuck } };
  }

  stop(): void {
    for (const d of this.devices.values()) {
      if (d.clearTimer !== null) this.clock.clearTimeout(d.clearTimer);
      d.clearTimer = null;
    }
  }

  private checkStuck(deviceId: string, key: string, p: PropertyTrack, value: JsonValue, now: number, cause: ChangeCause | undefined): void {
    const o = this.options.stuck;
    if (!jsonEqual(p.value, value)) {
      if (p.stuck) {
        p.stuck = false;
        this.activeStuck--;
        this.emit(deviceId, "normal", { kind: "stuck", active: false, property: key, value }, cause);
      }
      p.value = cloneJson(value);
      p.sameCount = 1;
      p.since = now;
      return;
    }
    p.sameCount++;
    if (p.stuck) return;
    const byCount = o.reports > 0 && p.sameCount >= o.reports;
    const bySeconds = o.seconds > 0 && now - p.since >= o.seconds * 1000;
    if (byCount || bySeconds) {
      p.stuck = true;
      this.activeStuck++;
      this.emit(
        deviceId,
        "normal",
        {
          kind: "stuck",
          active: true,
          property: key,
          value,
          reports: p.sameCount,
          seconds: (now - p.since) / 1000,
        },
        cause,
      );
    }
  }

  private checkOutlier(deviceId: string, key: string, p: PropertyTrack, value: number, cause: ChangeCause | undefined): void {
    const o = this.options.outlier;
    if (p.n >= o.warmup) {
      const stddev = Math.max(Math.sqrt(p.variance), o.minStddev);
      const z = stddev > 0 ? Math.abs(value - p.mean) / stddev : 0;
      if (z > o.zScore) {
        this.emit(
          deviceId,
          "normal",
          {
            kind: "outlier",
            active: true,
            property: key,
            value,
            mean: round(p.mean),
            stddev: round(stddev),
            zScore: round(z),
          },
          cause,
        );
      }
    }
    this.learn(p, value);
  }

  /**
   * Welford's running mean and variance through the warm-up, then an EWMA of both. A value so far
   * from the others that the variance would pass the largest double (1e308 among readings of 20)
   * is not learnt: an infinite deviation would make every later z-score 0, and the property would
   * never show an outlier again (until 2026-12-08 it did so for good).
   */
  private learn(p: PropertyTrack, x: number): void {
    const n = p.n + 1;
    const diff = x - p.mean;
    let mean: number;
    let variance: number;
    if (n <= this.options.outlier.warmup) {
      mean = p.mean + diff / n;
      // Population variance kept directly: M2/n updated incrementally.
      variance = p.variance + (diff * (x - mean) - p.variance) / n;
    } else {
      const a = this.options.outlier.alpha;
      const incr = a * diff;
      mean = p.mean + incr;
      variance = (1 - a) * (p.variance + diff * incr);
    }
    if (!Number.isFinite(mean) || !Number.isFinite(variance)) return;
    p.n = n;
    p.mean = mean;
    p.variance = variance;
  }

  private trim(d: DeviceTrack, now: number): void {
    if (!d.transitions) return;
    const horizon = now - this.options.flapping.windowSec * 1000;
    let drop = 0;
    while (drop < d.transitions.length && d.transitions[drop]! <= horizon) drop++;
    if (drop > 0) d.transitions.splice(0, drop);
  }

  /** While a device flaps, re-check when its oldest transition leaves the window. */
  private scheduleClearCheck(deviceId: string, d: DeviceTrack): void {
    if (d.clearTimer !== null) this.clock.clearTimeout(d.clearTimer);
    const oldest = d.transitions?.[0] ?? this.clock.now();
    const wait = Math.max(1, oldest + this.options.flapping.windowSec * 1000 + 1 - this.clock.now());
    d.clearTimer = this.clock.setTimeout(() => {
      d.clearTimer = null;
      const now = this.clock.now();
      this.trim(d, now);
      const transitions = d.transitions?.length ?? 0;
      if (transitions <= this.options.flapping.clearBelow) {
        d.flapping = false;
        this.activeFlapping--;
        this.emit(deviceId, "normal", {
          kind: "flapping",
          active: false,
          transitions,
          windowSec: this.options.flapping.windowSec,
        });
      } else {
        this.scheduleClearCheck(deviceId, d);
      }
    }, wait);
  }

  private track(deviceId: string): DeviceTrack {
    let d = this.devices.get(deviceId);
    if (!d) {
      d = { transitions: null, flapping: false, clearTimer: null, properties: null };
      this.devices.set(deviceId, d);
    }
    return d;
  }

  /** `cause`: the report or status change that showed it; its events name the same cause (CONTRACT §4). */
  private emit(deviceId: string, priority: Priority, data: AnomalyData, cause?: ChangeCause): void {
    if (data.active) this.detected[data.kind]++;
    this.bus.publish("state.anomaly", data, { deviceId, priority, source: "anomaly", causeId: cause?.causeId ?? null, parentCauseId: cause?.parentCauseId ?? null });
  }
}

/**
 * To three decimals. A number too large for that stays as it is, and one past the largest double
 * (the z-score of 1e308 among readings of 20) is the largest double: JSON has no Infinity, and
 * would say null.
 */
function round(x: number): number {
  const r = Math.round(x * 1000) / 1000;
  if (Number.isFinite(r)) return r;
  return Number.isFinite(x) ? x : Math.sign(x) * Number.MAX_VALUE;
}
