import type { Clock, TimerHandle } from "../clock";
import { errorMessage } from "../errors";
import { type BeatResult, type ClaimLockedFailure, type ClusterStore, type HeldLease, isClaimLocked, type LeaseRow, type MemberRow } from "../ports/cluster";
import { assignPartitions } from "./partition";

/** What the member does when a partition comes or goes (see `ClusterMember`). */
export interface LeaseHooks {
  /** The leases are ours (claimed in one beat): load the partitions, then resolve; their devices are ours after. */
  acquire(leases: HeldLease[]): Promise<void>;
  /** Partitions were taken: the other members should look now (their views, and their own claims). */
  claimed?(): void;
  /** Called in the same turn the partition became ours (after `acquire`): nothing of it ran here yet. */
  owned(partition: number): void;
  /**
   * This member held the partition before and claims it again, and another member held it in
   * between (the epoch moved by more than this claim): what still waits to be written for it here
   * is older than what that member stored. Called before the new lease is the partition's, so
   * nothing of it is written under that lease.
   */
  superseded?(partition: number): void;
  /** A clean hand-over: stop taking the partition's messages and write what waits, then resolve. */
  handOver(partitions: number[]): Promise<void>;
  /** The lease was lost (expired, taken, or fenced): drop the partition now, write nothing more for it. */
  lost(partitions: number[]): void;
  /**
   * A renewal came back after the lease had seemed to run out, and kept these partitions: the
   * member did not take their messages meanwhile (see `owns`), and nobody else could. Called in
   * the same turn the lease is valid again, before any later message is taken.
   */
  resumed(partitions: number[]): void;
  warn(message: string): void;
}

type Phase = "loading" | "owned" | "leaving";

/** A beat for a lease running out comes this long after it should have, so the database sees it run out. */
const EXPIRY_SLACK_MS = 30;

export interface LeaseStatistics {
  owned: number;
  takeovers: number;
  handovers: number;
  lost: number;
  beats: number;
  beatFailures: number;
  /** Seconds since the last beat that renewed this member's leases. */
  renewalLagSeconds: number;
}

/**
 * Partition leases (CONTRACT §8; the design of DESIGN.md "Cluster"): a beat every quarter lease
 * renews this member's leases with one conditional UPDATE, reads the members and leases, and moves
 * towards the assignment every member computes from the live members (rendezvous hashing): a
 * partition that should be another live member's is handed over at once; one that should be ours
 * is claimed when it is free or its lease has run out (database clock). Leases are believed only
 * until `leaseMs` after the start of the beat that last renewed them (local monotonic clock), so a
 * member frozen past its lease stops taking messages before it can even run a beat; its writes are
 * refused by the database (fencing) anyway.
 */
export class Leases {
  private readonly held = new Map<number, { epoch: number; phase: Phase }>();
  private view: { leases: LeaseRow[]; members: MemberRow[]; now: number; at: number } | null = null;
  /** performance.now() until which the held leases are ours. */
  private validUntil = 0;
  private lastRenewal = 0;
  private timer: TimerHandle | null = null;
  private running = false;
  /** A failure to end a stuck member's transactions was said (once: it would repeat every beat). */
  private stuckWarned = false;
  private beating: Promise<void> | null = null;
  private readonly stats = { takeovers: 0, handovers: 0, lost: 0, beats: 0, beatFailures: 0 };
  /** performance.now() when another member's lease or membership runs out next (see `nextExpiry`). */
  private nextExpiryAt = Infinity;
  private readonly owners: (string | null)[];
  /** The epoch at which this member last held each partition it let go or lost (see `superseded`). */
  private readonly lastEpochs = new Map<number, number>();

  constructor(
    private readonly store: ClusterStore,
    private readonly clock: Clock,
    readonly member: string,
    readonly partitions: number,
    readonly leaseMs: number,
    private readonly hooks: LeaseHooks,
  ) {
    this.owners = new Array<string | null>(partitions).fill(null);
  }

  get beatMs(): number {
    return Math.max(100, Math.floor(this.leaseMs / 4));
  }

  /** Joins (refusing another partition count) and runs the first beat. */
  async start(): Promise<void> {
    await this.store.clusterJoin(this.member, this.partitions);
    this.running = true;
    await this.beat();
    this.arm();
  }

