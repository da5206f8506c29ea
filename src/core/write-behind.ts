import { type Clock, type TimerHandle, beforeDeadline } from "./clock";
import { TethralError, errorMessage } from "./errors";
import type { TethralEvent } from "./types";
import { DEFAULT_PERSISTENCE_OPTIONS, type HeldDevice, type PersistenceHost, type PersistenceOptions, type PersistenceStatistics } from "./write-behind-options";
import type { Intake } from "./intake";
import type { DevicePresenceRow, DeviceRow, EventRow, HistoryRow, PointRow, PointValue, PurgeResult, StateRow, Store, WriteBatch } from "./ports/store";
import { Retention } from "./retention";
import { eventRow } from "./stored-rows";

export { DEFAULT_PERSISTENCE_OPTIONS, type PersistenceHost, type PersistenceOptions, type PersistenceStatistics } from "./write-behind-options";

/**
 * Between the hub and its store. Changes a caller is told about (registrations, updates,
 * removals, desired state) are written at once through `write*`; the high-rate rest (presence,
 * reported state, history, events) is batched: marked here, read from memory when the batch
 * is taken, and written in one transaction. When the database is unreachable, batches are
 * retried with backoff while the hub serves from memory; the buffer is bounded and what it
 * drops is counted. Nothing here touches the hub's state: it only reads it through the host.
 */
/** How long after rows were last dropped the store still says it is dropping them. */
const DROPPING_MS = 60_000;
/** How long the intake may stay slowed before the store reports itself degraded: a spell is the design working, a long one is a store too slow for the fleet. */
const SLOWED_MS = 30_000;

export class Persistence {
  private presence = new Set<string>();
  private states = new Set<string>();
  private history: HistoryRow[] = [];
  private events: EventRow[] = [];
  private points: PointRow[] = [];
  /** Devices written or deleted directly right now: their batched writes wait aside (see `hold`). */
  private readonly held = new Map<string, HeldDevice>();
  private timer: TimerHandle | null = null;
  private readonly retention: Retention;
  /** Batches are written one after another: each flush is chained to the last. */
  private tail: Promise<void> = Promise.resolve();
  private busy = 0;
  private running = false;
  private failuresInRow = 0;
  private degradedSince = 0;
  private dropReported = false;
  private lastDroppedAt: number | null = null;
  private readonly stats = {
    flushes: 0,
    rowsWritten: 0,
    failures: 0,
    refused: 0,
    dropped: { history: 0, events: 0, points: 0 },
    pointsWritten: 0,
  };

  constructor(
    readonly store: Store,
    private readonly clock: Clock,
    private readonly host: PersistenceHost,
    private readonly options: PersistenceOptions = DEFAULT_PERSISTENCE_OPTIONS,
    /** Moved as the backlog grows and shrinks, so adapters slow the devices instead of rows being dropped. */
    private readonly intake: Intake | null = null,
  ) {
    // Purges only while the database answers: a degraded store has enough to do.
    this.retention = new Retention(store, clock, options.retention, () => this.isDegraded, (m) => host.warn(m));
  }

  /** How long `stop()` may take to write what is left. */
  get stopTimeoutMs(): number {
    return this.options.stopTimeoutMs;
  }

  get isDegraded(): boolean {
    return this.degradedSince > 0;
  }

  /** Opens the store (migrating it), loads from it, and starts batching; the store is closed again if loading fails. */
  async open(load: () => Promise<void>): Promise<void> {
    await this.store.open();
    try {
      await load();
    } catch (err) {
      await this.store.close().catch(() => undefined);
      throw err;
    }
    this.start();
  }

  /** `stop()`, then closes the store (waiting at most a second past `deadline`). */
  async close(deadline: number): Promise<void> {
    await this.stop();
    await beforeDeadline(this.store.close(), deadline + 1000);
  }

  start(): void {
    this.running = true;
    this.intake?.backlog(this.backlogRows());
    this.arm(this.options.flushIntervalMs);
    this.retention.start();
  }

