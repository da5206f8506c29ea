import type { PointBatch } from "../point-batch";
import { COMMAND_STATUSES, type CommandStatus } from "../types";
import type { DevicePresenceRow, DeviceRow, HistoryRow, JsonObject, Priority, StateRow } from "../types";

// Device, state and history rows are the engine's own shapes: the registry and the state
// manager hand them to the persistence layer. Times are epoch ms (0 = never).
export type { DevicePresenceRow, DeviceRow, HistoryRow, StateRow };

export interface EventRow {
  id: string;
  type: string;
  priority: Priority;
  source: string;
  deviceId: string | null;
  data: unknown;
  timestamp: number;
  /** 0 when the event does not expire. */
  expiresAt: number;
  causeId: string | null;
  parentCauseId: string | null;
}

export interface TokenRow {
  deviceId: string;
  /** A hash of the token (never the token itself). */
  hash: string;
  createdAt: number;
}

export { COMMAND_STATUSES, type CommandStatus };

/** Statuses a command can still leave: these are the durable queue. */
export const PENDING_COMMAND_STATUSES: readonly CommandStatus[] = ["queued", "sent", "delivered"];

export interface CommandRow {
  id: string;
  deviceId: string;
  command: string;
  params: JsonObject;
  status: CommandStatus;
  attempts: number;
  priority: Priority;
  createdAt: number;
  sentAt: number;
  completedAt: number;
  /** 0 when the command does not expire. */
  expiresAt: number;
  result: unknown;
  error: string | null;
  /** Delivery settings the command tracker needs after a restart (timeout, retries, wait, ...). */
  options: JsonObject;
}

/**
 * A telemetry value kept as a point (CONTRACT §7): numbers are aggregated; booleans and strings
 * (up to 256 characters) are kept as they are and answer only `first`, `last` and `count`.
 */
export type PointValue = number | boolean | string;

/** One point of one series: a device's top-level telemetry key at one time (epoch ms). */
export interface PointRow {
  deviceId: string;
  key: string;
  ts: number;
  value: PointValue;
}

/** Where a query reads: raw points, or the 1-minute or 1-hour roll-ups. */
export type Resolution = "raw" | "1m" | "1h";
export const RESOLUTION_MS: Readonly<Record<Exclude<Resolution, "raw">, number>> = { "1m": 60_000, "1h": 3_600_000 };

export const AGGREGATES = ["avg", "min", "max", "sum", "count", "first", "last"] as const;
export type Aggregate = (typeof AGGREGATES)[number];

/** One series (device and key) between two times, both included (epoch ms). */
export interface PointQuery {
  deviceId: string;
  key: string;
  from: number;
  to: number;
  /** At most this many points or buckets, the oldest first. */
  limit: number;
}

/**
 * Buckets of `intervalMs` (aligned to the epoch) whose start lies in [from rounded down to the
 * interval, to], each aggregated with `agg`, read from `source` (raw points or a roll-up whose
 * resolution divides the interval). Empty buckets are left out, and so are buckets with no
 * number for `avg`, `min`, `max` and `sum`. `avg` is the mean of the numbers in the bucket;
 * `count` counts every point; `first` and `last` are the values of the earliest and latest point.
 */
export interface BucketQuery extends PointQuery {
  source: Resolution;
  intervalMs: number;
  agg: Aggregate;
}

/** A raw point's or a bucket's time (its start) and value. */
export interface SeriesPoint {
  ts: number;
  /** Null: a bucket's sum, or the average made of it, beyond the largest double (about 1.8e308). */
  value: PointValue | null;
}

/** One transaction's worth of write-behind work. */
export interface WriteBatch {
  presence: DevicePresenceRow[];
  states: StateRow[];
  history: HistoryRow[];
  events: EventRow[];
  /**
   * Telemetry points. The store inserts them, ignoring a point whose (device, key, ts) it already
   * has (a retried batch adds nothing), and maintains the 1-minute and 1-hour roll-ups (count,
   * sum, min, max, first, last) from the points it inserted, in the same transaction. The
   * write-behind queue hands them over in columns (`PointBatch`); rows are taken as well.
   */
  points?: PointBatch | PointRow[];
}

export interface EventQuery {
  /** Exact types or patterns with `*` (`device.*`). */
  types?: string[];
  /** Undefined: any priority; an empty list: none. */
  priorities?: Priority[];
  deviceId?: string;
  source?: string;
  since?: number;
  limit: number;
}

