import type { DeviceRow, StateRow, TokenRow } from "./store";

/**
 * Cluster mode (CONTRACT §8): what the engine needs from the shared database and from the
 * broker that carries traffic between members. Only PostgreSQL/CockroachDB implement
 * `ClusterStore`; the MQTT link lives in `src/cluster`.
 */

/** One partition's lease row. Times are the database's clock, epoch ms. */
export interface LeaseRow {
  partition: number;
  /** The member holding it; null when released (or never claimed). */
  owner: string | null;
  /** Raised by one at every claim: the fencing token of this ownership. */
  epoch: number;
  /** The lease is the owner's until then; 0 when released. */
  expiresAt: number;
}

export interface MemberRow {
  id: string;
  /** When this member (re)joined, epoch ms (database clock). */
  since: number;
  /** Its last beat, epoch ms (database clock). */
  lastSeen: number;
}

/** A lease the caller believes it holds. */
export interface HeldLease {
  partition: number;
  epoch: number;
}

/** One beat: the member's row refreshed, its held leases renewed, and the cluster as it is now. */
export interface BeatResult {
  /** The database's clock at the beat, epoch ms. */
  now: number;
  members: MemberRow[];
  leases: LeaseRow[];
  /** The partitions of `held` renewed (still this member's, at the same epoch). */
  renewed: number[];
}

/** A device's presence as stored: its status, lastSeen and the fingerprint of the last message applied (0: none). */
export interface StoredPresence {
  id: string;
  status: string;
  lastSeen: number;
  lastMessage: number;
}

/** Rows changed since a time (database clock), for members to follow devices owned elsewhere. */
export interface FleetChanges {
  /** The database's clock when read: pass it (less a margin) as `since` next time. */
  now: number;
  /** Whole rows of devices new to the caller or edited since (their `updatedAt` differs from what it has). */
  devices: DeviceRow[];
  /** Status and lastSeen of the other changed devices (the caller has the rest). */
  presence: StoredPresence[];
  /** Whole rows of states newer (by `rev`) than what the caller has. */
  states: StateRow[];
  tokens: TokenRow[];
  /** Ids of devices removed since then. */
  removed: string[];
}

/** What a follower already holds of a device: its record's `updatedAt`, its state's `rev`. */
export interface KnownRows {
  deviceUpdatedAt(id: string): number | undefined;
  stateRev(id: string): number | undefined;
}

/**
 * Fencing (Kleppmann's fencing tokens): every write a store makes for a device names the lease
 * it is made under, and the database refuses it in the same transaction when that lease is no
 * longer this member's at that epoch.
 */
export interface Fence {
  readonly member: string;
  /**
   * A fenced transaction whose session then sits idle this long is ended by the database: a
   * member frozen in the middle of a write (SIGSTOP, a long pause) must not keep its lease rows
   * locked, or its successor could never take them over.
   */
  readonly holdMs?: number;
  /** The lease a write for this device is made under; null when this member does not own the device. */
  leaseOf(deviceId: string): HeldLease | null;
}

/**
 * Thrown by a fenced store write: nothing of it was written. `partitions`: the leases found stale
 * (another member's now, or at a higher epoch); `deviceIds`: every device of the write whose lease
 * is stale or which this member does not own (`leaseOf` null). The rest may be written again.
 */
export interface FencedFailure extends Error {
  readonly fenced: true;
  readonly partitions: number[];
  readonly deviceIds: string[];
  /** The epoch each of `partitions` was checked under, in the same order (-1: two in one write), where known. */
  readonly epochs?: number[];
}

/** What `clusterClaim` rejects with when the lease row is locked (by its owner's write in flight). */
export interface ClaimLockedFailure extends Error {
  readonly locked: true;
  /** The owner's transactions the store found holding the row too long and ended (`owner` null: none), or why it could not. */
  readonly stuck: { owner: string | null; ended: number; error: unknown };
}

export function isClaimLocked(err: unknown): err is ClaimLockedFailure {
  return typeof err === "object" && err !== null && (err as { locked?: unknown }).locked === true;
}

export function isFenced(err: unknown): err is FencedFailure {
  return typeof err === "object" && err !== null && (err as { fenced?: unknown }).fenced === true;
}

