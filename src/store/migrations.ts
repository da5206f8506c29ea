/**
 * Versioned schema migrations, one list for both dialects. A store applies the ones above the
 * version recorded in `tethral_migrations`, each in its own transaction, and refuses to open a
 * database whose recorded version is above the last one here (written by a newer Tethral).
 *
 * PostgreSQL statements also run on CockroachDB: text keys (no SERIAL), JSONB, BIGINT epoch-ms
 * times, `CREATE ... IF NOT EXISTS`, no triggers.
 */
export interface Migration {
  version: number;
  name: string;
  sqlite: readonly string[];
  postgres: readonly string[];
  /** CockroachDB's statements where they differ from PostgreSQL's (default: `postgres`). */
  cockroach?: readonly string[];
}

/** Whether `SELECT version()` answered by a server says it is CockroachDB. */
export function isCockroachVersion(version: string): boolean {
  return /^CockroachDB\b/i.test(version.trim());
}

export const MIGRATIONS_TABLE = "tethral_migrations";

/** A roll-up row's columns after its series, in a dialect's types (migration 3, and 5 and 6). */
const rollupValueColumns = (int: string, real: string) => `bucket ${int} NOT NULL,
        n ${int} NOT NULL,
        nn ${int} NOT NULL,
        sum_v ${real},
        min_v ${real},
        max_v ${real},
        first_ts ${int} NOT NULL,
        first_num ${real},
        first_val TEXT,
        last_ts ${int} NOT NULL,
        last_num ${real},
        last_val TEXT,`;

/**
 * Time series (DESIGN "Time series"). Key names are interned to small integers in `ts_keys`:
 * ids are allocated by the store (max + 1, retried on conflict), never SERIAL or unique_rowid,
 * so they stay small and within a JS number on CockroachDB too. `ts_series` lists each
 * device's series: the keys a device has, and what retention walks instead of scanning points.
 * A value is `num` for a finite number (aggregated in SQL), else `val`, its JSON text (a
 * boolean or a string: JSON keeps NUL and lone surrogates, which PostgreSQL text cannot hold).
 * Roll-ups count every point (`n`) and the numbers (`nn`, with sum, min and max over them),
 * and keep the earliest and latest point's time and value.
 */
function seriesTables(dialect: "sqlite" | "postgres"): string[] {
  const sqlite = dialect === "sqlite";
  const int = sqlite ? "INTEGER" : "BIGINT";
  const real = sqlite ? "REAL" : "DOUBLE PRECISION";
  const noRowid = sqlite ? " WITHOUT ROWID" : "";
  const rollup = (table: string) => `CREATE TABLE IF NOT EXISTS ${table} (
        device_id TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        ${rollupValueColumns(int, real)}
        PRIMARY KEY (device_id, key_id, bucket)
      )${noRowid}`;
  return [
    `CREATE TABLE IF NOT EXISTS ts_keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
      )`,
    `CREATE TABLE IF NOT EXISTS ts_series (
        device_id TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        PRIMARY KEY (device_id, key_id)
      )${noRowid}`,
    `CREATE TABLE IF NOT EXISTS ts_points (
        device_id TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        ts ${int} NOT NULL,
        num ${real},
        val TEXT,
        PRIMARY KEY (device_id, key_id, ts)
      )${noRowid}`,
    rollup("ts_rollup_1m"),
    rollup("ts_rollup_1h"),
  ];
}

/** Column types of the tables keyed by series id, per dialect, and what follows a table's definition. */
const SERIES_ID_TYPES = {
  sqlite: { int: "INTEGER", real: "REAL", after: " WITHOUT ROWID" },
  postgres: { int: "BIGINT", real: "DOUBLE PRECISION", after: "" },
} as const;

/**
 * A roll-up table keyed by series id, `<table>_<suffix>`, filled from the table keyed by
 * (device, key) through `ts_series_<suffix>`, in primary-key order (migrations 5 and 6).
 */
