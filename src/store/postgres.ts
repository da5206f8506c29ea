import pg from "pg";
import { TethralError } from "../core/errors";
import { isCockroachVersion, LATEST_SCHEMA_VERSION, MIGRATIONS, MIGRATIONS_TABLE, newerSchemaMessage, tombstoneMaxAgeMs } from "./migrations";
import { assertFence, PURGE_TOMBSTONES, TOMBSTONE, type FenceCheck } from "./postgres-cluster";
import * as cluster from "./postgres-cluster-store";
import {
  backoffMs,
  bigintAsNumber,
  connectionSettings,
  describeError,
  isConnectionError,
  isMigrationRace,
  isSerializationFailure,
  sleep,
  sqlState,
  withCause,
} from "./postgres-connection";
import {
  chunkedColumns,
  columns,
  COMMAND_COLUMNS,
  DELETE_DEVICE,
  DEVICE_ROW,
  deviceParams,
  EVENT_COLUMNS,
  eventsQuery,
  HISTORY_COLUMNS,
  INSERT_EVENTS,
  INSERT_HISTORY,
  lastById,
  PRESENCE_COLUMNS,
  purgeRows,
  STATE_COLUMNS,
  text,
  toCommandRow,
  toDeviceRow,
  toEventRow,
  toHistoryRow,
  toStateRow,
  toTokenRow,
  UPDATE_PRESENCE,
  UPSERT_COMMANDS,
  STATE_ROW,
  UPSERT_DEVICE,
  UPSERT_STATES,
  UPSERT_TOKEN,
  TOKEN_ROW,
} from "./postgres-sql";
import { columnLines, copyLines, UNIQUE_VIOLATION } from "./postgres-copy";
import { DELETE_DEVICE_SERIES, pointArrays, PostgresSeries, type Queryable } from "./postgres-series";
import { PointBatch } from "../core/point-batch";
import {
  PENDING_COMMAND_STATUSES,
  type CommandRow,
  type CommandStatus,
  type DeviceRow,
  type EventQuery,
  type EventRow,
  type HistoryRow,
  type BucketQuery,
  type PointQuery,
  type PurgeResult,
  type SeriesPoint,
  type RetentionPolicy,
  type StateRow,
  type Store,
  type TokenRow,
  type WriteBatch,
} from "../core/ports/store";
import type { BeatResult, ClusterStore, Fence, FleetChanges, HeldLease, KnownRows, LeaseRow, StoredPresence } from "../core/ports/cluster";

export { connectionSettings, isConnectionError, isSerializationFailure };

export interface PostgresStoreOptions {
  /** `postgres://user[:password]@host[:port]/database[?sslmode=...]` */
  url: string;
  /** Overrides the URL's password (e.g. from Node-RED credentials). */
  password?: string;
  /** Pooled connections; default 10. */
  poolSize?: number;
  connectTimeoutMs?: number;
  statementTimeoutMs?: number;
  /** Retries of a transaction failing with a serialization conflict (40001/40P01); default 5. */
  maxRetries?: number;
  ssl?: pg.ClientConfig["ssl"];
  /**
   * Write telemetry points, and batches of at least 1,000 state-history rows, with COPY (default
   * true): twice as fast as INSERTs for points, 1.5–2 times for history. Off for servers that do
   * not take COPY FROM STDIN (PGlite's socket server, used in tests).
   */
  bulkCopy?: boolean;
  /**
   * Up to this many telemetry points a batch is written by one statement (default 2,000); larger
   * batches by COPY and separate roll-up upserts, more round trips but less per point.
   */
  onePassPoints?: number;
}

/** A batch with at least this many history rows writes them by COPY (see `writeHistoryByCopy`). */
const COPY_HISTORY_ROWS = 1000;
const COPY_HISTORY = "COPY state_history (id, device_id, at, version, from_state, to_state, reason, cause_id) FROM STDIN";

/**
 * A batch's history rows (`INSERT_HISTORY`'s parameters, already checked) by one COPY, in the
 * batch's transaction: 120k rows/s against 61–80k by INSERTs of unnest arrays on this machine's
 * PostgreSQL 15 (20,000-row transactions, the table's three indexes). A row whose id is already
 * there (a batch retried after a lost answer, or an id twice in the batch) fails the COPY with a
 * unique violation: it is undone to a savepoint, and INSERT_HISTORY skips what exists, as it
 * always did.
 */
