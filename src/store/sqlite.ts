import { isTethralError, TethralError } from "../core/errors";
import {
  commandParams,
  deviceParams,
  encodePart,
  type PointRange,
  splitBatch,
  stateParams,
  toCommand,
  deviceOfPage,
  stateOfPage,
  toEvent,
  toHistory,
  tokenParams,
  toToken,
} from "./sqlite-rows";
import { SqliteThread, type ThreadArgs, type ThreadResult } from "./sqlite-thread";
import type { SqliteMethod } from "./sqlite-wire";
import { pointColumns, seriesPoint } from "./series";
import { PointBatch } from "../core/point-batch";
import type { RawSeriesPoint } from "./sqlite-series";
import type {
  BucketQuery,
  CommandRow,
  CommandStatus,
  DeviceRow,
  EventQuery,
  EventRow,
  HistoryRow,
  PointQuery,
  PurgeResult,
  RetentionPolicy,
  SeriesPoint,
  StateRow,
  Store,
  TokenRow,
  WriteBatch,
} from "../core/ports/store";

const toSeriesPoint = (r: RawSeriesPoint): SeriesPoint => seriesPoint(r[0], r[1], r[2]);

/** Rows per part of a big batch (see `writeBatch`): about a millisecond of encoding each. */
const PART_ROWS = 2048;
/** Rows per page when the fleet is loaded at start (a few MB of JSON each)… */
const LOAD_PAGE_ROWS = 10_000;
/** …and characters of JSON per page: a page ends at the row that passes this (see `jsonPageSql`). */
const LOAD_PAGE_CHARS = 32 * 1024 * 1024;
/** How long parts are encoded back to back before the event loop gets a turn. */
const ENCODE_SLICE_MS = 8;

/** Most commands in one group commit (as the command writer's batches). */
const MAX_COMMAND_GROUP = 500;

/**
 * The rows to ask for in a load's next page: as many as fit in a page's characters at the last
 * page's average size, up to LOAD_PAGE_ROWS. The page's SQL stops at that bound in any case, but
 * SQLite builds the JSON of every row of the LIMIT before it applies it: asking each time for
 * 10,000 rows of states a quarter of a megabyte each built all that were left to keep about 130,
 * and a load of such states grew with the square of their number (measured in the README's
 * `bench:store` notes, `loadLargeStatesMs`). Small rows still come 10,000 a page.
 */
function nextPageRows(chars: number, rows: number): number {
  return Math.max(1, Math.min(LOAD_PAGE_ROWS, Math.floor(LOAD_PAGE_CHARS / (chars / rows))));
}

/** An error about one row (a constraint, a value SQLite cannot bind), not about the database. */
function refusedRow(err: unknown): boolean {
  // From the thread an error keeps its name and code, not its class.
  const name = (err as { name?: unknown } | null)?.name;
  if (name === "TypeError" || name === "RangeError") return true;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^SQLITE_(CONSTRAINT|MISMATCH|TOOBIG|RANGE)/.test(code);
}

interface QueuedCommand {
  params: unknown[];
  resolve: () => void;
  reject: (err: unknown) => void;
}

export interface SqliteStoreOptions {
  /** A file path (its directory is created when missing), or `:memory:`. */
  path: string;
  /** How long a statement waits for another connection's lock. Default 5000 ms. */
  busyTimeoutMs?: number;
  /**
   * The page cache's bound, MiB (SQLite's `cache_size`). It holds only pages the database has
   * touched. Default: a sixteenth of the machine's memory, at least 128 and at most 512
   * (`defaultCacheMiB`).
   */
  cacheMiB?: number;
}

/**
 * The embedded store: one SQLite file (WAL) in the Node-RED user dir, or `:memory:` for tests.
 *
 * better-sqlite3 blocks the thread it runs on, so the database lives on a worker thread of its
 * own (SqliteDatabase, run by sqlite-worker.ts) and a batch of 20,000 rows no longer stalls
 * every flow while it is written. This thread only encodes: rows go over as arrays of SQL
 * parameters with the JSON columns as text, and come back as raw rows it decodes (see
 * `encodeBatch` for why not structured clone of the row objects). Calls are answered in the
 * order they were made, each once the thread has done it: a resolved write is committed. The
 * one exception: commands queued together go as one transaction (see `putCommand`), posted
 * after the calls made in the same run of this thread.
 */