function rollupBySeriesId(dialect: keyof typeof SERIES_ID_TYPES, table: string, suffix: string): string[] {
  const { int, real, after } = SERIES_ID_TYPES[dialect];
  return [
    `CREATE TABLE ${table}_${suffix} (
        series_id ${int} NOT NULL,
        ${rollupValueColumns(int, real)}
        PRIMARY KEY (series_id, bucket)
      )${after}`,
    `INSERT INTO ${table}_${suffix} SELECT s.id, r.bucket, r.n, r.nn, r.sum_v, r.min_v, r.max_v, r.first_ts, r.first_num,
        r.first_val, r.last_ts, r.last_num, r.last_val
      FROM ${table} r JOIN ts_series_${suffix} s ON s.device_id = r.device_id AND s.key_id = r.key_id ORDER BY s.id, r.bucket`,
  ];
}

/** The points table keyed by series id, `ts_points_<suffix>`, filled like the roll-ups (migrations 5 and 6). */
function pointsBySeriesId(dialect: keyof typeof SERIES_ID_TYPES, suffix: string): string[] {
  const { int, real, after } = SERIES_ID_TYPES[dialect];
  return [
    `CREATE TABLE ts_points_${suffix} (
        series_id ${int} NOT NULL,
        ts ${int} NOT NULL,
        num ${real},
        val TEXT,
        PRIMARY KEY (series_id, ts)
      )${after}`,
    `INSERT INTO ts_points_${suffix} SELECT s.id, p.ts, p.num, p.val
      FROM ts_points p JOIN ts_series_${suffix} s ON s.device_id = p.device_id AND s.key_id = p.key_id ORDER BY s.id, p.ts`,
  ];
}

/**
 * SQLite's time series keyed by an integer series id instead of (device id, key id): a point's
 * row goes from about 33 to 22 bytes, its key compares as one integer, and every batch dirties
 * fewer pages (measured on 300,000-point batches over 30,000 series: inserts 37% and commits
 * 36% faster, the file 39% smaller). `ts_series` becomes the map from (device, key) to the id,
 * a rowid table (the id is its rowid) with a unique index on the pair. Ids are given in (device,
 * key) order, so the copies below write each table in its primary-key order; AUTOINCREMENT
 * keeps a removed series' id from ever naming another. The old tables' pages stay in the file,
 * free, and new rows reuse them (no VACUUM: it would copy the whole file). PostgreSQL's follow
 * in migrations 6 to 8.
 */
function sqliteSeriesIds(): string[] {
  return [
    `CREATE TABLE ts_series_v5 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        UNIQUE (device_id, key_id)
      )`,
    // Every series listed, and any with rows that was not (the list is written with the rows).
    `INSERT INTO ts_series_v5 (device_id, key_id)
      SELECT device_id, key_id FROM ts_series
      UNION SELECT device_id, key_id FROM ts_points
      UNION SELECT device_id, key_id FROM ts_rollup_1m
      UNION SELECT device_id, key_id FROM ts_rollup_1h
      ORDER BY 1, 2`,
    ...pointsBySeriesId("sqlite", "v5"),
    ...rollupBySeriesId("sqlite", "ts_rollup_1m", "v5"),
    ...rollupBySeriesId("sqlite", "ts_rollup_1h", "v5"),
    ...["ts_points", "ts_rollup_1m", "ts_rollup_1h", "ts_series"].flatMap((t) => [`DROP TABLE ${t}`, `ALTER TABLE ${t}_v5 RENAME TO ${t}`]),
  ];
}

/**
 * PostgreSQL's (and CockroachDB's) time series keyed by series id, as SQLite's are since
 * migration 5: a point's row and index entry lose the device id's text (measured here, COPY of
 * 90,000 points into tables of 1.8 million over 30,000 series: 168-227 ms against 321-347 ms,
 * the table and index 20% smaller). Ids come from a sequence, never SERIAL or unique_rowid, so
 * they stay small (within a JS number) on CockroachDB too; a removed series' id is never given
 * again. `ts_series` keeps (device, key) unique. The copies write each table in its primary
 * key's order, ids given in (device, key) order.
 *
 * Three migrations (6 to 8: the new tables filled, the old ones dropped, the new ones renamed),
 * because CockroachDB does not let a transaction reuse the name of a table it dropped. Between
 * them the store is not open, so nothing reads the half-done state.
 */
const SERIES_TABLES = ["ts_points", "ts_rollup_1m", "ts_rollup_1h", "ts_series"];

