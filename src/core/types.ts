/** Data shapes of CONTRACT §1 as the engine hands them out (JSON-ready, ISO timestamps). */

export const DEVICE_STATUSES = ["unknown", "online", "offline", "error", "maintenance"] as const;
export type DeviceStatus = (typeof DEVICE_STATUSES)[number];

export const PRIORITIES = ["low", "normal", "high", "critical"] as const;
export type Priority = (typeof PRIORITIES)[number];

/** Numeric rank of a priority: higher is more urgent. */
export const PRIORITY_RANK: Readonly<Record<Priority, number>> = { low: 0, normal: 1, high: 2, critical: 3 };

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export interface Device {
  id: string;
  name: string;
  protocol: string;
  address?: string;
  manufacturer?: string;
  model?: string;
  firmware?: string;
  capabilities: string[];
  tags: string[];
  heartbeatTimeout?: number;
  metadata: JsonObject;
  status: DeviceStatus;
  lastSeen: string | null;
  createdAt: string;
  updatedAt: string;
}

/**
 * What a device is told of its state (CONTRACT §2, the device's twin): what is desired of it, the
 * desired keys its reported values do not match yet, and the state's version.
 */
export interface DeviceTwin {
  desired: JsonObject;
  delta: JsonObject;
  version: number;
}

export interface DeviceState {
  deviceId: string;
  status: DeviceStatus;
  properties: JsonObject;
  desired: JsonObject;
  delta: JsonObject;
  /** +1 on every change: the optimistic-concurrency token of `set`. */
  version: number;
  /** When the status last changed. */
  changedAt: string | null;
  /** When anything last changed: status, a reported property or a desired value. */
  updatedAt: string | null;
  /** When the device last reported, even when it reported the same values. */
  reportedAt: string | null;
}

/** What one change touched: the status and/or the properties or desired keys that moved. */
export interface StateSnapshot {
  status?: DeviceStatus;
  properties?: JsonObject;
  desired?: JsonObject;
}

export interface StateHistoryEntry {
  deviceId: string;
  at: string;
  version: number;
  from: StateSnapshot;
  to: StateSnapshot;
  reason: string;
  causeId: string | null;
}

/**
 * Rows as the store keeps them. Times are epoch milliseconds (0 = never); JSON columns come
 * back parsed. Both stores (SQLite, PostgreSQL/CockroachDB) read and write exactly these shapes.
 */
export interface DeviceRow {
  id: string;
  name: string;
  protocol: string;
  address: string | null;
  manufacturer: string | null;
  model: string | null;
  firmware: string | null;
  capabilities: string[];
  tags: string[];
  heartbeatTimeout: number | null;
  metadata: JsonObject;
  status: DeviceStatus;
  lastSeen: number;
  /** See DevicePresenceRow.lastMessage. */
  lastMessage?: number;
  /** See DevicePresenceRow.learnedTimeout (0 or absent: none). */
  learnedTimeout?: number;
  /** See DevicePresenceRow.offlineSince (0 or absent: none). */
  offlineSince?: number;
  createdAt: number;
  updatedAt: number;
}

/** A device's status and lastSeen: the high-rate part of its row, written by the batcher. */
export interface DevicePresenceRow {
  id: string;
  status: DeviceStatus;
  lastSeen: number;
  /** Cluster mode: a fingerprint of the last message applied (0 for none; SQLite does not keep it). */
  lastMessage?: number;
  /**
   * The heartbeat timeout, in ms, adaptive timeouts learned for the device (0 or absent: none,
   * and the stored one is kept): restored at start, so a restart does not put a slow device back
   * on the hub's default until it is learned again.
   */
  learnedTimeout?: number;
  /**
   * With device retention on, from when an offline device counts as offline (the hub's downtime
   * left out); 0 or absent while it is online. Restored at start, so a restart neither brings its
   * removal forward nor puts it off.
   */
  offlineSince?: number;
}

export interface StateRow {
  deviceId: string;
  properties: JsonObject;
  desired: JsonObject;
  version: number;
  changedAt: number;
  updatedAt: number;
  reportedAt: number;
  /**
   * The time of the device's last telemetry point. A burst of more than one report a millisecond
   * is stamped ahead of the clock (a device's points get strictly increasing times): after a
   * restart or a takeover, its next points are stamped after this, not among the stored ones.
   * 0 when unknown (a row stored before schema 14, or a store of the caller's own without it).
   */
  pointTs?: number;
  /**
   * Moves on every write of the state, reports included. An upsert carrying a lower `rev` than
   * the stored row is ignored, so a late batch can never overwrite a newer state.
   */
  rev: number;
}

export interface HistoryRow {
  id: string;
  deviceId: string;
  at: number;
  version: number;
  from: StateSnapshot;
  to: StateSnapshot;
  reason: string;
  causeId: string | null;
}

export interface TethralEvent<T extends string = string, D = unknown> {
  id: string;
  type: T;
  priority: Priority;
  source: string;
  deviceId: string | null;
  data: D;
  timestamp: string;
  expiresAt: string | null;
  /** The message, flow message or command behind the event. */
  causeId: string | null;
  /** The cause of that cause: the event a flow reacted to when its msg made this change. */
  parentCauseId: string | null;
}