async function writeHistoryByCopy(c: pg.ClientBase, history: unknown[][][]): Promise<void> {
  await c.query("SAVEPOINT state_history_copy");
  try {
    await copyLines(c, COPY_HISTORY, columnLines(history));
  } catch (err) {
    if ((err as { code?: unknown }).code !== UNIQUE_VIOLATION) throw err;
    await c.query("ROLLBACK TO SAVEPOINT state_history_copy");
    for (const params of history) await c.query(INSERT_HISTORY, params);
  }
  await c.query("RELEASE SAVEPOINT state_history_copy");
}

/**
 * The store on PostgreSQL through a `pg` Pool; the same SQL runs on CockroachDB: text keys,
 * `INSERT ... ON CONFLICT` upserts, no LISTEN/NOTIFY or advisory locks, and transactions retried
 * on the client when they fail with a serialization conflict (CockroachDB's restart is 40001).
 *
 * It is also the cluster's store (CONTRACT §8): leases, members, fenced writes and the changes
 * members follow (see postgres-cluster.ts and postgres-cluster-store.ts).
 */
export class PostgresStore implements Store, ClusterStore {
  /** Points come in columns (see `Store.pointColumns`): both encodings read them where they are. */
  readonly pointColumns = true;
  readonly kind = "postgres" as const;
  readonly description: string;
  private readonly connection: pg.PoolConfig;
  private readonly maxRetries: number;
  private pool: pg.Pool | null = null;
  private opening: Promise<void> | null = null;
  private closed = false;
  private readonly series: PostgresSeries;
  private readonly bulkCopy: boolean;
  /** The pool for the series code, with this store's retries and error codes. */
  private readonly db: Queryable = { query: (config) => this.query(config) };
  /** Set in cluster mode: every device write is checked against it (`setFence`). */
  private fence: Fence | null = null;
  /** The cluster's statements (postgres-cluster-store.ts) run on this store's pool, retried like its own. */
  private readonly clusterDb: cluster.ClusterDb = {
    query: (sql, params) => this.query(sql, params),
    tx: (fn) => this.tx(fn),
    direct: (sql) => this.requirePool().query(sql),
  };

  constructor(options: PostgresStoreOptions) {
    const { connectionString, description } = connectionSettings(options.url, options.password);
    this.description = description;
    this.maxRetries = options.maxRetries ?? 5;
    this.bulkCopy = options.bulkCopy ?? true;
    this.series = new PostgresSeries(this.bulkCopy, options.onePassPoints);
    this.connection = {
      connectionString,
      max: options.poolSize ?? 10,
      connectionTimeoutMillis: options.connectTimeoutMs ?? 10_000,
      statement_timeout: options.statementTimeoutMs,
      ssl: options.ssl,
      keepAlive: true,
      application_name: "tethral",
      // Scoped to this pool: BIGINT epoch-ms times and counts as numbers, pg's globals untouched.
      types: { getTypeParser: bigintAsNumber },
    };
  }

  async open(): Promise<void> {
    if (this.closed) throw this.closedError();
    // Concurrent calls share one attempt; a failed attempt can be repeated.
    this.opening ??= this.connectAndMigrate().catch((err: unknown) => {
      this.opening = null;
      throw err;
    });
    return this.opening;
  }