export class SqliteStore implements Store {
  /** Points come in columns (see `Store.pointColumns`): both encodings read them where they are. */
  readonly pointColumns = true;
  readonly kind = "sqlite" as const;
  readonly description: string;
  private readonly path: string;
  private readonly busyTimeoutMs: number | undefined;
  private readonly cacheMiB: number | undefined;
  private thread: SqliteThread | undefined;
  private opened: Promise<void> | undefined;
  /** Set while a big batch is handed over part by part: the calls made meanwhile wait for it. */
  private handingOver: Promise<void> | null = null;
  /** Commands waiting for the next group commit (see `putCommand`), and whether one is on the thread. */
  private readonly commandQueue: QueuedCommand[] = [];
  private commandWriting = false;
  private readonly commandsDrained: (() => void)[] = [];
  /** Why the last thread stopped when nobody closed it: later calls say so. */
  private lost: string | undefined;

  constructor(options: SqliteStoreOptions) {
    this.path = options.path;
    this.description = options.path;
    this.busyTimeoutMs = options.busyTimeoutMs;
    if (options.cacheMiB !== undefined && !(Number.isFinite(options.cacheMiB) && options.cacheMiB >= 1)) {
      throw new TethralError("INVALID", `cacheMiB must be a number of MiB, at least 1 (got ${String(options.cacheMiB)})`);
    }
    this.cacheMiB = options.cacheMiB;
  }

  open(): Promise<void> {
    if (this.thread && this.opened) return this.opened;
    let thread: SqliteThread;
    try {
      thread = SqliteThread.start({ path: this.path, busyTimeoutMs: this.busyTimeoutMs, cacheMiB: this.cacheMiB }, (reason) => {
        if (this.thread !== thread) return;
        this.thread = undefined;
        this.lost = reason.message;
      });
    } catch (err) {
      return Promise.reject(err);
    }
    this.thread = thread;
    this.lost = undefined;
    // Calls made before the open is answered queue up behind it on the thread, as they ran
    // after it when the database was on this thread.
    this.opened = thread.call("open", []).catch(async (err: unknown) => {
      if (this.thread === thread) this.thread = undefined;
      await thread.stop();
      throw err;
    });
    return this.opened;
  }

  async close(): Promise<void> {
    // A batch being handed over is posted whole before the thread stops, and commands queued
    // for a group commit are written first: they were asked for before the close.
    while (this.handingOver) await this.handingOver;
    await this.drainCommands();
    const thread = this.thread;
    this.thread = undefined;
    this.lost = undefined;
    await thread?.stop();
  }

  async ping(): Promise<void> {
    return this.call("ping", []);
  }

  async schemaVersion(): Promise<number> {
    return this.call("schemaVersion", []);
  }

  async upsertDevice(row: DeviceRow): Promise<void> {
    return this.call("upsertDevice", [deviceParams(row)]);
  }

  async deleteDevice(id: string): Promise<void> {
    return this.call("deleteDevice", [id]);
  }

  async upsertState(row: StateRow): Promise<void> {
    const params: unknown[] = [];
    stateParams(row, params);
    return this.call("upsertState", [params]);
  }

