import assert from "node:assert/strict";
import { isTethralError } from "../../src/core/errors";
import type { JsonObject } from "../../src/core/types";
import { LATEST_SCHEMA_VERSION, MIGRATIONS, MIGRATIONS_TABLE } from "../../src/store/migrations";
import type { DeviceRow, EventQuery, EventRow, HistoryRow, RetentionPolicy, Store, WriteBatch } from "../../src/core/ports/store";
import { describeSeriesContract } from "./contract-series";
import { bigMetadata, byDeviceId, byId, commandRow, deviceRow, eventRow, historyRow, stateRow, T0 } from "./fixtures";

/** What a store factory hands the contract suite: one store over an empty database of its own. */
export interface StoreHarness {
  /** Not opened yet: the suite calls `open()` (and `close()` before `cleanup()`). */
  store: Store;
  /** Removes the database (file, schema, ...) after the store was closed. */
  cleanup: () => Promise<void>;
  /** A second store, not opened, on the same database; absent when impossible (SQLite `:memory:`). */
  reopen?: () => Promise<Store>;
  /**
   * Runs one raw SQL statement on the same database outside any store and returns its rows (`[]`
   * for statements without rows); absent when impossible. The suite calls it only while every
   * store of the test is closed, and passes only dialect-neutral SQL.
   */
  sql?: (text: string) => Promise<Record<string, unknown>[]>;
}

export const NO_RETENTION: RetentionPolicy = {
  historyMaxAgeMs: 0,
  historyMaxPerDevice: 0,
  eventsMaxAgeMs: 0,
  eventsMaxRows: 0,
  commandsMaxAgeMs: 0,
  pointsMaxAgeMs: 0,
  rollups1mMaxAgeMs: 0,
  rollups1hMaxAgeMs: 0,
};

const EMPTY_BATCH: WriteBatch = { presence: [], states: [], history: [], events: [] };
/** Tables the migrations after version 1 created (time series, cluster). */
const LATER_TABLES = [
  "ts_keys", "ts_series", "ts_points", "ts_rollup_1m", "ts_rollup_1h", "cluster_meta", "cluster_members", "cluster_leases", "removed_devices",
];

async function rejects(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  return assert.fail("expected the promise to reject");
}

/** Runs purge rounds until nothing is left to remove; checks every round stays within `batchSize`. */
async function purgeAll(store: Store, policy: RetentionPolicy, now: number, batchSize: number) {
  const rounds: { history: number; events: number; commands: number }[] = [];
  for (let i = 0; i < 100; i++) {
    const r = await store.purge(policy, now, batchSize);
    rounds.push(r);
    assert.ok(r.history <= batchSize && r.events <= batchSize && r.commands <= batchSize, JSON.stringify(r));
    if (r.history === 0 && r.events === 0 && r.commands === 0) return rounds;
  }
  return assert.fail("purge did not finish in 100 rounds");
}

/**
 * The contract every Store meets, whatever the database. `makeStore` is called before each test
 * and must give a store over an empty database (no tables yet); it stays cheap that way.
 * Comparisons use deepEqual on parsed values: JSONB may reorder object keys.
 */
