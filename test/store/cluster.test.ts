import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { isClaimLocked, isClusterStore, isFenced, leaseHoldMs, type Fence, type FencedFailure, type HeldLease } from "../../src/core/ports/cluster";
import type { PointRow, Store, WriteBatch } from "../../src/core/ports/store";
import { PostgresStore } from "../../src/store/postgres";
import { SqliteStore } from "../../src/store/sqlite";
import { NO_RETENTION } from "./contract";
import { commandRow, deviceRow, eventRow, historyRow, stateRow, T0 } from "./fixtures";
import { startTestPostgres, type TestPostgres } from "./pg-harness";
import { type ClusterDb, clusterBeat } from "../../src/store/postgres-cluster-store";
import { assertFence, fenceCheck, LOCK_LEASES } from "../../src/store/postgres-cluster";
import { from as copyFrom } from "pg-copy-streams";
import { until } from "../protocols/mqtt-device";

const ON_SERVER = Boolean(process.env.TETHRAL_TEST_PG_URL);
const LONG_LEASE = 60_000;
const SHORT_LEASE = 200;


/** The database's clock, through a store (PGlite takes one statement at a time, so never beside it). */
async function dbNow(store: PostgresStore): Promise<number> {
  return (await store.changedSince(Number.MAX_SAFE_INTEGER)).now;
}

/** Waits until the database's clock is past `t`. */
async function untilDbPast(store: PostgresStore, t: number): Promise<number> {
  for (let i = 0; i < 500; i++) {
    const now = await dbNow(store);
    if (now > t) return now;
    await new Promise((resolve) => setTimeout(resolve, Math.min(50, Math.max(1, t - now + 1))));
  }
  return assert.fail(`the database's clock did not pass ${t}`);
}

async function fencedFailure(promise: Promise<unknown>): Promise<FencedFailure> {
  try {
    await promise;
  } catch (err) {
    assert.ok(isFenced(err), `expected a fenced refusal, got ${String(err)}`);
    return err;
  }
  return assert.fail("expected the write to be refused by its fence");
}

/** A fence over a fixed device -> partition map: the leases are the member's while listed in `held`. */
function fenceOf(member: string, partitionOf: Record<string, number>, held: Map<number, number>): Fence {
  return {
    member,
    leaseOf: (id) => {
      const partition = partitionOf[id];
      if (partition === undefined) return null;
      const epoch = held.get(partition);
      return epoch === undefined ? null : { partition, epoch };
    },
  };
}

/** Everything a write could change, read through a store: equal before and after a refused write. */
async function snapshot(store: Store, deviceIds: string[], commandIds: string[]): Promise<string> {
  const devices = (await store.loadDevices()).sort((a, b) => a.id.localeCompare(b.id));
  const states = (await store.loadStates()).sort((a, b) => a.deviceId.localeCompare(b.deviceId));
  const tokens = await store.loadTokens();
  const commands = await Promise.all(commandIds.map((id) => store.getCommand(id)));
  const perDevice = [];
  for (const id of deviceIds) {
    perDevice.push({
      history: await store.stateHistory(id, 100),
      points: await store.points({ deviceId: id, key: "temperature", from: 0, to: Number.MAX_SAFE_INTEGER, limit: 100 }),
      commands: await store.deviceCommands(id, null, 100),
    });
  }
  const events = await store.events({ limit: 100 }, T0);
  return JSON.stringify({ devices, states, tokens, commands, perDevice, events });
}

