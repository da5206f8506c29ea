import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import Database from "better-sqlite3";
import { isTethralError, TethralError } from "../core/errors";
import { LATEST_SCHEMA_VERSION, MIGRATIONS, MIGRATIONS_TABLE, type Migration, newerSchemaMessage } from "./migrations";
import {
  CHUNK_COLS,
  type ChunkTable,
  COMMAND_COLS,
  DEVICE_COLS,
  EVENT_COLS,
  eventParams,
  HISTORY_COLS,
  historyParams,
  json,
  ON_CONFLICT,
  PENDING_SQL,
  type RawCommand,
  type RawDevice,
  type RawEvent,
  type RawHistory,
  type RawState,
  type RawToken,
  STATE_COLS,
  stateParams,
  toCommand,
  toDevice,
  toEvent,
  toHistory,
  toState,
  typeGlob,
  updateAll,
} from "./sqlite-rows";
import type {
  CommandRow,
  DeviceRow,
  EventQuery,
  EventRow,
  HistoryRow,
  PurgeResult,
  RetentionPolicy,
  StateRow,
  Store,
  TokenRow,
  WriteBatch,
} from "./types";

export interface SqliteStoreOptions {
  /** A file path (its directory is created when missing), or `:memory:`. */
  path: string;
  /** How long a statement waits for another connection's lock. Default 5000 ms. */
  busyTimeoutMs?: number;
}

type Db = Database.Database;
type Stmt = Database.Statement<unknown[], unknown>;

// Multi-row statements are prepared for CHUNK rows and for the powers of two below it, so a
// batch of any size is written with few statements and at most 8 cached shapes per table, far
// below SQLite's limit of 32766 bound variables (128 rows x 9 columns).
const CHUNK = 128;
const EVENT_QUERY_CACHE = 64;

/** The embedded store: one SQLite file (WAL) in the Node-RED user dir, or `:memory:` for tests. */
export class SqliteStore implements Store {
  readonly kind = "sqlite" as const;
  readonly description: string;
  private readonly path: string;
  private readonly busyTimeoutMs: number;
  private conn: Db | undefined;
  private stmts: ReturnType<SqliteStore["prepareAll"]> | undefined;
  private readonly chunkStmts = new Map<string, Stmt>();
  private readonly eventQueries = new Map<string, Stmt>();

  constructor(options: SqliteStoreOptions) {
    this.path = options.path;
    this.description = options.path;
    this.busyTimeoutMs = options.busyTimeoutMs ?? 5000;
  }

  async open(): Promise<void> {
    if (this.conn) return;
    const inMemory = this.path === ":memory:" || this.path === "";
    let db: Db | undefined;
    try {
      if (!inMemory) mkdirSync(dirname(resolve(this.path)), { recursive: true });
      db = new Database(this.path, { timeout: this.busyTimeoutMs });
      // Read before writing anything (even the journal mode): a newer database stays untouched.
      this.refuseNewer(db);
      if (!inMemory) db.pragma("journal_mode = WAL");
      db.pragma("synchronous = NORMAL");
      db.pragma("temp_store = MEMORY");
      db.pragma("cache_size = -65536"); // 64 MiB: history and event indexes stay in memory while batches land
      db.pragma("journal_size_limit = 67108864"); // the WAL shrinks back to 64 MiB after checkpoints
      db.exec(
        `CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`,
      );
      this.migrate(db);
      this.conn = db;
      this.stmts = this.prepareAll(db);
    } catch (err) {
      db?.close();
      this.conn = undefined;
      if (isTethralError(err)) throw err;
      const wrapped = new TethralError("UNAVAILABLE", `cannot open the SQLite database at ${this.path}: ${(err as Error).message}`);
      wrapped.cause = err;
      throw wrapped;
    }
  }

  async close(): Promise<void> {
    const db = this.conn;
    this.conn = undefined;
    this.stmts = undefined;
    this.chunkStmts.clear();
    this.eventQueries.clear();
    db?.close();
  }

  async ping(): Promise<void> {
    this.s.ping.get();
  }

  async schemaVersion(): Promise<number> {
    return this.recordedVersion(this.db);
  }

  async upsertDevice(row: DeviceRow): Promise<void> {
    this.s.upsertDevice.run(
      row.id, row.name, row.protocol, row.address, row.manufacturer, row.model, row.firmware,
      json(row.capabilities, "capabilities"), json(row.tags, "tags"), row.heartbeatTimeout,
      json(row.metadata, "metadata"), row.status, row.lastSeen, row.createdAt, row.updatedAt,
    );
  }

  async deleteDevice(id: string): Promise<void> {
    this.s.deleteDevice(id);
  }

  async upsertState(row: StateRow): Promise<void> {
    this.writeRows("states", [row], stateParams);
  }

