import type { Clock } from "./clock";
import { TethralError, invalid, notFound } from "./errors";
import type { EventBus } from "./events";
import { cloneJson, defineValue, isEmptyObject, jsonEqual, isoOrNull } from "./json";
import type { DeviceRecord, DeviceRegistry } from "./registry";
import {
  DEVICE_STATUSES,
  type DeviceState,
  type DeviceStatus,
  type JsonObject,
  type JsonValue,
  type StateHistoryEntry,
  type StateSnapshot,
} from "./types";
import { LIMITS, checkJsonObject, parseInput, stateSetSchema } from "./validation";

/** Which status may follow which. Setting the current status again is not a transition. */
export type TransitionRules = Record<DeviceStatus, readonly DeviceStatus[]>;

/**
 * The default rules: `unknown` is where a device starts and only maintenance can lead back
 * to it (a cleared maintenance whose device has not been heard from since).
 */
export const DEFAULT_TRANSITIONS: TransitionRules = {
  unknown: ["online", "offline", "error", "maintenance"],
  online: ["offline", "error", "maintenance"],
  offline: ["online", "error", "maintenance"],
  error: ["online", "offline", "maintenance"],
  maintenance: ["unknown", "online", "offline", "error"],
};

export interface StateOptions {
  historySize: number;
  transitions: TransitionRules;
}

export const DEFAULT_STATE_OPTIONS: StateOptions = { historySize: 100, transitions: DEFAULT_TRANSITIONS };

/** Who caused a change: a reason for history and the id of the message or event behind it. */
export interface ChangeCause {
  reason?: string;
  causeId?: string | null;
  source?: string;
}

/** Told about every report and status change, for anomaly detection. */
export interface StateObserver {
  onReport(deviceId: string, properties: JsonObject, now: number): void;
  onStatus(deviceId: string, from: DeviceStatus, to: DeviceStatus, now: number): void;
  onForget(deviceId: string): void;
}

interface HistoryItem {
  at: number;
  version: number;
  from: StateSnapshot;
  to: StateSnapshot;
  reason: string;
  causeId: string | null;
}

