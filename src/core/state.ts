import type { Clock } from "./clock";
import { invalid, notFound } from "./errors";
import type { EventBus } from "./events";
import { cloneJson, defineValue, isEmptyObject, jsonEqual } from "./json";
import { newTimeId } from "./ids";
import { emptyObject, plainConstructor } from "./plain";
import type { DeviceRecord, DeviceRegistry } from "./registry";
import { type StateListQuery, listStates } from "./state-list";
import { type StatePlan, planStateSet } from "./state-plan";
import { EMPTY_PROPERTIES, StateRecord, cloneSnapshot, hasDelta, historyItem, snapshot, stateView } from "./state-record";
import {
  DEVICE_STATUSES,
  type DeviceState,
  type DeviceStatus,
  type EventMap,
  type HistoryRow,
  type JsonObject,
  type JsonValue,
  type StateHistoryEntry,
  type StateRow,
  type StateSnapshot,
} from "./types";
import { DEFAULT_TRANSITIONS, type TransitionRules, checkTransition } from "./transitions";
import type { TwinListener } from "./twin";
import { LIMITS, countKeys, propertiesBytesAtMost } from "./validation";

/** The largest report whose values, under the key limit, cannot take a device's properties past their bytes limit. */
const LARGE_REPORT_BYTES = LIMITS.propertiesBytes / LIMITS.propertyKeys;
/** The longest string whose JSON is sure to fit in LARGE_REPORT_BYTES with its key (6 bytes a unit at most, see validation.ts). */
const SMALL_STRING = Math.floor((LARGE_REPORT_BYTES - 6 * LIMITS.keyLength - 8) / 6);

/**
 * Whether a key and its value take more than LARGE_REPORT_BYTES of JSON, for some key: measured
 * only for objects, lists and long strings (numbers, booleans, null and short strings cannot).
 */
function hasLargeEntry(properties: JsonObject): boolean {
  for (const key in properties) {
    const v = properties[key];
    if ((typeof v === "object" && v !== null) || (typeof v === "string" && v.length > SMALL_STRING)) {
      if (Buffer.byteLength(JSON.stringify(key)) + Buffer.byteLength(JSON.stringify(v)) + 2 > LARGE_REPORT_BYTES) return true;
    }
  }
  return false;
}

export { DEFAULT_TRANSITIONS, type TransitionRules } from "./transitions";
export type { StateListQuery } from "./state-list";
export type { StatePlan } from "./state-plan";

export interface StateOptions {
  historySize: number;
  /**
   * Also record a history entry for every reported change whose values go to the time series
   * (CONTRACT §7). Off by default: history is for status and desired changes, and the values
   * are in the series.
   */
  historyOfReports: boolean;
  transitions: TransitionRules;
}

export const DEFAULT_STATE_OPTIONS: StateOptions = { historySize: 100, historyOfReports: false, transitions: DEFAULT_TRANSITIONS };

/** Who caused a change: a reason for history and the id of the message or event behind it. */
export interface ChangeCause {
  reason?: string;
  causeId?: string | null;
  /** The cause of the cause: the event whose flow message asked for this change. */
  parentCauseId?: string | null;
  source?: string;
  /**
   * A change from a broker's stored copy (MQTT retained) replayed on subscribe: it changes values
   * but is no report of now (no `reportedAt`), and anomaly detection does not count it.
   */
  retained?: boolean;
  /**
   * The reported values are kept as a time series (telemetry with a store): the state history
   * then records no entry for them, unless `StateOptions.historyOfReports` asks for one.
   */
  series?: boolean;
}

/**
 * Told about every write of a device's state and every history entry: the persistence layer
 * batches these to the store.
 */
export interface StateSink {
  onStateWritten(deviceId: string): void;
  onStatusWritten(deviceId: string): void;
  onHistory(row: HistoryRow): void;
}

