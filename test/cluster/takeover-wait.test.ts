import assert from "node:assert/strict";
import type { Hub } from "../../src/core";
import { partitionOf } from "../../src/core/cluster/partition";
import type { ClusterStatistics } from "../../src/core/cluster/member";
import { PostgresStore } from "../../src/store/postgres";
import { LocalBroker } from "./local-link";
import { clusterDatabase, memberHub, ownedBy, until } from "./members";

const PARTITIONS = 4;
// Two seconds: three members' worth of beats on a loaded machine stay well inside a lease.
const LEASE_MS = 2_000;

/** The member's own figures (what GET /api/health and the metrics read). */
const clusterOf = (hub: Hub) => (hub as unknown as { cluster: { statistics(): ClusterStatistics } }).cluster.statistics();

describe("a cluster member taking partitions over while a write of its own hangs (engine, PostgreSQL)", function () {
  this.timeout(60_000);
  const database = clusterDatabase();

  it("gives the takeover up after a quarter lease and tries it again, keeping its own leases renewed meanwhile; takes the partitions once the write ends", async () => {
    const broker = new LocalBroker();
    const warnings: string[] = [];
    const storeB = new PostgresStore({ url: database().url });
    // b's batches wait for the test while `hanging` is set: a write whose connection hangs.
    let hanging: Promise<void> | null = null;
    let release: () => void = () => undefined;
    let waiting = 0;
    const write = storeB.writeBatch.bind(storeB);
    storeB.writeBatch = async (batch) => {
      if (hanging) {
        waiting++;
        await hanging;
      }
      return write(batch);
    };
    const a = memberHub(new PostgresStore({ url: database().url }), { member: "a", partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() });
    const b = memberHub(storeB, { member: "b", partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() }, { onWarning: (m) => warnings.push(m) });
    try {
      await a.hub.start();
      await until("a owns every partition", () => ownedBy(a.hub).length === PARTITIONS, 20_000);
      await b.hub.start();
      await until("each owns half", () => clusterOf(a.hub).owned === PARTITIONS / 2 && clusterOf(b.hub).owned === PARTITIONS / 2, 20_000);
      const own = ownedBy(b.hub);
      // A device of b's own partitions reports; its write hangs.
      const id = Array.from({ length: 100 }, (_, i) => `dev-${i}`).find((x) => own.includes(partitionOf(x, PARTITIONS)))!;
      await b.hub.registerDevice({ id, protocol: "mqtt" });
      hanging = new Promise<void>((resolve) => (release = resolve));
      b.shared.context.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: Buffer.from('{"t": 1}') });
      await until("b's write is on its way", () => waiting > 0, 5_000);
      const lostBefore = clusterOf(b.hub).lost;

      // a leaves: b must take its partitions over, but a write checked before the claim is still on its way.
      await a.hub.stop();
      await until("b gives a takeover up", () => warnings.some((m) => /could not take over partitions .*still on its way after 500 ms/.test(m)), 10_000);
      // Two leases of hanging: b's own partitions stay renewed (an unbounded wait held the beat, and they ran out).
      const end = Date.now() + 2 * LEASE_MS;
      while (Date.now() < end) {
        assert.equal(clusterOf(b.hub).owned, PARTITIONS / 2, "b keeps its own partitions, and takes no others half loaded");
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(clusterOf(b.hub).lost, lostBefore, "none of its leases lost");
      assert.ok(warnings.filter((m) => /could not take over/.test(m)).length >= 2, "tried again");

      release();
      hanging = null;
      await until("b owns every partition once the write is done", () => clusterOf(b.hub).owned === PARTITIONS, 10_000);
      await b.hub.flush();
      const points = await storeB.points({ deviceId: id, key: "t", from: 0, to: Date.now() + 60_000, limit: 10 });
      assert.deepEqual(points.map((p) => p.value), [1], "the write that hung is stored");
    } finally {
      release();
      await b.hub.stop().catch(() => undefined);
      await a.hub.stop().catch(() => undefined);
    }
  });
});