export interface RetentionPolicy {
  /** History rows older than this many ms are removed; 0 keeps them regardless of age. */
  historyMaxAgeMs: number;
  /** At most this many history rows are kept per device; 0 for no limit. */
  historyMaxPerDevice: number;
  /** Events older than this many ms are removed, as are expired ones; 0 keeps them regardless of age. */
  eventsMaxAgeMs: number;
  /** At most this many events are kept in all; 0 for no limit. */
  eventsMaxRows: number;
  /** Finished commands (with a `completedAt`) older than this many ms are removed; 0 keeps them. */
  commandsMaxAgeMs: number;
  /** Raw telemetry points older than this many ms are removed; 0 keeps them. */
  pointsMaxAgeMs: number;
  /** 1-minute roll-ups whose bucket started this many ms ago are removed; 0 keeps them. */
  rollups1mMaxAgeMs: number;
  /** 1-hour roll-ups, likewise. */
  rollups1hMaxAgeMs: number;
}

export interface PurgeResult {
  history: number;
  events: number;
  commands: number;
  /** Raw points removed. */
  points: number;
  /** Roll-up rows removed, both resolutions. */
  rollups: number;
}

/**
 * What the hub needs from a database. Every method is one round trip or one transaction; a
 * method that fails leaves the database as it was. Implementations: SqliteStore, PostgresStore.
 */
export interface Store {
  readonly kind: "sqlite" | "postgres";
  /** Where the data lives, for logs (a file path, or host/database; never a password). */
  readonly description: string;

  /** Connects and brings the schema up to date; refuses a database from a newer version. */
  open(): Promise<void>;
  close(): Promise<void>;
  /** A cheap round trip: resolves when the database answers. */
  ping(): Promise<void>;
  /** The schema version in the database after `open()`. */
  schemaVersion(): Promise<number>;

  upsertDevice(row: DeviceRow): Promise<void>;
  /** Removes a device with its state, token, history, commands and time series. */
  deleteDevice(id: string): Promise<void>;
  /** Writes a state unless the stored one has a higher `rev`. */
  upsertState(row: StateRow): Promise<void>;
  /** Presence, states, history, events and points in one transaction, with multi-row statements. */
  writeBatch(batch: WriteBatch): Promise<void>;
  /**
   * True when `writeBatch` takes a batch's points as the write-behind queue keeps them, a
   * `PointBatch` whose columns the queue uses again once the promise settles (so the store
   * keeps nothing of them): the built-in stores. A store without it gets the points as rows of
   * its own.
   */
  readonly pointColumns?: boolean;

  /**
   * Every device, for the hub's start. The rows become the hub's: it keeps their `metadata`
   * objects, so a store must not change them afterwards (the built-in stores make fresh rows for
   * each call).
   */
  loadDevices(): Promise<DeviceRow[]>;
  loadStates(): Promise<StateRow[]>;

  /** The last `limit` history rows of a device, oldest first. */
  stateHistory(deviceId: string, limit: number): Promise<HistoryRow[]>;
  /** Events matching the query, newest first; expired ones are left out. */
  events(query: EventQuery, now: number): Promise<EventRow[]>;

  putToken(row: TokenRow): Promise<void>;
  getToken(deviceId: string): Promise<TokenRow | null>;
  /** Every device's token hash, to check tokens from memory. */
  loadTokens(): Promise<TokenRow[]>;
  deleteToken(deviceId: string): Promise<void>;

  /** Raw points of one series, oldest first (CONTRACT §7). */
  points(query: PointQuery): Promise<SeriesPoint[]>;
  /** Aggregated buckets of one series, oldest first (see BucketQuery). */
  buckets(query: BucketQuery): Promise<SeriesPoint[]>;
  /** The keys a device has points or roll-ups for, sorted; kept until its series are purged or it is removed. */
  telemetryKeys(deviceId: string): Promise<string[]>;

  /** Inserts or replaces a command. */
  putCommand(row: CommandRow): Promise<void>;
  /** Several commands in one transaction (status changes written behind). */
  putCommands(rows: CommandRow[]): Promise<void>;
  getCommand(id: string): Promise<CommandRow | null>;
  /**
   * Commands not finished yet (of one device, or all), oldest first: queued, sent or delivered
   * with no `completedAt`. A one-way command ends at sent or delivered with a `completedAt`.
   */
  pendingCommands(deviceId?: string): Promise<CommandRow[]>;
  deleteCommand(id: string): Promise<void>;
  /**
   * A device's commands, newest first (by `createdAt`, then id), at most `limit`; with
   * `statuses`, only those in one of them. Finished ones are kept as long as retention says.
   */
  deviceCommands(deviceId: string, statuses: readonly CommandStatus[] | null, limit: number): Promise<CommandRow[]>;

  /**
   * One bounded round of retention: removes at most `batchSize` rows of each kind (points, and
   * roll-ups of each resolution, count as kinds), using the tables' keys, never a full scan.
   */
  purge(policy: RetentionPolicy, now: number, batchSize: number): Promise<PurgeResult>;
}
