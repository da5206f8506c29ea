import { mkdirSync } from "node:fs";
import { totalmem } from "node:os";
import { dirname, resolve } from "node:path";
import Database from "better-sqlite3";
import { isTethralError, TethralError, errorMessage } from "../core/errors";
import { LATEST_SCHEMA_VERSION, MIGRATIONS, MIGRATIONS_TABLE, type Migration, newerSchemaMessage, tombstoneMaxAgeMs } from "./migrations";
import {
  CHUNK_COLS,
  type ChunkTable,
  COMMAND_COLS,
  DEVICE_COLS,
  DEVICE_LOAD_COLS,
  type EncodedBatch,
  type JsonPage,
  jsonPageSql,
  EVENT_COLS,
  ON_CONFLICT,
  PENDING_SQL,
  type RawCommand,
  type RawEvent,
  type RunEntry,
  type RawToken,
  STATE_COLS,
  TOKEN_COLS,
  typeGlob,
  updateAll,
} from "./sqlite-rows";
import type { SqliteStoreOptions } from "./sqlite";
import { SqliteHistory } from "./sqlite-history";
import { type RawSeriesPoint, SqliteSeries } from "./sqlite-series";
import { bucketRange } from "./series";
import type { BucketQuery, EventQuery, PointQuery, PurgeResult, RetentionPolicy } from "../core/ports/store";
import { isInMemoryPath } from "./sqlite-wire";

type Db = Database.Database;
type Stmt = Database.Statement<unknown[], unknown>;

// Multi-row statements are prepared for CHUNK rows and for the powers of two below it, so a
// batch of any size is written with few statements and at most 8 cached shapes per table, far
// below SQLite's limit of 32766 bound variables (128 rows x 9 columns).
const CHUNK = 128;
/**
 * The page cache's default bound, MiB: a sixteenth of the machine's memory, at least the
 * 128 MiB every store had before, at most 512 (see `open`).
 */
export function defaultCacheMiB(totalBytes = totalmem()): number {
  return Math.min(512, Math.max(128, Math.floor(totalBytes / 16 / 2 ** 20)));
}
const EVENT_QUERY_CACHE = 64;

/**
 * The SQLite database itself, synchronous as better-sqlite3 is: the Store methods minus the
 * promises. Only the store's worker thread uses it (see `SqliteStore`), so its blocking calls
 * never stall the thread that runs the hub and the flows. It speaks SQL values only: writes take
 * rows encoded as parameters (`deviceParams`, `encodeBatch`, ...) and reads give raw rows
 * (`RawHistory`, ..., or JSON pages); the caller's thread turns them into the store's row shapes.
 */
export class SqliteDatabase {
  private readonly path: string;
  private readonly busyTimeoutMs: number;
  private readonly autocheckpointPages: number | undefined;
  /** The page cache bound, KiB (SQLite's `cache_size`, negated). */
  private readonly cacheKiB: number;
  private conn: Db | undefined;
  private stmts: ReturnType<SqliteDatabase["prepareAll"]> | undefined;
  private ts: SqliteSeries | undefined;
  private history: SqliteHistory | undefined;
  private readonly chunkStmts = new Map<string, Stmt>();
  private readonly eventQueries = new Map<string, Stmt>();

  /** `walAutocheckpointPages`: SQLite's own checkpoint threshold, raised when a checkpointer thread does the work (see `WalCheckpointer`). */
  constructor(options: SqliteStoreOptions & { walAutocheckpointPages?: number }) {
    this.path = options.path;
    this.cacheKiB = Math.floor((options.cacheMiB ?? defaultCacheMiB()) * 1024);
    this.busyTimeoutMs = options.busyTimeoutMs ?? 5000;
    this.autocheckpointPages = options.walAutocheckpointPages;
  }

