import { invalid } from "../core/errors";
import type { DeviceStatus, JsonObject, Priority } from "../core/types";
import {
  type CommandRow,
  type CommandStatus,
  type DeviceRow,
  type EventRow,
  type HistoryRow,
  PENDING_COMMAND_STATUSES,
  type StateRow,
} from "./types";

/** Columns, raw rows and their mapping to the store's row shapes, for the SQLite store. */

export const DEVICE_COLS = [
  "id", "name", "protocol", "address", "manufacturer", "model", "firmware", "capabilities", "tags",
  "heartbeat_timeout", "metadata", "status", "last_seen", "created_at", "updated_at",
];
export const STATE_COLS = ["device_id", "properties", "desired", "version", "changed_at", "updated_at", "reported_at", "rev"];
export const HISTORY_COLS = ["id", "device_id", "at", "version", "from_state", "to_state", "reason", "cause_id"];
export const EVENT_COLS = ["id", "type", "priority", "source", "device_id", "data", "ts", "expires_at", "cause_id"];
export const COMMAND_COLS = [
  "id", "device_id", "command", "params", "status", "attempts", "priority", "created_at", "sent_at",
  "completed_at", "expires_at", "result", "error", "options",
];

export const updateAll = (cols: string[], key: string) =>
  cols.filter((c) => c !== key).map((c) => `${c} = excluded.${c}`).join(", ");

/** The tail of each multi-row insert: what a conflict on the key does. */
export const ON_CONFLICT = {
  states: `ON CONFLICT(device_id) DO UPDATE SET ${updateAll(STATE_COLS, "device_id")} WHERE excluded.rev >= states.rev`,
  state_history: "ON CONFLICT(id) DO NOTHING",
  events: "ON CONFLICT(id) DO NOTHING",
} as const;
export type ChunkTable = keyof typeof ON_CONFLICT;
export const CHUNK_COLS: Record<ChunkTable, string[]> = { states: STATE_COLS, state_history: HISTORY_COLS, events: EVENT_COLS };

export const PENDING_SQL = PENDING_COMMAND_STATUSES.map((s) => `'${s}'`).join(", ");

export interface RawDevice {
  id: string; name: string; protocol: string; address: string | null; manufacturer: string | null;
  model: string | null; firmware: string | null; capabilities: string; tags: string;
  heartbeat_timeout: number | null; metadata: string; status: string; last_seen: number;
  created_at: number; updated_at: number;
}
export interface RawState {
  device_id: string; properties: string; desired: string; version: number; changed_at: number;
  updated_at: number; reported_at: number; rev: number;
}
export interface RawHistory {
  id: string; device_id: string; at: number; version: number; from_state: string; to_state: string;
  reason: string; cause_id: string | null;
}
export interface RawEvent {
  id: string; type: string; priority: string; source: string; device_id: string | null; data: string;
  ts: number; expires_at: number; cause_id: string | null;
}
export interface RawCommand {
  id: string; device_id: string; command: string; params: string; status: string; attempts: number;
  priority: string; created_at: number; sent_at: number; completed_at: number; expires_at: number;
  result: string | null; error: string | null; options: string;
}
export interface RawToken { device_id: string; hash: string; created_at: number }

/** JSON text of a value; a value JSON cannot carry (BigInt, a cycle, a function) is INVALID. */
export function json(value: unknown, field: string): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value === undefined ? null : value);
  } catch (err) {
    throw invalid(field, `cannot be stored as JSON: ${(err as Error).message}`);
  }
  if (text === undefined) throw invalid(field, "cannot be stored as JSON");
  return text;
}

/** An event type pattern as a GLOB: case-sensitive like the bus's matching; only `*` is special. */
export function typeGlob(pattern: string): string {
  return pattern.replace(/[[?]/g, (c) => `[${c}]`);
}

export const toDevice = (r: RawDevice): DeviceRow => ({
  id: r.id, name: r.name, protocol: r.protocol, address: r.address, manufacturer: r.manufacturer,
  model: r.model, firmware: r.firmware, capabilities: JSON.parse(r.capabilities) as string[],
  tags: JSON.parse(r.tags) as string[], heartbeatTimeout: r.heartbeat_timeout,
  metadata: JSON.parse(r.metadata) as JsonObject, status: r.status as DeviceStatus,
  lastSeen: r.last_seen, createdAt: r.created_at, updatedAt: r.updated_at,
});
export const toState = (r: RawState): StateRow => ({
  deviceId: r.device_id, properties: JSON.parse(r.properties) as JsonObject,
  desired: JSON.parse(r.desired) as JsonObject, version: r.version, changedAt: r.changed_at,
  updatedAt: r.updated_at, reportedAt: r.reported_at, rev: r.rev,
});
export const toHistory = (r: RawHistory): HistoryRow => ({
  id: r.id, deviceId: r.device_id, at: r.at, version: r.version,
  from: JSON.parse(r.from_state) as HistoryRow["from"], to: JSON.parse(r.to_state) as HistoryRow["to"],
  reason: r.reason, causeId: r.cause_id,
});
export const toEvent = (r: RawEvent): EventRow => ({
  id: r.id, type: r.type, priority: r.priority as Priority, source: r.source, deviceId: r.device_id,
  data: JSON.parse(r.data) as unknown, timestamp: r.ts, expiresAt: r.expires_at, causeId: r.cause_id,
});
export const toCommand = (r: RawCommand): CommandRow => ({
  id: r.id, deviceId: r.device_id, command: r.command, params: JSON.parse(r.params) as JsonObject,
  status: r.status as CommandStatus, attempts: r.attempts, priority: r.priority as Priority,
  createdAt: r.created_at, sentAt: r.sent_at, completedAt: r.completed_at, expiresAt: r.expires_at,
  result: r.result === null ? null : (JSON.parse(r.result) as unknown), error: r.error,
  options: JSON.parse(r.options) as JsonObject,
});

export const stateParams = (s: StateRow, out: unknown[]) =>
  out.push(s.deviceId, json(s.properties, "properties"), json(s.desired, "desired"), s.version, s.changedAt,
    s.updatedAt, s.reportedAt, s.rev);
export const historyParams = (h: HistoryRow, out: unknown[]) =>
  out.push(h.id, h.deviceId, h.at, h.version, json(h.from, "from"), json(h.to, "to"), h.reason, h.causeId);
export const eventParams = (e: EventRow, out: unknown[]) =>
  out.push(e.id, e.type, e.priority, e.source, e.deviceId, json(e.data, "data"), e.timestamp, e.expiresAt, e.causeId);