  /** Hands every partition over and leaves the member table. */
  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    await this.beating;
    const mine = [...this.held.keys()];
    if (mine.length > 0) await this.release(mine);
    try {
      await this.store.clusterLeave(this.member);
    } catch (err) {
      this.hooks.warn(`cluster: could not leave the member table: ${errorMessage(err)}`);
    }
  }

  /** Whether this member takes messages for the partition now. */
  owns(partition: number): boolean {
    const h = this.held.get(partition);
    return h !== undefined && h.phase === "owned" && performance.now() < this.validUntil;
  }

  /** The lease a write for the partition goes under (loading, owned, or being handed over), for the fence. */
  leaseOf(partition: number): HeldLease | null {
    const h = this.held.get(partition);
    return h ? { partition, epoch: h.epoch } : null;
  }

  /** The member that holds the partition by the last beat (ours included); null while none does. */
  ownerOf(partition: number): string | null {
    if (this.held.get(partition)?.phase === "owned") return this.member;
    return this.owners[partition] ?? null;
  }

  /** The live members and the partitions each holds, by the last beat. */
  snapshot(): { members: MemberRow[]; owners: (string | null)[] } {
    const owners = this.owners.slice();
    for (const [p, h] of this.held) if (h.phase === "owned") owners[p] = this.member;
    return { members: this.view ? this.liveMembers(this.view) : [], owners };
  }

  ownedPartitions(): number[] {
    return [...this.held].filter(([, h]) => h.phase === "owned").map(([p]) => p).sort((a, b) => a - b);
  }

  statistics(): LeaseStatistics {
    return {
      owned: this.ownedPartitions().length,
      ...this.stats,
      renewalLagSeconds: this.lastRenewal === 0 ? 0 : (performance.now() - this.lastRenewal) / 1000,
    };
  }

  /**
   * A write was fenced: these leases are gone, whatever the last beat said; those whose epoch the
   * write was checked under is given (`epochs`, in the same order) only while this member still
   * holds them at that epoch. A write checked before this member claimed a partition again is
   * refused for the old epoch: the new lease stays.
   */
  fenced(partitions: number[], epochs?: readonly number[]): void {
    const gone = partitions.filter((p, i) => {
      const held = this.held.get(p);
      return held !== undefined && (epochs?.[i] === undefined || held.epoch === epochs[i]);
    });
    if (gone.length === 0) return;
    for (const p of gone) this.letGo(p);
    this.stats.lost += gone.length;
    this.hooks.lost(gone);
    this.hooks.warn(`cluster: partitions ${gone.join(", ")} were taken over by another member (a write was refused)`);
  }

  /** Runs a beat now (and waits for it); used after a member joins or leaves, and by tests. */
  async beatNow(): Promise<void> {
    await this.beat();
  }

  private arm(): void {
    if (!this.running) return;
    // The next beat comes when another member's lease (or membership) runs out, if that is sooner
    // than the usual quarter lease: a dead member's partitions are claimed as soon as they may be.
    const now = performance.now();
    const untilExpiry = this.nextExpiryAt - now;
    // And while partitions are held, early enough to be answered before our own renewal runs out:
    // after an answer that came late, a full interval would end past the renewal and give
    // everything up. With less than a beat interval left, soon: within a fortieth of the lease
    // and within half of what is left.
    const left = this.validUntil - now;
    const beforeOwnEnds = this.held.size === 0 ? Infinity : Math.max(left - this.beatMs, Math.min(this.beatMs / 10, left / 2));
    const delay = Math.max(10, Math.min(this.beatMs, untilExpiry, beforeOwnEnds));
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.beat().finally(() => this.arm());
    }, delay);
  }

  private beat(): Promise<void> {
    if (this.beating) return this.beating;
    this.beating = this.beatOnce().finally(() => {
      this.beating = null;
    });
    return this.beating;
  }

  private async beatOnce(): Promise<void> {
    const started = performance.now();
    // A member frozen past its lease drops everything before it asks the database.
    if (this.held.size > 0 && started >= this.validUntil && this.lastRenewal !== 0) this.loseAll("its leases ran out before they could be renewed");
    const held = [...this.held].map(([partition, h]) => ({ partition, epoch: h.epoch }));
    let result: BeatResult;
    try {
      result = await this.store.clusterBeat(this.member, this.leaseMs, held);
    } catch (err) {
      this.stats.beatFailures++;
      if (this.held.size > 0 && performance.now() >= this.validUntil) this.loseAll(`the database did not answer: ${errorMessage(err)}`);
      return;
    }
    this.stats.beats++;
    const renewed = new Set(result.renewed);
    const gone = held.filter((h) => !renewed.has(h.partition) && this.held.get(h.partition)?.epoch === h.epoch).map((h) => h.partition);
    if (gone.length > 0) {
      for (const p of gone) this.letGo(p);
      this.stats.lost += gone.length;
      this.hooks.lost(gone);
      this.hooks.warn(`cluster: lost partitions ${gone.join(", ")} (another member holds them now)`);
    }
    // Answered after the last renewal's validity ran out: for a moment the partitions were not
    // taken as ours, although the database kept them ours.
    const lapsed = performance.now() >= this.validUntil;
    this.validUntil = started + this.leaseMs;
    this.lastRenewal = started;
    this.view = { leases: result.leases, members: result.members, now: result.now, at: started };
    this.nextExpiryAt = this.nextExpiry(result, started);
    for (const l of result.leases) if (l.partition < this.partitions) this.owners[l.partition] = l.owner !== null && l.expiresAt > result.now ? l.owner : null;
    if (!this.running) return;
    // Only while the new renewal is still running: one that has run out too (a beat longer than a
    // lease, a frozen member) leaves what was held to whoever takes the partitions next.
    if (lapsed && performance.now() < this.validUntil) {
      const kept = held.filter((h) => renewed.has(h.partition) && isOwnedAt(this.held.get(h.partition), h.epoch)).map((h) => h.partition);
      if (kept.length > 0) this.hooks.resumed(kept);
    }
    await this.rebalance(result);
  }

  /**
   * When, on this member's monotonic clock, the soonest lease or membership of another member runs
   * out (a little after, for the beat's own latency). A live member renews long before: only a
   * dead one's comes before the next quarter-lease beat.
   */
  private nextExpiry(view: BeatResult, started: number): number {
    let soonest = Infinity;
    for (const l of view.leases) if (l.owner !== null && l.owner !== this.member && l.expiresAt > view.now) soonest = Math.min(soonest, l.expiresAt);
    for (const m of view.members) if (m.id !== this.member && m.lastSeen + this.leaseMs > view.now) soonest = Math.min(soonest, m.lastSeen + this.leaseMs);
    return soonest === Infinity ? Infinity : started + (soonest - view.now) + EXPIRY_SLACK_MS;
  }

  private liveMembers(view: { members: MemberRow[]; now: number }): MemberRow[] {
    return view.members.filter((m) => m.lastSeen > view.now - this.leaseMs || m.id === this.member);
  }

  private async rebalance(view: BeatResult): Promise<void> {
    const live = this.liveMembers(view).map((m) => m.id);
    const target = assignPartitions(this.partitions, live);
    const leases = new Map(view.leases.map((l) => [l.partition, l]));
    // Ours, but another live member's by the assignment: handed over at once.
    const give = [...this.held].filter(([p, h]) => h.phase === "owned" && target[p] !== this.member).map(([p]) => p);
    if (give.length > 0) await this.release(give);
    // Ours by the assignment, and free or run out: claimed, one conditional UPDATE each, then
    // loaded together (one read-back of what their previous owners wrote).
    const claimed: HeldLease[] = [];
    for (let p = 0; p < this.partitions; p++) {
      if (!this.running || target[p] !== this.member || this.held.has(p)) continue;
      const l = leases.get(p);
      if (l && l.owner !== null && l.owner !== this.member && l.expiresAt > view.now) continue;
      const got = await this.claim(p);
      // A lease row locked by its (frozen) owner's write: the rest wait for the next beat, so
      // this member's own renewals are not held up behind the locks.
      if (got === "locked") break;
      if (got) claimed.push(got);
    }
    if (claimed.length > 0) await this.load(claimed);
  }

  private async claim(partition: number): Promise<"locked" | HeldLease | null> {
    let row: LeaseRow | null;
    try {
      row = await this.store.clusterClaim(this.member, partition, this.leaseMs);
    } catch (err) {
      if (isClaimLocked(err)) {
        this.stuckHolders(partition, err.stuck);
        return "locked";
      }
      this.hooks.warn(`cluster: could not claim partition ${partition}: ${errorMessage(err)}`);
      return null;
    }
    if (!row) return null;
    const before = this.lastEpochs.get(partition);
    this.lastEpochs.delete(partition);
    if (before !== undefined && row.epoch !== before + 1) this.hooks.superseded?.(partition);
    this.held.set(partition, { epoch: row.epoch, phase: "loading" });
    return { partition, epoch: row.epoch };
  }

  /** Says what a locked claim ended of its stuck previous owner; a failure to end, once. */
  private stuckHolders(partition: number, stuck: ClaimLockedFailure["stuck"]): void {
    if (stuck.ended > 0) {
      this.hooks.warn(
        `cluster: partition ${partition}'s lease row was still locked by ${stuck.ended} transaction(s) of member ${stuck.owner}, held past its lease (a member stuck in the middle of a write): ended them`,
      );
    } else if (stuck.error !== null && !this.stuckWarned) {
      this.stuckWarned = true;
      this.hooks.warn(`cluster: could not end a stuck member's transactions holding a lease row (they hold it until its connection closes): ${errorMessage(stuck.error)}`);
    }
  }

  private async load(claimed: HeldLease[]): Promise<void> {
    try {
      await this.hooks.acquire(claimed);
    } catch (err) {
      // Half loaded is worse than not at all: given back for another member (or the next beat).
      const ps = claimed.map((c) => c.partition);
      this.hooks.warn(`cluster: could not take over partitions ${ps.join(", ")}: ${errorMessage(err)}`);
      const still = claimed.filter((c) => this.held.get(c.partition)?.epoch === c.epoch);
      for (const c of still) this.letGo(c.partition);
      if (still.length > 0) this.hooks.lost(still.map((c) => c.partition));
      await this.store.clusterRelease(this.member, still).catch(() => undefined);
      return;
    }
    for (const c of claimed) {
      const h = this.held.get(c.partition);
      if (h?.epoch !== c.epoch) continue;
      h.phase = "owned";
      this.stats.takeovers++;
      this.hooks.owned(c.partition);
    }
    this.hooks.claimed?.();
  }

  private async release(partitions: number[]): Promise<void> {
    const leases: HeldLease[] = [];
    for (const p of partitions) {
      const h = this.held.get(p);
      if (!h) continue;
      h.phase = "leaving";
      leases.push({ partition: p, epoch: h.epoch });
    }
    if (leases.length === 0) return;
    try {
      await this.hooks.handOver(leases.map((l) => l.partition));
    } catch (err) {
      this.hooks.warn(`cluster: writing partitions ${partitions.join(", ")} before handing them over failed: ${errorMessage(err)}`);
    }
    for (const l of leases) this.letGo(l.partition);
    this.stats.handovers += leases.length;
    try {
      await this.store.clusterRelease(this.member, leases);
    } catch (err) {
      // They run out on their own: the next owner waits for the lease instead.
      this.hooks.warn(`cluster: could not release partitions ${partitions.join(", ")}: ${errorMessage(err)}`);
    }
  }

  /** The partition is no longer held here; its epoch is kept for the next claim of it (see `superseded`). */
  private letGo(partition: number): void {
    const h = this.held.get(partition);
    if (h) this.lastEpochs.set(partition, h.epoch);
    this.held.delete(partition);
  }

  private loseAll(why: string): void {
    const gone = [...this.held.keys()];
    for (const p of gone) this.letGo(p);
    this.stats.lost += gone.length;
    this.hooks.lost(gone);
    this.hooks.warn(`cluster: dropped partitions ${gone.join(", ")}: ${why}`);
  }
}

/** Whether a held lease is owned, at `epoch`. */
function isOwnedAt(h: { epoch: number; phase: Phase } | undefined, epoch: number): boolean {
  return h !== undefined && h.phase === "owned" && h.epoch === epoch;
}