  async writeBatch(batch: WriteBatch): Promise<void> {
    if (this.handingOver) return this.handingOver.then(() => this.writeBatch(batch));
    const thread = this.live();
    const { batch: ordered, points } = inIndexOrder(batch);
    const pointsMoved = points.order !== null;
    const parts = splitBatch(ordered, points, PART_ROWS);
    if (parts.length === 1) {
      try {
        return await postEncoded(thread, "writeBatch", parts[0]!);
      } catch (err) {
        throw pointsMoved ? firstRefusal(err, batch) : err;
      }
    }
    // Telemetry points are encoded here (checked, split into number or JSON text); their key
    // ids, the roll-ups and all the SQL are the database thread's work.
    // Each part is posted as soon as it is encoded: the thread writes it while the next one is
    // encoded here. Between parts this thread's timers and I/O run (a batch of 100,000 rows
    // is a few hundred ms of encoding); the calls made meanwhile wait for the hand-over to
    // end, so none comes between the parts of the transaction.
    let handedOver!: () => void;
    this.handingOver = new Promise((resolve) => (handedOver = resolve));
    const calls: Promise<unknown>[] = [];
    // Answers are awaited together at the end; one refused meanwhile is not left unhandled.
    const post = (call: Promise<unknown>) => {
      call.catch(() => undefined);
      calls.push(call);
    };
    try {
      post(thread.call("beginBatch", []));
      // Parts are encoded back to back for up to a few ms, then this thread's timers and I/O
      // run. Yielding after every part made the hand-over of a 300,000-point batch last as long
      // as 150 turns of a busy event loop, with the database thread waiting for the last part.
      let sliceStarted = performance.now();
      for (let i = 0; i < parts.length; i++) {
        if (i > 0 && performance.now() - sliceStarted >= ENCODE_SLICE_MS) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          sliceStarted = performance.now();
        }
        post(postEncoded(thread, "writePart", parts[i]!));
      }
      post(thread.call("commitBatch", []));
    } catch (err) {
      // A row JSON cannot carry: the parts already written are rolled back before the refusal.
      post(thread.call("rollbackBatch", []));
      await Promise.allSettled(calls);
      throw pointsMoved ? firstRefusal(err, batch) : err;
    } finally {
      this.handingOver = null;
      handedOver();
    }
    await Promise.all(calls);
  }

  async loadDevices(): Promise<DeviceRow[]> {
    return this.loadPages("loadDevicesPage", deviceOfPage);
  }

  async loadStates(): Promise<StateRow[]> {
    return this.loadPages("loadStatesPage", stateOfPage);
  }

  /**
   * Every row of a table, a page at a time: the thread reads page n+1 while this side parses
   * page n. Pages are bounded in rows and in characters, so a JSON text stays far below V8's
   * longest string whatever the fleet's size and its rows' (an empty page ends the load).
   */
  private async loadPages<T>(method: "loadDevicesPage" | "loadStatesPage", row: (r: unknown[]) => T): Promise<T[]> {
    const out: T[] = [];
    let next = this.call(method, ["", LOAD_PAGE_ROWS, LOAD_PAGE_CHARS]);
    for (;;) {
      const [text, last, count] = await next;
      const more = count > 0 && last !== null;
      if (more) {
        next = this.call(method, [last, nextPageRows(text.length, count), LOAD_PAGE_CHARS]);
        // Awaited on the next turn; this keeps a failure while this page is parsed from going unhandled.
        next.catch(() => undefined);
      }
      if (count > 0) for (const r of JSON.parse(text) as unknown[][]) out.push(row(r));
      if (!more) return out;
    }
  }

  async stateHistory(deviceId: string, limit: number): Promise<HistoryRow[]> {
    return (await this.call("stateHistory", [deviceId, limit])).map(toHistory(deviceId));
  }

  async events(query: EventQuery, now: number): Promise<EventRow[]> {
    return (await this.call("events", [query, now])).map(toEvent);
  }

  async putToken(row: TokenRow): Promise<void> {
    return this.call("putToken", [tokenParams(row)]);
  }

  async getToken(deviceId: string): Promise<TokenRow | null> {
    const r = await this.call("getToken", [deviceId]);
    return r ? toToken(r) : null;
  }

  async loadTokens(): Promise<TokenRow[]> {
    return (await this.call("loadTokens", [])).map(toToken);
  }

  async deleteToken(deviceId: string): Promise<void> {
    return this.call("deleteToken", [deviceId]);
  }

  /**
   * Group commit: the commands queued while a write of them is on the thread (or in the same
   * run of this thread) share the next transaction. Each call still resolves only once its row
   * is committed. At 1,000 commands a second that is a transaction per tick, not per command.
   */
  putCommand(row: CommandRow): Promise<void> {
    let params: unknown[];
    try {
      params = commandParams(row);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<void>((resolve, reject) => {
      this.commandQueue.push({ params, resolve, reject });
      if (this.commandQueue.length === 1 && !this.commandWriting) queueMicrotask(() => this.writeCommands());
    });
  }

  private writeCommands(): void {
    if (this.commandWriting || this.commandQueue.length === 0) return;
    const group = this.commandQueue.splice(0, MAX_COMMAND_GROUP);
    this.commandWriting = true;
    const alone = (g: QueuedCommand) => this.call("putCommand", [g.params]).then(g.resolve, g.reject);
    const written: Promise<unknown> =
      group.length === 1
        ? alone(group[0]!)
        : this.call("putCommands", [group.map((g) => g.params)]).then(
            () => group.forEach((g) => g.resolve()),
            (err: unknown) => {
              // A row the database refused rolled the group back: each is tried alone, so only
              // its caller hears of it. Anything else (busy, disk full, the thread gone) is
              // every caller's answer: retrying one by one would only wait as long again, N times.
              if (refusedRow(err)) return Promise.all(group.map(alone));
              for (const g of group) g.reject(err);
              return undefined;
            },
          );
    void written.finally(() => {
      this.commandWriting = false;
      if (this.commandQueue.length > 0) this.writeCommands();
      else for (const drained of this.commandsDrained.splice(0)) drained();
    });
  }

  /** Resolves once every command queued so far is written (or refused). */
  private drainCommands(): Promise<void> {
    if (!this.commandWriting && this.commandQueue.length === 0) return Promise.resolve();
    // Queued in this run of the thread and not yet posted: post them now, ahead of what follows.
    if (!this.commandWriting) this.writeCommands();
    return new Promise((resolve) => this.commandsDrained.push(resolve));
  }

  async putCommands(rows: CommandRow[]): Promise<void> {
    return this.call("putCommands", [rows.map(commandParams)]);
  }

  async getCommand(id: string): Promise<CommandRow | null> {
    const r = await this.call("getCommand", [id]);
    return r ? toCommand(r) : null;
  }

  async pendingCommands(deviceId?: string): Promise<CommandRow[]> {
    return (await this.call("pendingCommands", [deviceId])).map(toCommand);
  }

  async deleteCommand(id: string): Promise<void> {
    return this.call("deleteCommand", [id]);
  }

  async deviceCommands(deviceId: string, statuses: readonly CommandStatus[] | null, limit: number): Promise<CommandRow[]> {
    return (await this.call("deviceCommands", [deviceId, statuses, limit])).map(toCommand);
  }

  async purge(policy: RetentionPolicy, now: number, batchSize: number): Promise<PurgeResult> {
    return this.call("purge", [policy, now, batchSize]);
  }

  async points(query: PointQuery): Promise<SeriesPoint[]> {
    return (await this.call("points", [query])).map(toSeriesPoint);
  }

  async buckets(query: BucketQuery): Promise<SeriesPoint[]> {
    return (await this.call("buckets", [query])).map(toSeriesPoint);
  }

  async telemetryKeys(deviceId: string): Promise<string[]> {
    return this.call("telemetryKeys", [deviceId]);
  }

  /** A call to the database thread; without one, a rejection (UNAVAILABLE), never a throw. */
  private async call<M extends SqliteMethod>(method: M, args: ThreadArgs<M>): Promise<ThreadResult<M>> {
    while (this.handingOver) await this.handingOver;
    return this.live().call(method, args);
  }

  /** The open thread; throws UNAVAILABLE without one. */
  private live(): SqliteThread {
    if (this.thread) return this.thread;
    throw new TethralError("UNAVAILABLE", this.lost ?? `the SQLite store at ${this.path} is not open`);
  }
}