  private async connectAndMigrate(): Promise<void> {
    const pool = new pg.Pool(this.connection);
    // An idle connection that dies (server restart, network) is reported here; without a
    // listener the process would crash. The next query gets a fresh connection or the error.
    pool.on("error", () => undefined);
    this.pool = pool;
    try {
      await this.migrate();
    } catch (err) {
      this.pool = null;
      await pool.end().catch(() => undefined);
      throw this.wrap(err);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.opening?.catch(() => undefined);
    const pool = this.pool;
    this.pool = null;
    if (pool) await pool.end();
  }

  async ping(): Promise<void> {
    await this.query("SELECT 1");
  }

  async schemaVersion(): Promise<number> {
    const { rows } = await this.query(`SELECT COALESCE(MAX(version), 0) AS v FROM ${MIGRATIONS_TABLE}`);
    return Number(rows[0]!.v);
  }

  // ---- devices, states ----

  /** Registering an id again clears its tombstone, in the same statement. */
  async upsertDevice(d: DeviceRow): Promise<void> {
    await this.fencedStatement([d.id], UPSERT_DEVICE, deviceParams(d));
  }

  async deleteDevice(id: string): Promise<void> {
    const check = this.checkOf([id]);
    await this.tx(async (c) => {
      if (check) await assertFence(c, check);
      for (const sql of [...DELETE_DEVICE, ...DELETE_DEVICE_SERIES, TOMBSTONE]) await c.query(sql, [id]);
    });
  }

  async upsertState(row: StateRow): Promise<void> {
    await this.fencedStatement([row.deviceId], UPSERT_STATES, columns([row], STATE_COLUMNS));
  }

  async writeBatch(batch: WriteBatch): Promise<void> {
    const presence = lastById(batch.presence, (p) => p.id, () => true);
    const states = lastById(batch.states, (s) => s.deviceId, (next, prev) => next.rev >= prev.rev);
    const points = PointBatch.of(batch.points);
    if (presence.length + states.length + batch.history.length + batch.events.length + points.length === 0) return;
    // Checked (and stringified) before the transaction, so a bad row fails the batch up front.
    const statements: [string, unknown[]][] = [];
    const add = (sql: string, parts: unknown[][][]) => {
      for (const params of parts) statements.push([sql, params]);
    };
    add(UPDATE_PRESENCE, chunkedColumns("presence", presence, PRESENCE_COLUMNS, (p) => p.id));
    add(UPSERT_STATES, chunkedColumns("states", states, STATE_COLUMNS, (s) => s.deviceId));
    const history = chunkedColumns("history", batch.history, HISTORY_COLUMNS);
    const copyHistory = this.bulkCopy && batch.history.length >= COPY_HISTORY_ROWS;
    if (!copyHistory) add(INSERT_HISTORY, history);
    add(INSERT_EVENTS, chunkedColumns("events", batch.events, EVENT_COLUMNS));
    const cols = points.length > 0 ? pointArrays(points) : null;
    // Events are not fenced: any member may record them, and they name no lease.
    const check = this.checkOf(function* () {
      for (const p of presence) yield p.id;
      for (const s of states) yield s.deviceId;
      for (const h of batch.history) yield h.deviceId;
      if (cols) yield* cols.devices;
    });
    const ids = cols ? await this.series.keyIdsFor(this.db, cols.keys) : null;
    await this.tx(async (c) => {
      if (check) await assertFence(c, check);
      for (const [sql, params] of statements) await c.query(sql, params);
      if (copyHistory) await writeHistoryByCopy(c, history);
      if (cols && ids) await this.series.write(c, cols, ids);
    });
  }

  async loadDevices(): Promise<DeviceRow[]> {
    const { rows } = await this.query(`SELECT ${DEVICE_ROW} FROM devices`);
    return rows.map(toDeviceRow);
  }

  async loadStates(): Promise<StateRow[]> {
    const { rows } = await this.query(`SELECT ${STATE_ROW} FROM states`);
    return rows.map(toStateRow);
  }

  async stateHistory(deviceId: string, limit: number): Promise<HistoryRow[]> {
    if (!(limit > 0)) return [];
    const { rows } = await this.query(
      `SELECT * FROM (SELECT * FROM state_history WHERE device_id = $1 ORDER BY at DESC, version DESC LIMIT $2) h
       ORDER BY at, version`,
      [deviceId, Math.floor(limit)],
    );
    return rows.map(toHistoryRow);
  }

  async events(query: EventQuery, now: number): Promise<EventRow[]> {
    if (!(query.limit > 0)) return [];
    const { sql, params } = eventsQuery(query, now);
    const { rows } = await this.query(sql, params);
    return rows.map(toEventRow);
  }

  // ---- time series ----

  async points(query: PointQuery): Promise<SeriesPoint[]> {
    return this.series.points(this.db, query);
  }

  async buckets(query: BucketQuery): Promise<SeriesPoint[]> {
    return this.series.buckets(this.db, query);
  }

  async telemetryKeys(deviceId: string): Promise<string[]> {
    return this.series.keys(this.db, deviceId);
  }

  // ---- tokens ----

  async putToken(row: TokenRow): Promise<void> {
    await this.fencedStatement(
      [row.deviceId],
      UPSERT_TOKEN,
      [text(row.deviceId, "deviceId"), text(row.hash, "hash"), row.createdAt],
    );
  }

  async getToken(deviceId: string): Promise<TokenRow | null> {
    const { rows } = await this.query(`SELECT ${TOKEN_ROW} FROM device_tokens WHERE device_id = $1`, [deviceId]);
    return rows.length > 0 ? toTokenRow(rows[0]!) : null;
  }

  async loadTokens(): Promise<TokenRow[]> {
    const { rows } = await this.query(`SELECT ${TOKEN_ROW} FROM device_tokens ORDER BY device_id`);
    return rows.map(toTokenRow);
  }

  async deleteToken(deviceId: string): Promise<void> {
    await this.fencedStatement([deviceId], "DELETE FROM device_tokens WHERE device_id = $1", [deviceId]);
  }

  // ---- commands ----

  async putCommand(c: CommandRow): Promise<void> {
    await this.fencedStatement([c.deviceId], UPSERT_COMMANDS, columns([c], COMMAND_COLUMNS));
  }

  /** One statement per 5,000 rows (the last row of an id wins: a statement may not touch a row twice). */
  async putCommands(rows: CommandRow[]): Promise<void> {
    if (rows.length === 0) return;
    const parts = chunkedColumns("commands", lastById(rows, (c) => c.id, () => true), COMMAND_COLUMNS, (c) => c.id);
    const check = this.checkOf(rows.map((r) => r.deviceId));
    await this.tx(async (client) => {
      if (check) await assertFence(client, check);
      for (const params of parts) await client.query(UPSERT_COMMANDS, params);
    });
  }

  async getCommand(id: string): Promise<CommandRow | null> {
    const { rows } = await this.query("SELECT * FROM commands WHERE id = $1", [id]);
    return rows.length > 0 ? toCommandRow(rows[0]!) : null;
  }

  async pendingCommands(deviceId?: string): Promise<CommandRow[]> {
    const params: unknown[] = [PENDING_COMMAND_STATUSES];
    let sql = "SELECT * FROM commands WHERE status = ANY($1::text[]) AND completed_at = 0";
    if (deviceId !== undefined) sql += ` AND device_id = $${params.push(deviceId)}`;
    const { rows } = await this.query(`${sql} ORDER BY created_at, id`, params);
    return rows.map(toCommandRow);
  }

  async deleteCommand(id: string): Promise<void> {
    if (!this.fence) {
      await this.query("DELETE FROM commands WHERE id = $1", [id]);
      return;
    }
    await this.tx(async (c) => {
      // Fenced by the device it is stored for; a command not there is nothing to write.
      const { rows } = await c.query<{ device_id: string }>("SELECT device_id FROM commands WHERE id = $1", [id]);
      if (rows.length === 0) return;
      const check = this.checkOf([rows[0]!.device_id]);
      if (check) await assertFence(c, check);
      await c.query("DELETE FROM commands WHERE id = $1", [id]);
    });
  }

  async deviceCommands(deviceId: string, statuses: readonly CommandStatus[] | null, limit: number): Promise<CommandRow[]> {
    const params: unknown[] = [deviceId, Math.max(0, Math.floor(limit))];
    const only = statuses === null ? "" : ` AND status = ANY($${params.push(statuses)}::text[])`;
    const { rows } = await this.query(`SELECT * FROM commands WHERE device_id = $1${only} ORDER BY created_at DESC, id DESC LIMIT $2`, params);
    return rows.map(toCommandRow);
  }

  // ---- retention ----

  async purge(policy: RetentionPolicy, now: number, batchSize: number): Promise<PurgeResult> {
    const n = Math.floor(batchSize);
    if (!(n > 0)) return { history: 0, events: 0, commands: 0, points: 0, rollups: 0 };
    const rows = await purgeRows((sql, params) => this.query(sql, params), policy, now, n);
    await this.query(PURGE_TOMBSTONES, [now - tombstoneMaxAgeMs(policy), n]);
    return { ...rows, ...(await this.series.purge(this.db, policy, now, n)) };
  }

  // ---- cluster (CONTRACT §8; times are the database's clock) ----

  clusterJoin(member: string, partitions: number): Promise<{ now: number }> {
    return cluster.clusterJoin(this.clusterDb, member, partitions);
  }

  clusterBeat(member: string, leaseMs: number, held: HeldLease[]): Promise<BeatResult> {
    return cluster.clusterBeat(this.clusterDb, member, leaseMs, held);
  }

  clusterClaim(member: string, partition: number, leaseMs: number): Promise<LeaseRow | null> {
    return cluster.clusterClaim(this.clusterDb, member, partition, leaseMs);
  }

  clusterRelease(member: string, leases: HeldLease[]): Promise<void> {
    // The fence's hold (half a lease); without a fence (a store used alone), ten seconds.
    return cluster.clusterRelease(this.clusterDb, member, leases, this.fence?.holdMs ?? 10_000);
  }

  clusterLeave(member: string): Promise<void> {
    return cluster.clusterLeave(this.clusterDb, member);
  }

  clusterForget(olderThanMs: number): Promise<void> {
    return cluster.clusterForget(this.clusterDb, olderThanMs);
  }

  clusterPartitions(): Promise<number | null> {
    return cluster.clusterPartitions(this.clusterDb);
  }

  setFence(fence: Fence | null): void {
    this.fence = fence;
  }

  changedSince(since: number, known?: KnownRows): Promise<FleetChanges> {
    return cluster.changedSince(this.clusterDb, since, known);
  }

  presenceOf(ids: string[]): Promise<StoredPresence[]> {
    return cluster.presenceOf(this.clusterDb, ids);
  }

  /** The fence check of a write of these devices; null when no fence is set (no extra statement then). */
  private checkOf(deviceIds: Iterable<string> | (() => Iterable<string>)): FenceCheck | null {
    return cluster.checkOf(this.fence, deviceIds);
  }

  /** One statement; with a fence, in a transaction after the fence check. */
  private fencedStatement(deviceIds: string[], sql: string, params: unknown[]): Promise<void> {
    return cluster.fencedStatement(this.clusterDb, this.fence, deviceIds, sql, params);
  }

  // ---- plumbing ----

  /**
   * Runs `fn` in a transaction on one pooled connection. A serialization failure (40001, also
   * CockroachDB's restart) or a deadlock (40P01) rolls back and runs `fn` again after an
   * exponential backoff with jitter, at most `maxRetries` times: `fn` must be safe to repeat.
   * Exposed for tests; the hub uses the Store methods.
   */
  async tx<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return this.transaction(fn, isSerializationFailure);
  }

