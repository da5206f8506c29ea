import type { DevicePresenceRow, HistoryRow, PointRow, PurgeResult, StateRow } from "./ports/store";
import type { RetentionOptions } from "./retention";

/** How the persistence layer batches, retries and purges (see `Persistence`). */
export interface PersistenceOptions {
  /** Write-behind: waiting writes are flushed this often… */
  flushIntervalMs: number;
  /** …or as soon as this many history and event rows wait. */
  flushRows: number;
  /** …or as soon as this many telemetry points wait (points are cheap: larger batches share roll-up rows). */
  flushPoints: number;
  /** Rows of each kind written in one transaction; a larger backlog takes several. */
  maxTransactionRows: number;
  /**
   * Telemetry points written in one transaction. Large on purpose: a batch adds one roll-up row
   * per series and bucket and one state row per device however many points it holds, so under
   * sustained load a 300,000-point batch costs about a third less per point than a 100,000 one
   * (bench:ingest).
   */
  maxTransactionPoints: number;
  /**
   * Backlog (history, event and point rows waiting) at which the intake turns busy and the
   * adapters slow the devices; ready again at half of it. Keep it well under `maxBufferedRows`.
   */
  intakeHighWater: number;
  /**
   * History and event rows held while the database is unreachable. Past this, the oldest
   * events are dropped first, then the oldest history rows — counted in `statistics()` and
   * reported once per outage. Device presence and state are never dropped: they are kept as
   * "this device needs writing" and written from memory, so they cost no buffer.
   */
  maxBufferedRows: number;
  retryBaseMs: number;
  retryMaxMs: number;
  /**
   * Event types not written to the store. By default the per-message ones: `message.received`
   * (a copy of every message) and `state.changed` (the values are in the time series, and
   * status and desired changes in the state history). Recent ones are still in the hub's
   * in-memory history, which `GET /api/events` reads for these types.
   */
  unstoredEventTypes: string[];
  /** How long `stop()` keeps trying to write what is left. */
  stopTimeoutMs: number;
  retention: RetentionOptions;
}

const DAY_MS = 24 * 3600 * 1000;

export const DEFAULT_PERSISTENCE_OPTIONS: PersistenceOptions = {
  flushIntervalMs: 100,
  flushRows: 2000,
  flushPoints: 50_000,
  maxTransactionRows: 20_000,
  maxTransactionPoints: 300_000,
  intakeHighWater: 300_000,
  maxBufferedRows: 1_000_000,
  retryBaseMs: 250,
  retryMaxMs: 10_000,
  unstoredEventTypes: ["message.received", "state.changed"],
  stopTimeoutMs: 10_000,
  retention: {
    historyMaxAgeMs: 30 * DAY_MS,
    historyMaxPerDevice: 1000,
    eventsMaxAgeMs: 7 * DAY_MS,
    eventsMaxRows: 1_000_000,
    commandsMaxAgeMs: 7 * DAY_MS,
    pointsMaxAgeMs: 7 * DAY_MS,
    rollups1mMaxAgeMs: 90 * DAY_MS,
    rollups1hMaxAgeMs: 3 * 365 * DAY_MS,
    intervalMs: 60_000,
    batchSize: 1000,
    budgetMs: 250,
  },
};

/** What the hub gives the persistence layer: current rows from memory, and a way to speak up. */
export interface PersistenceHost {
  presence(id: string): DevicePresenceRow | null;
  state(id: string): StateRow | null;
  degraded(error: string): void;
  recovered(pending: number): void;
  /** Something went wrong that nobody awaits (a background purge, the last flush at stop). */
  warn(message: string): void;
  /** A batch was written, in wall-clock milliseconds (the store's latency, for metrics). */
  batchWritten?(ms: number): void;
  /**
   * Cluster mode: a write was fenced (these partitions, checked under these epochs, are another
   * member's now), and the write's rows of these devices were dropped: what was applied of them
   * here is stored nowhere. Returns the devices whose rows waiting behind it are dropped too
   * (default: all of them).
   */
  fenced?(partitions: number[], deviceIds: readonly string[], epochs?: readonly number[]): readonly string[] | void;
}

export interface HeldDevice {
  presence: boolean;
  state: boolean;
  history: HistoryRow[];
  points: PointRow[];
}

export interface PersistenceStatistics {
  flushes: number;
  rowsWritten: number;
  /** Telemetry points written (counted in `rowsWritten` too). */
  pointsWritten: number;
  failures: number;
  /** Rows the database refused as invalid, set aside so the rest could be written. */
  refused: number;
  /** Cluster mode: rows not written because their devices' partitions had moved to another member. */
  fenced: number;
  degraded: boolean;
  pending: { presence: number; states: number; history: number; events: number; points: number };
  /** History, event and point rows waiting, against the bound past which the oldest are dropped. */
  backlog: { rows: number; bound: number };
  dropped: { history: number; events: number; points: number };
  /** When rows were last dropped (clock milliseconds), null when never. */
  lastDroppedAt: number | null;
  purged: PurgeResult;
}