  /**
   * Stops the timers and writes what is left, for up to `stopTimeoutMs` (wall-clock time, so a
   * stop ends even on a test clock or a database that never answers). What could not be
   * written by then is reported.
   */
  async stop(): Promise<void> {
    this.running = false;
    this.disarm();
    this.intake?.release();
    const deadline = Date.now() + this.options.stopTimeoutMs;
    await this.retention.stop(deadline);
    let delay = this.options.retryBaseMs;
    for (;;) {
      const outcome = await beforeDeadline(this.flushAll(), deadline);
      if (outcome === "done") return;
      const reason = outcome === "late" ? "no answer in time" : errorMessage(outcome.error);
      if (outcome === "late" || Date.now() + delay > deadline) {
        this.host.warn(`the database is unreachable: ${this.pendingRows()} waiting writes could not be stored at stop (${reason})`);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(this.options.retryMaxMs, delay * 2);
    }
  }

  // ── Marks from the hub (hot path: a set insert, no I/O) ────────────────────────────────

  markPresence(id: string): void {
    const held = this.held.get(id);
    if (held) held.presence = true;
    else this.presence.add(id);
  }

  markState(id: string): void {
    const held = this.held.get(id);
    if (held) held.state = true;
    else this.states.add(id);
  }

  addHistory(row: HistoryRow): void {
    const held = this.held.get(row.deviceId);
    if (held) {
      held.history.push(row);
      return;
    }
    this.history.push(row);
    this.afterAppend();
  }

  addEvent(event: TethralEvent, expiresAt: number): void {
    this.events.push(eventRow(event, expiresAt));
    this.afterAppend();
  }

  /** A telemetry point (hot path: one small object per value). */
  addPoint(deviceId: string, key: string, ts: number, value: PointValue): void {
    const row: PointRow = { deviceId, key, ts, value };
    const held = this.held.get(deviceId);
    if (held) {
      held.points.push(row);
      return;
    }
    this.points.push(row);
    this.afterAppend();
  }

  /**
   * Keeps the batcher away from a device while it is registered, changed or removed directly:
   * its waiting rows and everything it reports meanwhile are set aside until `release`. A batch
   * can then neither race the direct write nor bring back rows of a device just deleted.
   */
  hold(id: string): void {
    if (this.held.has(id)) return;
    const held: HeldDevice = { presence: this.presence.delete(id), state: this.states.delete(id), history: [], points: [] };
    // One pass over what waits (up to the buffer's whole size), and no new array when none is the device's.
    const rest: HistoryRow[] = [];
    for (const h of this.history) (h.deviceId === id ? held.history : rest).push(h);
    if (held.history.length > 0) this.history = rest;
    const others: PointRow[] = [];
    for (const pt of this.points) (pt.deviceId === id ? held.points : others).push(pt);
    if (held.points.length > 0) this.points = others;
    this.held.set(id, held);
  }

  /**
   * Ends a hold, as the device now is. `changed`: it lives, and its presence and state are
   * written again whatever was marked (so the newest lands last). `unchanged`: it lives as
   * before; what was set aside is batched again. `gone`: removed, or its registration failed;
   * what was set aside is dropped.
   */
  release(id: string, afterwards: "changed" | "unchanged" | "gone"): void {
    const held = this.held.get(id);
    if (!held) return;
    this.held.delete(id);
    if (afterwards === "gone") return;
    const dirty = afterwards === "changed";
    if (held.presence || dirty) this.presence.add(id);
    if (held.state || dirty) this.states.add(id);
    if (held.history.length > 0 || held.points.length > 0) {
      for (const row of held.history) this.history.push(row);
      for (const row of held.points) this.points.push(row);
      this.afterAppend();
    }
  }

  // ── Direct, durable writes (the caller is told only once they are stored) ──────────────

  async writeDevice(row: DeviceRow): Promise<void> {
    await this.direct(() => this.store.upsertDevice(row));
  }

  async deleteDevice(id: string): Promise<void> {
    // A batch already on its way could still carry this device's rows (taken before the hold):
    // let it land first.
    await this.idle();
    await this.direct(() => this.store.deleteDevice(id));
  }

  /** A desired-state change (and the status it may set) as one transaction. */
  async writeState(row: StateRow, presence: DevicePresenceRow | null): Promise<void> {
    await this.direct(() => this.store.writeBatch({ presence: presence ? [presence] : [], states: [row], history: [], events: [] }));
  }

  private async direct(write: () => Promise<void>): Promise<void> {
    try {
      await write();
      this.succeeded();
    } catch (err) {
      if (err instanceof TethralError && err.code !== "UNAVAILABLE") throw err;
      this.failed(err);
      throw new TethralError("UNAVAILABLE", `the database is unavailable, nothing was changed: ${errorMessage(err)}`);
    }
  }

  // ── Flushing ──────────────────────────────────────────────────────────────────────────

  /** Writes everything waiting now (several transactions if need be). Rejects if the database fails. */
  async flushAll(): Promise<void> {
    await this.idle();
    while (this.hasWork()) await this.flushOnce();
  }

  /**
   * Writes what waits now, but not what arrives meanwhile: a read that must see every row taken
   * before it (a telemetry query) does not wait for a backlog that sustained ingest keeps full.
   */
  async flushPending(): Promise<void> {
    await this.idle();
    const max = this.options.maxTransactionRows;
    const rounds = Math.max(this.presence.size, this.states.size, this.history.length, this.events.length, Math.ceil(this.points.length / this.pointsPerTransaction()) * max);
    for (let i = Math.ceil(rounds / max); i > 0 && this.hasWork(); i--) await this.flushOnce();
  }

  /** Resolves once no batch is being written. */
  async idle(): Promise<void> {
    for (let tail = this.tail; ; tail = this.tail) {
      await tail;
      if (tail === this.tail) return;
    }
  }

  private hasWork(): boolean {
    return this.presence.size + this.states.size + this.history.length + this.events.length + this.points.length > 0;
  }

  private pendingRows(): number {
    return this.presence.size + this.states.size + this.history.length + this.events.length + this.points.length;
  }

  /** Rows that take buffer space: history, events and points (presence and state are marks). */
  private backlogRows(): number {
    return this.history.length + this.events.length + this.points.length;
  }

  private pointsPerTransaction(): number {
    return this.options.maxTransactionPoints;
  }

  private afterAppend(): void {
    const rows = this.history.length + this.events.length;
    const backlog = rows + this.points.length;
    if (backlog > this.options.maxBufferedRows) this.shed(backlog - this.options.maxBufferedRows);
    if (this.intake !== null && !this.isDegraded) this.intake.backlog(backlog);
    if ((rows >= this.options.flushRows || this.points.length >= this.options.flushPoints) && this.running && this.busy === 0 && !this.isDegraded) this.arm(0);
  }

  /**
   * Drops the oldest events, then the oldest history rows, then the oldest points, to bring the
   * buffer back in bounds, 5% of it at a time so a full buffer does not cost a large copy on
   * every append. Only a database that cannot be written gets here: while it can, the intake
   * slows the devices long before the bound.
   */
  private shed(over: number): void {
    let excess = Math.max(over, Math.ceil(this.options.maxBufferedRows * 0.05));
    this.lastDroppedAt = this.clock.now();
    const events = Math.min(excess, this.events.length);
    if (events > 0) {
      this.events.splice(0, events);
      this.stats.dropped.events += events;
      excess -= events;
    }
    const history = Math.min(excess, this.history.length);
    if (history > 0) {
      this.history.splice(0, history);
      this.stats.dropped.history += history;
      excess -= history;
    }
    const points = Math.min(excess, this.points.length);
    if (points > 0) {
      this.points.splice(0, points);
      this.stats.dropped.points += points;
    }
    if (!this.dropReported) {
      this.dropReported = true;
      this.host.warn(
        `the write buffer is full (${this.options.maxBufferedRows} rows waiting for the database): ` +
          "the oldest events, then the oldest history entries, then the oldest points, are being dropped (see the store statistics)",
      );
    }
  }

  /** Writes the next batch once the one before it is done; the batch is taken when its turn comes. */
  private flushOnce(): Promise<void> {
    this.busy++;
    const run = this.tail.then(() => this.write(this.take())).finally(() => {
      this.busy--;
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** The next transaction's rows: presence and state read from memory now, history and events as queued. */
  private take(): WriteBatch {
    const max = this.options.maxTransactionRows;
    const presence = drain(this.presence, max, (id) => this.host.presence(id));
    const states = drain(this.states, max, (id) => this.host.state(id));
    const history = this.history.length <= max ? this.history : this.history.slice(0, max);
    this.history = this.history.length <= max ? [] : this.history.slice(max);
    const events = this.events.length <= max ? this.events : this.events.slice(0, max);
    this.events = this.events.length <= max ? [] : this.events.slice(max);
    const most = this.pointsPerTransaction();
    const points = this.points.length <= most ? this.points : this.points.slice(0, most);
    this.points = this.points.length <= most ? [] : this.points.slice(most);
    return { presence, states, history, events, points };
  }

  private async write(batch: WriteBatch): Promise<void> {
    const rows = rowsOf(batch);
    if (rows === 0) return;
    const started = performance.now();
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
    this.stats.pointsWritten += batch.points?.length ?? 0;
    this.host.batchWritten?.(performance.now() - started);
    this.succeeded();
    if (this.intake !== null) this.intake.backlog(this.backlogRows());
  }

  /** Writes a refused batch a row at a time, setting aside (and counting) the rows the store refuses. */
  private async writeApart(batch: WriteBatch): Promise<void> {
    const single = (part: Partial<WriteBatch>): WriteBatch => ({ presence: [], states: [], history: [], events: [], ...part });
    const parts: WriteBatch[] = [
      single({ presence: batch.presence }),
      ...batch.states.map((row) => single({ states: [row] })),
      ...batch.history.map((row) => single({ history: [row] })),
      ...batch.events.map((row) => single({ events: [row] })),
      ...pointParts(batch.points ?? []).map((points) => single({ points })),
    ];
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      try {
        await this.store.writeBatch(part);
        this.stats.rowsWritten += rowsOf(part);
        this.stats.pointsWritten += part.points?.length ?? 0;
      } catch (err) {
        if (!(err instanceof TethralError && err.code === "INVALID")) {
          // The database went away midway: this part and every one after it wait for the next try.
          for (const rest of parts.slice(i)) this.putBack(rest);
          this.failed(err);
          throw err;
        }
        this.stats.refused++;
        this.host.warn(`the database refused a row, which was set aside: ${errorMessage(err)}`);
      }
    }
    this.stats.flushes++;
    this.succeeded();
  }

  /** A failed batch goes back in front of what arrived meanwhile; presence and state are re-read later. */
  private putBack(batch: WriteBatch): void {
    for (const row of batch.presence) this.markPresence(row.id);
    for (const row of batch.states) this.markState(row.deviceId);
    const free: HistoryRow[] = [];
    for (const row of batch.history) {
      const held = this.held.get(row.deviceId);
      if (held) held.history.push(row);
      else free.push(row);
    }
    this.history = free.concat(this.history);
    this.events = batch.events.concat(this.events);
    const points: PointRow[] = [];
    for (const row of batch.points ?? []) {
      const held = this.held.get(row.deviceId);
      if (held) held.points.push(row);
      else points.push(row);
    }
    if (points.length > 0) this.points = points.concat(this.points);
    const rows = this.backlogRows();
    if (rows > this.options.maxBufferedRows) this.shed(rows - this.options.maxBufferedRows);
  }

  private failed(err: unknown): void {
    this.stats.failures++;
    this.failuresInRow++;
    if (this.degradedSince === 0) {
      this.degradedSince = this.clock.now();
      // A database that cannot be written is no reason to stop the devices: the hub serves from
      // memory, bounded and counted, as it always has.
      this.intake?.release();
      this.host.degraded(errorMessage(err));
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
    if (this.busy === 0 && this.hasWork()) {
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
      const more = this.history.length + this.events.length >= this.options.flushRows || this.points.length >= this.options.flushPoints;
      this.arm(more ? 0 : this.options.flushIntervalMs);
    }
  }

  /** Bounded rounds of retention until nothing is left to purge or the time budget is spent. */
  purge(): Promise<PurgeResult> {
    return this.retention.purge();
  }

  /**
   * Why the store cannot keep up, or null: rows dropped within the last `DROPPING_MS`, or a
   * write backlog past half its bound (the buffer is filling faster than the database takes it).
   */
  get pressure(): string | null {
    const rows = this.backlogRows();
    const slowed = this.intake?.busyForMs() ?? 0;
    if (slowed > SLOWED_MS) return `the store is behind: the device intake has been slowed for ${Math.round(slowed / 1000)} s`;
    if (this.lastDroppedAt !== null && this.clock.now() - this.lastDroppedAt < DROPPING_MS) {
      return `the write buffer is full: rows were dropped ${Math.round((this.clock.now() - this.lastDroppedAt) / 1000)} s ago`;
    }
    if (rows > this.options.maxBufferedRows / 2) return `the write backlog is ${rows} rows, past half its bound of ${this.options.maxBufferedRows}`;
    return null;
  }

  /** The intake valve's figures for health, or null without one. */
  get intakeState(): ReturnType<Intake["statistics"]> | null {
    return this.intake?.statistics() ?? null;
  }

  statistics(): PersistenceStatistics {
    return {
      flushes: this.stats.flushes,
      rowsWritten: this.stats.rowsWritten,
      failures: this.stats.failures,
      refused: this.stats.refused,
      degraded: this.isDegraded,
      pointsWritten: this.stats.pointsWritten,
      pending: { presence: this.presence.size, states: this.states.size, history: this.history.length, events: this.events.length, points: this.points.length },
      backlog: { rows: this.backlogRows(), bound: this.options.maxBufferedRows },
      dropped: { ...this.stats.dropped },
      lastDroppedAt: this.lastDroppedAt,
      purged: this.retention.purged(),
    };
  }
}

function rowsOf(batch: WriteBatch): number {
  return batch.presence.length + batch.states.length + batch.history.length + batch.events.length + (batch.points?.length ?? 0);
}

/** Points of a refused batch: one part per point (only a refused batch comes here, and it is rare). */
function pointParts(points: PointRow[]): PointRow[][] {
  return points.map((p) => [p]);
}

/** Takes up to `max` marked devices off `marks`, reading each one's row as it is now (none for a device gone). */
function drain<R>(marks: Set<string>, max: number, read: (id: string) => R | null): R[] {
  const rows: R[] = [];
  for (const id of marks) {
    if (rows.length >= max) break;
    marks.delete(id);
    const row = read(id);
    if (row) rows.push(row);
  }
  return rows;
}
