import type { Clock, TimerHandle } from "../core/clock";
import { TethralError } from "../core/errors";
import type { TethralEvent } from "../core/types";
import { DEFAULT_PERSISTENCE_OPTIONS, type PersistenceOptions } from "./persistence-options";
import type { DevicePresenceRow, DeviceRow, EventRow, HistoryRow, PurgeResult, StateRow, Store, WriteBatch } from "./types";

export { DEFAULT_PERSISTENCE_OPTIONS, type PersistenceOptions } from "./persistence-options";

/** What the hub gives the persistence layer: current rows from memory, and a way to speak up. */
export interface PersistenceHost {
  presence(id: string): DevicePresenceRow | null;
  state(id: string): StateRow | null;
  degraded(error: string): void;
  recovered(pending: number): void;
  /** Something went wrong that nobody awaits (a background purge, the last flush at stop). */
  warn(message: string): void;
}

export interface PersistenceStatistics {
  flushes: number;
  rowsWritten: number;
  failures: number;
  /** Rows the database refused as invalid, set aside so the rest could be written. */
  refused: number;
  degraded: boolean;
  pending: { presence: number; states: number; history: number; events: number };
  dropped: { history: number; events: number };
  purged: PurgeResult;
}

/**
 * Between the hub and its store. Changes a caller is told about (registrations, updates,
 * removals, desired state) are written at once through `write*`; the high-rate rest (presence,
 * reported state, history, events) is batched: marked here, read from memory when the batch
 * is taken, and written in one transaction. When the database is unreachable, batches are
 * retried with backoff while the hub serves from memory; the buffer is bounded and what it
 * drops is counted. Nothing here touches the hub's state: it only reads it through the host.
 */
export class Persistence {
  private presence = new Set<string>();
  private states = new Set<string>();
  private history: HistoryRow[] = [];
  private events: EventRow[] = [];
  /** Devices being registered or removed: their batched writes wait (see `hold`). */
  private readonly held = new Set<string>();
  private timer: TimerHandle | null = null;
  private retentionTimer: TimerHandle | null = null;
  private inflight: Promise<void> | null = null;
  private running = false;
  private failuresInRow = 0;
  private degradedSince = 0;
  private dropReported = false;
  private readonly stats = {
    flushes: 0,
    rowsWritten: 0,
    failures: 0,
    refused: 0,
    dropped: { history: 0, events: 0 },
    purged: { history: 0, events: 0, commands: 0 },
  };

  constructor(
    readonly store: Store,
    private readonly clock: Clock,
    private readonly host: PersistenceHost,
    private readonly options: PersistenceOptions = DEFAULT_PERSISTENCE_OPTIONS,
  ) {}

  get isDegraded(): boolean {
    return this.degradedSince > 0;
  }

  start(): void {
    this.running = true;
    this.arm(this.options.flushIntervalMs);
    this.armRetention();
  }