/**
 * The batch with its history rows grouped by device, and the order that groups its points by
 * device (null when they already are), each device's as they came (so in time order).
 *
 * History: the devices in id order, the order of the history's device index. A batch of 20,000
 * rows from 1,000 devices otherwise inserts into that index at random places; in device order
 * consecutive rows land on the same pages. Measured, bench:store's 300,000 rows in six pairs of
 * runs: 133,600 rows/s on average in arrival order, 150,800 in device order, faster in every pair.
 *
 * Points: a batch is written in parts of PART_ROWS rows, and the database thread orders each
 * part's points by series (`inKeyOrder` in sqlite-series.ts). In arrival order a part of 2,048
 * points from 10,000 devices held about one point a series: every point went to a page of its
 * own, SQLite copied that page for the part's savepoint, and each point began a roll-up row
 * looked up by hash. Grouped by device, a part holds a few devices' every point, each series'
 * points one after another.
 *
 * Grouping is one pass and a sort of the device ids, not of the rows (the points are found by
 * runs, and are not copied: parts are ranges of the order): this runs on the hub's thread
 * before the hand-over yields. What is read is the same: every read orders explicitly.
 */
function inIndexOrder(batch: WriteBatch): { batch: WriteBatch; points: PointRange } {
  let out = batch;
  if (batch.history.length >= 2) {
    const byDevice = groupBy(batch.history, (row) => row.deviceId);
    if (byDevice.size > 1) {
      const history: HistoryRow[] = [];
      for (const deviceId of [...byDevice.keys()].sort()) for (const i of byDevice.get(deviceId)!) history.push(batch.history[i]!);
      out = { ...out, history };
    }
  }
  const from = PointBatch.of(batch.points);
  const points: PointRange = { from, order: null, start: 0, end: from.length };
  if (from.length < 2) return { batch: out, points };
  // A report's points come one after another: a device's points are found run by run, and
  // the points are not moved, only their order is written down.
  const runs = new Map<string, number[]>();
  const ids = from.deviceIds;
  const n = from.length;
  for (let i = 0; i < n; ) {
    const id = ids[i]!;
    let end = i + 1;
    while (end < n && ids[end] === id) end++;
    const found = runs.get(id);
    if (found) found.push(i, end);
    else runs.set(id, [i, end]);
    i = end;
  }
  if (runs.size === 1) return { batch: out, points };
  const order = new Uint32Array(n);
  let at = 0;
  for (const bounds of runs.values()) for (let r = 0; r < bounds.length; r += 2) for (let i = bounds[r]!; i < bounds[r + 1]!; i++) order[at++] = i;
  return { batch: out, points: { ...points, order } };
}

