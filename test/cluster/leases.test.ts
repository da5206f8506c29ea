import assert from "node:assert/strict";
import { ManualClock } from "../../src/core/clock";
import { Leases } from "../../src/core/cluster/leases";
import type { BeatResult, ClaimLockedFailure, ClusterStore } from "../../src/core/ports/cluster";

/** A store whose every claim finds the lease row locked, with `stuck` as what it ended. */
function lockedStore(stuck: () => ClaimLockedFailure["stuck"]): ClusterStore {
  const view = (): BeatResult => ({
    now: 1_000_000,
    members: [{ id: "me", since: 0, lastSeen: 1_000_000 }],
    leases: [{ partition: 0, owner: "old", epoch: 3, expiresAt: 1 }],
    renewed: [],
  });
  const partial: Partial<ClusterStore> = {
    clusterJoin: async () => ({ now: 1_000_000 }),
    clusterBeat: async () => view(),
    clusterClaim: async () => {
      throw Object.assign(new Error("the lease of partition 0 is locked by a write in flight"), { locked: true as const, stuck: stuck() });
    },
    clusterRelease: async () => undefined,
    clusterLeave: async () => undefined,
  };
  return partial as ClusterStore;
}

async function beats(stuck: () => ClaimLockedFailure["stuck"], count: number): Promise<string[]> {
  const warnings: string[] = [];
  const clock = new ManualClock();
  const leases = new Leases(lockedStore(stuck), clock, "me", 1, 1_000, {
    acquire: async () => undefined,
    owned: () => undefined,
    handOver: async () => undefined,
    lost: () => undefined,
    resumed: () => undefined,
    warn: (m) => warnings.push(m),
  });
  await leases.start();
  for (let i = 1; i < count; i++) {
    clock.advance(leases.beatMs);
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.equal(leases.ownedPartitions().length, 0);
  await leases.stop();
  return warnings;
}

describe("Leases: a claim that finds the lease row locked", function () {
  it("says when the store ended the stuck previous owner's transactions, at each beat it did", async function () {
    const warnings = await beats(() => ({ owner: "old", ended: 2, error: null }), 2);
    assert.equal(warnings.length, 2);
    assert.match(warnings[0]!, /^cluster: partition 0's lease row was still locked by 2 transaction\(s\) of member old, held past its lease .*: ended them$/);
  });

  it("says once that it could not end them (the next beats would say it again), and nothing while there is nothing to end", async function () {
    assert.deepEqual(await beats(() => ({ owner: null, ended: 0, error: null }), 3), []);
    const warnings = await beats(() => ({ owner: null, ended: 0, error: new Error("function pg_terminate_backend(int) does not exist") }), 3);
    assert.deepEqual(warnings, ["cluster: could not end a stuck member's transactions holding a lease row (they hold it until its connection closes): function pg_terminate_backend(int) does not exist"]);
  });
});

describe("Leases: claiming back a partition this member held before", function () {
  /** A store whose claims give partition 0 at `epochs[i]` the i-th time; each is lost again at the next beat (another member renews it). */
  function claimsAt(epochs: number[]): { store: ClusterStore; claims: () => number } {
    let claims = 0;
    const partial: Partial<ClusterStore> = {
      clusterJoin: async () => ({ now: 1_000_000 }),
      clusterBeat: async () => ({ now: 1_000_000, members: [{ id: "me", since: 0, lastSeen: 1_000_000 }], leases: [{ partition: 0, owner: null, epoch: 0, expiresAt: 0 }], renewed: [] }),
      clusterClaim: async () => {
        const epoch = epochs[claims++];
        return epoch === undefined ? null : { partition: 0, owner: "me", epoch, expiresAt: 1_000_000 + 1_000 };
      },
      clusterRelease: async () => undefined,
      clusterLeave: async () => undefined,
    };
    return { store: partial as ClusterStore, claims: () => claims };
  }

  async function superseded(epochs: number[]): Promise<number[]> {
    const calls: number[] = [];
    const { store, claims } = claimsAt(epochs);
    const clock = new ManualClock();
    const leases = new Leases(store, clock, "me", 1, 1_000, {
      acquire: async () => undefined,
      owned: () => undefined,
      handOver: async () => undefined,
      lost: () => undefined,
      resumed: () => undefined,
      superseded: () => calls.push(epochs[claims() - 1]!),
      warn: () => undefined,
    });
    await leases.start();
    while (claims() < epochs.length) {
      clock.advance(leases.beatMs);
      await new Promise((resolve) => setImmediate(resolve));
    }
    await leases.stop();
    return calls;
  }

  it("says so when another member held it in between (the epoch moved by more than one claim), before the lease is the partition's", async function () {
    // Claimed at 3; lost (not renewed); claimed again at 4 (nobody between); lost; claimed at 7 (someone between).
    assert.deepEqual(await superseded([3, 4, 7]), [7]);
  });
});

describe("Leases: a write refused by the fence", function () {
  it("lets the partition go only while it is still held at the epoch the write was checked under", async function () {
    const partial: Partial<ClusterStore> = {
      clusterJoin: async () => ({ now: 1_000_000 }),
      clusterBeat: async () => ({ now: 1_000_000, members: [{ id: "me", since: 0, lastSeen: 1_000_000 }], leases: [{ partition: 0, owner: null, epoch: 4, expiresAt: 0 }], renewed: [] }),
      clusterClaim: async () => ({ partition: 0, owner: "me", epoch: 5, expiresAt: 1_000_000 + 60_000 }),
      clusterRelease: async () => undefined,
      clusterLeave: async () => undefined,
    };
    const lost: number[][] = [];
    const leases = new Leases(partial as ClusterStore, new ManualClock(), "me", 1, 60_000, {
      acquire: async () => undefined,
      owned: () => undefined,
      handOver: async () => undefined,
      lost: (ps) => lost.push(ps),
      resumed: () => undefined,
      warn: () => undefined,
    });
    await leases.start();
    assert.deepEqual(leases.ownedPartitions(), [0]);
    // Checked under epoch 4, before this member claimed it again at 5: the lease at 5 stays.
    leases.fenced([0], [4]);
    assert.deepEqual(leases.ownedPartitions(), [0]);
    assert.deepEqual(lost, []);
    leases.fenced([0], [5]);
    assert.deepEqual(leases.ownedPartitions(), []);
    assert.deepEqual(lost, [[0]]);
    await leases.stop();
  });
});

