import type pg from "pg";
import { TethralError } from "../core/errors";
import { type BeatResult, type ClaimLockedFailure, type Fence, type FleetChanges, type HeldLease, type KnownRows, type LeaseRow, type StoredPresence, leaseHoldMs } from "../core/ports/cluster";
import { CLUSTER_CHANGE_INDEXES } from "./migrations";
import {
  assertFence,
  BEAT_MEMBER_HOLDING,
  CLAIM_LEASE,
  DB_NOW,
  END_STUCK_HOLDERS,
  fenceCheck,
  FORGET,
  INSERT_LEASES,
  INSERT_META,
  JOIN_MEMBER,
  leaseArrays,
  LEAVE,
  LOCK_LEASES,
  RELEASE_LEASES,
  RENEW_LEASES,
  SELECT_LEASES,
  SELECT_MEMBERS,
  SELECT_PARTITIONS,
  toLeaseRow,
  toMemberRow,
  type FenceCheck,
} from "./postgres-cluster";
import { sqlState } from "./postgres-connection";
import { DEVICE_ROW, STATE_ROW, TOKEN_ROW, text, toDeviceRow, toStateRow, toTokenRow } from "./postgres-sql";

/**
 * The ClusterStore side of PostgresStore (CONTRACT §8; times are the database's clock): the
 * store's methods call these with its own statements and transactions, retried as any other.
 */
export interface ClusterDb {
  /** One statement, retried and with the driver's errors coded (PostgresStore's `query`). */
  query(sql: string, params?: unknown[]): Promise<pg.QueryResult<Record<string, unknown>>>;
  /** A transaction, retried on a serialization failure (PostgresStore's `tx`). */
  tx<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T>;
  /** One statement on the pool as it is: a failure keeps the driver's SQLSTATE. */
  direct(sql: string): Promise<unknown>;
}

export async function clusterJoin(db: ClusterDb, member: string, partitions: number): Promise<{ now: number }> {
  if (!Number.isInteger(partitions) || partitions < 1) {
    throw new TethralError("INVALID", `TETHRAL_PARTITIONS must be a whole number above 0, not ${partitions}`);
  }
  for (const sql of CLUSTER_CHANGE_INDEXES) {
    try {
      await db.direct(sql);
    } catch (err) {
      // Two members making the same index at once: the other one did (42P07, or 23505 on pg_class).
      if (sqlState(err) !== "42P07" && sqlState(err) !== "23505") throw err;
    }
  }
  return db.tx(async (c) => {
    // Two members joining a fresh database at once: one row is inserted, both read it.
    await c.query(INSERT_META, [partitions]);
    const found = Number((await c.query<{ partitions: number }>(SELECT_PARTITIONS)).rows[0]!.partitions);
    if (found !== partitions) {
      throw new TethralError(
        "INVALID",
        `the cluster's database has ${found} partitions, and TETHRAL_PARTITIONS is ${partitions}: use ${found}, or a new database`,
      );
    }
    await c.query(INSERT_LEASES, [partitions]);
    const { rows } = await c.query<{ now: number }>(JOIN_MEMBER, [text(member, "member")]);
    return { now: Number(rows[0]!.now) };
  });
}

export async function clusterBeat(db: ClusterDb, member: string, leaseMs: number, held: HeldLease[]): Promise<BeatResult> {
  return db.tx(async (c) => {
    // A member frozen inside its beat must not keep its lease rows locked (FOR UPDATE, below):
    // the database ends the transaction once it has sat idle for half a lease, in this round trip.
    const now = Number((await c.query<{ now: number }>(BEAT_MEMBER_HOLDING, [text(member, "member"), String(leaseHoldMs(leaseMs))])).rows[0]!.now);
    let renewed: number[] = [];
    if (held.length > 0) {
      await c.query(LOCK_LEASES, [held.map((l) => l.partition)]);
      const { rows } = await c.query<{ part: number }>(RENEW_LEASES, [member, ...leaseArrays(held), now + Math.round(leaseMs)]);
      renewed = rows.map((r) => Number(r.part)).sort((a, b) => a - b);
    }
    const members = (await c.query(SELECT_MEMBERS)).rows.map(toMemberRow);
    const leases = (await c.query(SELECT_LEASES)).rows.map(toLeaseRow);
    return { now, members, leases, renewed };
  });
}