  open(): void {
    if (this.conn) return;
    const inMemory = isInMemoryPath(this.path);
    let db: Db | undefined;
    try {
      if (!inMemory) mkdirSync(dirname(resolve(this.path)), { recursive: true });
      db = new Database(this.path, { timeout: this.busyTimeoutMs });
      // Read before writing anything (even the journal mode): a newer database stays untouched.
      this.refuseNewer(db);
      if (!inMemory) db.pragma("journal_mode = WAL");
      db.pragma("synchronous = NORMAL");
      db.pragma("temp_store = MEMORY");
      // The pages batches land in (each series' newest points and roll-ups, each device's
      // newest history) stay in memory between batches. Ingest from 10,000 devices × 3 keys
      // keeps about 30,000 such pages busy, more than 128 MiB holds: bench:ingest stored 28k
      // msg/s with 128 MiB, 39k with 512 MiB, no more with 1 GiB. The cache holds only pages the
      // database has touched, but a long-running hub with a large file fills it, and that memory
      // is the process's: so the default scales with the machine (`defaultCacheMiB`), and a
      // small gateway keeps the 128 MiB it had.
      db.pragma(`cache_size = ${-this.cacheKiB}`);
      db.pragma("journal_size_limit = 67108864"); // the WAL shrinks back to 64 MiB after checkpoints
      if (!inMemory && this.autocheckpointPages !== undefined) db.pragma(`wal_autocheckpoint = ${Math.floor(this.autocheckpointPages)}`);
      db.exec(
        `CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`,
      );
      this.migrate(db);
      this.conn = db;
      this.ts = new SqliteSeries(db);
      this.history = new SqliteHistory(db);
      this.stmts = this.prepareAll(db);
    } catch (err) {
      db?.close();
      this.conn = undefined;
      if (isTethralError(err)) throw err;
      const wrapped = new TethralError("UNAVAILABLE", `cannot open the SQLite database at ${this.path}: ${errorMessage(err)}`);
      wrapped.cause = err;
      throw wrapped;
    }
  }

  close(): void {
    const db = this.conn;
    this.conn = undefined;
    this.stmts = undefined;
    this.ts = undefined;
    this.history = undefined;
    this.chunkStmts.clear();
    this.eventQueries.clear();
    db?.close();
  }

  /**
   * SQLite's own checkpoint threshold in pages: set (back to its default when the checkpointer
   * thread is gone) when `pages` is given; the current one is returned either way.
   */
  walAutocheckpoint(pages?: number): number {
    if (pages !== undefined) this.db.pragma(`wal_autocheckpoint = ${Math.max(0, Math.floor(pages))}`);
    return this.db.pragma("wal_autocheckpoint", { simple: true }) as number;
  }

  /** SQLite's `cache_size` as the connection has it: negative, in KiB. */
  cacheSize(): number {
    return this.db.pragma("cache_size", { simple: true }) as number;
  }

  ping(): void {
    this.s.ping.get();
  }

  schemaVersion(): number {
    return this.recordedVersion(this.db);
  }

  upsertDevice(params: unknown[]): void {
    this.s.upsertDevice(params);
  }

  deleteDevice(id: string): void {
    this.s.deleteDevice(id);
  }

  upsertState(params: unknown[]): void {
    this.writeRows("states", params);
  }

  writeBatch(batch: EncodedBatch): void {
    try {
      this.s.writeBatch(batch);
    } catch (err) {
      this.series.rolledBack();
      throw err;
    }
    this.series.settled();
  }

  // A big batch comes in parts, so that the caller's thread encodes a part while this thread
  // writes the one before: begun, written part by part and committed, all one transaction. The
  // caller posts them in one go, so no other call comes between.

  beginBatch(): void {
    this.s.begin.run();
  }

  writePart(part: EncodedBatch): void {
    // Not in a transaction: an earlier part failed and rolled the batch back, and its answer
    // carries the error. Writing this part on its own would commit half a batch.
    if (!this.db.inTransaction) return;
    try {
      this.writeEncoded(part);
    } catch (err) {
      this.rollbackBatch();
      throw err;
    }
  }

  commitBatch(): void {
    if (!this.db.inTransaction) return;
    try {
      this.series.flush();
      this.s.commit.run();
    } catch (err) {
      this.rollbackBatch();
      throw err;
    }
    this.series.settled();
  }

  rollbackBatch(): void {
    if (this.db.inTransaction) this.s.rollback.run();
    this.series.rolledBack();
  }

  /** Up to `limit` devices with ids after `after` ("" for the first page), in id order, about `maxChars` of JSON at most (see `jsonPageSql`). */
  loadDevicesPage(after: string, limit: number, maxChars: number): JsonPage {
    return this.s.loadDevicesPage.get(after, limit, maxChars) as JsonPage;
  }

  /** Up to `limit` states with device ids after `after`, in that order, about `maxChars` of JSON at most. */
  loadStatesPage(after: string, limit: number, maxChars: number): JsonPage {
    return this.s.loadStatesPage.get(after, limit, maxChars) as JsonPage;
  }

  /** Oldest first. */
  stateHistory(deviceId: string, limit: number): RunEntry[] {
    return this.h.last(deviceId, Math.max(0, Math.floor(limit)));
  }