export const COMMAND_STATUSES = [
  "queued",
  "sent",
  "delivered",
  "succeeded",
  "failed",
  "timed_out",
  "expired",
  "superseded",
  "cancelled",
] as const;
export type CommandStatus = (typeof COMMAND_STATUSES)[number];

/** A command as CONTRACT §1 shows it. */
export interface Command {
  id: string;
  deviceId: string;
  command: string;
  params: JsonObject;
  status: CommandStatus;
  attempts: number;
  priority: Priority;
  createdAt: string;
  sentAt: string | null;
  completedAt: string | null;
  expiresAt: string | null;
  result: JsonValue | null;
  error: string | null;
  /** False for a one-way command (done once sent or delivered). */
  expectResponse: boolean;
  timeout: number;
  retries: number;
}

export type CommandEventType = `command.${CommandStatus}`;

export type AnomalyKind = "flapping" | "stuck" | "outlier";

export interface AnomalyData {
  kind: AnomalyKind;
  /** For flapping and stuck values: true when the anomaly starts, false when it clears. */
  active: boolean;
  property?: string;
  value?: JsonValue;
  [figure: string]: JsonValue | undefined;
}

/**
 * The one typed event map: every event the hub emits and the shape of its `data`.
 * Users publish their own types too (anything outside the hub's prefixes), typed as unknown.
 */
export interface EventMap {
  "device.registered": { device: Device };
  "device.updated": { device: Device; changes: string[]; reason?: string; effectiveTimeout?: number };
  "device.removed": { device: Device; reason: "user" | "retention" };
  "device.online": { previous: DeviceStatus; lastSeen: string | null };
  "device.offline": { previous: DeviceStatus; lastSeen: string | null; timeout: number; reason: string };
  "state.changed": {
    from: StateSnapshot;
    to: StateSnapshot;
    reason: string;
    version: number;
    state: DeviceState;
  };
  "state.anomaly": AnomalyData;
  /** `retained`: a broker's stored copy replayed on subscribe (MQTT), not live traffic. */
  "message.received": { kind: string; protocol: string | null; data: unknown; retained: boolean };
  "message.rejected": { reason: string; protocol: string | null; kind?: string; error?: string };
  "command.queued": { command: Command };
  "command.sent": { command: Command };
  "command.delivered": { command: Command };
  "command.succeeded": { command: Command };
  "command.failed": { command: Command };
  "command.timed_out": { command: Command };
  "command.expired": { command: Command };
  "command.superseded": { command: Command; by: string };
  "command.cancelled": { command: Command };
  "hub.started": { devices: number };
  "hub.stopped": { devices: number };
  "store.degraded": { error: string };
  "store.recovered": { pending: number };
}

export type HubEventType = keyof EventMap;

/** The status and properties a device message reported, as the hub parsed them (null: none). */
export interface DeviceReport {
  status: DeviceStatus | null;
  properties: JsonObject | null;
}

/**
 * What some of the hub's events carry for the engine's own subscribers besides their data: never
 * part of the event's JSON (the field is not enumerable), never kept in history nor stored.
 */
export interface EventExtras {
  /** `message.received`: the device's report, so a subscriber need not parse its data again. */
  "message.received": { readonly report?: DeviceReport };
}

/** One of the hub's own events, its data typed from the event map. */
export type HubEventOf<K extends HubEventType> = K extends HubEventType
  ? TethralEvent<K, EventMap[K]> & (K extends keyof EventExtras ? EventExtras[K] : unknown)
  : never;

/** Any of the hub's own events: `switch (event.type)` narrows its data. */
export type HubOwnEvent = HubEventOf<HubEventType>;

/** A user event: any type outside the hub's prefixes, any JSON data. */
export type UserEvent = TethralEvent<string, unknown>;

/** Whatever the bus carries. A user event's type is any string, so only `isHubOwnEvent` narrows this union. */
export type HubEvent = HubOwnEvent | UserEvent;

/** Event type prefixes the hub owns; user events must use other names. */
export const RESERVED_EVENT_PREFIXES = ["device.", "state.", "message.", "command.", "hub.", "store."] as const;

/** Every key of the event map, known at run time too (the compiler keeps the two lists equal). */
const HUB_EVENT_TYPES: { readonly [K in HubEventType]: true } = {
  "device.registered": true,
  "device.updated": true,
  "device.removed": true,
  "device.online": true,
  "device.offline": true,
  "state.changed": true,
  "state.anomaly": true,
  "message.received": true,
  "message.rejected": true,
  "command.queued": true,
  "command.sent": true,
  "command.delivered": true,
  "command.succeeded": true,
  "command.failed": true,
  "command.timed_out": true,
  "command.expired": true,
  "command.superseded": true,
  "command.cancelled": true,
  "hub.started": true,
  "hub.stopped": true,
  "store.degraded": true,
  "store.recovered": true,
};

/**
 * True for one of the hub's own events. Only the bus publishes those (a user event cannot take a
 * hub type), so after this `switch (event.type)` narrows an event of any subscription or history.
 */
export function isHubOwnEvent(event: HubEvent): event is HubOwnEvent {
  return Object.hasOwn(HUB_EVENT_TYPES, event.type);
}

/** True for the type of one of the hub's own events. */
export function isHubEventType(type: string): type is HubEventType {
  return Object.hasOwn(HUB_EVENT_TYPES, type);
}