export async function clusterClaim(db: ClusterDb, member: string, partition: number, leaseMs: number): Promise<LeaseRow | null> {
  try {
    return await db.tx(async (c) => {
      // The lease row may be locked by its owner's write in flight; a claim does not wait long
      // for it (the beat that claims also renews this member's own leases). A frozen owner's
      // lock goes when the database ends its idle transaction (Fence.holdMs).
      await c.query(`SET LOCAL lock_timeout = ${Math.max(50, Math.min(250, Math.round(leaseMs / 8)))}`);
      const { rows } = await c.query(CLAIM_LEASE, [text(member, "member"), partition, Math.round(leaseMs)]);
      return rows.length > 0 ? toLeaseRow(rows[0]!) : null;
    });
  } catch (err) {
    if (sqlState(err) !== "55P03" && sqlState((err as { cause?: unknown })?.cause) !== "55P03") throw err;
    throw new ClaimLocked(partition, await endStuckHolders(db, partition, leaseHoldMs(leaseMs)));
  }
}

/**
 * END_STUCK_HOLDERS for a lease run out more than `graceMs` ago: what was ended, or why nothing
 * could be (a database without the function, a role not allowed to end another's connection).
 */
async function endStuckHolders(db: ClusterDb, partition: number, graceMs: number): Promise<StuckHolders> {
  try {
    const { rows } = await db.query(END_STUCK_HOLDERS, [partition, Math.round(graceMs)]);
    const ended = rows.filter((r) => r.ended === true).length;
    const owner = ended > 0 ? (rows[0]!.owner as string) : null;
    // The owner's sessions are there, but this role is not shown what they are doing: it cannot tell the stuck ones.
    const hidden = ended === 0 && rows.some((r) => r.hidden === true);
    const error = hidden ? new Error(`the database does not show this member's role what member ${String(rows[0]!.owner)}'s connections are doing (it needs pg_read_all_stats, or all members one role)`) : null;
    return { owner, ended, error };
  } catch (err) {
    return { owner: null, ended: 0, error: err };
  }
}

interface StuckHolders {
  /** The lease's owner whose transactions were ended; null when none were. */
  owner: string | null;
  ended: number;
  error: unknown;
}

/**
 * A claim that found the lease row locked (by its owner's write): tried again at a later beat.
 * `stuck`: the owner's transactions that had held it for too long, ended (see END_STUCK_HOLDERS).
 */
export class ClaimLocked extends Error implements ClaimLockedFailure {
  readonly locked = true as const;
  constructor(
    partition: number,
    readonly stuck: StuckHolders = { owner: null, ended: 0, error: null },
  ) {
    super(`the lease of partition ${partition} is locked by a write in flight`);
  }
}

export async function clusterRelease(db: ClusterDb, member: string, leases: HeldLease[], holdMs: number): Promise<void> {
  if (leases.length === 0) return;
  await db.tx(async (c) => {
    // As in a beat: a member frozen here does not keep the rows locked.
    await c.query(`SET LOCAL idle_in_transaction_session_timeout = ${Math.round(holdMs)}`);
    await c.query(LOCK_LEASES, [leases.map((l) => l.partition)]);
    await c.query(RELEASE_LEASES, [member, ...leaseArrays(leases)]);
  });
}

export async function clusterLeave(db: ClusterDb, member: string): Promise<void> {
  await db.query(LEAVE, [member]);
}

export async function clusterForget(db: ClusterDb, olderThanMs: number): Promise<void> {
  await db.query(FORGET, [Math.round(olderThanMs)]);
}

