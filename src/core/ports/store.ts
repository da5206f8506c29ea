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

/** One transaction's worth of write-behind work. */
export interface WriteBatch {
  presence: DevicePresenceRow[];
  states: StateRow[];
  history: HistoryRow[];
  events: EventRow[];
}

export interface EventQuery {
  /** Exact types or patterns with `*` (`device.*`). */
  types?: string[];
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
}

export interface PurgeResult {
  history: number;
  events: number;
  commands: number;
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
  /** Removes a device with its state, token, history and commands. */
  deleteDevice(id: string): Promise<void>;
  /** Writes a state unless the stored one has a higher `rev`. */
  upsertState(row: StateRow): Promise<void>;
  /** Presence, states, history and events in one transaction, with multi-row statements. */
  writeBatch(batch: WriteBatch): Promise<void>;

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

  /** One bounded round of retention: removes at most `batchSize` rows of each kind. */
  purge(policy: RetentionPolicy, now: number, batchSize: number): Promise<PurgeResult>;
}
