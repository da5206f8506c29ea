import type { DevicePresenceRow, HistoryRow, PurgeResult, StateRow } from "./ports/store";
import type { RetentionOptions } from "./retention";

/** How the persistence layer batches, retries and purges (see `Persistence`). */
export interface PersistenceOptions {
  /** Write-behind: waiting writes are flushed this often… */
  flushIntervalMs: number;
  /** …or as soon as this many history and event rows wait. */
  flushRows: number;
  /** Rows of each kind written in one transaction; a larger backlog takes several. */
  maxTransactionRows: number;
  /**
   * History and event rows held while the database is unreachable. Past this, the oldest
   * events are dropped first, then the oldest history rows — counted in `statistics()` and
   * reported once per outage. Device presence and state are never dropped: they are kept as
   * "this device needs writing" and written from memory, so they cost no buffer.
   */
  maxBufferedRows: number;
  retryBaseMs: number;
  retryMaxMs: number;
  /** How long `stop()` keeps trying to write what is left. */
  stopTimeoutMs: number;
  retention: RetentionOptions;
}

const DAY_MS = 24 * 3600 * 1000;

export const DEFAULT_PERSISTENCE_OPTIONS: PersistenceOptions = {
  flushIntervalMs: 100,
  flushRows: 2000,
  maxTransactionRows: 20_000,
  maxBufferedRows: 200_000,
  retryBaseMs: 250,
  retryMaxMs: 10_000,
  stopTimeoutMs: 10_000,
  retention: {
    historyMaxAgeMs: 30 * DAY_MS,
    historyMaxPerDevice: 1000,
    eventsMaxAgeMs: 7 * DAY_MS,
    eventsMaxRows: 1_000_000,
    commandsMaxAgeMs: 7 * DAY_MS,
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
}

export interface HeldDevice {
  presence: boolean;
  state: boolean;
  history: HistoryRow[];
}

export interface PersistenceStatistics {
  flushes: number;
  rowsWritten: number;
  failures: number;
  /** Rows the database refused as invalid, set aside so the rest could be written. */
  refused: number;
  degraded: boolean;
  pending: { presence: number; states: number; history: number; events: number };
  /** History and event rows waiting, against the bound past which the oldest are dropped. */
  backlog: { rows: number; bound: number };
  dropped: { history: number; events: number };
  /** When rows were last dropped (clock milliseconds), null when never. */
  lastDroppedAt: number | null;
  purged: PurgeResult;
}