export async function clusterPartitions(db: ClusterDb): Promise<number | null> {
  const { rows } = await db.query(SELECT_PARTITIONS);
  return rows.length > 0 ? Number(rows[0]!.partitions) : null;
}

/**
 * The clock is read first: a row written after it is seen now or, its time being later, next
 * time. Rows go by when they were stored (the database's clock, at the statement: the caller's
 * margin covers a transaction's commit after it), not by their own times, which are their
 * writers' clocks.
 */
export async function changedSince(db: ClusterDb, since: number, known?: KnownRows): Promise<FleetChanges> {
  const light = await db.query(
    `SELECT ${DB_NOW} AS now, 'n' AS kind, '' AS id, NULL AS status, NULL::bigint AS last_seen, NULL::bigint AS stamp, NULL::bigint AS last_message
     UNION ALL SELECT NULL, 'd', id, status, last_seen, updated_at, last_message FROM devices WHERE stored_at >= $1
     UNION ALL SELECT NULL, 's', device_id, NULL, NULL, rev, NULL FROM states WHERE stored_at >= $1
     UNION ALL SELECT NULL, 'r', device_id, NULL, NULL, NULL, NULL FROM removed_devices WHERE removed_at >= $1`,
    [since],
  );
  let now = 0;
  const wholeDevices: string[] = [];
  const wholeStates: string[] = [];
  const presence: FleetChanges["presence"] = [];
  const removed: string[] = [];
  for (const r of light.rows) {
    const id = r.id as string;
    if (r.kind === "n") now = Number(r.now);
    if (r.kind === "d") {
      if (known && known.deviceUpdatedAt(id) === Number(r.stamp)) presence.push(toPresence(r));
      else wholeDevices.push(id);
    } else if (r.kind === "s") {
      const rev = known?.stateRev(id);
      if (rev === undefined || rev < Number(r.stamp)) wholeStates.push(id);
    } else if (r.kind === "r") removed.push(id);
  }
  const [devices, states, tokens] = await Promise.all([
    wholeDevices.length > 0 ? db.query(`SELECT ${DEVICE_ROW} FROM devices WHERE id = ANY($1)`, [wholeDevices]) : null,
    wholeStates.length > 0 ? db.query(`SELECT ${STATE_ROW} FROM states WHERE device_id = ANY($1)`, [wholeStates]) : null,
    db.query(`SELECT ${TOKEN_ROW} FROM device_tokens WHERE stored_at >= $1`, [since]),
  ]);
  return {
    now,
    devices: devices?.rows.map(toDeviceRow) ?? [],
    presence,
    states: states?.rows.map(toStateRow) ?? [],
    tokens: tokens.rows.map(toTokenRow),
    removed,
  };
}

export async function presenceOf(db: ClusterDb, ids: string[]): Promise<StoredPresence[]> {
  if (ids.length === 0) return [];
  const { rows } = await db.query("SELECT id, status, last_seen, last_message FROM devices WHERE id = ANY($1)", [ids]);
  return rows.map(toPresence);
}

function toPresence(r: Record<string, unknown>): StoredPresence {
  return { id: r.id as string, status: r.status as string, lastSeen: Number(r.last_seen), lastMessage: Number(r.last_message ?? 0) };
}

/** The fence check of a write of these devices; null when no fence is set (no extra statement then). */
export function checkOf(fence: Fence | null, deviceIds: Iterable<string> | (() => Iterable<string>)): FenceCheck | null {
  if (!fence) return null;
  return fenceCheck(fence, typeof deviceIds === "function" ? deviceIds() : deviceIds);
}

/** One statement; with a fence, in a transaction after the fence check. */
export async function fencedStatement(db: ClusterDb, fence: Fence | null, deviceIds: string[], sql: string, params: unknown[]): Promise<void> {
  const check = checkOf(fence, deviceIds);
  if (!check) {
    await db.query(sql, params);
    return;
  }
  await db.tx(async (c) => {
    await assertFence(c, check);
    await c.query(sql, params);
  });
}
