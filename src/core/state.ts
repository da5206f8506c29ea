import type { Clock } from "./clock";
import { TethralError, invalid, notFound } from "./errors";
import type { EventBus } from "./events";
import { cloneJson, defineValue, isEmptyObject, jsonEqual } from "./json";
import { newTimeId } from "./ids";
import type { DeviceRecord, DeviceRegistry } from "./registry";
import { EMPTY_PROPERTIES, type HistoryItem, StateRecord, cloneSnapshot, hasDelta, snapshot, stateOf, stateView } from "./state-record";
import {
  DEVICE_STATUSES,
  type DeviceState,
  type DeviceStatus,
  type HistoryRow,
  type JsonObject,
  type JsonValue,
  type StateHistoryEntry,
  type StateRow,
  type StateSnapshot,
} from "./types";
import { DEFAULT_TRANSITIONS, type TransitionRules, allowsTransition, checkTransition } from "./transitions";
import type { TwinListener } from "./twin";
import { LIMITS, checkJsonObject, parseInput, stateSetSchema } from "./validation";
import { type FilterValues, listFilter } from "./registry-query";
import { z } from "zod";

export { DEFAULT_TRANSITIONS, type TransitionRules } from "./transitions";

export interface StateOptions {
  historySize: number;
  transitions: TransitionRules;
}

export const DEFAULT_STATE_OPTIONS: StateOptions = { historySize: 100, transitions: DEFAULT_TRANSITIONS };

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

/** A `set` worked out but not applied (see `planSet`). */
export interface StatePlan {
  deviceId: string;
  changed: boolean;
  from: StateSnapshot;
  to: StateSnapshot;
  desired: JsonObject;
  at: number;
  /** The state as it will be stored once applied. */
  row: StateRow;
}