/**
 * A point refused in a batch whose points were regrouped, named as the caller would have it
 * named: encoding found it at its place in the grouped order, and it need not be the first
 * invalid one as sent. So, on that error's path only, the batch as sent is checked again and its
 * first refusal is the answer.
 */
function firstRefusal(err: unknown, batch: WriteBatch): unknown {
  if (!isTethralError(err) || err.code !== "INVALID" || !err.details[0]?.field.startsWith("points[")) return err;
  const points = PointBatch.of(batch.points);
  for (let i = 0; i < points.length; i++) {
    try {
      pointColumns(points.row(i), i);
    } catch (first) {
      return first;
    }
  }
  return err;
}

/** The indexes of the rows, by the key of each, keys in order of first appearance. */
function groupBy<T>(rows: readonly T[], keyOf: (row: T) => string): Map<string, number[]> {
  const groups = new Map<string, number[]>();
  for (let i = 0; i < rows.length; i++) {
    const key = keyOf(rows[i]!);
    const indexes = groups.get(key);
    if (indexes) indexes.push(i);
    else groups.set(key, [i]);
  }
  return groups;
}

/**
 * Encodes a batch, or a part of one (its rows, and its range of the batch's points), and posts
 * it: the points' numbers are moved to the thread, not copied.
 */
function postEncoded(thread: SqliteThread, method: "writeBatch" | "writePart", { part, points }: { part: WriteBatch; points: PointRange }): Promise<void> {
  const encoded = encodePart(part, points);
  return thread.call(method, [encoded], [encoded.points.cols.buffer as ArrayBuffer]);
}