  /** Stops the timers and writes what is left, trying for up to `stopTimeoutMs`. */
  async stop(): Promise<void> {
    this.running = false;
    this.disarm();
    if (this.retentionTimer !== null) this.clock.clearTimeout(this.retentionTimer);
    this.retentionTimer = null;
    // Wall-clock time: a stop must end even when the hub runs on a test clock.
    const deadline = Date.now() + this.options.stopTimeoutMs;
    let delay = this.options.retryBaseMs;
    for (;;) {
      try {
        await this.flushAll();
        return;
      } catch (err) {
        if (Date.now() + delay > deadline) {
          const left = this.pendingRows();
          this.host.warn(`the database is unreachable: ${left} waiting writes could not be stored at stop (${message(err)})`);
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(this.options.retryMaxMs, delay * 2);
      }
    }
  }

  // ── Marks from the hub (hot path: a set insert, no I/O) ────────────────────────────────

  markPresence(id: string): void {
    if (this.held.has(id)) return;
    this.presence.add(id);
  }

  markState(id: string): void {
    if (this.held.has(id)) return;
    this.states.add(id);
  }

  addHistory(row: HistoryRow): void {
    if (this.held.has(row.deviceId)) return;
    this.history.push(row);
    this.afterAppend();
  }

  addEvent(event: TethralEvent, expiresAt: number): void {
    this.events.push({
      id: event.id,
      type: event.type,
      priority: event.priority,
      source: event.source,
      deviceId: event.deviceId,
      data: event.data,
      timestamp: Date.parse(event.timestamp),
      expiresAt,
      causeId: event.causeId,
    });
    this.afterAppend();
  }

  /**
   * Keeps the batcher away from a device while it is written or deleted directly: nothing of
   * it is batched until `release`. Dropping what already waits matters for a removal, where a
   * late batch would bring back rows of a device just deleted.
   */
  hold(id: string, dropWaiting: boolean): void {
    this.held.add(id);
    if (!dropWaiting) return;
    this.presence.delete(id);
    this.states.delete(id);
    if (this.history.some((h) => h.deviceId === id)) this.history = this.history.filter((h) => h.deviceId !== id);
  }

  /** Lets the device's writes be batched again; with `dirty`, writes its presence and state. */
  release(id: string, dirty: boolean): void {
    this.held.delete(id);
    if (dirty) {
      this.presence.add(id);
      this.states.add(id);
    }
  }

  // ── Direct, durable writes (the caller is told only once they are stored) ──────────────

  async writeDevice(row: DeviceRow): Promise<void> {
    await this.direct(() => this.store.upsertDevice(row));
  }

  async deleteDevice(id: string): Promise<void> {
    // A batch already on its way could still carry this device's rows: let it land first.
    await this.idle();
    await this.direct(() => this.store.deleteDevice(id));
  }

  /** A desired-state change (and the status it may set) as one transaction. */
  async writeState(row: StateRow, presence: DevicePresenceRow | null): Promise<void> {
    await this.direct(() =>
      this.store.writeBatch({ presence: presence ? [presence] : [], states: [row], history: [], events: [] }),
    );
  }

  private async direct(write: () => Promise<void>): Promise<void> {
    try {
      await write();
      this.succeeded();
    } catch (err) {
      if (err instanceof TethralError && err.code !== "UNAVAILABLE") throw err;
      this.failed(err);
      throw new TethralError("UNAVAILABLE", `the database is unavailable, nothing was changed: ${message(err)}`);
    }
  }

  // ── Flushing ──────────────────────────────────────────────────────────────────────────

  /** Writes everything waiting now (several transactions if need be). Rejects if the database fails. */
  async flushAll(): Promise<void> {
    await this.idle();
    while (this.hasWork()) await this.flushOnce();
  }

  /** Resolves once no batch is being written. */
  async idle(): Promise<void> {
    while (this.inflight) await this.inflight.catch(() => undefined);
  }

  private hasWork(): boolean {
    return this.presence.size + this.states.size + this.history.length + this.events.length > 0;
  }

  private pendingRows(): number {
    return this.presence.size + this.states.size + this.history.length + this.events.length;
  }

  private afterAppend(): void {
    const rows = this.history.length + this.events.length;
    if (rows > this.options.maxBufferedRows) this.shed(rows - this.options.maxBufferedRows);
    if (rows >= this.options.flushRows && this.running && !this.inflight && !this.isDegraded) this.arm(0);
  }

  /** Drops the oldest events, then the oldest history rows, to bring the buffer back in bounds. */
  private shed(excess: number): void {
    const events = Math.min(excess, this.events.length);
    if (events > 0) {
      this.events.splice(0, events);
      this.stats.dropped.events += events;
    }
    const history = Math.min(excess - events, this.history.length);
    if (history > 0) {
      this.history.splice(0, history);
      this.stats.dropped.history += history;
    }
    if (!this.dropReported) {
      this.dropReported = true;
      this.host.warn(
        `the write buffer is full (${this.options.maxBufferedRows} rows waiting for the database): ` +
          "the oldest events, then the oldest history entries, are being dropped (see the store statistics)",
      );
    }
  }

  private flushOnce(): Promise<void> {
    const run = this.write(this.take()).finally(() => {
      this.inflight = null;
    });
    this.inflight = run;
    return run;
  }

  /** The next transaction's rows: presence and state read from memory now, history and events as queued. */
  private take(): WriteBatch {
    const max = this.options.maxTransactionRows;
    const presence: DevicePresenceRow[] = [];
    for (const id of this.presence) {
      if (presence.length >= max) break;
      this.presence.delete(id);
      const row = this.host.presence(id);
      if (row) presence.push(row);
    }
    const states: StateRow[] = [];
    for (const id of this.states) {
      if (states.length >= max) break;
      this.states.delete(id);
      const row = this.host.state(id);
      if (row) states.push(row);
    }
    const history = this.history.length <= max ? this.history : this.history.slice(0, max);
    this.history = this.history.length <= max ? [] : this.history.slice(max);
    const events = this.events.length <= max ? this.events : this.events.slice(0, max);
    this.events = this.events.length <= max ? [] : this.events.slice(max);
    return { presence, states, history, events };
  }

  private async write(batch: WriteBatch): Promise<void> {
    const rows = batch.presence.length + batch.states.length + batch.history.length + batch.events.length;
    if (rows === 0) return;
    try {
      await this.store.writeBatch(batch);
    } catch (err) {
      if (err instanceof TethralError && err.code === "INVALID") {
        // The database is fine; a row is not. Retrying the batch would block the queue for good.
        await this.writeApart(batch);
        return;
      }
      this.putBack(batch);
      this.failed(err);
      throw err;
    }
    this.stats.flushes++;
    this.stats.rowsWritten += rows;
    this.succeeded();
  }

  /** Writes a refused batch a row at a time, setting aside (and counting) the rows the store refuses. */
  private async writeApart(batch: WriteBatch): Promise<void> {
    const single = (part: Partial<WriteBatch>): WriteBatch => ({ presence: [], states: [], history: [], events: [], ...part });
    const parts: WriteBatch[] = [
      single({ presence: batch.presence }),
      ...batch.states.map((row) => single({ states: [row] })),
      ...batch.history.map((row) => single({ history: [row] })),
      ...batch.events.map((row) => single({ events: [row] })),
    ];
    for (const part of parts) {
      try {
        await this.store.writeBatch(part);
        this.stats.rowsWritten += part.presence.length + part.states.length + part.history.length + part.events.length;
      } catch (err) {
        if (!(err instanceof TethralError && err.code === "INVALID")) {
          this.putBack(part);
          this.failed(err);
          throw err;
        }
        this.stats.refused++;
        this.host.warn(`the database refused a row, which was set aside: ${message(err)}`);
      }
    }
    this.stats.flushes++;
    this.succeeded();
  }

  /** A failed batch goes back in front of what arrived meanwhile; presence and state are re-read later. */
  private putBack(batch: WriteBatch): void {
    for (const row of batch.presence) if (!this.held.has(row.id)) this.presence.add(row.id);
    for (const row of batch.states) if (!this.held.has(row.deviceId)) this.states.add(row.deviceId);
    this.history = batch.history.filter((h) => !this.held.has(h.deviceId)).concat(this.history);
    this.events = batch.events.concat(this.events);
    const rows = this.history.length + this.events.length;
    if (rows > this.options.maxBufferedRows) this.shed(rows - this.options.maxBufferedRows);
  }

  private failed(err: unknown): void {
    this.stats.failures++;
    this.failuresInRow++;
    if (this.degradedSince === 0) {
      this.degradedSince = this.clock.now();
      this.host.degraded(message(err));
    }
  }

  private succeeded(): void {
    this.failuresInRow = 0;
    if (this.degradedSince !== 0) {
      this.degradedSince = 0;
      this.dropReported = false;
      this.host.recovered(this.pendingRows());
    }
  }

  private arm(delayMs: number): void {
    if (!this.running) return;
    if (this.timer !== null) {
      if (delayMs > 0) return;
      this.clock.clearTimeout(this.timer);
    }
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      void this.tick();
    }, delayMs);
  }

  private disarm(): void {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
  }

  private async tick(): Promise<void> {
    if (!this.inflight && this.hasWork()) {
      try {
        await this.flushOnce();
      } catch {
        // Counted and reported in failed(); the next tick waits longer.
      }
    }
    if (!this.running) return;
    if (this.failuresInRow > 0) {
      const backoff = Math.min(this.options.retryMaxMs, this.options.retryBaseMs * 2 ** (this.failuresInRow - 1));
      this.arm(Math.round(backoff * (0.75 + Math.random() * 0.5)));
    } else {
      // A backlog bigger than one transaction goes on at once; otherwise wait for the next round.
      this.arm(this.history.length + this.events.length >= this.options.flushRows ? 0 : this.options.flushIntervalMs);
    }
  }

  // ── Retention ─────────────────────────────────────────────────────────────────────────

  private armRetention(): void {
    if (!this.running || this.options.retention.intervalMs <= 0) return;
    this.retentionTimer = this.clock.setTimeout(() => {
      this.retentionTimer = null;
      void this.purge().finally(() => this.armRetention());
    }, this.options.retention.intervalMs);
  }

  /** Bounded rounds of retention until nothing is left to purge or the time budget is spent. */
  async purge(): Promise<PurgeResult> {
    const total: PurgeResult = { history: 0, events: 0, commands: 0 };
    if (this.isDegraded) return total;
    const { batchSize, budgetMs } = this.options.retention;
    const started = Date.now();
    try {
      for (;;) {
        const round = await this.store.purge(this.options.retention, this.clock.now(), batchSize);
        total.history += round.history;
        total.events += round.events;
        total.commands += round.commands;
        const more = round.history >= batchSize || round.events >= batchSize || round.commands >= batchSize;
        if (!more || Date.now() - started >= budgetMs) break;
      }
    } catch (err) {
      this.host.warn(`retention purge failed: ${message(err)}`);
    }
    this.stats.purged.history += total.history;
    this.stats.purged.events += total.events;
    this.stats.purged.commands += total.commands;
    return total;
  }

  statistics(): PersistenceStatistics {
    return {
      flushes: this.stats.flushes,
      rowsWritten: this.stats.rowsWritten,
      failures: this.stats.failures,
      refused: this.stats.refused,
      degraded: this.isDegraded,
      pending: { presence: this.presence.size, states: this.states.size, history: this.history.length, events: this.events.length },
      dropped: { ...this.stats.dropped },
      purged: { ...this.stats.purged },
    };
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