export function describeStoreContract(name: string, makeStore: () => Promise<StoreHarness>): void {
  describe(`Store contract: ${name}`, function () {
    let h: StoreHarness | undefined;
    let store: Store;
    const extra: Store[] = [];

    beforeEach(async function () {
      h = await makeStore();
      store = h.store;
      await store.open();
    });

    afterEach(async function () {
      for (const s of extra.splice(0)) await s.close();
      const done = h;
      h = undefined;
      if (done) {
        await done.store.close();
        await done.cleanup();
      }
    });

    /** A second store on the same database, closed after the test; skips the test when impossible. */
    async function second(ctx: Mocha.Context): Promise<Store> {
      if (!h?.reopen) return ctx.skip();
      const s = await h.reopen();
      extra.push(s);
      return s;
    }

    describeSeriesContract(() => store);

    describe("schema and lifecycle", function () {
      it("open creates the schema and records the latest version", async function () {
        assert.equal(await store.schemaVersion(), LATEST_SCHEMA_VERSION);
        await store.ping();
        assert.deepEqual(await store.loadDevices(), []);
        assert.deepEqual(await store.loadStates(), []);
        if (h!.sql) {
          await store.close();
          const rows = await h!.sql(`SELECT version, name FROM ${MIGRATIONS_TABLE} ORDER BY version`);
          assert.deepEqual(
            rows.map((r) => ({ version: Number(r.version), name: r.name })),
            MIGRATIONS.map((m) => ({ version: m.version, name: m.name })),
          );
        }
      });

      it("re-opening the same database is idempotent and sees the data", async function () {
        const s2 = await second(this);
        await store.upsertDevice(deviceRow("d1"));
        await store.upsertState(stateRow("d1", 3));
        await s2.open();
        assert.equal(await s2.schemaVersion(), LATEST_SCHEMA_VERSION);
        assert.deepEqual(await s2.loadDevices(), [deviceRow("d1")]);
        assert.deepEqual(await s2.loadStates(), [stateRow("d1", 3)]);
        if (h!.sql) {
          await s2.close();
          await store.close();
          const rows = await h!.sql(`SELECT count(*) AS n FROM ${MIGRATIONS_TABLE}`);
          assert.equal(Number(rows[0]!.n), MIGRATIONS.length);
        }
      });

      it("refuses a database from a newer version without touching it", async function () {
        if (!h!.sql) this.skip();
        const s2 = await second(this);
        await store.upsertDevice(deviceRow("d1"));
        await store.close();
        const future = LATEST_SCHEMA_VERSION + 7;
        await h!.sql!(`INSERT INTO ${MIGRATIONS_TABLE} (version, name, applied_at) VALUES (${future}, 'from the future', 0)`);
        const err = await rejects(s2.open());
        assert.ok(isTethralError(err), `expected a TethralError, got ${String(err)}`);
        assert.equal(err.code, "UNAVAILABLE");
        assert.match(err.message, new RegExp(`\\b${future}\\b`));
        assert.match(err.message, new RegExp(`\\b${LATEST_SCHEMA_VERSION}\\b`));
        await s2.close();
        assert.deepEqual(await h!.sql!("SELECT id, name FROM devices"), [{ id: "d1", name: deviceRow("d1").name }]);
        const rows = await h!.sql!(`SELECT version FROM ${MIGRATIONS_TABLE} ORDER BY version`);
        assert.deepEqual(
          rows.map((r) => Number(r.version)),
          [...MIGRATIONS.map((m) => m.version), future],
        );
      });

      it("migrates a database of version 1: its events read back with no parent cause, new ones keep theirs", async function () {
        if (!h!.sql) this.skip();
        const s2 = await second(this);
        await store.close();
        // The events table as version 1 made it, holding an event written then, and none of
        // the tables later versions added.
        await h!.sql!("ALTER TABLE events DROP COLUMN parent_cause_id");
        await h!.sql!("ALTER TABLE states DROP COLUMN point_ts");
        await h!.sql!("ALTER TABLE devices DROP COLUMN learned_timeout");
        await h!.sql!("ALTER TABLE devices DROP COLUMN offline_since");
        for (const table of LATER_TABLES) await h!.sql!(`DROP TABLE ${table}`);
        // SQLite's history as version 1 kept it (migration 10 made it runs); PostgreSQL has it still.
        await h!.sql!("DROP TABLE IF EXISTS history_runs");
        await h!.sql!(
          "CREATE TABLE IF NOT EXISTS state_history (id TEXT PRIMARY KEY, device_id TEXT NOT NULL, at BIGINT NOT NULL, version INTEGER NOT NULL, " +
            "from_state TEXT NOT NULL, to_state TEXT NOT NULL, reason TEXT NOT NULL, cause_id TEXT)",
        );
        await h!.sql!(`DELETE FROM ${MIGRATIONS_TABLE} WHERE version > 1`);
        await h!.sql!(
          "INSERT INTO events (id, type, priority, source, device_id, data, ts, expires_at, cause_id) " +
            `VALUES ('e-old', 'device.online', 'normal', 'hub', NULL, '{"n":1}', ${T0}, 0, 'c-0')`,
        );
        await s2.open();
        assert.equal(await s2.schemaVersion(), LATEST_SCHEMA_VERSION);
        const reaction = eventRow("e-new", "custom.reaction", T0 + 1, { causeId: "msg-1", parentCauseId: "c-0" });
        await s2.writeBatch({ ...EMPTY_BATCH, events: [reaction] });
        assert.deepEqual(await s2.events({ limit: 10 }, T0), [
          reaction,
          eventRow("e-old", "device.online", T0, { data: { n: 1 }, causeId: "c-0", parentCauseId: null }),
        ]);
      });

      it("close is idempotent", async function () {
        await store.close();
        await store.close();
      });
    });

    describe("devices", function () {
      it("round-trips every field, nulls and empty lists included", async function () {
        const full = deviceRow("d1");
        const sparse = deviceRow("d2", {
          address: null,
          manufacturer: null,
          model: null,
          firmware: null,
          capabilities: [],
          tags: [],
          heartbeatTimeout: null,
          metadata: {},
          status: "unknown",
          lastSeen: 0,
        });
        const fractional = deviceRow("d3", { heartbeatTimeout: 1500.5, status: "maintenance" });
        for (const row of [full, sparse, fractional]) await store.upsertDevice(row);
        assert.deepEqual(byId(await store.loadDevices()), [full, sparse, fractional]);
      });

      it("an upsert replaces every field of an existing device", async function () {
        await store.upsertDevice(deviceRow("d1"));
        const changed = deviceRow("d1", {
          name: "renamed",
          address: null,
          capabilities: ["switch"],
          tags: [],
          heartbeatTimeout: 5000,
          metadata: { moved: true },
          status: "offline",
          lastSeen: T0 + 9000,
          updatedAt: T0 + 9000,
        });
        await store.upsertDevice(changed);
        assert.deepEqual(await store.loadDevices(), [changed]);
      });

      it("delete removes the device with its state, token, history and commands, and nothing else", async function () {
        for (const id of ["d1", "d2"]) {
          await store.upsertDevice(deviceRow(id));
          await store.upsertState(stateRow(id, 1));
          await store.putToken({ deviceId: id, hash: `hash-${id}`, createdAt: T0 });
          await store.putCommand(commandRow(`c-${id}`, id, T0));
        }
        await store.writeBatch({
          ...EMPTY_BATCH,
          history: [historyRow("h1", "d1", T0, 1), historyRow("h2", "d2", T0, 1)],
        });
        await store.deleteDevice("d1");
        assert.deepEqual(await store.loadDevices(), [deviceRow("d2")]);
        assert.deepEqual(await store.loadStates(), [stateRow("d2", 1)]);
        assert.equal(await store.getToken("d1"), null);
        assert.deepEqual(await store.getToken("d2"), { deviceId: "d2", hash: "hash-d2", createdAt: T0 });
        assert.deepEqual(await store.stateHistory("d1", 10), []);
        assert.equal((await store.stateHistory("d2", 10)).length, 1);
        assert.equal(await store.getCommand("c-d1"), null);
        assert.deepEqual(
          (await store.pendingCommands()).map((c) => c.id),
          ["c-d2"],
        );
        await store.deleteDevice("d1");
        await store.deleteDevice("never-existed");
      });
    });

    describe("states", function () {
      it("upsertState inserts, overwrites on an equal or higher rev and ignores a lower one", async function () {
        await store.upsertDevice(deviceRow("d1"));
        await store.upsertState(stateRow("d1", 5));
        assert.deepEqual(await store.loadStates(), [stateRow("d1", 5)]);
        await store.upsertState(stateRow("d1", 3, { properties: { stale: true } }));
        assert.deepEqual(await store.loadStates(), [stateRow("d1", 5)]);
        const same = stateRow("d1", 5, { properties: { same: "rev" } });
        await store.upsertState(same);
        assert.deepEqual(await store.loadStates(), [same]);
        const newer = stateRow("d1", 7, { properties: {}, desired: {} });
        await store.upsertState(newer);
        assert.deepEqual(await store.loadStates(), [newer]);
      });
    });

    describe("writeBatch", function () {
      function sampleBatch(): WriteBatch {
        return {
          presence: [
            { id: "d1", status: "offline", lastSeen: T0 + 7000 },
            { id: "gone", status: "online", lastSeen: T0 + 7000 },
          ],
          states: [stateRow("d1", 4), stateRow("d2", 2)],
          history: [historyRow("h1", "d1", T0 + 1, 1), historyRow("h2", "d1", T0 + 2, 2), historyRow("h3", "d2", T0 + 3, 1)],
          events: [
            eventRow("e1", "device.offline", T0 + 10, { deviceId: "d1", priority: "high", data: { reason: "timeout" } }),
            eventRow("e2", "custom.thing", T0 + 11, { data: [1, "two", null], causeId: "c-1" }),
          ],
        };
      }

      it("writes presence, states, history and events; presence of an unknown device is ignored", async function () {
        await store.upsertDevice(deviceRow("d1"));
        await store.upsertDevice(deviceRow("d2"));
        const batch = sampleBatch();
        await store.writeBatch(batch);
        const devices = byId(await store.loadDevices());
        assert.deepEqual(devices, [deviceRow("d1", { status: "offline", lastSeen: T0 + 7000 }), deviceRow("d2")]);
        assert.deepEqual(byDeviceId(await store.loadStates()), batch.states);
        assert.deepEqual(await store.stateHistory("d1", 10), batch.history.slice(0, 2));
        assert.deepEqual(await store.stateHistory("d2", 10), batch.history.slice(2));
        assert.deepEqual(await store.events({ limit: 10 }, T0), [...batch.events].reverse());
      });

      it("filters events by a list of priorities, and an empty list matches none (a priority and a minimum that leave no priority)", async function () {
        await store.writeBatch(sampleBatch());
        const high = await store.events({ priorities: ["high"], limit: 10 }, T0);
        assert.ok(high.length > 0 && high.every((e) => e.priority === "high"));
        assert.deepEqual(await store.events({ priorities: [], limit: 10 }, T0), []);
      });

      it("a retried batch adds no duplicates", async function () {
        await store.upsertDevice(deviceRow("d1"));
        await store.upsertDevice(deviceRow("d2"));
        const batch = sampleBatch();
        await store.writeBatch(batch);
        await store.writeBatch(sampleBatch());
        assert.equal((await store.loadDevices()).length, 2);
        assert.deepEqual(byDeviceId(await store.loadStates()), batch.states);
        assert.deepEqual(await store.stateHistory("d1", 10), batch.history.slice(0, 2));
        assert.deepEqual(await store.events({ limit: 10 }, T0), [...batch.events].reverse());
      });

      it("guards states by rev, within a batch and against the stored row", async function () {
        await store.upsertState(stateRow("d1", 10));
        await store.writeBatch({
          ...EMPTY_BATCH,
          states: [stateRow("d1", 8), stateRow("d2", 3), stateRow("d2", 2), stateRow("d3", 1), stateRow("d3", 4)],
        });
        assert.deepEqual(byDeviceId(await store.loadStates()), [stateRow("d1", 10), stateRow("d2", 3), stateRow("d3", 4)]);
      });

      it("applies presence rows in order", async function () {
        await store.upsertDevice(deviceRow("d1"));
        await store.writeBatch({
          ...EMPTY_BATCH,
          presence: [
            { id: "d1", status: "online", lastSeen: T0 + 1 },
            { id: "d1", status: "offline", lastSeen: T0 + 2 },
          ],
        });
        assert.deepEqual(await store.loadDevices(), [deviceRow("d1", { status: "offline", lastSeen: T0 + 2 })]);
      });

      it("keeps a learned heartbeat timeout and the offline start with presence: a row without a learned timeout keeps the stored one, a device write leaves both", async function () {
        await store.upsertDevice(deviceRow("d1"));
        await store.writeBatch({ ...EMPTY_BATCH, presence: [{ id: "d1", status: "online", lastSeen: T0 + 1, learnedTimeout: 90_000 }] });
        await store.writeBatch({ ...EMPTY_BATCH, presence: [{ id: "d1", status: "offline", lastSeen: T0 + 2, offlineSince: T0 + 92_000 }] });
        await store.upsertDevice(deviceRow("d1", { name: "renamed", status: "offline", lastSeen: T0 + 2 }));
        assert.deepEqual(await store.loadDevices(), [deviceRow("d1", { name: "renamed", status: "offline", lastSeen: T0 + 2, learnedTimeout: 90_000, offlineSince: T0 + 92_000 })]);
        // Back online: no offline start.
        await store.writeBatch({ ...EMPTY_BATCH, presence: [{ id: "d1", status: "online", lastSeen: T0 + 3, learnedTimeout: 0, offlineSince: 0 }] });
        assert.deepEqual(await store.loadDevices(), [deviceRow("d1", { name: "renamed", status: "online", lastSeen: T0 + 3, learnedTimeout: 90_000 })]);
      });

      it("accepts an empty batch", async function () {
        await store.writeBatch(EMPTY_BATCH);
      });

      it("writes batches of thousands of rows", async function () {
        const devices = 150;
        for (let d = 0; d < devices; d++) await store.upsertDevice(deviceRow(`d${d}`));
        const batch: WriteBatch = { presence: [], states: [], history: [], events: [] };
        for (let d = 0; d < devices; d++) {
          batch.presence.push({ id: `d${d}`, status: "offline", lastSeen: T0 + 1000 + d });
          batch.states.push(stateRow(`d${d}`, d + 1));
        }
        for (let i = 0; i < 3001; i++) {
          batch.history.push(historyRow(`h${i}`, `d${i % devices}`, T0 + i, i));
          batch.events.push(eventRow(`e${i}`, "device.online", T0 + i, { deviceId: `d${i % devices}` }));
        }
        await store.writeBatch(batch);
        await store.writeBatch(batch);
        const loaded = await store.loadDevices();
        assert.equal(loaded.length, devices);
        assert.ok(loaded.every((d) => d.status === "offline" && d.lastSeen === T0 + 1000 + Number(d.id.slice(1))));
        assert.deepEqual(byDeviceId(await store.loadStates()), byDeviceId(batch.states));
        const h0 = await store.stateHistory("d0", 1000);
        assert.deepEqual(
          h0.map((r) => r.id),
          batch.history.filter((r) => r.deviceId === "d0").map((r) => r.id),
        );
        const events = await store.events({ limit: 5000 }, T0);
        assert.equal(events.length, 3001);
        assert.equal(events[0]!.id, "e3000");
        assert.equal(events[3000]!.id, "e0");
      });

      it("is all or nothing: a batch that fails writes none of its rows", async function () {
        await store.upsertDevice(deviceRow("d1"));
        const bad = eventRow("e-bad", "custom.bad", T0, { data: { big: 10n } });
        const err = await rejects(
          store.writeBatch({
            presence: [{ id: "d1", status: "error", lastSeen: T0 + 5 }],
            states: [stateRow("d1", 1)],
            history: [historyRow("h1", "d1", T0, 1)],
            events: [eventRow("e-ok", "custom.ok", T0), bad],
          }),
        );
        assert.ok(err instanceof Error);
        assert.deepEqual(await store.loadDevices(), [deviceRow("d1")]);
        assert.deepEqual(await store.loadStates(), []);
        assert.deepEqual(await store.stateHistory("d1", 10), []);
        assert.deepEqual(await store.events({ limit: 10 }, T0), []);
      });
    });

    describe("stateHistory", function () {
      it("returns the last rows by (at, version), oldest first, of that device only", async function () {
        const rows = [
          historyRow("a", "d1", T0 + 10, 1),
          historyRow("b", "d1", T0 + 20, 2),
          historyRow("c", "d1", T0 + 20, 3),
          historyRow("d", "d1", T0 + 30, 4),
          historyRow("e", "d1", T0 + 40, 5, { causeId: null, from: {}, to: { desired: { x: 1 } } }),
          historyRow("x", "d2", T0 + 50, 1),
        ];
        // Inserted out of order: the order comes from (at, version), not from insertion.
        await store.writeBatch({ ...EMPTY_BATCH, history: [rows[3]!, rows[0]!, rows[5]!, rows[2]!, rows[4]!, rows[1]!] });
        assert.deepEqual(await store.stateHistory("d1", 3), [rows[2], rows[3], rows[4]]);
        assert.deepEqual(await store.stateHistory("d1", 100), rows.slice(0, 5));
        assert.deepEqual(await store.stateHistory("d1", 1), [rows[4]]);
        assert.deepEqual(await store.stateHistory("d2", 10), [rows[5]]);
        assert.deepEqual(await store.stateHistory("nobody", 10), []);
      });
    });

    describe("events", function () {
      const now = T0 + 1000;
      const all: EventRow[] = [
        eventRow("e01", "device.online", T0 + 1, { deviceId: "d1", source: "mqtt" }),
        eventRow("e02", "device.offline", T0 + 2, { deviceId: "d1", priority: "high", source: "heartbeat" }),
        eventRow("e03", "state.changed", T0 + 3, { deviceId: "d2", priority: "low", source: "state" }),
        eventRow("e04", "Device.shouted", T0 + 4, { source: "user" }),
        eventRow("e05", "devices.other", T0 + 5, { source: "user" }),
        eventRow("e06", "a_b.x", T0 + 6, { source: "user", priority: "critical" }),
        eventRow("e07", "axb.x", T0 + 7, { source: "user" }),
        eventRow("e08", "device.online", T0 + 8, { deviceId: "d2", source: "mqtt", expiresAt: now }),
        eventRow("e09", "device.online", T0 + 9, { deviceId: "d2", source: "mqtt", expiresAt: now - 1 }),
        eventRow("e10", "device.online", T0 + 10, { deviceId: "d2", source: "mqtt", expiresAt: now + 1 }),
        eventRow("e11", "device.registered", T0 + 11, { deviceId: "d3", source: "api", data: null }),
      ];
      const ids = (rows: EventRow[]) => rows.map((e) => e.id);
      const query = async (q: Partial<EventQuery>) => ids(await store.events({ limit: 100, ...q }, now));

      beforeEach(async function () {
        await store.writeBatch({ ...EMPTY_BATCH, events: all });
      });

      it("returns events newest first, whole, and leaves out expired ones", async function () {
        const rows = await store.events({ limit: 100 }, now);
        assert.deepEqual(ids(rows), ["e11", "e10", "e07", "e06", "e05", "e04", "e03", "e02", "e01"]);
        assert.deepEqual(rows, [...all].reverse().filter((e) => e.expiresAt === 0 || e.expiresAt > now));
        // Later, e10 has expired too.
        assert.deepEqual(ids(await store.events({ limit: 100 }, now + 1)).includes("e10"), false);
      });

      it("filters by exact type and by pattern, case-sensitively, with _ and % literal", async function () {
        assert.deepEqual(await query({ types: ["device.offline"] }), ["e02"]);
        assert.deepEqual(await query({ types: ["device.*"] }), ["e11", "e10", "e02", "e01"]);
        assert.deepEqual(await query({ types: ["device.*", "state.changed"] }), ["e11", "e10", "e03", "e02", "e01"]);
        assert.deepEqual(await query({ types: ["device.o*line"] }), ["e10", "e02", "e01"]);
        assert.deepEqual(await query({ types: ["a_b.*"] }), ["e06"]);
        assert.deepEqual(await query({ types: ["a%.*"] }), []);
        assert.deepEqual(await query({ types: ["*"] }), ["e11", "e10", "e07", "e06", "e05", "e04", "e03", "e02", "e01"]);
        assert.deepEqual(await query({ types: ["nothing.here"] }), []);
      });

      it("filters by priority, device, source and since, and applies the limit", async function () {
        assert.deepEqual(await query({ priorities: ["high", "critical"] }), ["e06", "e02"]);
        assert.deepEqual(await query({ deviceId: "d2" }), ["e10", "e03"]);
        assert.deepEqual(await query({ source: "user" }), ["e07", "e06", "e05", "e04"]);
        assert.deepEqual(await query({ since: T0 + 7 }), ["e11", "e10", "e07"]);
        assert.deepEqual(await query({ limit: 2 }), ["e11", "e10"]);
        assert.deepEqual(await query({ types: ["device.*"], deviceId: "d1", since: T0 + 2, limit: 5 }), ["e02"]);
        assert.deepEqual(await query({ deviceId: "d1' OR '1'='1" }), []);
      });

      it("keeps an event's cause and the cause's parent", async function () {
        const reaction = eventRow("e12", "custom.reaction", T0 + 12, { deviceId: "d1", causeId: "msg-1", parentCauseId: "device-msg-7" });
        const orphan = eventRow("e13", "custom.reaction", T0 + 13, { causeId: "msg-2", parentCauseId: null });
        await store.writeBatch({ ...EMPTY_BATCH, events: [reaction, orphan] });
        assert.deepEqual(await store.events({ types: ["custom.reaction"], limit: 10 }, now), [orphan, reaction]);
      });
    });

    describe("tokens", function () {
      it("puts, replaces, gets and deletes", async function () {
        assert.equal(await store.getToken("d1"), null);
        await store.putToken({ deviceId: "d1", hash: "h1", createdAt: T0 });
        assert.deepEqual(await store.getToken("d1"), { deviceId: "d1", hash: "h1", createdAt: T0 });
        await store.putToken({ deviceId: "d1", hash: "h2", createdAt: T0 + 5 });
        assert.deepEqual(await store.getToken("d1"), { deviceId: "d1", hash: "h2", createdAt: T0 + 5 });
        await store.putToken({ deviceId: "d0", hash: "h0", createdAt: T0 });
        assert.deepEqual(await store.loadTokens(), [
          { deviceId: "d0", hash: "h0", createdAt: T0 },
          { deviceId: "d1", hash: "h2", createdAt: T0 + 5 },
        ]);
        await store.deleteToken("d1");
        assert.equal(await store.getToken("d1"), null);
        assert.deepEqual((await store.loadTokens()).map((t) => t.deviceId), ["d0"]);
        await store.deleteToken("d1");
      });
    });

    describe("commands", function () {
      it("inserts and replaces, round-tripping every field", async function () {
        const queued = commandRow("c1", "d1", T0, { priority: "critical", expiresAt: T0 + 60000 });
        await store.putCommand(queued);
        assert.deepEqual(await store.getCommand("c1"), queued);
        const done = {
          ...queued,
          status: "succeeded" as const,
          attempts: 2,
          sentAt: T0 + 10,
          completedAt: T0 + 20,
          result: { ok: true, values: [1, 2.5, "x"], nested: { deep: null } },
        };
        await store.putCommand(done);
        assert.deepEqual(await store.getCommand("c1"), done);
        const failed = commandRow("c2", "d1", T0, { status: "failed", error: "device said no", result: "plain string" });
        await store.putCommand(failed);
        assert.deepEqual(await store.getCommand("c2"), failed);
        assert.equal(await store.getCommand("missing"), null);
      });

      it("writes several commands in one call, the last row of an id winning", async function () {
        const a = commandRow("c1", "d1", T0);
        const b = commandRow("c2", "d1", T0 + 1, { status: "sent", attempts: 1, sentAt: T0 + 2 });
        await store.putCommands([a, b, { ...a, status: "succeeded", completedAt: T0 + 3, result: { ok: 1 } }]);
        await store.putCommands([]);
        assert.deepEqual(await store.getCommand("c2"), b);
        assert.equal((await store.getCommand("c1"))!.status, "succeeded");
        assert.deepEqual((await store.getCommand("c1"))!.result, { ok: 1 });
      });

      it("lists pending commands oldest first (then by id), of one device or all", async function () {
        const rows = [
          commandRow("c5", "d1", T0 + 5),
          commandRow("c2", "d2", T0 + 1, { status: "sent", attempts: 1, sentAt: T0 + 2 }),
          commandRow("c3", "d1", T0 + 1, { status: "delivered" }),
          commandRow("c1", "d1", T0 + 9),
          commandRow("c4", "d1", T0 + 2, { status: "succeeded", completedAt: T0 + 3 }),
          commandRow("c6", "d2", T0 + 3, { status: "cancelled", completedAt: T0 + 4 }),
          commandRow("c7", "d1", T0 + 0, { status: "timed_out", completedAt: T0 + 4 }),
          // A one-way command ends at sent: finished, not pending.
          commandRow("c8", "d1", T0 + 0, { status: "sent", attempts: 1, sentAt: T0 + 1, completedAt: T0 + 1 }),
        ];
        for (const row of rows) await store.putCommand(row);
        const pending = await store.pendingCommands();
        assert.deepEqual(
          pending.map((c) => c.id),
          ["c2", "c3", "c5", "c1"],
        );
        assert.deepEqual(pending[0], rows[1]);
        assert.deepEqual(
          (await store.pendingCommands("d1")).map((c) => c.id),
          ["c3", "c5", "c1"],
        );
        assert.deepEqual(await store.pendingCommands("nobody"), []);
        await store.deleteCommand("c3");
        await store.deleteCommand("c3");
        assert.equal(await store.getCommand("c3"), null);
        assert.deepEqual(
          (await store.pendingCommands("d1")).map((c) => c.id),
          ["c5", "c1"],
        );
      });
    });

    describe("a device's commands", function () {
      it("lists them newest first (then by id), filtered by statuses and limited", async function () {
        const rows = [
          commandRow("a1", "d1", T0 + 1, { status: "succeeded", completedAt: T0 + 2 }),
          commandRow("a2", "d1", T0 + 5),
          commandRow("a3", "d1", T0 + 5, { status: "failed", completedAt: T0 + 6 }),
          commandRow("a4", "d1", T0 + 9, { status: "sent", attempts: 1, sentAt: T0 + 9 }),
          commandRow("b1", "d2", T0 + 7),
        ];
        for (const row of rows) await store.putCommand(row);
        const ids = (list: { id: string }[]) => list.map((c) => c.id);
        assert.deepEqual(ids(await store.deviceCommands("d1", null, 10)), ["a4", "a3", "a2", "a1"]);
        assert.deepEqual(await store.deviceCommands("d1", null, 1), [rows[3]]);
        assert.deepEqual(ids(await store.deviceCommands("d1", ["queued", "succeeded"], 10)), ["a2", "a1"]);
        assert.deepEqual(ids(await store.deviceCommands("d1", ["failed"], 10)), ["a3"]);
        assert.deepEqual(await store.deviceCommands("d1", ["expired"], 10), []);
        assert.deepEqual(await store.deviceCommands("d1", null, 0), []);
        assert.deepEqual(ids(await store.deviceCommands("d2", null, 10)), ["b1"]);
        assert.deepEqual(await store.deviceCommands("nobody", null, 10), []);
      });
    });

    describe("purge", function () {
      const now = T0 + 100_000;

      it("removes nothing with a policy of zeros", async function () {
        await store.writeBatch({
          ...EMPTY_BATCH,
          history: [historyRow("h1", "d1", 1, 1)],
          events: [eventRow("e1", "x.y", 1)],
        });
        await store.putCommand(commandRow("c1", "d1", 1, { status: "failed", completedAt: 2 }));
        assert.deepEqual(await store.purge(NO_RETENTION, now, 100), { history: 0, events: 0, commands: 0, points: 0, rollups: 0 });
        assert.equal((await store.stateHistory("d1", 10)).length, 1);
      });

      it("removes history by age in bounded rounds", async function () {
        const history: HistoryRow[] = [];
        for (let i = 0; i < 25; i++) history.push(historyRow(`old${i}`, `d${i % 3}`, now - 60_000 - i, i));
        for (let i = 0; i < 5; i++) history.push(historyRow(`new${i}`, "d0", now - 1000 + i, 100 + i));
        await store.writeBatch({ ...EMPTY_BATCH, history });
        const policy = { ...NO_RETENTION, historyMaxAgeMs: 30_000 };
        assert.deepEqual(await store.purge(policy, now, 10), { history: 10, events: 0, commands: 0, points: 0, rollups: 0 });
        assert.deepEqual(await store.purge(policy, now, 10), { history: 10, events: 0, commands: 0, points: 0, rollups: 0 });
        assert.deepEqual(await store.purge(policy, now, 10), { history: 5, events: 0, commands: 0, points: 0, rollups: 0 });
        assert.deepEqual(await store.purge(policy, now, 10), { history: 0, events: 0, commands: 0, points: 0, rollups: 0 });
        assert.deepEqual(
          (await store.stateHistory("d0", 100)).map((r) => r.id),
          ["new0", "new1", "new2", "new3", "new4"],
        );
        assert.deepEqual(await store.stateHistory("d1", 100), []);
      });

      it("keeps the newest history rows per device", async function () {
        const history: HistoryRow[] = [];
        for (let i = 0; i < 30; i++) history.push(historyRow(`a${String(i).padStart(2, "0")}`, "A", now - 1000 + i, i));
        for (let i = 0; i < 5; i++) history.push(historyRow(`b${i}`, "B", now - 1000 + i, i));
        await store.writeBatch({ ...EMPTY_BATCH, history });
        const rounds = await purgeAll(store, { ...NO_RETENTION, historyMaxPerDevice: 10 }, now, 8);
        assert.equal(
          rounds.reduce((n, r) => n + r.history, 0),
          20,
        );
        assert.ok(rounds.length >= 4, "bounded by batchSize: 20 rows need three rounds and an empty one");
        assert.deepEqual(
          (await store.stateHistory("A", 100)).map((r) => r.id),
          history.slice(20, 30).map((r) => r.id),
        );
        assert.equal((await store.stateHistory("B", 100)).length, 5);
      });

      it("removes events by age, expired events, and the oldest beyond the row limit", async function () {
        const events: EventRow[] = [];
        for (let i = 0; i < 12; i++) events.push(eventRow(`old${String(i).padStart(2, "0")}`, "x.old", now - 60_000 + i));
        for (let i = 0; i < 3; i++) events.push(eventRow(`exp${i}`, "x.exp", now - 10 + i, { expiresAt: now - 5 }));
        for (let i = 0; i < 20; i++) events.push(eventRow(`new${String(i).padStart(2, "0")}`, "x.new", now - 1000 + i));
        await store.writeBatch({ ...EMPTY_BATCH, events });
        const byAge = await purgeAll(store, { ...NO_RETENTION, eventsMaxAgeMs: 30_000 }, now, 10);
        assert.equal(byAge[0]!.events, 10);
        assert.equal(
          byAge.reduce((n, r) => n + r.events, 0),
          15,
        );
        assert.equal((await store.events({ limit: 100 }, now)).length, 20);

        const byCount = await purgeAll(store, { ...NO_RETENTION, eventsMaxRows: 8 }, now, 5);
        assert.deepEqual(
          byCount.map((r) => r.events),
          [5, 5, 2, 0],
        );
        assert.deepEqual(
          (await store.events({ limit: 100 }, now)).map((e) => e.id),
          events.slice(-8).map((e) => e.id).reverse(),
        );
      });

      it("removes expired events even without an age limit", async function () {
        await store.writeBatch({
          ...EMPTY_BATCH,
          events: [eventRow("e1", "x.y", now - 10, { expiresAt: now - 1 }), eventRow("e2", "x.y", now - 10, { expiresAt: now + 10 })],
        });
        assert.deepEqual(await store.purge(NO_RETENTION, now, 10), { history: 0, events: 1, commands: 0, points: 0, rollups: 0 });
        assert.deepEqual(
          (await store.events({ limit: 10 }, now)).map((e) => e.id),
          ["e2"],
        );
      });

      it("removes finished commands by age and keeps pending ones", async function () {
        const old = now - 60_000;
        for (let i = 0; i < 6; i++) await store.putCommand(commandRow(`done${i}`, "d1", old, { status: "succeeded", completedAt: old + i }));
        // A one-way command finished at sent is finished too.
        await store.putCommand(commandRow("done6", "d1", old, { status: "sent", sentAt: old, completedAt: old }));
        await store.putCommand(commandRow("pending-old", "d1", old));
        await store.putCommand(commandRow("sent-old", "d1", old, { status: "sent", sentAt: old }));
        await store.putCommand(commandRow("done-new", "d1", now - 10, { status: "failed", completedAt: now - 5 }));
        const rounds = await purgeAll(store, { ...NO_RETENTION, commandsMaxAgeMs: 30_000 }, now, 4);
        assert.deepEqual(
          rounds.map((r) => r.commands),
          [4, 3, 0],
        );
        for (let i = 0; i < 7; i++) assert.equal(await store.getCommand(`done${i}`), null);
        assert.ok(await store.getCommand("done-new"));
        assert.deepEqual(
          (await store.pendingCommands()).map((c) => c.id),
          ["pending-old", "sent-old"],
        );
      });
    });

    describe("awkward input", function () {
      const sqlish = "'; DROP TABLE devices; --";

      it("stores SQL-looking strings, quotes, backslashes and unicode exactly", async function () {
        const awkward: DeviceRow = deviceRow(sqlish, {
          name: `Robert'); DROP TABLE states;-- "quoted" \`back\` \\ \\\\ \n\t\r`,
          protocol: "mqtt'",
          address: "x\\y\\'z\"",
          manufacturer: "Ünïcödé 漢字 עברית",
          model: "🚀🌊👩‍👩‍👧‍👦",
          firmware: "%_*?[]",
          capabilities: ["a'b", 'c"d', "e\\f", "🙂"],
          tags: ["' OR 1=1 --", "$1", ":name", "?"],
          metadata: { [sqlish]: sqlish, "key with 'quote'": "\"", "back\\slash": ["\\", "\\\\"], "🔑": "é" },
        });
        await store.upsertDevice(awkward);
        await store.upsertDevice(deviceRow("plain"));
        assert.deepEqual(byId(await store.loadDevices()), byId([awkward, deviceRow("plain")]));
        await store.upsertState(stateRow(sqlish, 1, { properties: { [sqlish]: "'" } }));
        assert.deepEqual(await store.loadStates(), [stateRow(sqlish, 1, { properties: { [sqlish]: "'" } })]);
        await store.putToken({ deviceId: sqlish, hash: "'\"\\", createdAt: T0 });
        assert.deepEqual(await store.getToken(sqlish), { deviceId: sqlish, hash: "'\"\\", createdAt: T0 });
        const ev = eventRow("e'1", "custom.sql", T0, { source: sqlish, deviceId: sqlish, data: sqlish });
        await store.writeBatch({ ...EMPTY_BATCH, events: [ev] });
        assert.deepEqual(await store.events({ limit: 10, source: sqlish, deviceId: sqlish }, T0), [ev]);
        await store.deleteDevice(sqlish);
        assert.deepEqual(await store.loadDevices(), [deviceRow("plain")]);
      });

      it("stores metadata near 64 KiB with deep nesting and prototype-ish keys exactly", async function () {
        const metadata = bigMetadata(64 * 1024 - 256, 60);
        const size = Buffer.byteLength(JSON.stringify(metadata));
        assert.ok(size > 60 * 1024 && size <= 64 * 1024, `metadata is ${size} bytes`);
        const row = deviceRow("big", { metadata });
        await store.upsertDevice(row);
        const [loaded] = await store.loadDevices();
        assert.deepEqual(loaded, row);
        const awkward = (loaded!.metadata as { awkward: JsonObject }).awkward;
        assert.ok(Object.hasOwn(awkward, "__proto__"), "__proto__ stays an own key");
        assert.equal(Object.getPrototypeOf(awkward), Object.prototype);
        assert.equal(({} as Record<string, unknown>).polluted, undefined);
        await store.putCommand(commandRow("c1", "big", T0, { params: metadata, result: metadata }));
        assert.deepEqual(await store.getCommand("c1"), commandRow("c1", "big", T0, { params: metadata, result: metadata }));
      });

      it("either round-trips NUL bytes exactly or refuses the write without changing anything", async function () {
        const before = deviceRow("d1");
        await store.upsertDevice(before);
        const nulUpdate = deviceRow("d1", { name: "a\u0000b", metadata: { "k\u0000": "v\u0000", list: ["\u0000"] } });
        const nulInsert = deviceRow("d2", { model: "\u0000", tags: ["x\u0000"] });
        for (const row of [nulUpdate, nulInsert]) {
          const previous = byId(await store.loadDevices());
          try {
            await store.upsertDevice(row);
          } catch {
            assert.deepEqual(byId(await store.loadDevices()), previous);
            continue;
          }
          assert.deepEqual(
            (await store.loadDevices()).find((d) => d.id === row.id),
            row,
          );
        }

        const batch: WriteBatch = {
          ...EMPTY_BATCH,
          history: [historyRow("h1", "d1", T0, 1)],
          events: [eventRow("e1", "custom.nul", T0, { data: { s: "x\u0000y" }, source: "s\u0000" })],
        };
        let written = true;
        try {
          await store.writeBatch(batch);
        } catch {
          written = false;
        }
        assert.deepEqual(await store.stateHistory("d1", 10), written ? batch.history : []);
        assert.deepEqual(await store.events({ limit: 10 }, T0), written ? batch.events : []);
      });
    });
  });
}