  async writeBatch(batch: WriteBatch): Promise<void> {
    this.s.writeBatch(batch);
  }

  async loadDevices(): Promise<DeviceRow[]> {
    return (this.s.loadDevices.all() as RawDevice[]).map(toDevice);
  }

  async loadStates(): Promise<StateRow[]> {
    return (this.s.loadStates.all() as RawState[]).map(toState);
  }

  async stateHistory(deviceId: string, limit: number): Promise<HistoryRow[]> {
    const rows = this.s.stateHistory.all(deviceId, Math.max(0, Math.floor(limit))) as RawHistory[];
    return rows.reverse().map(toHistory);
  }

  async events(query: EventQuery, now: number): Promise<EventRow[]> {
    const where = ["(expires_at = 0 OR expires_at > ?)"];
    const params: unknown[] = [now];
    if (query.types?.length) {
      const alternatives = query.types.map((t) => {
        params.push(t.includes("*") ? typeGlob(t) : t);
        return t.includes("*") ? "type GLOB ?" : "type = ?";
      });
      where.push(`(${alternatives.join(" OR ")})`);
    }
    if (query.priorities?.length) {
      where.push(`priority IN (${query.priorities.map(() => "?").join(", ")})`);
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
      stmt = this.db.prepare(sql);
      this.eventQueries.set(sql, stmt);
    }
    return (stmt.all(params) as RawEvent[]).map(toEvent);
  }

  async putToken(row: TokenRow): Promise<void> {
    this.s.putToken.run(row.deviceId, row.hash, row.createdAt);
  }

  async getToken(deviceId: string): Promise<TokenRow | null> {
    const r = this.s.getToken.get(deviceId) as RawToken | undefined;
    return r ? toToken(r) : null;
  }

  async loadTokens(): Promise<TokenRow[]> {
    return (this.s.loadTokens.all() as RawToken[]).map(toToken);
  }

  async deleteToken(deviceId: string): Promise<void> {
    this.s.deleteToken.run(deviceId);
  }

  async putCommand(row: CommandRow): Promise<void> {
    this.s.putCommand.run(...commandValues(row));
  }

  async putCommands(rows: CommandRow[]): Promise<void> {
    if (rows.length === 0) return;
    const values = rows.map(commandValues);
    this.db.transaction(() => {
      for (const v of values) this.s.putCommand.run(...v);
    })();
  }

  async getCommand(id: string): Promise<CommandRow | null> {
    const r = this.s.getCommand.get(id) as RawCommand | undefined;
    return r ? toCommand(r) : null;
  }

  async pendingCommands(deviceId?: string): Promise<CommandRow[]> {
    const rows = deviceId === undefined ? this.s.pendingAll.all() : this.s.pendingOf.all(deviceId);
    return (rows as RawCommand[]).map(toCommand);
  }

  async deleteCommand(id: string): Promise<void> {
    this.s.deleteCommand.run(id);
  }

  async purge(policy: RetentionPolicy, now: number, batchSize: number): Promise<PurgeResult> {
    return this.s.purge(policy, now, Math.max(0, Math.floor(batchSize)));
  }

  private get db(): Db {
    if (!this.conn) throw new TethralError("UNAVAILABLE", `the SQLite store at ${this.path} is not open`);
    return this.conn;
  }