/** Told about every report and status change, for anomaly detection. */
export interface StateObserver {
  onReport(deviceId: string, properties: JsonObject, now: number): void;
  /** `retained`: the change came from a broker's stored copy (see ChangeCause.retained). */
  onStatus(deviceId: string, from: DeviceStatus, to: DeviceStatus, now: number, retained?: boolean): void;
  onForget(deviceId: string): void;
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
  observer: StateObserver | null = null;
  sink: StateSink | null = null;
  twin: TwinListener | null = null;

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly bus: EventBus,
    private readonly clock: Clock,
    private readonly options: StateOptions = DEFAULT_STATE_OPTIONS,
  ) {}

  /** Restores a device's state as it was stored (no event, no history entry). */
  restore(
    deviceId: string,
    saved: { properties?: JsonObject; desired?: JsonObject; version: number; changedAt: number; updatedAt: number; reportedAt: number; rev?: number },
  ): void {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    const s = new StateRecord();
    if (saved.properties) s.properties = cloneJson(saved.properties);
    if (saved.desired && !isEmptyObject(saved.desired)) s.desired = cloneJson(saved.desired);
    s.version = saved.version;
    s.changedAt = saved.changedAt;
    s.updatedAt = saved.updatedAt;
    s.reportedAt = saved.reportedAt;
    s.rev = saved.rev ?? 0;
    record.state = s;
    this.refreshDelta(s);
  }

  /** Drops what is kept about a device being removed (call with its record before removal). */
  forget(record: DeviceRecord): void {
    const s = stateOf(record);
    if (s?.hasDelta) this.withDelta--;
    record.state = undefined;
    this.observer?.onForget(record.id);
  }

  get(deviceId: string): DeviceState {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    return stateView(record, stateOf(record));
  }

  /**
   * Merges reported properties. Every live report stamps `reportedAt`; only a report that changes a
   * value moves the version and `updatedAt`, writes history and publishes `state.changed`.
   * The caller has checked the payload (see `checkProperties`).
   */
  report(deviceId: string, properties: JsonObject, cause: ChangeCause = {}): boolean {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    const now = this.clock.now();
    let from: JsonObject | null = null;
    let to: JsonObject | null = null;
    const current = stateOf(record)?.properties ?? EMPTY_PROPERTIES;
    const desired = stateOf(record)?.desired ?? null;
    let twinMoved = false;
    let added = 0;
    for (const key of Object.keys(properties)) {
      const value = properties[key] as JsonValue;
      const had = Object.hasOwn(current, key);
      if (had && jsonEqual(current[key], value)) continue;
      if (!had) added++;
      // The delta holds the desired value itself: it changes only when the key starts or stops matching.
      if (desired !== null && Object.hasOwn(desired, key)) {
        const want = desired[key] as JsonValue;
        if ((had && jsonEqual(current[key], want)) !== jsonEqual(value, want)) twinMoved = true;
      }
      from ??= {};
      to ??= {};
      // Stored values are replaced, never changed in place, so history may share them.
      defineValue(from, key, had ? (current[key] as JsonValue) : null);
      defineValue(to, key, cloneJson(value));
    }
    if (added > 0 && Object.keys(current).length + added > LIMITS.propertyKeys) {
      throw invalid("properties", `a device keeps at most ${LIMITS.propertyKeys} properties`);
    }
    // Stamped only once the report is accepted: a refused report changes nothing.
    const s = this.ensure(record);
    this.counters.reports++;
    if (cause.retained) {
      if (!from || !to) return false;
    } else {
      s.reportedAt = now;
      this.observer?.onReport(deviceId, properties, now);
    }
    if (!from || !to) {
      // Only reportedAt moved: still a write the store should see, batched like the rest.
      s.rev++;
      this.sink?.onStateWritten(deviceId);
      return false;
    }
    const stored = (s.properties ??= {});
    for (const key of Object.keys(to)) defineValue(stored, key, to[key] as JsonValue);
    if (s.desired) this.refreshDelta(s);
    this.commit(record, s, now, { properties: from }, { properties: to }, cause, cause.reason ?? "report");
    if (twinMoved) this.twin?.onTwinChanged(deviceId);
    return true;
  }

  /**
   * Throws INVALID when merging `properties` would take the device past the property limit:
   * lets a caller refuse a message before anything else (a heartbeat) has happened.
   */
  checkCapacity(deviceId: string, properties: JsonObject): void {
    const record = this.registry.record(deviceId);
    const current = (record && stateOf(record)?.properties) ?? EMPTY_PROPERTIES;
    const keys = Object.keys(properties);
    const have = Object.keys(current).length;
    if (have + keys.length <= LIMITS.propertyKeys) return;
    let added = 0;
    for (const key of keys) if (!Object.hasOwn(current, key)) added++;
    if (have + added > LIMITS.propertyKeys) {
      throw invalid("properties", `a device keeps at most ${LIMITS.propertyKeys} properties`);
    }
  }

  /** Checks a properties payload from a device or flow: a JSON object within the limits. */
  static checkProperties(properties: unknown, field = "properties"): JsonObject {
    const problem = checkJsonObject(properties, field, LIMITS.propertiesBytes, LIMITS.propertyKeys);
    if (problem) throw invalid(problem.field, problem.message);
    return properties as JsonObject;
  }

  /**
   * Sets desired values and/or the status in one change. `null` in `desired` removes that key.
   * With `expectedVersion`, a stale version is a CONFLICT and nothing changes.
   */
  set(deviceId: string, input: unknown, cause: ChangeCause = {}): DeviceState {
    const plan = this.planSet(deviceId, input);
    return plan.changed ? this.applySet(plan, cause) : this.get(deviceId);
  }

  /**
   * Checks a `set` and works out its result without changing anything, so the caller can make
   * the result durable first and then `applySet` it. Throws as `set` would.
   */
  planSet(deviceId: string, input: unknown): StatePlan {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    const data = parseInput(stateSetSchema, input, "state");
    const s = stateOf(record);
    const version = s?.version ?? 0;
    if (data.expectedVersion !== undefined && data.expectedVersion !== version) {
      throw new TethralError("CONFLICT", `state of "${deviceId}" is at version ${version}, not ${data.expectedVersion}`, [
        { field: "expectedVersion", message: `is stale: the current version is ${version}` },
      ]);
    }
    if (data.status !== undefined) checkTransition(this.options.transitions, record.status, data.status);

    const from: StateSnapshot = {};
    const to: StateSnapshot = {};
    const current = s?.desired ?? EMPTY_PROPERTIES;
    const desired: JsonObject = { ...current };
    if (data.desired !== undefined) {
      const before: JsonObject = {};
      const after: JsonObject = {};
      for (const key of Object.keys(data.desired)) {
        const value = data.desired[key] as JsonValue;
        const had = Object.hasOwn(current, key);
        if (value === null ? !had : had && jsonEqual(current[key], value)) continue;
        defineValue(before, key, had ? cloneJson(current[key] as JsonValue) : null);
        defineValue(after, key, cloneJson(value));
        if (value === null) delete desired[key];
        else defineValue(desired, key, after[key] as JsonValue);
      }
      if (!isEmptyObject(after)) {
        from.desired = before;
        to.desired = after;
        checkDesiredTotal(current, desired, after);
      }
    }
    if (data.status !== undefined && data.status !== record.status) {
      from.status = record.status;
      to.status = data.status;
    }
    const changed = from.desired !== undefined || from.status !== undefined;
    const now = this.clock.now();
    return {
      deviceId,
      changed,
      from,
      to,
      desired,
      at: now,
      row: {
        deviceId,
        properties: s?.properties ? { ...s.properties } : {},
        desired,
        version: version + (changed ? 1 : 0),
        changedAt: to.status !== undefined ? now : (s?.changedAt ?? 0),
        updatedAt: changed ? now : (s?.updatedAt ?? 0),
        reportedAt: s?.reportedAt ?? 0,
        rev: (s?.rev ?? 0) + 1,
      },
    };
  }

  /** Applies a plan from `planSet`: one version, one history entry, one `state.changed`. */
  applySet(plan: StatePlan, cause: ChangeCause = {}): DeviceState {
    const record = this.registry.record(plan.deviceId);
    if (!record) throw notFound("device", plan.deviceId);
    if (!plan.changed) return stateView(record, stateOf(record));
    const target = this.ensure(record);
    if (plan.to.desired !== undefined) {
      target.desired = isEmptyObject(plan.desired) ? null : plan.desired;
      this.refreshDelta(target);
    }
    // Checked when planned; a heartbeat transition since then does not undo the caller's choice.
    if (plan.to.status !== undefined && plan.to.status !== record.status) this.applyStatus(record, plan.to.status, plan.at);
    this.commit(record, target, plan.at, plan.from, plan.to, cause, cause.reason ?? "set");
    if (plan.to.desired !== undefined) this.twin?.onTwinChanged(plan.deviceId);
    return stateView(record, target);
  }

  /** The state as a store row (a snapshot: later changes do not reach it). */
  row(deviceId: string): StateRow | null {
    const record = this.registry.record(deviceId);
    const s = record && stateOf(record);
    if (!s) return null;
    return {
      deviceId,
      properties: s.properties ? { ...s.properties } : {},
      desired: s.desired ? { ...s.desired } : {},
      version: s.version,
      changedAt: s.changedAt,
      updatedAt: s.updatedAt,
      reportedAt: s.reportedAt,
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
    this.applyStatus(record, status, now, cause.retained === true);
    this.commit(record, this.ensure(record), now, { status: from }, { status }, cause, cause.reason ?? "status");
    return true;
  }

  /** Changes kept per device. */
  get historySize(): number {
    return this.options.historySize;
  }

  canTransition(from: DeviceStatus, to: DeviceStatus): boolean {
    return allowsTransition(this.options.transitions, from, to);
  }

  private applyStatus(record: DeviceRecord, to: DeviceStatus, now: number, retained = false): void {
    const from = record.status;
    this.registry.setStatus(record, to);
    this.counters.transitions++;
    this.transitionsTo[to] = (this.transitionsTo[to] ?? 0) + 1;
    this.observer?.onStatus(record.id, from, to, now, retained);
  }

  history(deviceId: string, limit = this.options.historySize): StateHistoryEntry[] {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    return stateOf(record)?.historyEntries(deviceId, limit, this.options.historySize) ?? [];
  }

  /** States of all devices, or of those with a status (through the registry's status index). */
  /**
   * States page by page, filtered by status and protocol (each one value, a comma-separated
   * list or a list). Walks the smaller of the matching index buckets, never the whole fleet
   * unless no filter is given.
   */
  list(query: StateListQuery = {}): { states: DeviceState[]; total: number } {
    const offset = query.offset ?? 0;
    const limit = query.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 0 || limit > 100_000) throw invalid("limit", "must be a whole number from 0 to 100000");
    if (!Number.isInteger(offset) || offset < 0) throw invalid("offset", "must be a whole number, 0 or more");
    const { status, protocol } = parseInput(stateFilterSchema, { status: query.status, protocol: query.protocol }, "state filter");
    const byStatus = status?.map((v) => this.registry.withStatus(v as DeviceStatus));
    const byProtocol = protocol?.map((v) => this.registry.withProtocol(v));
    const sizeOf = (buckets: Array<{ size: number } | undefined>) => buckets.reduce((n, b) => n + (b?.size ?? 0), 0);

    const states: DeviceState[] = [];
    const take = (record: DeviceRecord, i: number) => {
      if (i >= offset && i < offset + limit) states.push(stateView(record, stateOf(record)));
    };
    if (!byStatus && !byProtocol) {
      let i = 0;
      for (const record of this.registry.allRecords()) {
        if (i >= offset + limit) break;
        take(record, i++);
      }
      return { states, total: this.registry.size };
    }
    // One kind of filter: its buckets never overlap (a device has one status and one protocol).
    if (!byStatus || !byProtocol) {
      const buckets = (byStatus ?? byProtocol)!;
      let i = 0;
      page: for (const bucket of buckets) {
        for (const record of bucket ?? []) {
          if (i >= offset + limit) break page;
          take(record, i++);
        }
      }
      return { states, total: sizeOf(buckets) };
    }
    const statusFirst = sizeOf(byStatus) <= sizeOf(byProtocol);
    const driver = statusFirst ? byStatus : byProtocol;
    const wanted = new Set<string>(statusFirst ? protocol : status);
    let total = 0;
    for (const bucket of driver) {
      for (const record of bucket ?? []) {
        if (wanted.has(statusFirst ? record.protocol : record.status)) take(record, total++);
      }
    }
    return { states, total };
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
    let s = stateOf(record);
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
  ): void {
    s.version++;
    s.rev++;
    // As in Home Assistant: changedAt moves with the status, updatedAt with any change.
    if (to.status !== undefined) s.changedAt = now;
    s.updatedAt = now;
    this.counters.changes++;
    const causeId = cause.causeId ?? null;
    const item: HistoryItem = {
      at: now,
      version: s.version,
      reason,
      causeId,
      fromStatus: from.status,
      toStatus: to.status,
      fromProperties: from.properties,
      toProperties: to.properties,
      fromDesired: from.desired,
      toDesired: to.desired,
    };
    s.pushHistory(item, this.options.historySize);
    if (this.sink) {
      this.sink.onStateWritten(record.id);
      if (to.status !== undefined) this.sink.onStatusWritten(record.id);
      this.sink.onHistory({
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
    if (!this.bus.hasSubscribers("state.changed", record.id) && !this.bus.keepsHistoryOf("state.changed")) return;
    this.bus.publish(
      "state.changed",
      { from: cloneSnapshot(from), to: cloneSnapshot(to), reason, version: s.version, state: stateView(record, s) },
      { deviceId: record.id, source: cause.source ?? "state", causeId, parentCauseId: cause.parentCauseId ?? null },
    );
  }
}

/** `listStates` filters: one value, a comma-separated list or a list, in any case. */
export interface StateListQuery {
  status?: FilterValues;
  protocol?: FilterValues;
  limit?: number;
  offset?: number;
}

const stateFilterSchema = z.object({ status: listFilter(32, DEVICE_STATUSES), protocol: listFilter(64) });

/**
 * Each set's desired is checked on its own, but sets merge: without a bound on the whole, desired
 * could grow set by set without end, and every change of it goes to the device whole (the twin,
 * with its delta, on MQTT, WebSocket and CoAP). A set that only changes or removes keys within
 * the bounds passes; one that would take desired past them is INVALID.
 */
function checkDesiredTotal(current: JsonObject, desired: JsonObject, after: JsonObject): void {
  const keys = Object.keys(desired).length;
  if (keys > LIMITS.propertyKeys && keys > Object.keys(current).length) {
    throw invalid("desired", `a device keeps at most ${LIMITS.propertyKeys} desired keys; this would make ${keys}`);
  }
  if (Object.values(after).every((v) => v === null)) return;
  const bytes = Buffer.byteLength(JSON.stringify(desired));
  // Desired kept from before the bound (or a smaller bound) may still shrink.
  if (bytes > LIMITS.propertiesBytes && bytes > Buffer.byteLength(JSON.stringify(current))) {
    throw invalid("desired", `would be ${bytes} bytes of JSON in all, more than the ${LIMITS.propertiesBytes} a device's desired state may hold`);
  }
}