  events(query: EventQuery, now: number): RawEvent[] {
    const where = ["(expires_at = 0 OR expires_at > ?)"];
    const params: unknown[] = [now];
    if (query.types?.length) {
      const alternatives = query.types.map((t) => {
        params.push(t.includes("*") ? typeGlob(t) : t);
        return t.includes("*") ? "type GLOB ?" : "type = ?";
      });
      where.push(`(${alternatives.join(" OR ")})`);
    }
    // An empty list matches nothing (a priority filter and a minimum that leave no priority).
    if (query.priorities !== undefined) {
      where.push(query.priorities.length === 0 ? "0" : `priority IN (${query.priorities.map(() => "?").join(", ")})`);
      params.push(...query.priorities);
    }
    const equal: [string, unknown][] = [
      ["device_id = ?", query.deviceId],
      ["source = ?", query.source],
      ["ts >= ?", query.since],
    ];
    for (const [condition, value] of equal) {
      if (value === undefined) continue;
      where.push(condition);
      params.push(value);
    }
    params.push(Math.max(0, Math.floor(query.limit)));
    const sql = `SELECT ${EVENT_COLS.join(", ")} FROM events WHERE ${where.join(" AND ")} ORDER BY ts DESC, id DESC LIMIT ?`;
    let stmt = this.eventQueries.get(sql);
    if (!stmt) {
      if (this.eventQueries.size >= EVENT_QUERY_CACHE) this.eventQueries.clear();
      stmt = this.db.prepare(sql).raw(true);
      this.eventQueries.set(sql, stmt);
    }
    return stmt.all(params) as RawEvent[];
  }

  putToken(params: unknown[]): void {
    this.s.putToken.run(params);
  }

  getToken(deviceId: string): RawToken | null {
    return (this.s.getToken.get(deviceId) as RawToken | undefined) ?? null;
  }

  loadTokens(): RawToken[] {
    return this.s.loadTokens.all() as RawToken[];
  }

  deleteToken(deviceId: string): void {
    this.s.deleteToken.run(deviceId);
  }

  putCommand(params: unknown[]): void {
    this.s.putCommand.run(params);
  }

  putCommands(rows: unknown[][]): void {
    if (rows.length === 0) return;
    this.db.transaction(() => {
      for (const params of rows) this.s.putCommand.run(params);
    })();
  }

  getCommand(id: string): RawCommand | null {
    return (this.s.getCommand.get(id) as RawCommand | undefined) ?? null;
  }

  pendingCommands(deviceId?: string): RawCommand[] {
    return (deviceId === undefined ? this.s.pendingAll.all() : this.s.pendingOf.all(deviceId)) as RawCommand[];
  }

  deleteCommand(id: string): void {
    this.s.deleteCommand.run(id);
  }

  deviceCommands(deviceId: string, statuses: readonly string[] | null, limit: number): RawCommand[] {
    const n = Math.max(0, Math.floor(limit));
    return (statuses === null ? this.s.commandsOf.all(deviceId, n) : this.s.commandsOfWith.all(deviceId, JSON.stringify(statuses), n)) as RawCommand[];
  }

  purge(policy: RetentionPolicy, now: number, batchSize: number): PurgeResult {
    return this.s.purge(policy, now, Math.max(0, Math.floor(batchSize)));
  }

  points(query: PointQuery): RawSeriesPoint[] {
    return this.series.points(query);
  }

  buckets(query: BucketQuery): RawSeriesPoint[] {
    const { start, end, interval } = bucketRange(query);
    return this.series.buckets(query, start, end, interval);
  }

  telemetryKeys(deviceId: string): string[] {
    return this.series.keys(deviceId);
  }

  private get h(): SqliteHistory {
    if (!this.history) throw new TethralError("UNAVAILABLE", `the SQLite store at ${this.path} is not open`);
    return this.history;
  }

  private get series(): SqliteSeries {
    if (!this.ts) throw new TethralError("UNAVAILABLE", `the SQLite store at ${this.path} is not open`);
    return this.ts;
  }

  private get db(): Db {
    if (!this.conn) throw new TethralError("UNAVAILABLE", `the SQLite store at ${this.path} is not open`);
    return this.conn;
  }

  private get s(): NonNullable<SqliteDatabase["stmts"]> {
    if (!this.stmts) throw new TethralError("UNAVAILABLE", `the SQLite store at ${this.path} is not open`);
    return this.stmts;
  }

  private recordedVersion(db: Db): number {
    const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(MIGRATIONS_TABLE);
    if (!exists) return 0;
    const row = db.prepare(`SELECT max(version) AS v FROM ${MIGRATIONS_TABLE}`).get() as { v: number | null };
    return row.v ?? 0;
  }