/** Told about every report and status change, for anomaly detection. */
export interface StateObserver {
  /** `cause`: what the report's own events name as their cause (its message's id), for what the observer publishes. */
  onReport(deviceId: string, properties: JsonObject, now: number, cause?: ChangeCause): void;
  /** `retained`: the change came from a broker's stored copy (see ChangeCause.retained). */
  onStatus(deviceId: string, from: DeviceStatus, to: DeviceStatus, now: number, retained?: boolean, cause?: ChangeCause): void;
  onForget(deviceId: string): void;
}

/** Who hears of the manager's changes: anomaly detection, the write-behind store, the twin's delivery. */
export interface StateListeners {
  observer?: StateObserver;
  sink?: StateSink;
  twin?: TwinListener;
}

export interface StateStatistics {
  total: number;
  byStatus: Record<string, number>;
  transitions: number;
  transitionsByStatus: Record<string, number>;
  reports: number;
  changes: number;
  withDelta: number;
}

/**
 * Reported and desired state per device, with a version that moves on every change, a bounded
 * history of changes (from/to/reason/causeId), transition rules for the status, and
 * `state.changed` events.
 */
export class StateManager {
  private readonly counters = { transitions: 0, reports: 0, changes: 0 };
  /** Devices whose desired state differs from the reported one, kept as changes happen. */
  private withDelta = 0;
  private readonly transitionsTo: Record<string, number> = Object.fromEntries(DEVICE_STATUSES.map((s) => [s, 0]));
  /** Devices that have sent a report larger than LARGE_REPORT_BYTES: at least the bytes of JSON of their reported properties (see checkBytes). */
  private readonly large = new Map<string, number>();
  private readonly observer: StateObserver | null;
  private readonly sink: StateSink | null;
  private readonly twin: TwinListener | null;
  /** See `watchChanges`. */
  private readonly watchers = new Set<(deviceId: string) => void>();

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly bus: EventBus,
    private readonly clock: Clock,
    private readonly options: StateOptions = DEFAULT_STATE_OPTIONS,
    listeners: StateListeners = {},
  ) {
    this.observer = listeners.observer ?? null;
    this.sink = listeners.sink ?? null;
    this.twin = listeners.twin ?? null;
  }

  /** Restores a device's state as it was stored (no event, no history entry). */
  restore(
    deviceId: string,
    saved: { properties?: JsonObject; desired?: JsonObject; version: number; changedAt: number; updatedAt: number; reportedAt: number; pointTs?: number; rev?: number },
    /** `saved`'s objects are the caller's to give away (just parsed from a row): kept as they are. */
    adopt = false,
  ): void {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    const s = new StateRecord();
    if (saved.properties) s.properties = adopt ? saved.properties : cloneJson(saved.properties);
    if (saved.desired && !isEmptyObject(saved.desired)) s.desired = adopt ? saved.desired : cloneJson(saved.desired);
    s.version = saved.version;
    s.changedAt = saved.changedAt;
    s.updatedAt = saved.updatedAt;
    s.reportedAt = saved.reportedAt;
    s.pointTs = typeof saved.pointTs === "number" && Number.isFinite(saved.pointTs) ? saved.pointTs : 0;
    s.rev = saved.rev ?? 0;
    record.state = s;
    this.refreshDelta(s);
    // Stored values that may be large (see checkBytes): measured now, so that small reports
    // cannot add to them past the limit.
    if (s.properties && hasLargeEntry(s.properties)) this.large.set(deviceId, Buffer.byteLength(JSON.stringify(s.properties)));
    else if (this.large.size !== 0) this.large.delete(deviceId);
  }

  /** Drops what is kept about a device being removed (call with its record before removal). */
  forget(record: DeviceRecord): void {
    const s = record.state;
    if (s?.hasDelta) this.withDelta--;
    record.state = undefined;
    this.large.delete(record.id);
    this.observer?.onForget(record.id);
  }

  get(deviceId: string): DeviceState {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    return stateView(record, record.state);
  }

  /**
   * Merges reported properties. Every live report stamps `reportedAt`; only a report that changes a
   * value moves the version and `updatedAt`, writes history and publishes `state.changed`.
   * The caller has checked the payload (see `checkProperties` in validation.ts).
   */
  report(deviceId: string, properties: JsonObject, cause: ChangeCause = {}): boolean {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    const now = this.clock.now();
    let from: JsonObject | null = null;
    let to: JsonObject | null = null;
    const current = record.state?.properties ?? EMPTY_PROPERTIES;
    const desired = record.state?.desired ?? null;
    let twinMoved = false;
    let added = 0;
    // Whether an old or new value is an object or array (see `commit`'s `shared`).
    let deep = false;
    // for…in over own keys: unlike Object.keys, it builds no array for an object of a known shape.
    for (const key in properties) {
      if (!Object.hasOwn(properties, key)) continue;
      const value = properties[key] as JsonValue;
      const had = Object.hasOwn(current, key);
      if (had && jsonEqual(current[key], value)) continue;
      if (!had) added++;
      // The delta holds the desired value itself: it changes only when the key starts or stops matching.
      if (desired !== null && Object.hasOwn(desired, key)) {
        const want = desired[key] as JsonValue;
        if ((had && jsonEqual(current[key], want)) !== jsonEqual(value, want)) twinMoved = true;
      }
      // Not literals: state.changed events carry them (see plain.ts).
      from ??= emptyObject<JsonObject>();
      to ??= emptyObject<JsonObject>();
      const old = had ? (current[key] as JsonValue) : null;
      if (!deep && ((typeof value === "object" && value !== null) || (typeof old === "object" && old !== null))) deep = true;
      // Stored values are replaced, never changed in place, so history may share them.
      defineValue(from, key, old);
      defineValue(to, key, cloneJson(value));
    }
    if (added > 0 && countKeys(current) + added > LIMITS.propertyKeys) {
      throw invalid("properties", `a device keeps at most ${LIMITS.propertyKeys} properties`);
    }
    // Stamped only once the report is accepted: a refused report changes nothing.
    const s = this.ensure(record);
    this.counters.reports++;
    if (cause.retained) {
      if (!from || !to) return false;
    } else {
      s.reportedAt = now;
      this.observer?.onReport(deviceId, properties, now, cause);
    }
    if (!from || !to) {
      // Only reportedAt moved: still a write the store should see, batched like the rest.
      s.rev++;
      this.sink?.onStateWritten(deviceId);
      return false;
    }
    const stored = (s.properties ??= {});
    for (const key in to) if (Object.hasOwn(to, key)) defineValue(stored, key, to[key] as JsonValue);
    if (s.desired) this.refreshDelta(s);
    const keepHistory = !cause.series || this.options.historyOfReports;
    // With history kept, its entry holds `from` and `to` too: the event gets copies.
    this.commit(record, s, now, new PropertiesSnapshot(from), new PropertiesSnapshot(to), cause, cause.reason ?? "report", keepHistory, !deep && !keepHistory);
    if (twinMoved) this.twin?.onTwinChanged(deviceId, false);
    return true;
  }

  /**
   * Throws INVALID when merging `properties` would take the device past the property limit:
   * lets a caller refuse a message before anything else (a heartbeat) has happened.
   */
  checkCapacity(deviceId: string, properties: JsonObject): void {
    const record = this.registry.record(deviceId);
    const current = record?.state?.properties ?? EMPTY_PROPERTIES;
    const have = countKeys(current);
    if (have + countKeys(properties) > LIMITS.propertyKeys) {
      let added = 0;
      for (const key in properties) if (Object.hasOwn(properties, key) && !Object.hasOwn(current, key)) added++;
      if (have + added > LIMITS.propertyKeys) {
        throw invalid("properties", `a device keeps at most ${LIMITS.propertyKeys} properties`);
      }
    }
    this.checkBytes(deviceId, current, properties);
  }

  /**
   * The bytes limit of a device's reported properties, merged (each report is checked on its own
   * before this). While every key and value of a device's take at most LIMITS.propertiesBytes /
   * LIMITS.propertyKeys bytes of JSON, the key limit keeps the whole within the bytes limit; a
   * device with a larger one is followed in `large` by a bound of its whole: the bound plus each
   * report's own, and when that passes the limit, the merged properties are measured.
   */
  private checkBytes(deviceId: string, current: JsonObject, properties: JsonObject): void {
    const bound = propertiesBytesAtMost();
    let whole = this.large.size === 0 ? undefined : this.large.get(deviceId);
    if (whole === undefined) {
      if (bound <= LARGE_REPORT_BYTES || !hasLargeEntry(properties)) return;
      whole = current === EMPTY_PROPERTIES ? 2 : Buffer.byteLength(JSON.stringify(current));
    }
    let after = whole + bound;
    if (after > LIMITS.propertiesBytes) {
      after = Buffer.byteLength(JSON.stringify({ ...current, ...properties }));
      // Properties kept from before the bound (or a smaller bound) may still shrink: compared
      // with what they measure now, not with `whole`, which may be a bound above it.
      if (after > LIMITS.propertiesBytes && after > Buffer.byteLength(JSON.stringify(current))) {
        throw invalid("properties", `would be ${after} bytes of JSON in all, more than the ${LIMITS.propertiesBytes} a device's reported properties may hold`);
      }
    }
    this.large.set(deviceId, after);
  }

  /**
   * Checks a set of desired values and/or the status and works out its result without changing
   * anything (see `planStateSet`), so the caller can make the result durable first and then
   * `applySet` it.
   */
  planSet(deviceId: string, input: unknown): StatePlan {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    return planStateSet(record, input, this.options.transitions, this.clock.now());
  }

  /** Applies a plan from `planSet`: one version, one history entry, one `state.changed`. */
  applySet(plan: StatePlan, cause: ChangeCause = {}): DeviceState {
    const record = this.registry.record(plan.deviceId);
    if (!record) throw notFound("device", plan.deviceId);
    if (!plan.changed) return stateView(record, record.state);
    const target = this.ensure(record);
    if (plan.to.desired !== undefined) {
      target.desired = isEmptyObject(plan.desired) ? null : plan.desired;
      this.refreshDelta(target);
    }
    // Checked when planned; a heartbeat transition since then does not undo the caller's choice.
    if (plan.to.status !== undefined && plan.to.status !== record.status) this.applyStatus(record, plan.to.status, plan.at, false, cause);
    this.commit(record, target, plan.at, plan.from, plan.to, cause, cause.reason ?? "set");
    if (plan.to.desired !== undefined) this.twin?.onTwinChanged(plan.deviceId, true);
    return stateView(record, target);
  }

  /** The state as a store row (a snapshot: later changes do not reach it). */
  row(deviceId: string): StateRow | null {
    const record = this.registry.record(deviceId);
    const s = record?.state;
    if (!s) return null;
    return {
      deviceId,
      properties: s.properties ? { ...s.properties } : {},
      desired: s.desired ? { ...s.desired } : {},
      version: s.version,
      changedAt: s.changedAt,
      updatedAt: s.updatedAt,
      reportedAt: s.reportedAt,
      pointTs: s.pointTs,
      rev: s.rev,
    };
  }

  /**
   * Moves a device to another status, checking the rules. Returns false when it already had it.
   * The heartbeat monitor and device status reports come through here.
   */
  setStatus(deviceId: string, status: DeviceStatus, cause: ChangeCause = {}): boolean {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    if (record.status === status) return false;
    checkTransition(this.options.transitions, record.status, status);
    const from = record.status;
    const now = this.clock.now();
    this.applyStatus(record, status, now, cause.retained === true, cause);
    this.commit(record, this.ensure(record), now, new StatusSnapshot(from), new StatusSnapshot(status), cause, cause.reason ?? "status", true, true);
    return true;
  }

  /**
   * Calls `watcher` with the device's id after every change of a device's state (what a
   * `state.changed` event reports), without building the event: for watchers that only need to
   * know which devices moved (the editor's Devices sidebar). A watcher must not throw. Returns
   * the call that stops it.
   */
  watchChanges(watcher: (deviceId: string) => void): () => void {
    this.watchers.add(watcher);
    return () => {
      this.watchers.delete(watcher);
    };
  }

  /** Changes kept per device. */
  get historySize(): number {
    return this.options.historySize;
  }

  private applyStatus(record: DeviceRecord, to: DeviceStatus, now: number, retained = false, cause?: ChangeCause): void {
    const from = record.status;
    this.registry.setStatus(record, to);
    this.counters.transitions++;
    this.transitionsTo[to] = (this.transitionsTo[to] ?? 0) + 1;
    this.observer?.onStatus(record.id, from, to, now, retained, cause);
  }

  history(deviceId: string, limit = this.options.historySize): StateHistoryEntry[] {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    return record.state?.historyEntries(deviceId, limit, this.options.historySize) ?? [];
  }

  /** States page by page, filtered by status and protocol (see `listStates`). */
  list(query: StateListQuery = {}): { states: DeviceState[]; total: number } {
    return listStates(this.registry, query);
  }

  statistics(): StateStatistics {
    return {
      total: this.registry.size,
      byStatus: this.registry.statistics().byStatus,
      transitions: this.counters.transitions,
      transitionsByStatus: { ...this.transitionsTo },
      reports: this.counters.reports,
      changes: this.counters.changes,
      withDelta: this.withDelta,
    };
  }

  private ensure(record: DeviceRecord): StateRecord {
    let s = record.state;
    if (!s) {
      s = new StateRecord();
      record.state = s;
    }
    return s;
  }

  private refreshDelta(s: StateRecord): void {
    const has = s.desired !== null && hasDelta(s);
    if (has !== s.hasDelta) {
      s.hasDelta = has;
      this.withDelta += has ? 1 : -1;
    }
  }

  private commit(
    record: DeviceRecord,
    s: StateRecord,
    now: number,
    from: StateSnapshot,
    to: StateSnapshot,
    cause: ChangeCause,
    reason: string,
    /** False for reported values kept as a time series (see ChangeCause.series). */
    keepHistory = true,
    /**
     * True when `from` and `to` were made for this change, hold no object or array, and nothing
     * else keeps them: the event can carry them as they are. Otherwise it gets copies, so that
     * nothing a subscriber holds reaches what the device's state or its history holds.
     */
    shared = false,
  ): void {
    s.version++;
    s.rev++;
    // As in Home Assistant: changedAt moves with the status, updatedAt with any change.
    if (to.status !== undefined) s.changedAt = now;
    s.updatedAt = now;
    this.counters.changes++;
    const causeId = cause.causeId ?? null;
    const item = keepHistory ? historyItem(now, s.version, reason, causeId, from, to) : null;
    if (item) s.pushHistory(item, this.options.historySize);
    if (this.sink) {
      this.sink.onStateWritten(record.id);
      if (to.status !== undefined) this.sink.onStatusWritten(record.id);
      if (item) this.sink.onHistory({
        id: newTimeId(now),
        deviceId: record.id,
        at: now,
        version: s.version,
        from: snapshot(item.fromStatus, item.fromProperties, item.fromDesired),
        to: snapshot(item.toStatus, item.toProperties, item.toDesired),
        reason,
        causeId,
      });
    }
    if (this.watchers.size > 0) for (const watcher of this.watchers) watcher(record.id);
    if (!this.bus.hasSubscribers("state.changed", record.id) && !this.bus.keepsHistoryOf("state.changed")) return;
    this.bus.publish(
      "state.changed",
      new ChangedData(shared ? from : cloneSnapshot(from), shared ? to : cloneSnapshot(to), reason, s.version, stateView(record, s)),
      { deviceId: record.id, source: cause.source ?? "state", causeId, parentCauseId: cause.parentCauseId ?? null },
    );
  }
}

/** What a state.changed event carries, made by constructors, not literals (see plain.ts). */
const ChangedData = plainConstructor(function (this: EventMap["state.changed"], from: StateSnapshot, to: StateSnapshot, reason: string, version: number, state: DeviceState) {
  this.from = from;
  this.to = to;
  this.reason = reason;
  this.version = version;
  this.state = state;
});
const StatusSnapshot = plainConstructor(function (this: StateSnapshot, status: DeviceStatus) {
  this.status = status;
});
const PropertiesSnapshot = plainConstructor(function (this: StateSnapshot, properties: JsonObject) {
  this.properties = properties;
});
