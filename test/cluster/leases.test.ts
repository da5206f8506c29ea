import assert from "node:assert/strict";
import { ManualClock } from "../../src/core/clock";
import { type LeaseHooks, Leases } from "../../src/core/cluster/leases";
import type { ClaimLockedFailure, ClusterStore, LeaseRow } from "../../src/core/ports/cluster";

/**
 * One partition, member "me" alone: each beat shows partition 0 run out (so it is claimed) and
 * renews nothing (so what was claimed is lost again at the next beat); `claim` answers the claims.
 */
function onePartition(claim: ClusterStore["clusterClaim"]): ClusterStore {
  const partial: Partial<ClusterStore> = {
    clusterJoin: async () => ({ now: 1_000_000 }),
    clusterBeat: async () => ({ now: 1_000_000, members: [{ id: "me", since: 0, lastSeen: 1_000_000 }], leases: [{ partition: 0, owner: "old", epoch: 0, expiresAt: 1 }], renewed: [] }),
    clusterClaim: claim,
    clusterRelease: async () => undefined,
    clusterLeave: async () => undefined,
  };
  return partial as ClusterStore;
}

const claimed = (epoch: number, leaseMs: number): LeaseRow => ({ partition: 0, owner: "me", epoch, expiresAt: 1_000_000 + leaseMs });

/** Leases of "me" on `store`, started, with `beats` beats run in all; stopped. */
async function run(store: ClusterStore, hooks: Partial<LeaseHooks>, beats: number, leaseMs = 1_000, between?: (leases: Leases) => void): Promise<void> {
  const clock = new ManualClock();
  const leases = new Leases(store, clock, "me", 1, leaseMs, { acquire: async () => undefined, owned: () => undefined, handOver: async () => undefined, lost: () => undefined, resumed: () => undefined, warn: () => undefined, ...hooks });
  await leases.start();
  between?.(leases);
  for (let i = 1; i < beats; i++) {
    clock.advance(leases.beatMs);
    await new Promise((resolve) => setImmediate(resolve));
  }
  await leases.stop();
}

describe("Leases: a claim that finds the lease row locked", function () {
  /** The warnings of `count` beats whose claims are all locked, with `stuck` as what the store ended. */
  async function warnings(stuck: () => ClaimLockedFailure["stuck"], count: number): Promise<string[]> {
    const said: string[] = [];
    const store = onePartition(async () => {
      throw Object.assign(new Error("the lease of partition 0 is locked by a write in flight"), { locked: true as const, stuck: stuck() });
    });
    await run(store, { warn: (m) => said.push(m) }, count, 1_000, (leases) => assert.equal(leases.ownedPartitions().length, 0));
    return said;
  }

  it("says when the store ended the stuck previous owner's transactions, at each beat it did", async function () {
    const said = await warnings(() => ({ owner: "old", ended: 2, error: null }), 2);
    assert.equal(said.length, 2);
    assert.match(said[0]!, /^cluster: partition 0's lease row was still locked by 2 transaction\(s\) of member old, held past its lease .*: ended them$/);
  });

  it("says once that it could not end them (the next beats would say it again), and nothing while there is nothing to end", async function () {
    assert.deepEqual(await warnings(() => ({ owner: null, ended: 0, error: null }), 3), []);
    const said = await warnings(() => ({ owner: null, ended: 0, error: new Error("function pg_terminate_backend(int) does not exist") }), 3);
    assert.deepEqual(said, ["cluster: could not end a stuck member's transactions holding a lease row (they hold it until its connection closes): function pg_terminate_backend(int) does not exist"]);
  });
});

describe("Leases: claiming back a partition this member held before", function () {
  it("says so when another member held it in between (the epoch moved by more than one claim), before the lease is the partition's", async function () {
    // Claimed at 3; lost (not renewed); claimed again at 4 (nobody between); lost; claimed at 7 (someone between).
    const epochs = [3, 4, 7];
    let claims = 0;
    const calls: number[] = [];
    const store = onePartition(async () => (claims < epochs.length ? claimed(epochs[claims++]!, 1_000) : null));
    await run(store, { superseded: () => calls.push(epochs[claims - 1]!) }, epochs.length);
    assert.equal(claims, epochs.length);
    assert.deepEqual(calls, [7]);
  });
});

describe("Leases: a write refused by the fence", function () {
  it("lets the partition go only while it is still held at the epoch the write was checked under", async function () {
    const lost: number[][] = [];
    await run(onePartition(async () => claimed(5, 60_000)), { lost: (ps) => lost.push(ps) }, 1, 60_000, (leases) => {
      assert.deepEqual(leases.ownedPartitions(), [0]);
      // Checked under epoch 4, before this member claimed it again at 5: the lease at 5 stays.
      leases.fenced([0], [4]);
      assert.deepEqual(leases.ownedPartitions(), [0]);
      assert.deepEqual(lost, []);
      leases.fenced([0], [5]);
      assert.deepEqual(leases.ownedPartitions(), []);
      assert.deepEqual(lost, [[0]]);
    });
  });
});
