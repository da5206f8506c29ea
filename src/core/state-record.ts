import { cloneJson, defineValue, iso, isoOrNull, jsonEqual } from "./json";
import { emptyObject, plainConstructor } from "./plain";
import type { DeviceRecord } from "./registry";
import type { DeviceState, DeviceStatus, JsonObject, JsonValue, StateHistoryEntry, StateSnapshot } from "./types";

/**
 * One change, flat: no wrapper objects, so a long history of a large fleet stays small. A status
 * change and a report each have a shape of their own with only their fields (72 bytes instead
 * of 104 a change, on a history that keeps up to `historySize` of them per device); a change
 * made with `set` may carry all six sides.
 */
export type HistoryItem = StatusItem | ReportItem | FullItem;

interface ItemBase {
  at: number;
  version: number;
  reason: string;
  causeId: string | null;
}

interface StatusItem extends ItemBase {
  fromStatus: DeviceStatus | undefined;
  toStatus: DeviceStatus | undefined;
  fromProperties?: undefined;
  toProperties?: undefined;
  fromDesired?: undefined;
  toDesired?: undefined;
}

interface ReportItem extends ItemBase {
  fromStatus?: undefined;
  toStatus?: undefined;
  fromProperties: JsonObject | undefined;
  toProperties: JsonObject | undefined;
  fromDesired?: undefined;
  toDesired?: undefined;
}

interface FullItem extends ItemBase {
  fromStatus: DeviceStatus | undefined;
  toStatus: DeviceStatus | undefined;
  fromProperties: JsonObject | undefined;
  toProperties: JsonObject | undefined;
  fromDesired: JsonObject | undefined;
  toDesired: JsonObject | undefined;
}

/** The history item of a change from `from` to `to`, in the smallest shape that holds it. */
export function historyItem(at: number, version: number, reason: string, causeId: string | null, from: StateSnapshot, to: StateSnapshot): HistoryItem {
  const desired = from.desired !== undefined || to.desired !== undefined;
  const properties = from.properties !== undefined || to.properties !== undefined;
  const status = from.status !== undefined || to.status !== undefined;
  if (!desired && !properties) return { at, version, reason, causeId, fromStatus: from.status, toStatus: to.status };
  if (!desired && !status) return { at, version, reason, causeId, fromProperties: from.properties, toProperties: to.properties };
  return {
    at,
    version,
    reason,
    causeId,
    fromStatus: from.status,
    toStatus: to.status,
    fromProperties: from.properties,
    toProperties: to.properties,
    fromDesired: from.desired,
    toDesired: to.desired,
  };
}

export const EMPTY_PROPERTIES: JsonObject = Object.freeze({}) as JsonObject;

/** A device's state apart from its status (which lives on the registry record and its index). */
export class StateRecord {
  /** Null until the first report: a device that only changes status carries no empty object. */
  properties: JsonObject | null = null;
  desired: JsonObject | null = null;
  version = 0;
  changedAt = 0;
  updatedAt = 0;
  reportedAt = 0;
  /** The time of the device's last telemetry point: its points get strictly increasing times. */
  pointTs = 0;
  /** A ring once full; grown by doubling up to the cap, so a short history costs little. */
  private history: HistoryItem[] | null = null;
  private historyCount = 0;
  private historyHead = 0;
  hasDelta = false;
  /** Moves on every write (see StateRow.rev). */
  rev = 0;

  /** Keeps a change; once `cap` are kept, it takes the place of the oldest. */
  pushHistory(item: HistoryItem, cap: number): void {
    if (cap <= 0) return;
    if (this.historyCount < cap) {
      if (!this.history || this.historyCount === this.history.length) {
        const grown: HistoryItem[] = new Array(Math.min(cap, Math.max(2, this.historyCount * 2)));
        for (let i = 0; i < this.historyCount; i++) grown[i] = this.history![i]!;
        this.history = grown;
      }
      this.history[this.historyCount++] = item;
      return;
    }
    this.history![this.historyHead] = item;
    this.historyHead = (this.historyHead + 1) % cap;
  }

  /** The last `limit` changes kept, oldest first; `cap` is the size the ring was filled to. */
  historyEntries(deviceId: string, limit: number, cap: number): StateHistoryEntry[] {
    if (!this.history) return [];
    const h = this.history;
    const count = this.historyCount;
    const n = Math.max(0, Math.min(limit, count));
    const out: StateHistoryEntry[] = [];
    // Oldest first: once the ring is full, the oldest kept entry sits at historyHead.
    const base = count < cap ? 0 : this.historyHead;
    for (let i = count - n; i < count; i++) {
      const item = h[(base + i) % count]!;
      out.push({
        deviceId,
        at: iso(item.at),
        version: item.version,
        from: snapshot(item.fromStatus, item.fromProperties, item.fromDesired),
        to: snapshot(item.toStatus, item.toProperties, item.toDesired),
        reason: item.reason,
        causeId: item.causeId,
      });
    }
    return out;
  }
}

/** The public, JSON-ready copy of a device's state; a device never reported or set has an empty one. */
export function stateView(record: DeviceRecord, s: StateRecord | undefined): DeviceState {
  if (!s) return new StateView(record.id, record.status, emptyObject(), emptyObject(), emptyObject(), 0, null, null, null);
  return new StateView(
    record.id,
    record.status,
    s.properties ? cloneJson(s.properties) : emptyObject(),
    s.desired ? cloneJson(s.desired) : emptyObject(),
    s.desired ? delta(s) : emptyObject(),
    s.version,
    isoOrNull(s.changedAt),
    isoOrNull(s.updatedAt),
    isoOrNull(s.reportedAt),
  );
}

/** A device's state as a plain object made by a constructor: state.changed events carry one (see plain.ts). */
const StateView = plainConstructor(function (
  this: DeviceState,
  deviceId: string,
  status: DeviceStatus,
  properties: JsonObject,
  desired: JsonObject,
  delta: JsonObject,
  version: number,
  changedAt: string | null,
  updatedAt: string | null,
  reportedAt: string | null,
) {
  this.deviceId = deviceId;
  this.status = status;
  this.properties = properties;
  this.desired = desired;
  this.delta = delta;
  this.version = version;
  this.changedAt = changedAt;
  this.updatedAt = updatedAt;
  this.reportedAt = reportedAt;
});

export function hasDelta(s: StateRecord): boolean {
  if (!s.desired) return false;
  for (const key of Object.keys(s.desired)) {
    const reported = s.properties;
    if (!reported || !Object.hasOwn(reported, key) || !jsonEqual(reported[key], s.desired[key])) return true;
  }
  return false;
}

/** Desired keys whose reported value differs. */
export function delta(s: StateRecord): JsonObject {
  const out: JsonObject = emptyObject();
  if (!s.desired) return out;
  for (const key of Object.keys(s.desired)) {
    const want = s.desired[key] as JsonValue;
    const reported = s.properties;
    if (!reported || !Object.hasOwn(reported, key) || !jsonEqual(reported[key], want)) defineValue(out, key, cloneJson(want));
  }
  return out;
}

export function snapshot(status: DeviceStatus | undefined, properties: JsonObject | undefined, desired: JsonObject | undefined): StateSnapshot {
  const out: StateSnapshot = emptyObject();
  if (status !== undefined) out.status = status;
  if (properties !== undefined) out.properties = cloneJson(properties);
  if (desired !== undefined) out.desired = cloneJson(desired);
  return out;
}

export function cloneSnapshot(s: StateSnapshot): StateSnapshot {
  return snapshot(s.status, s.properties, s.desired);
}
