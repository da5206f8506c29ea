import { type Clock, type TimerHandle, beforeDeadline } from "./clock";
import { TethralError, errorMessage } from "./errors";
import type { TethralEvent } from "./types";
import { WriteQueue } from "./write-queue";
import { DEFAULT_PERSISTENCE_OPTIONS, type PersistenceHost, type PersistenceOptions, type PersistenceStatistics } from "./write-behind-options";
import type { Intake } from "./intake";
import type { DevicePresenceRow, DeviceRow, EventRow, HistoryRow, PointValue, PurgeResult, StateRow, Store, WriteBatch } from "./ports/store";
import { PointBatch } from "./point-batch";
import { Retention } from "./retention";
import { type FencedFailure, isFenced } from "./ports/cluster";
import { movedError } from "./cluster/member";
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

/** What `whenStored` answers when everything is stored already (and a hub without a database, see Hub.stored). */
export const STORED = Promise.resolve(true);
const NOT_STORED = Promise.resolve(false);

export class Persistence {
  private readonly queue: WriteQueue;
  private timer: TimerHandle | null = null;
  /** The armed timer's delay: a round (> 0) or at once (0). */
  private timerDelay = 0;
  private readonly retention: Retention;
  /** Batches are written one after another: each flush is chained to the last. */
  private tail: Promise<void> = Promise.resolve();
  private busy = 0;
  private running = false;
  private failuresInRow = 0;
  private degradedSince = 0;
  private dropReported = false;
  private readonly stats = { flushes: 0, rowsWritten: 0, failures: 0, refused: 0, pointsWritten: 0, fenced: 0 };
  /** Batches taken so far (each `take()` counts one). */
  private takes = 0;
  /** The index of the batch being written (its `takes` count when taken). */
  private writing = 0;
  /** Devices whose rows were discarded while batches taken up to `through` were in flight: not put back. */
  private discarded: { theirs: (deviceId: string) => boolean; through: number }[] = [];
  /** Told the index of each batch written that left the queue empty (see `writtenMark`). */
  private writtenListeners: ((index: number) => void)[] = [];
  /** Acknowledgements waiting for a write (see `whenStored`), oldest first: marks never decrease. */
  private storedWaiters: { mark: number; resolve: (stored: boolean) => void }[] = [];

  constructor(
    readonly store: Store,
    private readonly clock: Clock,
    private readonly host: PersistenceHost,
    private readonly options: PersistenceOptions = DEFAULT_PERSISTENCE_OPTIONS,
    /** Moved as the backlog grows and shrinks, so adapters slow the devices instead of rows being dropped. */
    private readonly intake: Intake | null = null,
  ) {
    this.queue = new WriteQueue(clock);
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
    this.intake?.backlog(this.queue.backlog);
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
    try {
      await this.writeAtStop();
    } finally {
      // What could not be written by now is not acknowledged (see `whenStored`).
      for (const waiter of this.storedWaiters.splice(0)) waiter.resolve(false);
    }
  }

  private async writeAtStop(): Promise<void> {
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
    this.queue.markPresence(id);
  }

  markState(id: string): void {
    this.queue.markState(id);
  }

  addHistory(row: HistoryRow): void {
    if (this.queue.addHistory(row)) this.afterAppend();
  }

  addEvent(event: TethralEvent, expiresAt: number): void {
    this.queue.addEvent(eventRow(event, expiresAt));
    this.afterAppend();
  }

  /** A telemetry point (hot path: kept in columns, no object per point). */
  addPoint(deviceId: string, key: string, ts: number, value: PointValue): void {
    if (this.queue.addPoint(deviceId, key, ts, value)) this.afterAppend();
  }

  /**
   * Keeps the batcher away from a device while it is registered, changed or removed directly:
   * its waiting rows and everything it reports meanwhile are set aside until `release`. A batch
   * can then neither race the direct write nor bring back rows of a device just deleted.
   */
  hold(id: string): void {
    this.queue.hold(id);
  }

