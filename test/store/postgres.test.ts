import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import pg from "pg";
import { isTethralError, type TethralError } from "../../src/core/errors";
import { isCockroachVersion, LATEST_SCHEMA_VERSION, MIGRATIONS, MIGRATIONS_TABLE, newerSchemaMessage } from "../../src/store/migrations";
import { connectionSettings, PostgresStore, type PostgresStoreOptions } from "../../src/store/postgres";
import { bucketsSql } from "../../src/store/postgres-series";
import type { EventRow, HistoryRow, WriteBatch } from "../../src/core/ports/store";
import { describeStoreContract } from "./contract";
import { assertMigratedSeries, commandRow, deviceRow, eventRow, historyRow, stateRow, T0 } from "./fixtures";
import { startProxy, startTestPostgres, type TestPostgres, type TestProxy } from "./pg-harness";

const EMPTY_BATCH: WriteBatch = { presence: [], states: [], history: [], events: [] };
const ON_SERVER = Boolean(process.env.TETHRAL_TEST_PG_URL);

async function rejection(promise: Promise<unknown>): Promise<TethralError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(isTethralError(err), `expected a TethralError, got ${String(err)}`);
    return err;
  }
  return assert.fail("expected the promise to reject");
}

function sqlStateError(code: string): Error {
  return Object.assign(new Error(`simulated ${code}`), { code });
}