export interface ClusterStore {
  /**
   * Creates the cluster tables' rows on first use: the partition count and one lease row per
   * partition. Refuses (rejects with an Error whose message is one line naming
   * TETHRAL_PARTITIONS) a count that differs from the one the database already has. Upserts the
   * member's row with `since` = now.
   */
  clusterJoin(member: string, partitions: number): Promise<{ now: number }>;
  /**
   * One transaction: the member's `lastSeen` = now; each `held` lease still this member's at that
   * epoch gets `expiresAt` = now + leaseMs; then every member row and lease row.
   */
  clusterBeat(member: string, leaseMs: number, held: HeldLease[]): Promise<BeatResult>;
  /**
   * Claims a partition whose lease is free or expired (database clock): owner = member,
   * epoch + 1, expiresAt = now + leaseMs. Null when someone else holds it. Rejects with a
   * `ClaimLockedFailure` when the lease row stays locked by its owner's write in flight; the store
   * then ends that owner's transactions that have held it for half a lease after the lease ran out
   * (a member stuck in the middle of a statement), so a later claim gets it.
   */
  clusterClaim(member: string, partition: number, leaseMs: number): Promise<LeaseRow | null>;
  /** Releases leases still this member's at those epochs (owner null, expiresAt 0; the epoch stays). */
  clusterRelease(member: string, leases: HeldLease[]): Promise<void>;
  /** Removes the member's row (a clean stop, after its leases are released). */
  clusterLeave(member: string): Promise<void>;
  /** Members whose `lastSeen` is older than `olderThanMs` (database clock) are removed. */
  clusterForget(olderThanMs: number): Promise<void>;
  /** Sets (or clears) the fence every device write of this store is checked against. */
  setFence(fence: Fence | null): void;
  /**
   * Device, state and token rows changed at or after `since`, and devices removed since then.
   * With `known`, what the caller already has is read as a few small columns only (a follower
   * re-reads a margin of changes at every round, and most of it it has).
   */
  changedSince(since: number, known?: KnownRows): Promise<FleetChanges>;
  /**
   * The stored presence of these devices (status, lastSeen and the last message's fingerprint),
   * read now: what a member that has just claimed their partitions goes on from. Missing ids are
   * left out.
   */
  presenceOf(ids: string[]): Promise<StoredPresence[]>;
  /** The partition count the database was first used with; null before any member joined. */
  clusterPartitions(): Promise<number | null>;
}

export function isClusterStore(store: unknown): store is ClusterStore {
  return typeof store === "object" && store !== null && typeof (store as ClusterStore).clusterBeat === "function";
}

/** A device message that came to a member by a connection it holds, carried to every member. */
export interface ForwardedMessage {
  deviceId: string;
  protocol: string;
  kind: string;
  /** The payload as received: text, or bytes (base64 on the wire). */
  payload: string | Uint8Array | null;
  token?: string;
  authenticated?: boolean;
  retained?: boolean;
  /** The member holding the device's connection: where its commands go. */
  via: string;
  /** When the member took it (its clock, epoch ms). */
  at: number;
}

/** The detail of a `ClusterLink.call` that got no answer in time (the member may be dead). */
export const NO_ANSWER = { field: "cluster", message: "no answer" } as const;

export function isNoAnswer(err: unknown): boolean {
  const details = (err as { code?: unknown; details?: unknown } | null)?.details;
  return (err as { code?: unknown }).code === "UNAVAILABLE" && Array.isArray(details) && details.some((d) => d?.field === NO_ANSWER.field && d?.message === NO_ANSWER.message);
}

/** Requests between members (see `ClusterLink.call`). */
export type ClusterHandler = (method: string, args: unknown) => Promise<unknown>;

/**
 * Traffic between members over the broker (MQTT 5 request/response with correlation data).
 * `call` rejects with an Error carrying `code` (a TethralError code) when the handler threw.
 */
export interface ClusterLink {
  start(member: string, handlers: { call: ClusterHandler; message(message: ForwardedMessage): void }): Promise<void>;
  /** Runs `method` on `member` and resolves with its answer; rejects after `timeoutMs`. */
  call(member: string, method: string, args: unknown, timeoutMs: number): Promise<unknown>;
  /** Carries a device message to every member (QoS 1, in order per device). */
  forward(message: ForwardedMessage): void;
  /** Whether the link is connected to the broker now. */
  readonly connected: boolean;
  stop(): Promise<void>;
}

/**
 * How long a transaction that locks lease rows (a fenced write, a beat, a release) may sit idle
 * before the database ends it: half a lease, at least a second. A member frozen inside one then
 * does not keep its lease rows locked.
 */
export function leaseHoldMs(leaseMs: number): number {
  return Math.max(1_000, Math.round(leaseMs / 2));
}