  private refuseNewer(db: Db): void {
    const found = this.recordedVersion(db);
    if (found > LATEST_SCHEMA_VERSION) throw new TethralError("UNAVAILABLE", newerSchemaMessage(found, this.path));
  }

  private migrate(db: Db): void {
    const record = db.prepare(`INSERT INTO ${MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, ?)`);
    const isApplied = db.prepare(`SELECT 1 FROM ${MIGRATIONS_TABLE} WHERE version = ?`);
    // IMMEDIATE takes the write lock before reading, so two processes opening the same file at
    // once apply each migration exactly once; the re-check covers a newer one that got there first.
    const apply = db.transaction((m: Migration) => {
      this.refuseNewer(db);
      if (isApplied.get(m.version)) return;
      for (const statement of m.sqlite) db.exec(statement);
      record.run(m.version, m.name, Date.now());
    });
    const current = this.recordedVersion(db);
    for (const m of MIGRATIONS) if (m.version > current) apply.immediate(m);
  }

  /** A cached multi-row INSERT of `rows` rows into `table`. */
  private chunk(table: ChunkTable, rows: number): Stmt {
    const key = `${table}:${rows}`;
    let stmt = this.chunkStmts.get(key);
    if (!stmt) {
      const cols = CHUNK_COLS[table];
      const tuple = `(${cols.map(() => "?").join(", ")})`;
      const values = Array.from({ length: rows }, () => tuple).join(", ");
      stmt = this.db.prepare(`INSERT INTO ${table} (${cols.join(", ")}) VALUES ${values} ${ON_CONFLICT[table]}`);
      this.chunkStmts.set(key, stmt);
    }
    return stmt;
  }

  private writeEncoded(batch: EncodedBatch): void {
    // The learned timeout only where there is one (a row without keeps the stored one).
    const p = batch.presence;
    for (let i = 0; i < p.length; i += 5) {
      if (p[i + 2] === 0) this.s.presence.run(p[i], p[i + 1], p[i + 3], p[i + 4]);
      else this.s.presenceLearned.run(p[i], p[i + 1], p[i + 2], p[i + 3], p[i + 4]);
    }
    this.writeRows("states", batch.states);
    this.writeRows("history_runs", batch.history);
    this.writeRows("events", batch.events);
    if (batch.points.cols.length > 0) this.series.write(batch.points);
  }

  /** Writes flattened rows in order, CHUNK at a time, the remainder in power-of-two chunks. */
  private writeRows(table: ChunkTable, params: unknown[]): void {
    const width = CHUNK_COLS[table].length;
    const rows = params.length / width;
    let i = 0;
    while (i < rows) {
      const left = rows - i;
      const n = left >= CHUNK ? CHUNK : 2 ** Math.floor(Math.log2(left));
      this.chunk(table, n).run(params.slice(i * width, (i + n) * width));
      i += n;
    }
  }