function postgresSeriesIds(): string[] {
  return [
    `CREATE SEQUENCE IF NOT EXISTS ts_series_id_seq`,
    `CREATE TABLE ts_series_v6 (
        id BIGINT PRIMARY KEY DEFAULT nextval('ts_series_id_seq'),
        device_id TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        UNIQUE (device_id, key_id)
      )`,
    // Dropped with the table, as SERIAL's sequence would be.
    `ALTER SEQUENCE ts_series_id_seq OWNED BY ts_series_v6.id`,
    // Every series listed, and any with rows that was not (the list is written with the rows).
    `INSERT INTO ts_series_v6 (id, device_id, key_id)
      SELECT row_number() OVER (ORDER BY device_id, key_id), device_id, key_id FROM (
        SELECT device_id, key_id FROM ts_series
        UNION SELECT device_id, key_id FROM ts_points
        UNION SELECT device_id, key_id FROM ts_rollup_1m
        UNION SELECT device_id, key_id FROM ts_rollup_1h) u`,
    `SELECT setval('ts_series_id_seq', (SELECT COALESCE(max(id), 0) + 1 FROM ts_series_v6), false)`,
    ...pointsBySeriesId("postgres", "v6"),
    ...rollupBySeriesId("postgres", "ts_rollup_1m", "v6"),
    ...rollupBySeriesId("postgres", "ts_rollup_1h", "v6"),
  ];
}

/**
 * Cluster mode (CONTRACT §8). One `cluster_meta` row holds the partition count fixed at first
 * use; `cluster_leases` has one row per partition, claimed and renewed with conditional UPDATEs
 * (the column is `part`: PARTITION is a keyword in some dialects); `removed_devices` keeps a
 * tombstone per removed device so members following the fleet by time (`changedSince`) learn of
 * removals. The indexes serve those time reads. SQLite gets the same tables, unused, so the
 * schema keeps one shape.
 */
function clusterTables(dialect: "sqlite" | "postgres"): string[] {
  const int = dialect === "sqlite" ? "INTEGER" : "BIGINT";
  const noRowid = dialect === "sqlite" ? " WITHOUT ROWID" : "";
  return [
    `CREATE TABLE IF NOT EXISTS cluster_meta (
        id INTEGER PRIMARY KEY,
        partitions INTEGER NOT NULL,
        created_at ${int}
      )`,
    `CREATE TABLE IF NOT EXISTS cluster_members (
        id TEXT PRIMARY KEY,
        since ${int} NOT NULL,
        last_seen ${int} NOT NULL
      )${noRowid}`,
    `CREATE TABLE IF NOT EXISTS cluster_leases (
        part INTEGER PRIMARY KEY,
        owner TEXT,
        epoch ${int} NOT NULL,
        expires_at ${int} NOT NULL
      )`,
    `CREATE TABLE IF NOT EXISTS removed_devices (
        device_id TEXT PRIMARY KEY,
        removed_at ${int} NOT NULL
      )${noRowid}`,
    `CREATE INDEX IF NOT EXISTS removed_devices_removed_at ON removed_devices (removed_at)`,
    // The last message a cluster member applied for a device, for its successor's replay (cluster
    // mode runs on PostgreSQL only).
    ...(dialect === "postgres" ? [`ALTER TABLE devices ADD COLUMN IF NOT EXISTS last_message BIGINT NOT NULL DEFAULT 0`] : []),
  ];
}

/**
 * The indexes members following the fleet read changes by (`changedSince`). Made when the first
 * member joins, not by the migration: an index on `last_seen` costs every presence write, and a
 * single runtime (SQLite, or PostgreSQL without cluster mode) never reads by it.
 */
export const CLUSTER_CHANGE_INDEXES: readonly string[] = [
  `CREATE INDEX IF NOT EXISTS devices_stored_at ON devices (stored_at)`,
  // What earlier releases followed device rows by (the writers' times, see migration 11).
  `DROP INDEX IF EXISTS devices_updated_at`,
  `DROP INDEX IF EXISTS devices_last_seen`,
  `CREATE INDEX IF NOT EXISTS states_stored_at ON states (stored_at)`,
  `DROP INDEX IF EXISTS states_updated_at`,
  `CREATE INDEX IF NOT EXISTS device_tokens_stored_at ON device_tokens (stored_at)`,
  `DROP INDEX IF EXISTS device_tokens_created_at`,
];