describe("PostgresStore cluster mode", function () {
  this.timeout(60_000);
  let db: TestPostgres;
  const stores: PostgresStore[] = [];

  const open = async (): Promise<PostgresStore> => {
    const store = new PostgresStore({ url: db.url, poolSize: db.poolSize, bulkCopy: db.bulkCopy, onePassPoints: db.onePassPoints });
    stores.push(store);
    await store.open();
    return store;
  };

  before(async function () {
    db = await startTestPostgres();
  });

  after(async function () {
    await db?.stop();
  });

  beforeEach(async function () {
    await db.reset();
  });

  afterEach(async function () {
    for (const s of stores.splice(0)) await s.close();
  });

  it("is a cluster store; the SQLite store is not", async function () {
    assert.equal(isClusterStore(new PostgresStore({ url: db.url })), true);
    assert.equal(isClusterStore(new SqliteStore({ path: ":memory:" })), false);
  });

  describe("membership and leases", function () {
    it("creates the partition count and one free lease per partition at the first join", async function () {
      const a = await open();
      assert.equal(await a.clusterPartitions(), null);
      const { now } = await a.clusterJoin("a", 8);
      assert.equal(await a.clusterPartitions(), 8);
      const beat = await a.clusterBeat("a", LONG_LEASE, []);
      assert.deepEqual(
        beat.leases,
        Array.from({ length: 8 }, (_, partition) => ({ partition, owner: null, epoch: 0, expiresAt: 0 })),
      );
      assert.deepEqual(beat.members.map((m) => [m.id, m.since]), [["a", now]]);
      assert.ok(beat.now >= now && beat.members[0]!.lastSeen === beat.now);
      assert.deepEqual(beat.renewed, []);
      // A second join with the same count changes nothing of the leases.
      await a.clusterClaim("a", 3, LONG_LEASE);
      await a.clusterJoin("a", 8);
      const again = await a.clusterBeat("a", LONG_LEASE, []);
      assert.equal(again.leases.length, 8);
      assert.equal(again.leases[3]!.owner, "a");
    });

    it("refuses a join with another partition count in one line, and records nothing of it", async function () {
      const a = await open();
      await a.clusterJoin("a", 8);
      const b = await open();
      await assert.rejects(b.clusterJoin("b", 4), (err: Error) => {
        assert.equal(err.message, "the cluster's database has 8 partitions, and TETHRAL_PARTITIONS is 4: use 8, or a new database");
        return true;
      });
      const beat = await a.clusterBeat("a", LONG_LEASE, []);
      assert.deepEqual(beat.members.map((m) => m.id), ["a"]);
      assert.equal(beat.leases.length, 8);
      assert.equal(await b.clusterPartitions(), 8);
    });

    it("lets members joining a fresh database at once agree on one partition count", async function () {
      if (!ON_SERVER) this.skip(); // PGlite runs one connection at a time
      const members = await Promise.all(["a", "b", "c", "d"].map(() => open()));
      await Promise.all(members.map((s, i) => s.clusterJoin(`m${i}`, 16)));
      const beat = await members[0]!.clusterBeat("m0", LONG_LEASE, []);
      assert.equal(beat.leases.length, 16);
      assert.deepEqual(beat.members.map((m) => m.id), ["m0", "m1", "m2", "m3"]);
      assert.deepEqual(await db.sql("SELECT count(*)::int AS n FROM cluster_meta"), [{ n: 1 }]);
    });

    it("claims a free lease once: epoch + 1, held until the lease runs out, then claimable by another at epoch + 1", async function () {
      const a = await open();
      const b = await open();
      await a.clusterJoin("a", 4);
      await b.clusterJoin("b", 4);
      const held = await a.clusterClaim("a", 0, LONG_LEASE);
      assert.ok(held);
      assert.equal(held.partition, 0);
      assert.equal(held.owner, "a");
      assert.equal(held.epoch, 1);
      assert.ok(held.expiresAt > (await dbNow(a)));
      assert.equal(await b.clusterClaim("b", 0, LONG_LEASE), null);
      assert.equal(await a.clusterClaim("a", 0, LONG_LEASE), null, "an unexpired lease is not claimed again, even by its owner");

      const short = await a.clusterClaim("a", 1, SHORT_LEASE);
      assert.ok(short);
      await untilDbPast(b, short.expiresAt);
      const taken = await b.clusterClaim("b", 1, LONG_LEASE);
      assert.ok(taken);
      assert.deepEqual([taken.owner, taken.epoch], ["b", 2]);
      assert.equal(await a.clusterClaim("a", 1, LONG_LEASE), null);
    });

    it("does not let a member frozen inside its beat keep its lease rows locked: the database ends the idle transaction and another claims", async function () {
      if (db.kind === "pglite") {
        console.log("      (skipped on PGlite: one backend runs one transaction at a time; CI runs it on the real server)");
        this.skip();
      }
      const a = await open();
      const b = await open();
      await a.clusterJoin("a", 4);
      await b.clusterJoin("b", 4);
      const lease = 1_000;
      const held = await a.clusterClaim("a", 2, lease);
      assert.ok(held);
      // Member a's next beat, frozen right after it locked its lease rows (SIGSTOP there): its
      // transaction stays open and idle on the server.
      const pool = new pg.Pool({ connectionString: db.url, max: 1 });
      pool.on("error", () => undefined);
      let frozen = false;
      const client = await pool.connect();
      client.on("error", () => undefined);
      const freezing: ClusterDb = {
        query: (sql, params) => pool.query(sql, params),
        direct: (sql) => pool.query(sql),
        tx: async <T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> => {
          await client.query("BEGIN");
          const query = (sql: string, params?: unknown[]) => {
            if (frozen) return new Promise<never>(() => undefined);
            const result = client.query(sql, params);
            if (sql === LOCK_LEASES) frozen = true;
            return result;
          };
          return fn(Object.assign(Object.create(client), { query }) as pg.PoolClient);
        },
      };
      void clusterBeat(freezing, "a", lease, [{ partition: 2, epoch: held.epoch }]);
      await until(() => frozen, "the beat locked its rows", 5_000);
      await untilDbPast(b, held.expiresAt);
      // Locked at first (a claim waits at most 250 ms), claimed once the database ended a's transaction.
      let taken = null;
      const deadline = Date.now() + 8_000;
      while (!taken && Date.now() < deadline) {
        try {
          taken = await b.clusterClaim("b", 2, LONG_LEASE);
        } catch (err) {
          if ((err as { locked?: unknown }).locked !== true) throw err;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
      assert.ok(taken, "claimed by b");
      assert.deepEqual([taken.owner, taken.epoch], ["b", held.epoch + 1]);
      client.release(true);
      await pool.end().catch(() => undefined);
    });

    /**
     * Member `owner` (an id past the 63 bytes of an application name, and not ASCII: it is found by
     * its tag) holds partition 2 for a second, and its fenced write of a large batch freezes while
     * it streams the points (SIGSTOP there): the statement waits for the rest of the COPY, holding
     * the lease row, and is never idle. `claimant` then claims partition 2 until it gets it or 8 s pass.
     */
    async function stuckInCopy(claimant: PostgresStore, owner: PostgresStore, ownerId: string, joinClaimant = true) {
      await owner.clusterJoin(ownerId, 4);
      // (A claim needs no member row; joining makes the indexes, which only the tables' owner may.)
      if (joinClaimant) await claimant.clusterJoin("b", 4);
      const held = await owner.clusterClaim(ownerId, 2, 1_000);
      assert.ok(held);
      const stuck = new pg.Client({ connectionString: db.url });
      let ended: unknown = null;
      stuck.on("error", (err) => (ended ??= err));
      await stuck.connect();
      await stuck.query("BEGIN");
      await assertFence(stuck, fenceCheck({ ...fenceOf(ownerId, { d1: 2 }, new Map([[2, held.epoch]])), holdMs: leaseHoldMs(1_000) }, ["d1"]));
      const copy = stuck.query(copyFrom("COPY ts_points (series_id, ts, num, val) FROM STDIN"));
      copy.on("error", (err) => (ended ??= err));
      copy.write("1\t");
      await untilDbPast(claimant, held.expiresAt);
      // The claimant's lease is 4 s: it ends a stuck owner's transactions 2 s (half of it) after the owner's lease ran out.
      const claim = async () => {
        try {
          return await claimant.clusterClaim("b", 2, 4_000);
        } catch (err) {
          if (!isClaimLocked(err)) throw err;
          return err;
        }
      };
      const first = await claim();
      const attempts = [first];
      let taken = isClaimLocked(first) ? null : first;
      const deadline = Date.now() + 8_000;
      while (!taken && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        const got = await claim();
        attempts.push(got);
        if (!isClaimLocked(got)) taken = got;
      }
      const stillHeld = ended === null;
      await stuck.end().catch(() => undefined);
      return { held, first, taken, attempts, ended, stillHeld };
    }

    it("ends the transactions of a member stuck in the middle of a COPY past its lease, so another member claims (the database ends only idle ones)", async function () {
      if (db.kind === "pglite") {
        console.log("      (skipped on PGlite: one backend runs one transaction at a time; CI runs it on the real server)");
        this.skip();
      }
      const member = `a-é-${"x".repeat(100)}`;
      const b = await open();
      const { held, first, taken, attempts, ended } = await stuckInCopy(b, await open(), member);
      // Within half a lease of its end (a write may be finishing), the row stays locked and the owner's transaction lives.
      assert.ok(isClaimLocked(first), "locked at first");
      assert.deepEqual(first.stuck, { owner: null, ended: 0, error: null });
      assert.ok(taken && !isClaimLocked(taken), "claimed by b");
      assert.deepEqual([taken.owner, taken.epoch], ["b", held.epoch + 1]);
      const endedBy = attempts.find((x) => isClaimLocked(x) && x.stuck.ended > 0);
      assert.ok(endedBy && isClaimLocked(endedBy));
      assert.deepEqual(endedBy.stuck, { owner: member, ended: 1, error: null });
      assert.equal((ended as { code?: unknown } | null)?.code, "57P01", `the owner's transaction ended by the claim: ${String(ended)}`);
    });

    it("says why it cannot end them when the claimant's role is not shown the owner's connections (another role, without pg_read_all_stats)", async function () {
      if (db.kind === "pglite") {
        console.log("      (skipped on PGlite: one backend runs one transaction at a time; CI runs it on the real server)");
        this.skip();
      }
      const role = `tethral_t_other_${randomBytes(4).toString("hex")}`;
      await db.sql(`CREATE ROLE ${role} LOGIN`);
      try {
        await db.sql(`GRANT pg_signal_backend TO ${role}`);
        const a = await open();
        // Its tables, made by the owner's store, for the other role too.
        await a.clusterJoin("a", 4);
        await db.sql(`GRANT ALL ON SCHEMA public TO ${role}`);
        await db.sql(`GRANT ALL ON ALL TABLES IN SCHEMA public TO ${role}`);
        await db.sql(`GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO ${role}`);
        const url = new URL(db.url);
        url.username = role;
        const other = new PostgresStore({ url: url.toString() });
        stores.push(other);
        await other.open();
        const { taken, attempts, stillHeld } = await stuckInCopy(other, a, "a", false);
        assert.equal(taken, null, "not claimed: the owner's transaction holds the row");
        assert.ok(stillHeld);
        const said = attempts.find((x) => isClaimLocked(x) && x.stuck.error !== null);
        assert.ok(said && isClaimLocked(said), "a reason given");
        assert.match(String((said.stuck.error as Error).message), /needs pg_read_all_stats, or all members one role/);
      } finally {
        for (const s of stores.splice(0)) await s.close();
        await db.sql(`DROP OWNED BY ${role}`);
        await db.sql(`DROP ROLE ${role}`);
      }
    });

    it("renews at a beat only the leases still the member's at the epoch it names", async function () {
      const a = await open();
      const b = await open();
      await a.clusterJoin("a", 4);
      await b.clusterJoin("b", 4);
      const l0 = (await a.clusterClaim("a", 0, SHORT_LEASE))!;
      const l1 = (await a.clusterClaim("a", 1, SHORT_LEASE))!;
      const l2 = (await b.clusterClaim("b", 2, SHORT_LEASE))!;
      const claimedFrom = l0.expiresAt - SHORT_LEASE;
      const held: HeldLease[] = [
        { partition: 0, epoch: l0.epoch },
        { partition: 1, epoch: l1.epoch + 1 }, // not the epoch it holds
        { partition: 2, epoch: l2.epoch }, // b's
        { partition: 3, epoch: 0 }, // nobody's
      ];
      const beat = await a.clusterBeat("a", LONG_LEASE, held);
      assert.deepEqual(beat.renewed, [0]);
      assert.ok(beat.now >= claimedFrom);
      const lease = (p: number) => beat.leases.find((l) => l.partition === p)!;
      assert.deepEqual(lease(0), { partition: 0, owner: "a", epoch: 1, expiresAt: beat.now + LONG_LEASE });
      assert.deepEqual(lease(1), l1);
      assert.deepEqual(lease(2), l2);
      assert.deepEqual(lease(3), { partition: 3, owner: null, epoch: 0, expiresAt: 0 });
    });

    it("releases only its own leases at their epochs, keeping the epoch, so another claims at once", async function () {
      const a = await open();
      const b = await open();
      await a.clusterJoin("a", 4);
      await b.clusterJoin("b", 4);
      await a.clusterClaim("a", 0, LONG_LEASE);
      await a.clusterClaim("a", 1, LONG_LEASE);
      await b.clusterClaim("b", 2, LONG_LEASE);
      await a.clusterRelease("a", [
        { partition: 0, epoch: 1 },
        { partition: 1, epoch: 7 },
        { partition: 2, epoch: 1 },
      ]);
      const { leases } = await b.clusterBeat("b", LONG_LEASE, []);
      assert.deepEqual(leases[0], { partition: 0, owner: null, epoch: 1, expiresAt: 0 });
      assert.equal(leases[1]!.owner, "a");
      assert.equal(leases[2]!.owner, "b");
      const taken = await b.clusterClaim("b", 0, LONG_LEASE);
      assert.deepEqual([taken?.owner, taken?.epoch], ["b", 2]);
    });

    it("removes a member that leaves, and forgets members silent for longer than asked", async function () {
      const a = await open();
      const b = await open();
      const c = await open();
      const { now: joinedA } = await a.clusterJoin("a", 4);
      await b.clusterJoin("b", 4);
      await c.clusterJoin("c", 4);
      await c.clusterLeave("c");
      assert.deepEqual((await b.clusterBeat("b", LONG_LEASE, [])).members.map((m) => m.id), ["a", "b"]);
      // a stays silent for 3 s of the database's clock; b beats just before the forget.
      await untilDbPast(b, joinedA + 3000);
      await b.clusterBeat("b", LONG_LEASE, []);
      await b.clusterForget(2000);
      const { members } = await b.clusterBeat("b", LONG_LEASE, []);
      assert.deepEqual(members.map((m) => m.id), ["b"]);
      // A forgotten member that beats again is a member again.
      const back = await a.clusterBeat("a", LONG_LEASE, []);
      assert.deepEqual(back.members.map((m) => m.id), ["a", "b"]);
    });
  });

  describe("fencing", function () {
    // d0 in partition 0 (taken over by b), d1 in partition 1 (still a's), d2 in partition 2 (never a's).
    const PARTITION_OF: Record<string, number> = { d0: 0, d1: 1, d2: 2 };
    const DEVICES = ["d0", "d1", "d2"];
    const COMMANDS = ["c-d0", "c-d1", "c-d2", "new-d0", "new-d1", "new-d2"];
    let a: PostgresStore;
    let b: PostgresStore;
    let heldByA: Map<number, number>;

    beforeEach(async function () {
      a = await open();
      b = await open();
      await a.clusterJoin("a", 4);
      await b.clusterJoin("b", 4);
      const l0 = (await a.clusterClaim("a", 0, SHORT_LEASE))!;
      const l1 = (await a.clusterClaim("a", 1, LONG_LEASE))!;
      heldByA = new Map([
        [0, l0.epoch],
        [1, l1.epoch],
      ]);
      // Written under a's current leases (d2 before the fence: a never owned it).
      await a.upsertDevice(deviceRow("d2"));
      await a.putToken({ deviceId: "d2", hash: "h-d2", createdAt: T0 });
      await a.putCommand(commandRow("c-d2", "d2", T0));
      a.setFence(fenceOf("a", PARTITION_OF, heldByA));
      for (const id of ["d0", "d1"]) {
        await a.upsertDevice(deviceRow(id));
        await a.upsertState(stateRow(id, 1));
        await a.putToken({ deviceId: id, hash: `h-${id}`, createdAt: T0 });
        await a.putCommand(commandRow(`c-${id}`, id, T0));
      }
      // a pauses past its lease of partition 0; b takes it over.
      await untilDbPast(b, l0.expiresAt);
      const taken = await b.clusterClaim("b", 0, LONG_LEASE);
      assert.equal(taken?.epoch, l0.epoch + 1);
    });

    const point = (deviceId: string, ts: number) => ({ deviceId, key: "temperature", ts, value: 21.5 });
    const batchFor = (id: string): WriteBatch & { points: PointRow[] } => ({
      presence: [{ id, status: "offline", lastSeen: T0 + 9000 }],
      states: [stateRow(id, 9)],
      history: [historyRow(`h-${id}`, id, T0 + 9000, 9)],
      events: [eventRow(`e-${id}`, "device.test", T0 + 9000, { deviceId: id })],
      points: Array.from({ length: 50 }, (_, i) => point(id, T0 + i * 1000)),
    });
    const WRITES: [string, (s: PostgresStore, id: string) => Promise<unknown>][] = [
      ["upsertDevice", (s, id) => s.upsertDevice(deviceRow(id, { name: "renamed" }))],
      ["deleteDevice", (s, id) => s.deleteDevice(id)],
      ["upsertState", (s, id) => s.upsertState(stateRow(id, 5))],
      ["writeBatch", (s, id) => s.writeBatch(batchFor(id))],
      ["putCommand", (s, id) => s.putCommand(commandRow(`new-${id}`, id, T0 + 1))],
      ["putCommands", (s, id) => s.putCommands([commandRow(`c-${id}`, id, T0, { status: "sent" }), commandRow(`new-${id}`, id, T0 + 1)])],
      ["deleteCommand", (s, id) => s.deleteCommand(`c-${id}`)],
      ["putToken", (s, id) => s.putToken({ deviceId: id, hash: "other", createdAt: T0 + 1 })],
      ["deleteToken", (s, id) => s.deleteToken(id)],
    ];

    for (const [method, write] of WRITES) {
      it(`${method}: refused with nothing written under a lease taken over, written under a current one`, async function () {
        const before = await snapshot(b, DEVICES, COMMANDS);
        const removedBefore = (await b.changedSince(0)).removed;
        const stale = await fencedFailure(write(a, "d0"));
        assert.deepEqual(stale.partitions, [0]);
        assert.deepEqual(stale.deviceIds, ["d0"]);
        assert.equal(await snapshot(b, DEVICES, COMMANDS), before);
        assert.deepEqual((await b.changedSince(0)).removed, removedBefore);

        const unowned = await fencedFailure(write(a, "d2"));
        assert.deepEqual(unowned.partitions, []);
        assert.deepEqual(unowned.deviceIds, ["d2"]);
        assert.equal(await snapshot(b, DEVICES, COMMANDS), before);

        await write(a, "d1");
        assert.notEqual(await snapshot(b, DEVICES, COMMANDS), before);
      });
    }

    it("refuses a whole batch when one device's lease is stale, naming only the refused devices", async function () {
      const before = await snapshot(b, DEVICES, COMMANDS);
      const mixed: WriteBatch = {
        presence: [...batchFor("d1").presence, ...batchFor("d0").presence],
        states: batchFor("d1").states,
        history: batchFor("d0").history,
        events: batchFor("d1").events,
        points: [...batchFor("d1").points, ...batchFor("d2").points],
      };
      const err = await fencedFailure(a.writeBatch(mixed));
      assert.deepEqual(err.partitions, [0]);
      assert.deepEqual([...err.deviceIds].sort(), ["d0", "d2"]);
      assert.equal(await snapshot(b, DEVICES, COMMANDS), before);
    });

    it("does not fence events: a batch of events alone is written for any device", async function () {
      await a.writeBatch({ presence: [], states: [], history: [], events: [eventRow("e1", "device.test", T0, { deviceId: "d0" })] });
      assert.deepEqual((await b.events({ limit: 10 }, T0)).map((e) => e.id), ["e1"]);
    });

    it("writes as before once the fence is cleared", async function () {
      a.setFence(null);
      await a.upsertDevice(deviceRow("d0", { name: "unfenced" }));
      await a.writeBatch(batchFor("d0"));
      const d0 = (await b.loadDevices()).find((d) => d.id === "d0");
      assert.equal(d0?.name, "unfenced");
      assert.equal(d0?.status, "offline");
    });

    it("makes a takeover claim wait for a fenced batch in flight, so the new owner loads what it wrote", async function () {
      if (!ON_SERVER) this.skip(); // needs concurrent connections
      // Partition 1's lease runs out while a's batch is held inside its transaction by a row lock.
      await a.clusterRelease("a", [{ partition: 1, epoch: heldByA.get(1)! }]);
      const l1 = (await a.clusterClaim("a", 1, SHORT_LEASE))!;
      heldByA.set(1, l1.epoch);
      const blocker = new pg.Client({ connectionString: db.url });
      await blocker.connect();
      try {
        await blocker.query("BEGIN");
        await blocker.query("SELECT 1 FROM devices WHERE id = 'd1' FOR UPDATE");
        const settled: string[] = [];
        const batch = a.writeBatch(batchFor("d1")).then(() => settled.push("batch"));
        await untilWaiting(blocker, 1);
        await untilDbPast(b, l1.expiresAt);
        const claim = b.clusterClaim("b", 1, LONG_LEASE).then((lease) => {
          settled.push("claim");
          return lease;
        });
        // The claim of the expired lease waits behind the batch's share lock.
        await untilWaiting(blocker, 2);
        assert.deepEqual(settled, []);
        await blocker.query("COMMIT");
        await batch;
        const lease = await claim;
        assert.deepEqual([lease?.owner, lease?.epoch], ["b", l1.epoch + 1]);
        const d1 = (await b.loadDevices()).find((d) => d.id === "d1");
        assert.equal(d1?.status, "offline");
        assert.equal((await b.loadStates()).find((s) => s.deviceId === "d1")?.rev, 9);
        // And a's next write for d1 is refused.
        const err = await fencedFailure(a.upsertState(stateRow("d1", 10)));
        assert.deepEqual(err.partitions, [1]);
      } finally {
        await blocker.end();
      }
    });
  });

  describe("changes since a time", function () {
    it("returns devices stored, states and tokens changed at or after it, and the ids removed since", async function () {
      const a = await open();
      const before = await dbNow(a);
      const old = before - 3_600_000;
      await a.upsertDevice(deviceRow("old", { createdAt: old, updatedAt: old, lastSeen: old }));
      await a.upsertDevice(deviceRow("gone", { createdAt: old, updatedAt: old, lastSeen: old }));
      await a.upsertDevice(deviceRow("silent", { createdAt: old, updatedAt: old, lastSeen: old, status: "online" }));
      await a.upsertState(stateRow("old", 1, { updatedAt: old }));
      await a.putToken({ deviceId: "old", hash: "h", createdAt: old });
      const t = await untilDbPast(a, await dbNow(a));
      await a.upsertDevice(deviceRow("changed", { createdAt: old, updatedAt: t, lastSeen: old }));
      await a.upsertDevice(deviceRow("seen", { createdAt: old, updatedAt: old, lastSeen: t }));
      // Its heartbeat deadline passed: offline is stored now, with the lastSeen of an hour ago.
      await a.writeBatch({ presence: [{ id: "silent", status: "offline", lastSeen: old }], states: [], history: [], events: [] });
      await a.upsertState(stateRow("changed", 1, { updatedAt: t }));
      // A state the write-behind stored long after it changed (a backlog): stored now all the same.
      await a.upsertState(stateRow("silent", 1, { updatedAt: old }));
      await a.putToken({ deviceId: "seen", hash: "h", createdAt: t });
      // A token made by a member whose clock runs an hour behind: stored now all the same.
      await a.putToken({ deviceId: "silent", hash: "h2", createdAt: old });
      await a.deleteDevice("gone");

      const changes = await a.changedSince(t);
      assert.ok(changes.now >= t);
      assert.deepEqual(changes.devices.map((d) => d.id).sort(), ["changed", "seen", "silent"]);
      assert.equal(changes.devices.find((d) => d.id === "silent")?.status, "offline", "stored now, whatever its lastSeen");
      assert.deepEqual(changes.devices.find((d) => d.id === "changed"), deviceRow("changed", { createdAt: old, updatedAt: t, lastSeen: old }));
      assert.deepEqual(
        changes.states.sort((x, y) => (x.deviceId < y.deviceId ? -1 : 1)),
        [stateRow("changed", 1, { updatedAt: t }), stateRow("silent", 1, { updatedAt: old })],
      );
      assert.deepEqual(
        changes.tokens.sort((x, y) => (x.deviceId < y.deviceId ? -1 : 1)),
        [{ deviceId: "seen", hash: "h", createdAt: t }, { deviceId: "silent", hash: "h2", createdAt: old }],
      );
      assert.deepEqual(changes.removed, ["gone"]);

      // Nothing changed after the last read's clock.
      const later = await untilDbPast(a, changes.now);
      const none = await a.changedSince(later);
      assert.deepEqual([none.devices, none.states, none.tokens, none.removed], [[], [], [], []]);
    });

    it("keeps a device's stored fingerprint when a presence row carries none (a status set with a desired state)", async function () {
      const a = await open();
      const t = await dbNow(a);
      await a.upsertDevice(deviceRow("fp", { updatedAt: t, lastSeen: t }));
      await a.writeBatch({ presence: [{ id: "fp", status: "online", lastSeen: t + 1, lastMessage: 4242 }], states: [], history: [], events: [] });
      await a.writeBatch({ presence: [{ id: "fp", status: "error", lastSeen: t + 2 }], states: [], history: [], events: [] });
      assert.deepEqual(await a.presenceOf(["fp", "nobody"]), [{ id: "fp", status: "error", lastSeen: t + 2, lastMessage: 4242 }]);
    });

    it("sends whole rows only for what the follower does not have yet (presence for the rest)", async function () {
      const a = await open();
      const t = await dbNow(a);
      await a.upsertDevice(deviceRow("kept", { updatedAt: t, lastSeen: t, status: "online" }));
      await a.upsertDevice(deviceRow("edited", { updatedAt: t + 5, lastSeen: t }));
      await a.upsertState(stateRow("kept", 4, { updatedAt: t }));
      await a.upsertState(stateRow("edited", 9, { updatedAt: t }));
      const known = {
        deviceUpdatedAt: (id: string) => (id === "kept" ? t : id === "edited" ? t : undefined),
        stateRev: (id: string) => (id === "kept" ? 4 : id === "edited" ? 8 : undefined),
      };
      const changes = await a.changedSince(t, known);
      assert.deepEqual(changes.devices.map((d) => d.id), ["edited"]);
      assert.deepEqual(changes.presence, [{ id: "kept", status: "online", lastSeen: t, lastMessage: 0 }]);
      assert.deepEqual(changes.states.map((s) => [s.deviceId, s.rev]), [["edited", 9]]);
    });

    it("clears a removed device's tombstone when its id is registered again", async function () {
      const a = await open();
      const t = await dbNow(a);
      await a.upsertDevice(deviceRow("x"));
      await a.deleteDevice("x");
      assert.deepEqual((await a.changedSince(t)).removed, ["x"]);
      await a.upsertDevice(deviceRow("x", { updatedAt: t }));
      const changes = await a.changedSince(t);
      assert.deepEqual(changes.removed, []);
      assert.deepEqual(changes.devices.map((d) => d.id), ["x"]);
    });

    it("purges tombstones older than the events' age, or a week when events are kept", async function () {
      const a = await open();
      await a.upsertDevice(deviceRow("x"));
      await a.deleteDevice("x");
      const now = await dbNow(a);
      await a.purge(NO_RETENTION, now + 6 * 24 * 3_600_000, 100);
      assert.deepEqual((await a.changedSince(0)).removed, ["x"]);
      await a.purge({ ...NO_RETENTION, eventsMaxAgeMs: 60_000 }, now + 30_000, 100);
      assert.deepEqual((await a.changedSince(0)).removed, ["x"]);
      await a.purge(NO_RETENTION, now + 8 * 24 * 3_600_000, 100);
      assert.deepEqual((await a.changedSince(0)).removed, []);
      await a.upsertDevice(deviceRow("y"));
      await a.deleteDevice("y");
      await a.purge({ ...NO_RETENTION, eventsMaxAgeMs: 60_000 }, (await dbNow(a)) + 61_000, 100);
      assert.deepEqual((await a.changedSince(0)).removed, []);
    });
  });

  /** Polls until `n` backends of this database wait for a lock. */
  async function untilWaiting(client: pg.Client, n: number): Promise<void> {
    for (let i = 0; i < 500; i++) {
      const { rows } = await client.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
      );
      if (rows[0]!.n >= n) return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.fail(`${n} backends never waited for a lock`);
  }
});

describe("SqliteStore and the cluster tables", function () {
  let dir: string;

  beforeEach(function () {
    dir = mkdtempSync(join(tmpdir(), "tethral-cluster-"));
  });

  afterEach(function () {
    rmSync(dir, { recursive: true, force: true });
  });

  it("keeps a tombstone of a removed device, cleared when the id is registered again and purged with age", async function () {
    const path = join(dir, "hub.db");
    const store = new SqliteStore({ path });
    await store.open();
    const tombstones = () => {
      const raw = new Database(path, { readonly: true });
      try {
        return raw.prepare("SELECT device_id FROM removed_devices ORDER BY device_id").all();
      } finally {
        raw.close();
      }
    };
    try {
      await store.upsertDevice(deviceRow("x"));
      await store.upsertDevice(deviceRow("y"));
      await store.deleteDevice("x");
      await store.deleteDevice("y");
      assert.deepEqual(tombstones(), [{ device_id: "x" }, { device_id: "y" }]);
      await store.upsertDevice(deviceRow("y"));
      assert.deepEqual(tombstones(), [{ device_id: "x" }]);
      await store.purge(NO_RETENTION, Date.now() + 6 * 24 * 3_600_000, 100);
      assert.deepEqual(tombstones(), [{ device_id: "x" }]);
      await store.purge({ ...NO_RETENTION, eventsMaxAgeMs: 1000 }, Date.now() + 2000, 100);
      assert.deepEqual(tombstones(), []);
    } finally {
      await store.close();
    }
  });
});