  private get s(): NonNullable<SqliteStore["stmts"]> {
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

  /** Writes rows in order, CHUNK at a time, the remainder in power-of-two chunks. */
  private writeRows<T>(table: ChunkTable, rows: readonly T[], toParams: (row: T, out: unknown[]) => void): void {
    let i = 0;
    while (i < rows.length) {
      const left = rows.length - i;
      const n = left >= CHUNK ? CHUNK : 2 ** Math.floor(Math.log2(left));
      const params: unknown[] = [];
      for (let j = i; j < i + n; j++) toParams(rows[j]!, params);
      this.chunk(table, n).run(params);
      i += n;
    }
  }

  private prepareAll(db: Db) {
    const upsert = (table: string, cols: string[], key: string) =>
      db.prepare(
        `INSERT INTO ${table} (${cols.join(", ")}) VALUES (${cols.map(() => "?").join(", ")}) ` +
          `ON CONFLICT(${key}) DO UPDATE SET ${updateAll(cols, key)}`,
      );
    const presence = db.prepare("UPDATE devices SET status = ?, last_seen = ? WHERE id = ?");
    const deletes = ["devices WHERE id", "states WHERE device_id", "device_tokens WHERE device_id",
      "state_history WHERE device_id", "commands WHERE device_id"].map((t) => db.prepare(`DELETE FROM ${t} = ?`));

    const purgeStmts = {
      historyByAge: db.prepare(
        "DELETE FROM state_history WHERE rowid IN (SELECT rowid FROM state_history WHERE at < ? LIMIT ?)",
      ),
      // Only devices over the limit are ranked; the window keeps each one's newest rows.
      historyByCount: db.prepare(
        `DELETE FROM state_history WHERE rowid IN (
          SELECT rid FROM (
            SELECT rowid AS rid, row_number() OVER (PARTITION BY device_id ORDER BY at DESC, version DESC) AS rn
            FROM state_history
            WHERE device_id IN (SELECT device_id FROM state_history GROUP BY device_id HAVING count(*) > ?)
          ) WHERE rn > ? LIMIT ?)`,
      ),
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
    };

    return {
      ping: db.prepare("SELECT 1"),
      upsertDevice: upsert("devices", DEVICE_COLS, "id"),
      putToken: upsert("device_tokens", ["device_id", "hash", "created_at"], "device_id"),
      putCommand: upsert("commands", COMMAND_COLS, "id"),
      loadDevices: db.prepare(`SELECT ${DEVICE_COLS.join(", ")} FROM devices ORDER BY created_at, id`),
      loadStates: db.prepare(`SELECT ${STATE_COLS.join(", ")} FROM states ORDER BY device_id`),
      stateHistory: db.prepare(
        `SELECT ${HISTORY_COLS.join(", ")} FROM state_history WHERE device_id = ? ORDER BY at DESC, version DESC LIMIT ?`,
      ),
      getToken: db.prepare("SELECT device_id, hash, created_at FROM device_tokens WHERE device_id = ?"),
      loadTokens: db.prepare("SELECT device_id, hash, created_at FROM device_tokens ORDER BY device_id"),
      deleteToken: db.prepare("DELETE FROM device_tokens WHERE device_id = ?"),
      getCommand: db.prepare(`SELECT ${COMMAND_COLS.join(", ")} FROM commands WHERE id = ?`),
      pendingAll: db.prepare(
        `SELECT ${COMMAND_COLS.join(", ")} FROM commands WHERE status IN (${PENDING_SQL}) AND completed_at = 0 ORDER BY created_at, id`,
      ),
      pendingOf: db.prepare(
        `SELECT ${COMMAND_COLS.join(", ")} FROM commands WHERE device_id = ? AND status IN (${PENDING_SQL}) AND completed_at = 0 ORDER BY created_at, id`,
      ),
      deleteCommand: db.prepare("DELETE FROM commands WHERE id = ?"),

      deleteDevice: db.transaction((id: string) => {
        for (const stmt of deletes) stmt.run(id);
      }),

      writeBatch: db.transaction((batch: WriteBatch) => {
        for (const p of batch.presence) presence.run(p.status, p.lastSeen, p.id);
        this.writeRows("states", batch.states, stateParams);
        this.writeRows("state_history", batch.history, historyParams);
        this.writeRows("events", batch.events, eventParams);
      }),

      purge: db.transaction((policy: RetentionPolicy, now: number, batchSize: number): PurgeResult => {
        const deleted = (stmt: Stmt, ...params: unknown[]) => stmt.run(...params).changes;
        let history = 0;
        if (policy.historyMaxAgeMs > 0) history += deleted(purgeStmts.historyByAge, now - policy.historyMaxAgeMs, batchSize);
        if (policy.historyMaxPerDevice > 0 && history < batchSize) {
          const keep = policy.historyMaxPerDevice;
          history += deleted(purgeStmts.historyByCount, keep, keep, batchSize - history);
        }
        let events = 0;
        if (policy.eventsMaxAgeMs > 0) events += deleted(purgeStmts.eventsByAge, now - policy.eventsMaxAgeMs, batchSize);
        if (events < batchSize) events += deleted(purgeStmts.eventsExpired, now, batchSize - events);
        if (policy.eventsMaxRows > 0 && events < batchSize) {
          const excess = (purgeStmts.eventsCount.get() as { n: number }).n - policy.eventsMaxRows;
          if (excess > 0) events += deleted(purgeStmts.eventsOldest, Math.min(excess, batchSize - events));
        }
        let commands = 0;
        if (policy.commandsMaxAgeMs > 0) commands = deleted(purgeStmts.commandsByAge, now - policy.commandsMaxAgeMs, batchSize);
        return { history, events, commands };
      }),
    };
  }
}

function toToken(r: RawToken): TokenRow {
  return { deviceId: r.device_id, hash: r.hash, createdAt: r.created_at };
}

function commandValues(row: CommandRow): unknown[] {
  return [
    row.id, row.deviceId, row.command, json(row.params, "params"), row.status, row.attempts, row.priority,
    row.createdAt, row.sentAt, row.completedAt, row.expiresAt,
    row.result === null || row.result === undefined ? null : json(row.result, "result"), row.error,
    json(row.options, "options"),
  ];
}