/** A device's state apart from its status (which lives on the registry record and its index). */
class StateRecord {
  properties: JsonObject = {};
  desired: JsonObject | null = null;
  version = 0;
  changedAt = 0;
  updatedAt = 0;
  reportedAt = 0;
  history: HistoryItem[] | null = null;
  historyHead = 0;
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
  private readonly states = new Map<string, StateRecord>();
  private readonly counters = { transitions: 0, reports: 0, changes: 0 };
  private readonly transitionsTo: Record<string, number> = Object.fromEntries(DEVICE_STATUSES.map((s) => [s, 0]));
  observer: StateObserver | null = null;

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly bus: EventBus,
    private readonly clock: Clock,
    private readonly options: StateOptions = DEFAULT_STATE_OPTIONS,
  ) {}

  /** Restores a device's state as it was stored (no event, no history entry). */
  restore(
    deviceId: string,
    saved: { properties?: JsonObject; desired?: JsonObject; version: number; changedAt: number; updatedAt: number; reportedAt: number },
  ): void {
    const s = new StateRecord();
    if (saved.properties) s.properties = cloneJson(saved.properties);
    if (saved.desired && !isEmptyObject(saved.desired)) s.desired = cloneJson(saved.desired);
    s.version = saved.version;
    s.changedAt = saved.changedAt;
    s.updatedAt = saved.updatedAt;
    s.reportedAt = saved.reportedAt;
    this.states.set(deviceId, s);
  }

  forget(deviceId: string): void {
    this.states.delete(deviceId);
    this.observer?.onForget(deviceId);
  }

  get(deviceId: string): DeviceState {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    return this.view(record, this.states.get(deviceId));
  }

  /**
   * Merges reported properties. Every report stamps `reportedAt`; only a report that changes a
   * value moves the version and `changedAt`, writes history and publishes `state.changed`.
   * The caller has checked the payload (see `checkProperties`).
   */
  report(deviceId: string, properties: JsonObject, cause: ChangeCause = {}): boolean {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    const now = this.clock.now();
    const s = this.ensure(deviceId);
    this.counters.reports++;
    s.reportedAt = now;
    let from: JsonObject | null = null;
    let to: JsonObject | null = null;
    const current = s.properties;
    let added = 0;
    for (const key of Object.keys(properties)) {
      const value = properties[key] as JsonValue;
      const had = Object.hasOwn(current, key);
      if (had && jsonEqual(current[key], value)) continue;
      if (!had) added++;
      from ??= {};
      to ??= {};
      defineValue(from, key, had ? (current[key] as JsonValue) : null);
      defineValue(to, key, value);
    }
    if (added > 0 && Object.keys(current).length + added > LIMITS.propertyKeys) {
      throw invalid("properties", `a device keeps at most ${LIMITS.propertyKeys} properties`);
    }
    this.observer?.onReport(deviceId, properties, now);
    if (!from || !to) return false;
    for (const key of Object.keys(to)) defineValue(current, key, cloneJson(to[key] as JsonValue));
    this.commit(record, s, now, { properties: from }, { properties: cloneJson(to) }, cause, cause.reason ?? "report");
    return true;
  }

  /** Checks a properties payload from a device or flow: a JSON object within the limits. */
  static checkProperties(properties: unknown, field = "properties"): JsonObject {
    const problem = checkJsonObject(properties, field, LIMITS.propertiesBytes, LIMITS.propertyKeys);
    if (problem) throw new TethralError("INVALID", `${problem.field}: ${problem.message}`, [problem]);
    return properties as JsonObject;
  }

  /**
   * Sets desired values and/or the status in one change. `null` in `desired` removes that key.
   * With `expectedVersion`, a stale version is a CONFLICT and nothing changes.
   */
  set(deviceId: string, input: unknown, cause: ChangeCause = {}): DeviceState {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    const data = parseInput(stateSetSchema, input, "state");
    const s = this.states.get(deviceId);
    const version = s?.version ?? 0;
    if (data.expectedVersion !== undefined && data.expectedVersion !== version) {
      throw new TethralError("CONFLICT", `state of "${deviceId}" is at version ${version}, not ${data.expectedVersion}`, [
        { field: "expectedVersion", message: `is stale: the current version is ${version}` },
      ]);
    }
    if (data.status !== undefined) this.checkTransition(record.status, data.status);

    const from: StateSnapshot = {};
    const to: StateSnapshot = {};
    if (data.desired !== undefined) {
      const desired = s?.desired ?? {};
      const before: JsonObject = {};
      const after: JsonObject = {};
      let changed = false;
      for (const key of Object.keys(data.desired)) {
        const value = data.desired[key] as JsonValue;
        const had = Object.hasOwn(desired, key);
        if (value === null ? !had : had && jsonEqual(desired[key], value)) continue;
        changed = true;
        defineValue(before, key, had ? cloneJson(desired[key] as JsonValue) : null);
        defineValue(after, key, cloneJson(value));
      }
      if (changed) {
        const next = s?.desired ? s.desired : {};
        for (const key of Object.keys(after)) {
          if (after[key] === null) delete next[key];
          else defineValue(next, key, after[key] as JsonValue);
        }
        const target = this.ensure(deviceId);
        target.desired = isEmptyObject(next) ? null : next;
        from.desired = before;
        to.desired = after;
      }
    }
    if (data.status !== undefined && data.status !== record.status) {
      from.status = record.status;
      to.status = data.status;
    }
    if (from.desired === undefined && from.status === undefined) return this.view(record, s);
    const now = this.clock.now();
    if (to.status !== undefined) this.applyStatus(record, to.status, now);
    this.commit(record, this.ensure(deviceId), now, from, to, cause, cause.reason ?? "set");
    return this.view(record, this.states.get(deviceId));
  }

  /**
   * Moves a device to another status, checking the rules. Returns false when it already had it.
   * The heartbeat monitor and device status reports come through here.
   */
  setStatus(deviceId: string, status: DeviceStatus, cause: ChangeCause = {}): boolean {
    const record = this.registry.record(deviceId);
    if (!record) throw notFound("device", deviceId);
    if (record.status === status) return false;
    this.checkTransition(record.status, status);
    const from = record.status;
    const now = this.clock.now();
    this.applyStatus(record, status, now);
    this.commit(record, this.ensure(deviceId), now, { status: from }, { status }, cause, cause.reason ?? "status");
    return true;
  }

  canTransition(from: DeviceStatus, to: DeviceStatus): boolean {
    return from === to || this.options.transitions[from].includes(to);
  }

  private checkTransition(from: DeviceStatus, to: DeviceStatus): void {
    if (!this.canTransition(from, to)) {
      throw new TethralError("INVALID", `status cannot change from ${from} to ${to}`, [
        { field: "status", message: `cannot change from ${from} to ${to}; allowed: ${this.options.transitions[from].join(", ")}` },
      ]);
    }
  }

  private applyStatus(record: DeviceRecord, to: DeviceStatus, now: number): void {
    const from = record.status;
    this.registry.setStatus(record, to);
    this.counters.transitions++;
    this.transitionsTo[to] = (this.transitionsTo[to] ?? 0) + 1;
    this.observer?.onStatus(record.id, from, to, now);
  }

  history(deviceId: string, limit = this.options.historySize): StateHistoryEntry[] {
    if (!this.registry.has(deviceId)) throw notFound("device", deviceId);
    const s = this.states.get(deviceId);
    if (!s?.history) return [];
    const h = s.history;
    const n = Math.min(limit, h.length);
    const out: StateHistoryEntry[] = [];
    // Newest last: the ring's oldest kept entry sits at historyHead once it is full.
    for (let i = h.length - n; i < h.length; i++) {
      const item = h[(s.historyHead + i) % h.length]!;
      out.push({
        deviceId,
        at: new Date(item.at).toISOString(),
        version: item.version,
        from: cloneSnapshot(item.from),
        to: cloneSnapshot(item.to),
        reason: item.reason,
        causeId: item.causeId,
      });
    }
    return out;
  }

  /** States of all devices, or of those with a status (through the registry's status index). */
  list(query: { status?: DeviceStatus; limit?: number; offset?: number } = {}): { states: DeviceState[]; total: number } {
    const offset = query.offset ?? 0;
    const limit = query.limit ?? 100;
    if (query.status !== undefined && !DEVICE_STATUSES.includes(query.status)) {
      throw invalid("status", `must be one of ${DEVICE_STATUSES.join(", ")}`);
    }
    const ids: Iterable<string> =
      query.status === undefined ? this.idsOf(this.registry.allRecords()) : (this.registry.idsWithStatus(query.status) ?? []);
    const total = query.status === undefined ? this.registry.size : (this.registry.idsWithStatus(query.status)?.size ?? 0);
    const states: DeviceState[] = [];
    let i = 0;
    for (const id of ids) {
      if (i >= offset + limit) break;
      if (i++ < offset) continue;
      const record = this.registry.record(id);
      if (record) states.push(this.view(record, this.states.get(id)));
    }
    return { states, total };
  }

  statistics(): StateStatistics {
    let withDelta = 0;
    for (const s of this.states.values()) {
      if (s.desired && Object.keys(delta(s)).length > 0) withDelta++;
    }
    return {
      total: this.registry.size,
      byStatus: this.registry.statistics().byStatus,
      transitions: this.counters.transitions,
      transitionsByStatus: { ...this.transitionsTo },
      reports: this.counters.reports,
      changes: this.counters.changes,
      withDelta,
    };
  }

  private *idsOf(records: Iterable<DeviceRecord>): Iterable<string> {
    for (const r of records) yield r.id;
  }

  private ensure(deviceId: string): StateRecord {
    let s = this.states.get(deviceId);
    if (!s) {
      s = new StateRecord();
      this.states.set(deviceId, s);
    }
    return s;
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
    s.changedAt = now;
    s.updatedAt = now;
    this.counters.changes++;
    const causeId = cause.causeId ?? null;
    this.pushHistory(s, { at: now, version: s.version, from, to, reason, causeId });
    if (!this.bus.hasSubscribers("state.changed", record.id) && !this.bus.keepsHistoryOf("state.changed")) return;
    this.bus.publish(
      "state.changed",
      { from: cloneSnapshot(from), to: cloneSnapshot(to), reason, version: s.version, state: this.view(record, s) },
      { deviceId: record.id, source: cause.source ?? "state", causeId },
    );
  }

  private pushHistory(s: StateRecord, item: HistoryItem): void {
    const cap = this.options.historySize;
    if (cap <= 0) return;
    if (!s.history) s.history = [];
    if (s.history.length < cap) {
      s.history.push(item);
    } else {
      s.history[s.historyHead] = item;
      s.historyHead = (s.historyHead + 1) % cap;
    }
  }

  private view(record: DeviceRecord, s: StateRecord | undefined): DeviceState {
    if (!s) {
      return {
        deviceId: record.id,
        status: record.status,
        properties: {},
        desired: {},
        delta: {},
        version: 0,
        changedAt: null,
        updatedAt: null,
        reportedAt: null,
      };
    }
    return {
      deviceId: record.id,
      status: record.status,
      properties: cloneJson(s.properties),
      desired: s.desired ? cloneJson(s.desired) : {},
      delta: s.desired ? delta(s) : {},
      version: s.version,
      changedAt: isoOrNull(s.changedAt),
      updatedAt: isoOrNull(s.updatedAt),
      reportedAt: isoOrNull(s.reportedAt),
    };
  }
}

/** Desired keys whose reported value differs. */
function delta(s: StateRecord): JsonObject {
  const out: JsonObject = {};
  if (!s.desired) return out;
  for (const key of Object.keys(s.desired)) {
    const want = s.desired[key] as JsonValue;
    if (!Object.hasOwn(s.properties, key) || !jsonEqual(s.properties[key], want)) defineValue(out, key, cloneJson(want));
  }
  return out;
}

function cloneSnapshot(s: StateSnapshot): StateSnapshot {
  const out: StateSnapshot = {};
  if (s.status !== undefined) out.status = s.status;
  if (s.properties !== undefined) out.properties = cloneJson(s.properties);
  if (s.desired !== undefined) out.desired = cloneJson(s.desired);
  return out;
}