  /**
   * Ends a hold, as the device now is. `changed`: it lives, and its presence and state are
   * written again whatever was marked (so the newest lands last). `unchanged`: it lives as
   * before; what was set aside is batched again. `gone`: removed, or its registration failed;
   * what was set aside is dropped.
   */
  release(id: string, afterwards: "changed" | "unchanged" | "gone"): void {
    if (this.queue.release(id, afterwards)) this.afterAppend();
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
      if (isFenced(err)) {
        // The database is fine: the device is another cluster member's now, and it asks there.
        // Nothing was applied before this write (see `writeState`): no rows of it were dropped.
        this.host.fenced?.(err.partitions, [], err.epochs);
        throw movedError(err.deviceIds[0] ?? "");
      }
      if (err instanceof TethralError && err.code !== "UNAVAILABLE") throw err;
      this.failed(err);
      throw new TethralError("UNAVAILABLE", `the database is unavailable, nothing was changed: ${errorMessage(err)}`);
    }
  }

  // ── Flushing ──────────────────────────────────────────────────────────────────────────

  /**
   * A mark of what has been marked or added so far, for `onWritten`: everything before it is in
   * the database once a listener hears an index above it. Null when it all is already (nothing
   * waits, nothing is being written). A batch counts when it was taken after the mark and left
   * the queue empty: a failed batch is put back and taken again, so a later one covers it. Rows
   * the store refused one by one count as written (set aside and counted); rows of devices whose
   * partition moved are not written, and the partition's lease is reported lost before.
   */
  writtenMark(): number | null {
    if (this.queue.isEmpty) return this.busy === 0 ? null : this.takes - 1;
    return this.takes;
  }

  /** Hears the index of every batch written that left the queue empty (see `writtenMark`). */
  onWritten(listener: (index: number) => void): () => void {
    this.writtenListeners.push(listener);
    return () => {
      this.writtenListeners = this.writtenListeners.filter((l) => l !== listener);
    };
  }

  private written(index: number): void {
    for (const listener of this.writtenListeners) listener(index);
    let n = 0;
    while (n < this.storedWaiters.length && this.storedWaiters[n]!.mark < index) n++;
    if (n > 0) for (const waiter of this.storedWaiters.splice(0, n)) waiter.resolve(true);
  }

  /**
   * Resolves true once everything taken in so far is in the database (at once when it is), and
   * asks for that write now instead of at the next round: an adapter acknowledges a device's
   * report (MQTT PUBACK, CoAP 2.04, HTTP 204) only then, so a crash loses nothing acknowledged.
   * Those waiting meanwhile share the next write (a group commit). While the database is away
   * they wait for it to come back. False when the hub stops before it could be stored.
   */
  whenStored(): Promise<boolean> {
    const mark = this.writtenMark();
    if (mark === null) return STORED;
    if (!this.running) return NOT_STORED;
    if (this.busy === 0 && !this.isDegraded) this.arm(0);
    return new Promise((resolve) => this.storedWaiters.push({ mark, resolve }));
  }

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
    for (let i = this.queue.batchesFor(this.options.maxTransactionRows, this.options.maxTransactionPoints); i > 0 && !this.queue.isEmpty; i--) {
      await this.flushOnce();
    }
  }

  /** Resolves once the batches taken or chained so far are written or given up (not those chained later). */
  inFlight(): Promise<void> {
    return this.tail;
  }

  /** Resolves once no batch is being written. */
  async idle(): Promise<void> {
    for (let tail = this.tail; ; tail = this.tail) {
      await tail;
      if (tail === this.tail) return;
    }
  }

  private hasWork(): boolean {
    return !this.queue.isEmpty;
  }

  private pendingRows(): number {
    return this.queue.size;
  }

  private afterAppend(): void {
    const backlog = this.queue.backlog;
    if (backlog > this.options.maxBufferedRows) this.shed(backlog - this.options.maxBufferedRows);
    if (this.intake !== null && !this.isDegraded) this.intake.backlog(backlog);
    if (this.running && this.busy === 0 && !this.isDegraded && this.batchWaits()) this.arm(0);
  }

  /** Enough waits for a batch of its own, before the timer's round. */
  private batchWaits(): boolean {
    return this.queue.rowsWaiting >= this.options.flushRows || this.queue.pointsWaiting >= this.options.flushPoints;
  }

  /**
   * Drops the oldest events, then the oldest history rows, then the oldest points, to bring the
   * buffer back in bounds, 5% of it at a time. Only a database that cannot be written gets here:
   * while it can, the intake slows the devices long before the bound.
   */
  private shed(over: number): void {
    this.queue.shed(over, Math.ceil(this.options.maxBufferedRows * 0.05));
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
    const run = this.tail
      .then(() => {
        const batch = this.take();
        const index = ++this.takes;
        this.writing = index;
        if (this.discarded.length > 0) this.discarded = this.discarded.filter((d) => d.through >= index);
        const drains = this.queue.isEmpty;
        return this.write(batch)
          .then(() => {
            // Also when what arrived meanwhile was dropped (fenced, or discarded): nothing marked before is waiting.
            if (drains || this.queue.isEmpty) this.written(index);
          })
          .finally(() => this.queue.recycle(batch));
      })
      .finally(() => {
      this.busy--;
      // Acknowledgements wait for what came while this batch was written: the next one at once.
      if (this.busy === 0 && this.storedWaiters.length > 0 && !this.isDegraded) this.arm(0);
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** The next transaction's rows: presence and state read from memory now, the rest as queued. */
  private take(): WriteBatch {
    let batch = this.queue.take(this.options.maxTransactionRows, this.options.maxTransactionPoints, this.host);
    if (!this.store.pointColumns && batch.points !== undefined) {
      // A store of the caller's own gets rows it may keep; the columns go back at once.
      const rows = PointBatch.of(batch.points).rows();
      this.queue.recycle(batch);
      batch = { ...batch, points: rows };
    }
    // The valve reads what waits behind the batch being written: the devices fill the next
    // batch while this one is written, instead of waiting for it (double buffering).
    if (this.intake !== null && !this.isDegraded) this.intake.backlog(this.queue.backlog);
    return batch;
  }

  private async write(batch: WriteBatch): Promise<void> {
    let rows = rowsOf(batch);
    if (rows === 0) return;
    const started = performance.now();
    try {
      for (;;) {
        // Rows discarded since the batch was taken (a partition superseded, see `discard`) are not written.
        batch = this.withoutDiscarded(batch);
        rows = rowsOf(batch);
        // All of it refused or discarded: the database answered all the same.
        if (rows === 0) break;
        try {
          await this.store.writeBatch(batch);
          break;
        } catch (err) {
          if (!isFenced(err) || err.deviceIds.length === 0) throw err;
          batch = this.fencedOut(err, batch);
        }
      }
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
    if (this.intake !== null) this.intake.backlog(this.queue.backlog);
  }

  /**
   * Writes a refused batch apart, setting aside (and counting) the rows the store refuses: a
   * device at a time, each device's rows in one transaction as the batch had them, so that its
   * presence, which carries the fingerprint of the last message applied (cluster mode), is stored
   * with the rest of its rows or not at all. A device whose own part is refused is written a row
   * at a time, its presence last: a fingerprint stored before rows a moved partition then refuses
   * would make the next owner skip the broker's resent copies of messages stored nowhere.
   */
  private async writeApart(batch: WriteBatch): Promise<void> {
    const parts = deviceParts(batch);
    for (let i = 0; i < parts.length; i++) {
      let part = this.withoutDiscarded(parts[i]!);
      while (rowsOf(part) > 0) {
        try {
          await this.store.writeBatch(part);
          this.stats.rowsWritten += rowsOf(part);
          this.stats.pointsWritten += part.points?.length ?? 0;
          break;
        } catch (err) {
          if (isFenced(err) && err.deviceIds.length > 0) {
            // Devices whose partitions moved meanwhile, as in `write`: the rest of the part is written.
            part = this.fencedOut(err, part);
            continue;
          }
          if (!(err instanceof TethralError && err.code === "INVALID")) {
            // The database went away midway: this part and every one after it wait for the next
            // try, in their order (each is put back in front of the queue, so the last goes first).
            for (const rest of [part, ...parts.slice(i + 1)].reverse()) this.putBack(rest);
            this.failed(err);
            throw err;
          }
          if (rowsOf(part) > 1) {
            parts.splice(i + 1, 0, ...rowParts(part));
            break;
          }
          this.stats.refused++;
          this.host.warn(`the database refused a row, which was set aside: ${errorMessage(err)}`);
          break;
        }
      }
    }
    this.stats.flushes++;
    this.succeeded();
  }

  /**
   * Cluster mode: drops what waits to be written of the devices `theirs` picks, because another
   * member held their partition since this one let it go (see `LeaseHooks.superseded`): their
   * rows here are older than what it stored, and it stored the messages this member had not
   * (partition sessions give it what was not acknowledged). Counted as fenced. A batch being
   * written now is refused by its fence, and is not put back with them either. Returns the rows
   * dropped from the queue (those of a batch in flight are counted where they are left out).
   */
  discard(theirs: (deviceId: string) => boolean): number {
    const dropped = this.queue.discard(theirs);
    this.stats.fenced += dropped;
    if (this.busy > 0) this.discarded.push({ theirs, through: this.takes });
    if (this.intake !== null && !this.isDegraded) this.intake.backlog(this.queue.backlog);
    return dropped;
  }

  /**
   * A write the fence refused for some devices: their partitions are another member's now, which
   * loaded what was stored and goes on from there. Their rows are not this member's to write:
   * neither this batch's nor those waiting behind it (written after a refused one, they would
   * follow a gap). The member is told which devices (see `PersistenceHost.fenced`). The batch
   * without them, to write.
   */
  private fencedOut(err: FencedFailure, batch: WriteBatch): WriteBatch {
    const refused = new Set(err.deviceIds);
    const rest = withoutMatching(batch, (id) => refused.has(id));
    this.stats.fenced += rowsOf(batch) - rowsOf(rest);
    const gone = new Set(this.host.fenced?.(err.partitions, err.deviceIds, err.epochs) ?? err.deviceIds);
    // Theirs waiting, and in the rest of this batch: its parts still to write apart, or what is put back.
    this.discard((id) => gone.has(id));
    return rest;
  }

  /** The batch being written without the rows discarded since it was taken (counted as fenced). */
  private withoutDiscarded(batch: WriteBatch): WriteBatch {
    for (const d of this.discarded) {
      if (d.through < this.writing) continue;
      const before = rowsOf(batch);
      batch = withoutMatching(batch, d.theirs);
      this.stats.fenced += before - rowsOf(batch);
    }
    return batch;
  }

  /** A failed batch goes back in front of what arrived meanwhile; presence and state are re-read later. */
  private putBack(batch: WriteBatch): void {
    batch = this.withoutDiscarded(batch);
    this.queue.putBack(batch);
    const rows = this.queue.backlog;
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
      // A timer armed already comes first, or at once: every point appended past a batch's
      // worth would otherwise replace it with another at once (six timers a report of six values).
      if (delayMs > 0 || this.timerDelay === 0) return;
      this.clock.clearTimeout(this.timer);
    }
    this.timerDelay = delayMs;
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
      this.arm(this.batchWaits() || this.storedWaiters.length > 0 ? 0 : this.options.flushIntervalMs);
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
    const rows = this.queue.backlog;
    const lastDroppedAt = this.queue.lastDroppedAt;
    const slowed = this.intake?.busyForMs() ?? 0;
    if (slowed > SLOWED_MS) return `the store is behind: the device intake has been slowed for ${Math.round(slowed / 1000)} s`;
    if (lastDroppedAt !== null && this.clock.now() - lastDroppedAt < DROPPING_MS) {
      return `the write buffer is full: rows were dropped ${Math.round((this.clock.now() - lastDroppedAt) / 1000)} s ago`;
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
      fenced: this.stats.fenced,
      degraded: this.isDegraded,
      pointsWritten: this.stats.pointsWritten,
      pending: this.queue.pending(),
      backlog: { rows: this.queue.backlog, bound: this.options.maxBufferedRows },
      dropped: { ...this.queue.dropped },
      lastDroppedAt: this.queue.lastDroppedAt,
      purged: this.retention.purged(),
    };
  }
}

/** The batch without the rows of the devices `theirs` picks (events stay: they name no lease). */
function withoutMatching(batch: WriteBatch, theirs: (deviceId: string) => boolean): WriteBatch {
  return {
    presence: batch.presence.filter((r) => !theirs(r.id)),
    states: batch.states.filter((r) => !theirs(r.deviceId)),
    history: batch.history.filter((r) => !theirs(r.deviceId)),
    events: batch.events,
    ...(batch.points && { points: PointBatch.of(batch.points).filter((id) => !theirs(id)) }),
  };
}

function rowsOf(batch: WriteBatch): number {
  return batch.presence.length + batch.states.length + batch.history.length + batch.events.length + (batch.points?.length ?? 0);
}

/**
 * A refused batch's parts (see `Persistence.writeApart`): each device's rows, in the order its
 * rows first appear, and the events that name no device last. Only a refused batch comes here.
 */
function deviceParts(batch: WriteBatch): WriteBatch[] {
  const parts = new Map<string, { part: WriteBatch; points: number[] }>();
  const of = (id: string) => {
    let p = parts.get(id);
    if (!p) parts.set(id, (p = { part: { presence: [], states: [], history: [], events: [] }, points: [] }));
    return p;
  };
  for (const row of batch.presence) of(row.id).part.presence.push(row);
  for (const row of batch.states) of(row.deviceId).part.states.push(row);
  for (const row of batch.history) of(row.deviceId).part.history.push(row);
  const points = PointBatch.of(batch.points);
  for (let i = 0; i < points.length; i++) of(points.deviceIds[i]!).points.push(i);
  const deviceless: EventRow[] = [];
  for (const row of batch.events) {
    if (row.deviceId === null) deviceless.push(row);
    else of(row.deviceId).part.events.push(row);
  }
  const out = [...parts.values()].map(({ part, points: at }) => (at.length > 0 ? { ...part, points: points.pick(at) } : part));
  if (deviceless.length > 0) out.push({ presence: [], states: [], history: [], events: deviceless });
  return out;
}

/** A part's rows one at a time, its presence last (see `Persistence.writeApart`). */
function rowParts(part: WriteBatch): WriteBatch[] {
  const single = (rows: Partial<WriteBatch>): WriteBatch => ({ presence: [], states: [], history: [], events: [], ...rows });
  const points = PointBatch.of(part.points);
  return [
    ...part.states.map((row) => single({ states: [row] })),
    ...part.history.map((row) => single({ history: [row] })),
    ...part.events.map((row) => single({ events: [row] })),
    ...Array.from({ length: points.length }, (_, i) => single({ points: points.slice(i, i + 1) })),
    ...part.presence.map((row) => single({ presence: [row] })),
  ];
}