/**
 * How long a removed device's tombstone is kept: as long as events (a member following the fleet
 * is never that far behind), a week when events are kept regardless of age.
 */
export function tombstoneMaxAgeMs(policy: { eventsMaxAgeMs: number }): number {
  return policy.eventsMaxAgeMs > 0 ? policy.eventsMaxAgeMs : 7 * 24 * 3_600_000;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "devices, tokens, states, history, events, commands",
    sqlite: [
      `CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        protocol TEXT NOT NULL,
        address TEXT,
        manufacturer TEXT,
        model TEXT,
        firmware TEXT,
        capabilities TEXT NOT NULL,
        tags TEXT NOT NULL,
        heartbeat_timeout REAL,
        metadata TEXT NOT NULL,
        status TEXT NOT NULL,
        last_seen INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      ) WITHOUT ROWID`,
      `CREATE TABLE IF NOT EXISTS device_tokens (
        device_id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        created_at INTEGER NOT NULL
      ) WITHOUT ROWID`,
      `CREATE TABLE IF NOT EXISTS states (
        device_id TEXT PRIMARY KEY,
        properties TEXT NOT NULL,
        desired TEXT NOT NULL,
        version INTEGER NOT NULL,
        changed_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        reported_at INTEGER NOT NULL,
        rev INTEGER NOT NULL
      ) WITHOUT ROWID`,
      `CREATE TABLE IF NOT EXISTS state_history (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        version INTEGER NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        reason TEXT NOT NULL,
        cause_id TEXT
      )`,
      `CREATE INDEX IF NOT EXISTS state_history_device_at ON state_history (device_id, at, version)`,
      `CREATE INDEX IF NOT EXISTS state_history_at ON state_history (at)`,
      `CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        priority TEXT NOT NULL,
        source TEXT NOT NULL,
        device_id TEXT,
        data TEXT NOT NULL,
        ts INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        cause_id TEXT
      )`,
      `CREATE INDEX IF NOT EXISTS events_ts ON events (ts)`,
      `CREATE INDEX IF NOT EXISTS events_device_ts ON events (device_id, ts)`,
      `CREATE INDEX IF NOT EXISTS events_expires ON events (expires_at)`,
      `CREATE TABLE IF NOT EXISTS commands (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        command TEXT NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        priority TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        sent_at INTEGER NOT NULL,
        completed_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        result TEXT,
        error TEXT,
        options TEXT NOT NULL
      )`,
      `CREATE INDEX IF NOT EXISTS commands_device_status ON commands (device_id, status, created_at)`,
      `CREATE INDEX IF NOT EXISTS commands_status_completed ON commands (status, completed_at)`,
    ],
    postgres: [
      `CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        protocol TEXT NOT NULL,
        address TEXT,
        manufacturer TEXT,
        model TEXT,
        firmware TEXT,
        capabilities JSONB NOT NULL,
        tags JSONB NOT NULL,
        heartbeat_timeout DOUBLE PRECISION,
        metadata JSONB NOT NULL,
        status TEXT NOT NULL,
        last_seen BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
      )`,
      `CREATE TABLE IF NOT EXISTS device_tokens (
        device_id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        created_at BIGINT NOT NULL
      )`,
      `CREATE TABLE IF NOT EXISTS states (
        device_id TEXT PRIMARY KEY,
        properties JSONB NOT NULL,
        desired JSONB NOT NULL,
        version BIGINT NOT NULL,
        changed_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        reported_at BIGINT NOT NULL,
        rev BIGINT NOT NULL
      )`,
      `CREATE TABLE IF NOT EXISTS state_history (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        version BIGINT NOT NULL,
        from_state JSONB NOT NULL,
        to_state JSONB NOT NULL,
        reason TEXT NOT NULL,
        cause_id TEXT
      )`,
      `CREATE INDEX IF NOT EXISTS state_history_device_at ON state_history (device_id, at, version)`,
      `CREATE INDEX IF NOT EXISTS state_history_at ON state_history (at)`,
      `CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        priority TEXT NOT NULL,
        source TEXT NOT NULL,
        device_id TEXT,
        data JSONB NOT NULL,
        ts BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        cause_id TEXT
      )`,
      `CREATE INDEX IF NOT EXISTS events_ts ON events (ts)`,
      `CREATE INDEX IF NOT EXISTS events_device_ts ON events (device_id, ts)`,
      `CREATE INDEX IF NOT EXISTS events_expires ON events (expires_at)`,
      `CREATE TABLE IF NOT EXISTS commands (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        command TEXT NOT NULL,
        params JSONB NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        priority TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        sent_at BIGINT NOT NULL,
        completed_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        result JSONB,
        error TEXT,
        options JSONB NOT NULL
      )`,
      `CREATE INDEX IF NOT EXISTS commands_device_status ON commands (device_id, status, created_at)`,
      `CREATE INDEX IF NOT EXISTS commands_status_completed ON commands (status, completed_at)`,
    ],
  },
  {
    version: 2,
    name: "events: parent_cause_id",
    // Rows from before stay without a parent (NULL), as their events had none.
    sqlite: [`ALTER TABLE events ADD COLUMN parent_cause_id TEXT`],
    postgres: [`ALTER TABLE events ADD COLUMN IF NOT EXISTS parent_cause_id TEXT`],
  },
  {
    version: 3,
    name: "telemetry time series: keys, series, points, 1-minute and 1-hour roll-ups",
    sqlite: seriesTables("sqlite"),
    postgres: seriesTables("postgres"),
  },
  {
    version: 4,
    name: "cluster: partitions, members, leases; removed-device tombstones",
    sqlite: clusterTables("sqlite"),
    postgres: clusterTables("postgres"),
  },
  {
    version: 5,
    name: "SQLite time series keyed by series id",
    sqlite: sqliteSeriesIds(),
    postgres: [],
  },
  {
    version: 6,
    name: "PostgreSQL time series keyed by series id: the new tables filled",
    sqlite: [],
    postgres: postgresSeriesIds(),
  },
  {
    version: 7,
    name: "PostgreSQL time series keyed by series id: the old tables dropped",
    sqlite: [],
    postgres: SERIES_TABLES.map((t) => `DROP TABLE ${t}`),
  },
  {
    version: 8,
    name: "PostgreSQL time series keyed by series id: the new tables renamed",
    sqlite: [],
    postgres: SERIES_TABLES.map((t) => `ALTER TABLE ${t}_v6 RENAME TO ${t}`),
  },
  {
    version: 9,
    name: "PostgreSQL 1-hour roll-ups: an index that holds what numeric aggregates read",
    // SQLite keeps a table WITHOUT ROWID in its primary key's order, so a series' buckets lie
    // together. A PostgreSQL heap keeps rows as they came, every series' hour beside the
    // others': a year of one series' hours was 8,760 rows on about 4,000 pages. With count, sum,
    // min and max in an index in (series, bucket) order, a query of avg, sum, min, max or count
    // reads them from a few dozen index pages instead (an index-only scan, for the pages vacuum
    // has marked all-visible). First and last still read the table. The 1-minute roll-ups get
    // none: their rows are 60 times as many, and they serve spans short enough to read.
    // The index makes each roll-up update a non-HOT one (its columns change), so the update
    // adds an entry to both indexes; autovacuum clears the dead ones, as it does the table's.
    sqlite: [],
    postgres: [`CREATE INDEX IF NOT EXISTS ts_rollup_1h_values ON ts_rollup_1h (series_id, bucket) INCLUDE (n, nn, sum_v, min_v, max_v)`],
    // CockroachDB keeps a table in its primary key's order, as SQLite does: the index would
    // only cost writes.
    cockroach: [],
  },
  {
    version: 10,
    name: "SQLite state history in runs: a device's transitions of a batch in one row",
    // See sqlite-history.ts. Each old row becomes a run of one, in the order it was written.
    // PostgreSQL keeps its table: COPY writes it, and cluster members read it.
    sqlite: [
      `CREATE TABLE IF NOT EXISTS history_runs (
        device_id TEXT NOT NULL,
        first_at INTEGER NOT NULL,
        last_at INTEGER NOT NULL,
        last_version INTEGER NOT NULL,
        n INTEGER NOT NULL,
        rows TEXT NOT NULL
      )`,
      `INSERT INTO history_runs (device_id, first_at, last_at, last_version, n, rows)
        SELECT device_id, at, at, version, 1, json_array(json_array(id, at, version, json(from_state), json(to_state), reason, cause_id))
        FROM state_history ORDER BY rowid`,
      `DROP TABLE state_history`,
      // Reads walk a device's runs newest first; the per-device limit sums n by device.
      `CREATE INDEX IF NOT EXISTS history_runs_device ON history_runs (device_id, last_at, last_version, n)`,
      // Retention by age: the runs that begin before the cutoff.
      `CREATE INDEX IF NOT EXISTS history_runs_first_at ON history_runs (first_at, last_at, n)`,
    ],
    postgres: [],
  },
  {
    version: 11,
    name: "PostgreSQL device rows stamped with the database's clock when stored",
    // Cluster members follow device rows changed since their last read (changedSince). They went
    // by the rows' own times, the writer's: a status a heartbeat deadline set is stored with the
    // device's lastSeen, a heartbeat timeout or more before, so a device that went offline on its
    // owner stayed online on the other members. `stored_at` is the database's clock at the write.
    sqlite: [],
    postgres: [`ALTER TABLE devices ADD COLUMN IF NOT EXISTS stored_at BIGINT NOT NULL DEFAULT 0`],
  },
  {
    version: 12,
    name: "PostgreSQL state rows stamped with the database's clock when stored",
    // As device rows (migration 11): a state row the write-behind stored later than the
    // followers' margin after its own time (a backlog) was never read by the other members.
    sqlite: [],
    postgres: [`ALTER TABLE states ADD COLUMN IF NOT EXISTS stored_at BIGINT NOT NULL DEFAULT 0`],
  },
  {
    version: 13,
    name: "PostgreSQL device tokens stamped with the database's clock when stored",
    // As device and state rows (migrations 11, 12): a token followed by its writer's clock reached
    // the other members up to five seconds late from a member whose clock ran behind.
    sqlite: [],
    postgres: [`ALTER TABLE device_tokens ADD COLUMN IF NOT EXISTS stored_at BIGINT NOT NULL DEFAULT 0`],
  },
  {
    version: 14,
    name: "State rows keep the time of the device's last telemetry point",
    // A burst of reports is stamped ahead of the clock, a millisecond apart. That time was kept in
    // memory only: after a restart (or a takeover) the next points were stamped among the stored
    // ones, and the store skipped them as points it had (lost, though acknowledged).
    sqlite: [`ALTER TABLE states ADD COLUMN point_ts INTEGER NOT NULL DEFAULT 0`],
    postgres: [`ALTER TABLE states ADD COLUMN IF NOT EXISTS point_ts BIGINT NOT NULL DEFAULT 0`],
  },
  {
    version: 15,
    name: "Device rows keep the heartbeat timeout adaptive timeouts learned, and since when retention counts an offline device offline",
    // Both were kept in memory only. The learned timeout was learned again after every restart,
    // the device meanwhile on the hub's default: one reporting less often went offline at each
    // report. The offline time was counted again from the device's lastSeen at every start, each
    // downtime with it: a hub restarted twice removed devices before their retention age.
    sqlite: [
      `ALTER TABLE devices ADD COLUMN learned_timeout INTEGER NOT NULL DEFAULT 0`,
      `ALTER TABLE devices ADD COLUMN offline_since INTEGER NOT NULL DEFAULT 0`,
    ],
    postgres: [
      `ALTER TABLE devices ADD COLUMN IF NOT EXISTS learned_timeout BIGINT NOT NULL DEFAULT 0`,
      `ALTER TABLE devices ADD COLUMN IF NOT EXISTS offline_since BIGINT NOT NULL DEFAULT 0`,
    ],
  },
];

export const LATEST_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/** The message for a database written by a newer Tethral: refused, never touched. */
export function newerSchemaMessage(found: number, where: string): string {
  return (
    `the database at ${where} has schema version ${found}, newer than this Tethral knows ` +
    `(${LATEST_SCHEMA_VERSION}): upgrade Tethral, or point it at another database`
  );
}