  private prepareAll(db: Db) {
    const upsert = (table: string, cols: string[], key: string) =>
      db.prepare(
        `INSERT INTO ${table} (${cols.join(", ")}) VALUES (${cols.map(() => "?").join(", ")}) ` +
          `ON CONFLICT(${key}) DO UPDATE SET ${updateAll(cols, key)}`,
      );
    const rows = (sql: string) => db.prepare(sql).raw(true);
    const deletes = ["devices WHERE id", "states WHERE device_id", "device_tokens WHERE device_id",
      "history_runs WHERE device_id", "commands WHERE device_id"].map((t) => db.prepare(`DELETE FROM ${t} = ?`));
    // A removed device leaves a tombstone (the schema is PostgreSQL's, where cluster members
    // follow removals by it); registering the id again clears it.
    const tombstone = db.prepare(
      "INSERT INTO removed_devices (device_id, removed_at) VALUES (?, ?) ON CONFLICT(device_id) DO UPDATE SET removed_at = excluded.removed_at",
    );
    const untombstone = db.prepare("DELETE FROM removed_devices WHERE device_id = ?");
    const upsertDevice = upsert("devices", DEVICE_COLS, "id");

    const purgeStmts = {
      eventsByAge: db.prepare("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE ts < ? LIMIT ?)"),
      eventsExpired: db.prepare(
        "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE expires_at != 0 AND expires_at <= ? LIMIT ?)",
      ),
      eventsCount: db.prepare("SELECT count(*) AS n FROM events"),
      eventsOldest: db.prepare("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY ts, id LIMIT ?)"),
      commandsByAge: db.prepare(
        `DELETE FROM commands WHERE rowid IN (SELECT rowid FROM commands
          WHERE completed_at > 0 AND completed_at < ? LIMIT ?)`,
      ),
      tombstones: db.prepare(
        "DELETE FROM removed_devices WHERE device_id IN (SELECT device_id FROM removed_devices WHERE removed_at < ? LIMIT ?)",
      ),
    };

    return {
      ping: db.prepare("SELECT 1"),
      presence: db.prepare("UPDATE devices SET status = ?, last_seen = ?, offline_since = ? WHERE id = ?"),
      presenceLearned: db.prepare("UPDATE devices SET status = ?, last_seen = ?, learned_timeout = ?, offline_since = ? WHERE id = ?"),
      begin: db.prepare("BEGIN"),
      commit: db.prepare("COMMIT"),
      rollback: db.prepare("ROLLBACK"),
      upsertDevice: db.transaction((params: unknown[]) => {
        upsertDevice.run(params);
        untombstone.run(params[0]);
      }),
      putToken: upsert("device_tokens", TOKEN_COLS, "device_id"),
      putCommand: upsert("commands", COMMAND_COLS, "id"),
      loadDevicesPage: rows(jsonPageSql("devices", "id", DEVICE_LOAD_COLS)),
      loadStatesPage: rows(jsonPageSql("states", "device_id", STATE_COLS)),
      getToken: rows(`SELECT ${TOKEN_COLS.join(", ")} FROM device_tokens WHERE device_id = ?`),
      loadTokens: rows(`SELECT ${TOKEN_COLS.join(", ")} FROM device_tokens ORDER BY device_id`),
      deleteToken: db.prepare("DELETE FROM device_tokens WHERE device_id = ?"),
      getCommand: rows(`SELECT ${COMMAND_COLS.join(", ")} FROM commands WHERE id = ?`),
      pendingAll: rows(
        `SELECT ${COMMAND_COLS.join(", ")} FROM commands WHERE status IN (${PENDING_SQL}) AND completed_at = 0 ORDER BY created_at, id`,
      ),
      pendingOf: rows(
        `SELECT ${COMMAND_COLS.join(", ")} FROM commands WHERE device_id = ? AND status IN (${PENDING_SQL}) AND completed_at = 0 ORDER BY created_at, id`,
      ),
      deleteCommand: db.prepare("DELETE FROM commands WHERE id = ?"),
      commandsOf: rows(`SELECT ${COMMAND_COLS.join(", ")} FROM commands WHERE device_id = ? ORDER BY created_at DESC, id DESC LIMIT ?`),
      // The statuses come as one JSON array: one statement for any number of them.
      commandsOfWith: rows(
        `SELECT ${COMMAND_COLS.join(", ")} FROM commands WHERE device_id = ? AND status IN (SELECT value FROM json_each(?)) ORDER BY created_at DESC, id DESC LIMIT ?`,
      ),

      deleteDevice: db.transaction((id: string) => {
        for (const stmt of deletes) stmt.run(id);
        tombstone.run(id, Date.now());
        this.series.deleteDevice(id);
      }),

      writeBatch: db.transaction((batch: EncodedBatch) => {
        this.writeEncoded(batch);
        this.series.flush();
      }),

      purge: db.transaction((policy: RetentionPolicy, now: number, batchSize: number): PurgeResult => {
        const deleted = (stmt: Stmt, ...params: unknown[]) => stmt.run(...params).changes;
        let history = 0;
        if (policy.historyMaxAgeMs > 0) history += this.h.purgeOlderThan(now - policy.historyMaxAgeMs, batchSize);
        if (policy.historyMaxPerDevice > 0 && history < batchSize) history += this.h.purgeBeyond(policy.historyMaxPerDevice, batchSize - history);
        let events = 0;
        if (policy.eventsMaxAgeMs > 0) events += deleted(purgeStmts.eventsByAge, now - policy.eventsMaxAgeMs, batchSize);
        if (events < batchSize) events += deleted(purgeStmts.eventsExpired, now, batchSize - events);
        if (policy.eventsMaxRows > 0 && events < batchSize) {
          const excess = (purgeStmts.eventsCount.get() as { n: number }).n - policy.eventsMaxRows;
          if (excess > 0) events += deleted(purgeStmts.eventsOldest, Math.min(excess, batchSize - events));
        }
        let commands = 0;
        if (policy.commandsMaxAgeMs > 0) commands = deleted(purgeStmts.commandsByAge, now - policy.commandsMaxAgeMs, batchSize);
        deleted(purgeStmts.tombstones, now - tombstoneMaxAgeMs(policy), batchSize);
        return { history, events, commands, ...this.series.purge(policy, now, batchSize) };
      }),
    };
  }
}