describe("PostgresStore", function () {
  this.timeout(30_000);
  let db: TestPostgres;

  before(async function () {
    db = await startTestPostgres();
  });

  after(async function () {
    await db?.stop();
  });

  describeStoreContract(ON_SERVER ? "PostgreSQL server" : "PostgreSQL (PGlite)", async () => {
    await db.reset();
    const make = () => new PostgresStore({ url: db.url, poolSize: db.poolSize, bulkCopy: db.bulkCopy, onePassPoints: db.onePassPoints });
    return {
      store: make(),
      cleanup: async () => {},
      reopen: async () => make(),
      sql: (text: string) => db.sql(text),
    };
  });

  describe("specifics", function () {
    const stores: PostgresStore[] = [];
    const proxies: TestProxy[] = [];
    const make = (over: Partial<PostgresStoreOptions> = {}): PostgresStore => {
      const store = new PostgresStore({ url: db.url, poolSize: db.poolSize, bulkCopy: db.bulkCopy, onePassPoints: db.onePassPoints, ...over });
      stores.push(store);
      return store;
    };
    const proxy = async (): Promise<TestProxy> => {
      const p = await startProxy(db.url);
      proxies.push(p);
      return p;
    };

    beforeEach(async function () {
      await db.reset();
    });

    afterEach(async function () {
      for (const s of stores.splice(0)) await s.close();
      for (const p of proxies.splice(0)) await p.close();
    });

    describe("connection settings", function () {
      it("describes host, port and database, never the password", function () {
        const store = new PostgresStore({ url: "postgres://u:secret@db.example:6543/tethral", password: "other" });
        assert.equal(store.kind, "postgres");
        assert.equal(store.description, "db.example:6543/tethral");
        assert.equal(new PostgresStore({ url: "postgresql://db.example/hub" }).description, "db.example:5432/hub");
      });

      it("puts the password option in place of the URL's, any characters included", function () {
        const password = `p@ss:w/rd%41 ü'"?#&=+`;
        const passwordOf = (connectionString: string) => new pg.Client({ connectionString }).password;
        assert.equal(passwordOf(connectionSettings("postgres://u:old@h:5432/d", password).connectionString), password);
        assert.equal(passwordOf(connectionSettings("postgres://u@h/d", password).connectionString), password);
        assert.equal(passwordOf(connectionSettings("postgres://u:kept@h/d").connectionString), "kept");
        const socket = connectionSettings("postgres:///d?host=/var/run/postgresql", password);
        assert.equal(passwordOf(socket.connectionString), password);
        assert.equal(socket.description, "/var/run/postgresql:5432/d");
      });

      it("refuses a URL that is not postgres://", function () {
        for (const url of ["mysql://h/d", "not a url"]) {
          assert.throws(() => new PostgresStore({ url }), (err: unknown) => isTethralError(err) && err.code === "INVALID");
        }
      });

      it("connects with the password option when the URL has none (server only)", async function () {
        if (!ON_SERVER) this.skip();
        const role = `tethral_pw_${randomBytes(4).toString("hex")}`;
        await db.sql(`CREATE ROLE ${role} LOGIN PASSWORD 'right'`);
        try {
          await db.sql(`GRANT ALL ON SCHEMA public TO ${role}`);
          const url = new URL(db.url);
          url.username = role;
          url.password = "";
          const store = make({ url: url.toString(), password: "right" });
          await store.open();
          const { rows } = await store.tx((c) => c.query("SELECT current_user AS who"));
          assert.equal(rows[0]!.who, role);
          // Only meaningful where the server checks passwords (not with trust authentication).
          url.password = "wrong";
          const wrong = make({ url: url.toString() });
          const refused = await wrong.open().then(
            () => false,
            (err: unknown) => {
              assert.ok(isTethralError(err) && err.code === "UNAVAILABLE", String(err));
              return true;
            },
          );
          if (!refused) await wrong.close();
          await store.close();
        } finally {
          await db.sql(`DROP OWNED BY ${role}`);
          await db.sql(`DROP ROLE ${role}`);
        }
      });
    });

    describe("schema", function () {
      it("reads BIGINT as numbers without touching pg's global type parsers", async function () {
        const store = make();
        await store.open();
        await store.upsertDevice(deviceRow("d1", { lastSeen: Number.MAX_SAFE_INTEGER }));
        const [row] = await store.loadDevices();
        assert.equal(row!.lastSeen, Number.MAX_SAFE_INTEGER);
        assert.equal(typeof (await store.schemaVersion()), "number");
        assert.equal(pg.types.getTypeParser(20, "text")("9007199254740993"), "9007199254740993");
      });

      it("refuses a newer schema with a clear message before creating anything", async function () {
        await db.sql(`CREATE TABLE ${MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`);
        await db.sql(`INSERT INTO ${MIGRATIONS_TABLE} VALUES (${LATEST_SCHEMA_VERSION + 1}, 'next', 0)`);
        const store = make();
        const err = await rejection(store.open());
        assert.equal(err.code, "UNAVAILABLE");
        assert.equal(err.message, newerSchemaMessage(LATEST_SCHEMA_VERSION + 1, store.description));
        const [found] = await db.sql("SELECT to_regclass('devices') IS NULL AS missing");
        assert.equal(found!.missing, true);
        assert.equal((await rejection(store.loadDevices())).code, "UNAVAILABLE");
      });

      it("migrates a version 5 database's time series to series ids: every point, roll-up and key reads back, later points merge into the same roll-ups, and new series get new ids", async function () {
        await db.sql(`CREATE TABLE ${MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`);
        for (const m of MIGRATIONS.filter((m) => m.version <= 5)) {
          for (const statement of m.postgres) await db.sql(statement);
          await db.sql(`INSERT INTO ${MIGRATIONS_TABLE} VALUES ($1, $2, 0)`, [m.version, m.name]);
        }
        // Version 5's layout: (device id, key id) on every row. d3's series was never listed.
        const m0 = T0 - (T0 % 60_000);
        const h0 = T0 - (T0 % 3_600_000);
        await db.sql(`INSERT INTO ts_keys (id, name) VALUES (1, 'temperature'), (2, 'mode')`);
        await db.sql(`INSERT INTO ts_series (device_id, key_id) VALUES ('d1', 1), ('d1', 2), ('d2', 1)`);
        await db.sql(`INSERT INTO ts_points (device_id, key_id, ts, num, val) VALUES
          ('d1', 1, ${m0}, 20.5, NULL), ('d1', 1, ${m0 + 1000}, 21, NULL), ('d1', 1, ${m0 + 61_000}, 22, NULL),
          ('d1', 2, ${m0}, NULL, '"eco"'), ('d2', 1, ${m0}, 5, NULL), ('d3', 1, ${m0}, 7, NULL)`);
        type Side = [number, number | null, string | null];
        const rollup = (table: string, bucket: number, device: string, key: number, n: number, sum: number | null, first: Side, last: Side) =>
          db.sql(`INSERT INTO ${table} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`, [
            device, key, bucket, n, sum === null ? 0 : n, sum, sum === null ? null : first[1], sum === null ? null : last[1], ...first, ...last,
          ]);
        await rollup("ts_rollup_1m", m0, "d1", 1, 2, 41.5, [m0, 20.5, null], [m0 + 1000, 21, null]);
        await rollup("ts_rollup_1m", m0 + 60_000, "d1", 1, 1, 22, [m0 + 61_000, 22, null], [m0 + 61_000, 22, null]);
        await rollup("ts_rollup_1m", m0, "d1", 2, 1, null, [m0, null, '"eco"'], [m0, null, '"eco"']);
        await rollup("ts_rollup_1h", h0, "d1", 1, 3, 63.5, [m0, 20.5, null], [m0 + 61_000, 22, null]);

        const store = make();
        await store.open();
        assert.equal(await store.schemaVersion(), LATEST_SCHEMA_VERSION);
        const columns = await db.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'ts_points' ORDER BY ordinal_position");
        assert.deepEqual(columns.map((c) => c.column_name), ["series_id", "ts", "num", "val"]);
        await assertMigratedSeries(store, m0, h0);
        const all = { from: 0, to: T0 + 3_600_000, limit: 100 };
        const minutes = { deviceId: "d1", key: "temperature", ...all, source: "1m", intervalMs: 60_000 } as const;

        // A later point lands in the migrated series and merges into its roll-up rows; a new
        // series takes the id after the migrated ones.
        await store.upsertDevice(deviceRow("d1"));
        await store.writeBatch({ ...EMPTY_BATCH, points: [
          { deviceId: "d1", key: "temperature", ts: m0 + 2000, value: 1 },
          { deviceId: "d1", key: "humidity", ts: m0 + 2000, value: 40 },
        ] });
        assert.deepEqual(await store.buckets({ ...minutes, agg: "sum" }), [{ ts: m0, value: 42.5 }, { ts: m0 + 60_000, value: 22 }]);
        assert.deepEqual(await store.buckets({ ...minutes, source: "1h", intervalMs: 3_600_000, agg: "count" }), [{ ts: h0, value: 4 }]);
        assert.equal((await store.points({ deviceId: "d1", key: "temperature", ...all })).length, 4);
        assert.deepEqual(await store.points({ deviceId: "d1", key: "humidity", ...all }), [{ ts: m0 + 2000, value: 40 }]);
        const series = await db.sql("SELECT id::int AS id, device_id, key_id FROM ts_series ORDER BY id");
        assert.deepEqual(series, [
          { id: 1, device_id: "d1", key_id: 1 }, { id: 2, device_id: "d1", key_id: 2 }, { id: 3, device_id: "d2", key_id: 1 },
          { id: 4, device_id: "d3", key_id: 1 }, { id: 5, device_id: "d1", key_id: 3 },
        ]);
        await store.close();
      });

      it("tells CockroachDB from PostgreSQL by version(), and gives migration 9's index to PostgreSQL only", function () {
        assert.equal(isCockroachVersion("CockroachDB CCL v23.1.11 (x86_64-pc-linux-gnu, built 2023/09/27 01:53:43, go1.19.10)"), true);
        assert.equal(isCockroachVersion("PostgreSQL 15.20 (Debian 15.20-0+deb12u1) on x86_64-pc-linux-gnu"), false);
        assert.equal(isCockroachVersion("PostgreSQL 17.4 on x86_64-pc-linux-gnu (PGlite)"), false);
        const nine = MIGRATIONS.find((m) => m.version === 9)!;
        assert.match(nine.postgres.join(";"), /ts_rollup_1h_values/);
        assert.deepEqual(nine.cockroach, []);
      });

      it("reads numeric aggregates of the 1-hour roll-ups from their index, not their table (an index-only scan)", async function () {
        // Six series written hour by hour, as a fleet's points come: in the table, each series'
        // rows lie among the others', a year of one series on thousands of pages.
        const HOUR = 3_600_000;
        const hours = 60 * 24;
        const store = make();
        await store.open();
        for (const id of ["d1", "d2"]) await store.upsertDevice(deviceRow(id));
        const keys = ["temperature", "humidity", "power"];
        for (let h0 = 0; h0 < hours; h0 += 300) {
          const points = [];
          for (let h = h0; h < Math.min(hours, h0 + 300); h++) {
            for (const deviceId of ["d1", "d2"]) for (const key of keys) points.push({ deviceId, key, ts: T0 + h * HOUR, value: h % 10 });
          }
          await store.writeBatch({ ...EMPTY_BATCH, points });
        }
        // The first whole day: the mean of its 24 hourly values.
        const dayStart = T0 - (T0 % (24 * HOUR)) + 24 * HOUR;
        const first = (dayStart - T0) / HOUR;
        const mean = Array.from({ length: 24 }, (_, i) => (first + i) % 10).reduce((a, b) => a + b) / 24;
        const day = await store.buckets({ deviceId: "d1", key: "power", from: dayStart, to: dayStart + 24 * HOUR - 1, limit: 10, source: "1h", intervalMs: 24 * HOUR, agg: "avg" });
        assert.deepEqual(day, [{ ts: dayStart, value: mean }]);
        await store.close();
        // Vacuum marks the pages all-visible (autovacuum does it in time on a live database).
        await db.sql("VACUUM ANALYZE ts_rollup_1h");
        const [key] = await db.sql("SELECT id FROM ts_keys WHERE name = 'power'");
        for (const agg of ["avg", "sum", "min", "max", "count"] as const) {
          const plan = JSON.stringify(await db.sql(`EXPLAIN (FORMAT JSON) ${bucketsSql("1h", agg)}`, ["d1", key!.id, 24 * HOUR, T0, T0 + hours * HOUR, 10_000]));
          assert.match(plan, /"Index Only Scan"/, `${agg}: ${plan}`);
          assert.match(plan, /"ts_rollup_1h_values"/, `${agg}: ${plan}`);
        }
      });

      it("a device removed and registered again by another process gets new series, and this one's later points land in them", async function () {
        const [a, b] = [make(), make()];
        await a.open();
        await b.open();
        await a.upsertDevice(deviceRow("d1"));
        await a.writeBatch({ ...EMPTY_BATCH, points: [{ deviceId: "d1", key: "temperature", ts: T0, value: 1 }] });
        await b.deleteDevice("d1");
        await b.upsertDevice(deviceRow("d1"));
        await a.writeBatch({ ...EMPTY_BATCH, points: [{ deviceId: "d1", key: "temperature", ts: T0 + 1000, value: 2 }] });
        const q = { deviceId: "d1", key: "temperature", from: 0, to: T0 + 10_000, limit: 10 };
        assert.deepEqual(await b.points(q), [{ ts: T0 + 1000, value: 2 }]);
        assert.deepEqual(await b.buckets({ ...q, source: "1m", intervalMs: 60_000, agg: "count" }), [{ ts: T0 - (T0 % 60_000), value: 1 }]);
        assert.deepEqual(await b.telemetryKeys("d1"), ["temperature"]);
        await a.close();
        await b.close();
      });

      it("a device removed by another process while a batch writes its points leaves none of them behind (server only)", async function () {
        // PGlite runs one transaction at a time: the removal could not start inside the batch.
        if (!ON_SERVER) this.skip();
        const [a, b] = [make(), make()];
        await a.open();
        await b.open();
        await a.upsertDevice(deviceRow("d1"));
        await a.writeBatch({ ...EMPTY_BATCH, points: [{ deviceId: "d1", key: "temperature", ts: T0, value: 1 }] });
        // Right after the batch has read d1's series, b removes d1; the batch then writes its points.
        const query = pg.Client.prototype.query;
        let removal: Promise<void> | null = null;
        (pg.Client.prototype as { query: unknown }).query = function (this: pg.Client, ...args: unknown[]) {
          const result = (query as (...a: unknown[]) => Promise<unknown>).apply(this, args);
          const text = typeof args[0] === "string" ? args[0] : (args[0] as { text?: string } | undefined)?.text;
          if (removal !== null || !text?.includes("FROM devices d LEFT JOIN ts_series")) return result;
          removal = b.deleteDevice("d1");
          // Time for the removal to reach the database before the batch goes on.
          return result.then(async (r) => {
            await new Promise((resolve) => setTimeout(resolve, 300));
            return r;
          });
        };
        try {
          await a.writeBatch({ ...EMPTY_BATCH, points: [{ deviceId: "d1", key: "temperature", ts: T0 + 1000, value: 2 }] });
        } finally {
          pg.Client.prototype.query = query;
        }
        assert.ok(removal, "the batch read its devices' series");
        await removal;
        for (const table of ["ts_points", "ts_rollup_1m", "ts_rollup_1h", "ts_series"]) {
          assert.deepEqual(await db.sql(`SELECT count(*)::int AS n FROM ${table}`), [{ n: 0 }], table);
        }
        await a.upsertDevice(deviceRow("d1"));
        assert.deepEqual(await a.points({ deviceId: "d1", key: "temperature", from: 0, to: T0 + 10_000, limit: 10 }), []);
      });

      it("hubs interning telemetry keys at once get one id per name (server only)", async function () {
        if (!ON_SERVER) this.skip();
        const racers = [make(), make(), make(), make()];
        for (const s of racers) await s.open();
        await racers[0]!.upsertDevice(deviceRow("d1"));
        // Each hub brings keys of its own and one they all share, all new: max + 1 collides.
        await Promise.all(
          racers.map((s, i) =>
            s.writeBatch({
              ...EMPTY_BATCH,
              points: [...[0, 1, 2, 3, 4].map((k) => ({ deviceId: "d1", key: `k${i}-${k}`, ts: T0 + i, value: k })), { deviceId: "d1", key: "shared", ts: T0 + i, value: i }],
            }),
          ),
        );
        const rows = await db.sql("SELECT count(*)::int AS n, count(DISTINCT id)::int AS ids FROM ts_keys");
        assert.deepEqual(rows[0], { n: 21, ids: 21 });
        const fresh = make();
        await fresh.open();
        assert.equal((await fresh.telemetryKeys("d1")).length, 21);
        const shared = await fresh.points({ deviceId: "d1", key: "shared", from: 0, to: T0 + 10, limit: 10 });
        assert.deepEqual(shared.map((p) => p.value), [0, 1, 2, 3]);
      });

      it("two hubs opening a fresh database at once both succeed (server only)", async function () {
        // PGlite runs one statement at a time: its connections cannot be used concurrently.
        if (!ON_SERVER) this.skip();
        const racers = [make(), make(), make(), make()];
        await Promise.all(racers.map((s) => s.open()));
        for (const s of racers) assert.equal(await s.schemaVersion(), LATEST_SCHEMA_VERSION);
        const rows = await db.sql(`SELECT version FROM ${MIGRATIONS_TABLE} ORDER BY version`);
        assert.deepEqual(
          rows.map((r) => Number(r.version)),
          MIGRATIONS.map((m) => m.version),
        );
        await racers[0]!.upsertDevice(deviceRow("d1"));
        assert.deepEqual(await racers[3]!.loadDevices(), [deviceRow("d1")]);
      });
    });

    describe("transactions", function () {
      it("retries a transaction that fails with 40001 and commits the retry alone", async function () {
        const store = make({ maxRetries: 3 });
        await store.open();
        let attempts = 0;
        const result = await store.tx(async (c) => {
          attempts++;
          await c.query("INSERT INTO device_tokens (device_id, hash, created_at) VALUES ('d1', 'h', 1)");
          // A real server-side serialization failure, as CockroachDB's restart error looks.
          if (attempts === 1) await c.query("DO $$ BEGIN RAISE EXCEPTION 'restart transaction' USING ERRCODE = '40001'; END $$");
          return "done";
        });
        // Had the first attempt's insert survived, the second would have failed on the key.
        assert.equal(result, "done");
        assert.equal(attempts, 2);
        assert.deepEqual(await store.getToken("d1"), { deviceId: "d1", hash: "h", createdAt: 1 });
      });

      it("retries a deadlock (40P01) too", async function () {
        const store = make();
        await store.open();
        let attempts = 0;
        await store.tx(async () => {
          if (++attempts < 3) throw sqlStateError("40P01");
        });
        assert.equal(attempts, 3);
      });

      it("gives up after maxRetries with UNAVAILABLE, the 40001 kept as cause", async function () {
        const store = make({ maxRetries: 2 });
        await store.open();
        let attempts = 0;
        const err = await rejection(
          store.tx(async () => {
            attempts++;
            throw sqlStateError("40001");
          }),
        );
        assert.equal(attempts, 3);
        assert.equal(err.code, "UNAVAILABLE");
        assert.equal((err.cause as { code?: string }).code, "40001");
        // The connection went back to the pool (of one, on PGlite) each time.
        await store.ping();
      });

      it("does not retry other errors, rolls back and releases the connection", async function () {
        const store = make();
        await store.open();
        let attempts = 0;
        const boom = new Error("boom");
        await assert.rejects(
          store.tx(async (c) => {
            attempts++;
            await c.query("INSERT INTO device_tokens (device_id, hash, created_at) VALUES ('d1', 'h', 1)");
            throw boom;
          }),
          (err) => err === boom,
        );
        assert.equal(attempts, 1);
        assert.equal(await store.getToken("d1"), null);
        await store.putToken({ deviceId: "d1", hash: "h", createdAt: 1 });
        await assert.rejects(
          store.tx((c) => c.query("INSERT INTO device_tokens (device_id, hash, created_at) VALUES ('d1', 'h', 1)")),
          (err: unknown) => (err as { code?: string }).code === "23505",
        );
        await store.ping();
      });
    });

    describe("outage", function () {
      it("rejects writes with UNAVAILABLE while the database is unreachable and writes again after", async function () {
        const p = await proxy();
        const store = make({ url: p.url, connectTimeoutMs: 2000 });
        await store.open();
        await store.upsertDevice(deviceRow("d1"));

        p.cut();
        const batch: WriteBatch = {
          ...EMPTY_BATCH,
          presence: [{ id: "d1", status: "offline", lastSeen: T0 + 9 }],
          events: [eventRow("e1", "device.offline", T0 + 9, { deviceId: "d1" })],
        };
        const down = await rejection(store.writeBatch(batch));
        assert.equal(down.code, "UNAVAILABLE");
        assert.match(down.message, /unreachable/);
        assert.ok(down.cause instanceof Error, "the driver's error is kept as cause");
        assert.equal((await rejection(store.upsertDevice(deviceRow("d2")))).code, "UNAVAILABLE");
        assert.equal((await rejection(store.ping())).code, "UNAVAILABLE");

        p.restore();
        await store.writeBatch(batch);
        await store.upsertDevice(deviceRow("d2"));
        const devices = await store.loadDevices();
        assert.deepEqual(
          devices.find((d) => d.id === "d1"),
          deviceRow("d1", { status: "offline", lastSeen: T0 + 9 }),
        );
        assert.equal(devices.length, 2);
        assert.equal((await store.events({ limit: 10 }, T0)).length, 1);
      });

      it("rejects open with UNAVAILABLE when the database cannot be reached, and opens once it can", async function () {
        const p = await proxy();
        p.cut();
        const store = make({ url: p.url, connectTimeoutMs: 2000 });
        const err = await rejection(store.open());
        assert.equal(err.code, "UNAVAILABLE");
        assert.ok(err.message.includes(store.description), err.message);
        p.restore();
        await store.open();
        assert.equal(await store.schemaVersion(), LATEST_SCHEMA_VERSION);
      });

      it("a statement over statementTimeoutMs rejects with TIMEOUT (server only)", async function () {
        // PGlite ignores the statement_timeout startup parameter.
        if (!ON_SERVER) this.skip();
        const store = make({ statementTimeoutMs: 100 });
        await store.open();
        const err = await rejection(store.tx((c) => c.query("SELECT pg_sleep(2)")));
        assert.equal(err.code, "TIMEOUT");
        await store.ping();
      });

      it("after close every method rejects with UNAVAILABLE; close is idempotent", async function () {
        const store = make();
        await store.open();
        await store.close();
        await store.close();
        assert.equal((await rejection(store.loadDevices())).code, "UNAVAILABLE");
        assert.equal((await rejection(store.writeBatch({ ...EMPTY_BATCH, events: [eventRow("e", "x.y", T0)] }))).code, "UNAVAILABLE");
        assert.equal((await rejection(store.open())).code, "UNAVAILABLE");
      });
    });

    describe("values", function () {
      it("refuses NUL characters and lone surrogates with INVALID naming the field, before sending anything", async function () {
        const store = make();
        await store.open();
        const field = async (p: Promise<unknown>) => (await rejection(p)).details.map((d) => d.field);
        assert.deepEqual(await field(store.upsertDevice(deviceRow("d1", { name: "a\u0000b" }))), ["name"]);
        assert.deepEqual(await field(store.upsertDevice(deviceRow("d1", { metadata: { "k\u0000": 1 } }))), ["metadata"]);
        assert.deepEqual(await field(store.upsertDevice(deviceRow("d1", { tags: ["\ud800"] }))), ["tags"]);
        assert.deepEqual(await field(store.upsertDevice(deviceRow("d1", { model: "x\udc00" }))), ["model"]);
        assert.deepEqual(
          await field(store.putCommand(commandRow("c1", "d1", T0, { result: { s: "\u0000" } }))),
          ["result"],
        );
        const err = await rejection(
          store.writeBatch({
            ...EMPTY_BATCH,
            states: [stateRow("d1", 1)],
            events: [eventRow("ok", "x.y", T0), eventRow("bad", "x.y", T0, { data: ["\u0000"] })],
          }),
        );
        assert.equal(err.code, "INVALID");
        // The row is named, so a caller can set it aside and write the rest.
        assert.deepEqual(err.details.map((d) => d.field), ["events[1].data"]);
        const badState = stateRow("d\"2", 1, { properties: { s: "\ud83d" } });
        assert.deepEqual(
          await field(store.writeBatch({ ...EMPTY_BATCH, states: [stateRow("d1", 1), badState] })),
          ['states["d\\"2"].properties'],
        );
        assert.deepEqual(await field(store.upsertState(badState)), ["properties"]);
        assert.deepEqual(await store.loadStates(), []);
        assert.deepEqual(await store.events({ limit: 10 }, T0), []);
        assert.deepEqual(await store.loadDevices(), []);
      });

      it("stores escape-like text and surrogate pairs exactly", async function () {
        const store = make();
        await store.open();
        const tricky = ["\\u0000", "\\\\u0000", "\\ud800", "😀", "\u0001\u001f", "a\\", "\\"];
        const row = deviceRow("d1", { name: tricky.join("|"), tags: tricky, metadata: { [tricky[0]!]: tricky, "😀": "\\\\" } });
        await store.upsertDevice(row);
        assert.deepEqual(await store.loadDevices(), [row]);
      });

      it("keeps JSON arrays, strings, numbers and null as JSON, not PostgreSQL arrays", async function () {
        const store = make();
        await store.open();
        const datas: unknown[] = [[1, "two", [3, { four: [] }]], [], "text", "{\"not\":\"an object\"}", 42.5, false, null, { a: [] }];
        const events: EventRow[] = datas.map((data, i) => eventRow(`e${i}`, "x.y", T0 + i, { data }));
        await store.writeBatch({ ...EMPTY_BATCH, events });
        assert.deepEqual(await store.events({ limit: 100 }, T0), [...events].reverse());
        const cmd = commandRow("c1", "d1", T0, { result: ["a", ["b"]], params: { list: [1, 2] } });
        await store.putCommand(cmd);
        assert.deepEqual(await store.getCommand("c1"), cmd);
      });

      it("writes a batch of 1,000 history rows or more by one COPY where the server takes it, every value exactly, and a retried batch adds nothing", async function () {
        const store = make();
        await store.open();
        // Every statement sent on any connection of the pool, as its SQL text (a COPY's included).
        const sent: string[] = [];
        const original = pg.Client.prototype.query;
        pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
          const q = args[0] as string | { text?: string };
          sent.push(typeof q === "string" ? q : (q?.text ?? ""));
          return (original as (...a: unknown[]) => unknown).apply(this, args);
        } as typeof original;
        try {
          // Text COPY must escape (its delimiters, its escape character) and JSON must keep.
          const tricky = ["tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "\\.", "quote \"q\"", "😀 é", "\\u0041"];
          const history = Array.from({ length: 1200 }, (_, i) => {
            const t = tricky[i % tricky.length]!;
            return historyRow(`h${String(i).padStart(5, "0")}`, `d${i % 3}`, T0 + i, i + 1, {
              reason: `${t} ${i}`,
              causeId: i % 7 === 0 ? null : `cause ${t}`,
              to: { status: "online", properties: { note: t, nested: { list: [t, i, null] } } },
            });
          });
          await store.writeBatch({ ...EMPTY_BATCH, history });
          const copies = sent.filter((q) => q.startsWith("COPY state_history"));
          assert.equal(copies.length, db.bulkCopy ? 1 : 0, "one COPY on a server that takes it, none where bulkCopy is off");
          const read = async () => {
            const all: HistoryRow[] = [];
            for (const d of ["d0", "d1", "d2"]) all.push(...(await store.stateHistory(d, 10_000)));
            return all.sort((a, b) => a.id.localeCompare(b.id));
          };
          assert.deepEqual(await read(), history);
          // The same batch again (its answer lost, say): the COPY meets the rows already there,
          // is undone, and the INSERTs skip them.
          await store.writeBatch({ ...EMPTY_BATCH, history: [...history, historyRow("h99999", "d0", T0 + 5000, 5000)] });
          const after = await read();
          assert.equal(after.length, 1201);
          assert.deepEqual(after.slice(0, 1200), history);
          // Fewer rows go by INSERT, as before.
          sent.length = 0;
          await store.writeBatch({ ...EMPTY_BATCH, history: [historyRow("h99998", "d0", T0 + 6000, 6000)] });
          assert.equal(sent.filter((q) => q.startsWith("COPY")).length, 0);
        } finally {
          pg.Client.prototype.query = original;
        }
      });

      it("writes a batch larger than one statement's chunk in one transaction", async function () {
        const store = make();
        await store.open();
        const events = Array.from({ length: 5003 }, (_, i) => eventRow(`e${i}`, "x.y", T0 + i));
        const history = Array.from({ length: 5003 }, (_, i) => historyRow(`h${i}`, "d1", T0 + i, i));
        await store.writeBatch({ ...EMPTY_BATCH, events, history });
        assert.equal((await store.events({ limit: 10_000 }, T0)).length, 5003);
        assert.equal((await store.stateHistory("d1", 10_000)).length, 5003);
      });
    });
  });
});