  private async transaction<T>(fn: (client: pg.PoolClient) => Promise<T>, retryable: (err: unknown) => boolean): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const client = await this.connect();
      let failure: unknown;
      let began = false;
      let broken: Error | undefined;
      try {
        await client.query("BEGIN");
        began = true;
        const result = await fn(client);
        await client.query("COMMIT");
        client.release();
        return result;
      } catch (err) {
        failure = err;
        if (isConnectionError(err)) broken = err as Error;
        else {
          await client.query("ROLLBACK").catch((e: Error) => {
            broken = e;
          });
        }
        client.release(broken);
      }
      // A pooled connection found dead at BEGIN has done nothing: one fresh try is safe.
      const staleConnection = !began && broken !== undefined && attempt === 0;
      if ((staleConnection || retryable(failure)) && attempt < this.maxRetries) {
        if (!staleConnection) await sleep(backoffMs(attempt));
        continue;
      }
      if (retryable(failure)) {
        const message = `the database at ${this.description} failed the transaction ${attempt + 1} times in a row`;
        throw withCause(new TethralError("UNAVAILABLE", `${message}: ${describeError(failure)}`), failure);
      }
      throw this.wrap(failure);
    }
  }

  /** One statement outside a transaction (itself atomic), retried like a transaction. */
  private async query(sql: string | pg.QueryConfig, params?: unknown[]): Promise<pg.QueryResult<Record<string, unknown>>> {
    const pool = this.requirePool();
    for (let attempt = 0; ; attempt++) {
      try {
        return await (typeof sql === "string" ? pool.query<Record<string, unknown>>(sql, params) : pool.query<Record<string, unknown>>(sql));
      } catch (err) {
        if (!isSerializationFailure(err) || attempt >= this.maxRetries) throw this.wrap(err);
        await sleep(backoffMs(attempt));
      }
    }
  }

  private async connect(): Promise<pg.PoolClient> {
    const pool = this.requirePool();
    try {
      const client = await pool.connect();
      // A checked-out connection that dies between queries emits "error" on the client;
      // unheard, that would crash the process. The pending or next query fails instead.
      if (client.listenerCount("error") === 0) client.on("error", () => undefined);
      return client;
    } catch (err) {
      throw this.wrap(err);
    }
  }

  private requirePool(): pg.Pool {
    if (this.pool) return this.pool;
    throw this.closedError();
  }

  private closedError(): TethralError {
    return new TethralError("UNAVAILABLE", `the store at ${this.description} is ${this.closed ? "closed" : "not open"}`);
  }

  /** Gives a driver error the engine's code: UNAVAILABLE, INVALID or TIMEOUT, the original as `cause`. */
  private wrap(err: unknown): unknown {
    if (err instanceof TethralError) return err;
    const code = sqlState(err);
    const at = `the database at ${this.description}`;
    const coded = (c: TethralError["code"], message: string) => withCause(new TethralError(c, `${message}: ${describeError(err)}`), err);
    if (isConnectionError(err)) {
      return coded("UNAVAILABLE", code?.startsWith("28") || code === "3D000" ? `${at} refused the connection` : `${at} is unreachable`);
    }
    if (code === "57014") return coded("TIMEOUT", `${at} timed out`);
    if (code?.startsWith("22")) return coded("INVALID", "the database refused a value");
    if (code?.startsWith("53") || code?.startsWith("57P")) return coded("UNAVAILABLE", `${at} is unavailable`);
    return err;
  }

  /**
   * Creates the migrations table, refuses a newer schema before touching anything else, then
   * applies each pending migration in its own transaction. Two hubs starting at once on a fresh
   * database race on the catalog (a duplicate table or type), or one's statements meet the
   * other's finished result; the loser rolls back, sees the version recorded by the winner and
   * skips it.
   */
  private async migrate(): Promise<void> {
    await this.transaction(
      (c) =>
        c.query(`CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (
          version INTEGER PRIMARY KEY,
          name TEXT NOT NULL,
          applied_at BIGINT NOT NULL
        )`),
      isMigrationRace,
    );
    const found = await this.schemaVersion();
    if (found > LATEST_SCHEMA_VERSION) throw new TethralError("UNAVAILABLE", newerSchemaMessage(found, this.description));
    if (found === LATEST_SCHEMA_VERSION) return;
    const { rows } = await this.db.query({ text: "SELECT version() AS v" });
    const cockroach = isCockroachVersion(String((rows[0] as { v?: unknown } | undefined)?.v ?? ""));
    for (const migration of MIGRATIONS) {
      if (migration.version <= found) continue;
      const statements = cockroach && migration.cockroach !== undefined ? migration.cockroach : migration.postgres;
      const applied = async (c: Queryable | pg.ClientBase) =>
        (await c.query({ text: `SELECT 1 FROM ${MIGRATIONS_TABLE} WHERE version = $1`, values: [migration.version] })).rows.length > 0;
      try {
        await this.transaction(async (c) => {
          if (await applied(c)) return;
          for (const sql of statements) await c.query(sql);
          await c.query(
            `INSERT INTO ${MIGRATIONS_TABLE} (version, name, applied_at) VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING`,
            [migration.version, migration.name, Date.now()],
          );
        }, isMigrationRace);
      } catch (err) {
        // Another process applied it meanwhile, and this one's statements met its result (a
        // table already renamed, say): rolled back, and nothing left to do.
        if (!(await applied(this.db).catch(() => false))) throw err;
      }
    }
  }
}
