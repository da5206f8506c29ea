import { createHash } from "node:crypto";
import { TethralError } from "../core/errors";
import type { Fence, FencedFailure, HeldLease, LeaseRow, MemberRow } from "../core/ports/cluster";

/**
 * The SQL of cluster mode on PostgreSQL/CockroachDB (CONTRACT §8): leases claimed and renewed
 * with conditional UPDATEs, no LISTEN/NOTIFY, advisory locks or triggers. Every time is the
 * database's clock, so members whose clocks disagree still agree on who holds a lease.
 */

/** The database's clock, epoch ms. `clock_timestamp()`: the time of the statement, not of the transaction's start. */
export const DB_NOW = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

export const INSERT_META = `INSERT INTO cluster_meta (id, partitions, created_at) VALUES (1, $1, ${DB_NOW}) ON CONFLICT (id) DO NOTHING`;
export const SELECT_PARTITIONS = "SELECT partitions FROM cluster_meta WHERE id = 1";
export const INSERT_LEASES = `INSERT INTO cluster_leases (part, owner, epoch, expires_at)
  SELECT g, NULL, 0, 0 FROM generate_series(0, $1::int - 1) AS g ON CONFLICT (part) DO NOTHING`;

/** The member's row with `since` = `last_seen` = now: a member that was forgotten while paused comes back. */
export const JOIN_MEMBER = `INSERT INTO cluster_members (id, since, last_seen) VALUES ($1, ${DB_NOW}, ${DB_NOW})
  ON CONFLICT (id) DO UPDATE SET since = excluded.since, last_seen = excluded.last_seen RETURNING last_seen AS now`;
export const BEAT_MEMBER = `INSERT INTO cluster_members (id, since, last_seen) VALUES ($1, ${DB_NOW}, ${DB_NOW})
  ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen RETURNING last_seen AS now`;
/** BEAT_MEMBER, setting for the transaction how long it may sit idle ($2 ms), in the same round trip. */
export const BEAT_MEMBER_HOLDING = `${BEAT_MEMBER}, set_config('idle_in_transaction_session_timeout', $2, true) AS hold`;

/**
 * Lease rows locked in partition order before an UPDATE of several (renewal, release): fenced
 * writes share-lock theirs in that order too, so the two never wait for each other in a cycle.
 */
export const LOCK_LEASES = "SELECT part FROM cluster_leases WHERE part = ANY($1::int[]) ORDER BY part FOR UPDATE";

/** $1 member, $2 partitions, $3 epochs, $4 the new expiry. Only leases still the member's at those epochs. */
export const RENEW_LEASES = `UPDATE cluster_leases AS l SET expires_at = $4
  FROM unnest($2::int[], $3::bigint[]) AS h(p, e) WHERE l.part = h.p AND l.epoch = h.e AND l.owner = $1
  RETURNING l.part`;

/** $1 member, $2 partition, $3 lease ms: one conditional UPDATE, so two claimants cannot both win. */
export const CLAIM_LEASE = `UPDATE cluster_leases AS l SET owner = $1, epoch = l.epoch + 1, expires_at = t.now + $3
  FROM (SELECT ${DB_NOW} AS now) AS t
  WHERE l.part = $2 AND (l.owner IS NULL OR l.expires_at < t.now)
  RETURNING l.part, l.owner, l.epoch, l.expires_at`;

export const RELEASE_LEASES = `UPDATE cluster_leases AS l SET owner = NULL, expires_at = 0
  FROM unnest($2::int[], $3::bigint[]) AS h(p, e) WHERE l.part = h.p AND l.epoch = h.e AND l.owner = $1`;

export const SELECT_MEMBERS = "SELECT id, since, last_seen FROM cluster_members ORDER BY id";
export const SELECT_LEASES = "SELECT part, owner, epoch, expires_at FROM cluster_leases ORDER BY part";
export const LEAVE = "DELETE FROM cluster_members WHERE id = $1";
export const FORGET = `DELETE FROM cluster_members WHERE last_seen < ${DB_NOW} - $1::bigint`;

/**
 * The fence check of a write, in its transaction: the leases it is made under that are still the
 * member's, share-locked. A takeover's claim (an UPDATE of the row) waits until the write commits,
 * so the new owner's load sees it; writes of one owner do not wait for each other. On CockroachDB
 * (serializable) the claim and the write conflict on the row instead, and one of them restarts.
 */
export const FENCE_LEASES = `SELECT l.part, l.epoch FROM cluster_leases l, (SELECT set_config('application_name', $3, true)) AS n
  WHERE l.part = ANY($1::int[]) AND l.owner = $2 ORDER BY l.part FOR SHARE OF l`;
/**
 * The same, setting for the transaction how long it may sit idle (`SET LOCAL`, in the same round
 * trip): a member frozen in the middle of a fenced write must not keep the lease rows locked.
 */
export const FENCE_LEASES_HOLDING = `SELECT l.part, l.epoch FROM cluster_leases l, (SELECT set_config('application_name', $3, true), set_config('idle_in_transaction_session_timeout', $4, true)) AS s
  WHERE l.part = ANY($1::int[]) AND l.owner = $2 ORDER BY l.part FOR SHARE OF l`;

/** The part of a member's application_name that names it: a hash of its id, whatever the id's length or characters. */
const TAG_LENGTH = 12;
const TAG_PREFIX = "tethral ";
/** The last name made (a process is one member: one hash, not one per write). */
let named = { member: "", name: "" };

/**
 * The application_name a member's fenced transactions carry (the fence check sets it for the
 * transaction, in the same round trip; the connection goes back to `tethral` after it): `tethral`,
 * the member's tag (see END_STUCK_HOLDERS), then its id as far as it fits (PostgreSQL keeps 63
 * bytes of printable ASCII), for whoever reads pg_stat_activity.
 */
export function memberApplicationName(member: string): string {
  if (member !== named.member) {
    const tag = createHash("sha256").update(member, "utf8").digest("hex").slice(0, TAG_LENGTH);
    named = { member, name: `${TAG_PREFIX}${tag} ${member.replace(/[^\x20-\x7e]/g, "?")}`.slice(0, 63) };
  }
  return named.name;
}

/**
 * A claim that found partition $1's lease row locked ends the transactions that hold it, once the
 * lease has run out more than $2 ms ago: the fenced transactions of the lease's owner (found by the
 * tag of their application_name, the same hash in SQL) open for longer than that. Only a member
 * stuck in the middle of a statement holds a lease row that long: one frozen while it streams a
 * COPY, or cut off from the database without the connection closing. The database does not end
 * those itself, as it ends an idle transaction (Fence.holdMs), and their statements ignore a
 * statement timeout while they wait for the client. Ending one rolls its write back; its member,
 * if it ever wakes, finds its lease taken and its write refused, as after any takeover.
 *
 * One row per such session of the owner: `ended`, whether it was ended; `hidden`, true when the
 * database does not show this role when the session's transaction began (another role's session,
 * without pg_read_all_stats), so nothing could be ended. PostgreSQL's: on CockroachDB, which has no
 * pg_terminate_backend, the statement fails and the claim waits as before.
 */
export const END_STUCK_HOLDERS = `SELECT l.owner, a.state IS NULL AS hidden,
    CASE WHEN a.xact_start < clock_timestamp() - make_interval(secs => $2::bigint / 1000.0) THEN pg_terminate_backend(a.pid) ELSE false END AS ended
  FROM cluster_leases l JOIN pg_stat_activity a
    ON left(a.application_name, ${TAG_PREFIX.length + TAG_LENGTH}) = '${TAG_PREFIX}' || left(encode(sha256(convert_to(l.owner, 'UTF8')), 'hex'), ${TAG_LENGTH})
  WHERE l.part = $1 AND l.owner IS NOT NULL AND l.expires_at < ${DB_NOW} - $2::bigint
    AND a.datname = current_database() AND a.pid <> pg_backend_pid()`;

export const TOMBSTONE = `INSERT INTO removed_devices (device_id, removed_at) VALUES ($1, ${DB_NOW})
  ON CONFLICT (device_id) DO UPDATE SET removed_at = excluded.removed_at`;

export const PURGE_TOMBSTONES = `DELETE FROM removed_devices WHERE device_id IN
  (SELECT device_id FROM removed_devices WHERE removed_at < $1 LIMIT $2)`;

type Row = Record<string, unknown>;

export function toLeaseRow(r: Row): LeaseRow {
  return { partition: Number(r.part), owner: (r.owner as string | null) ?? null, epoch: Number(r.epoch), expiresAt: Number(r.expires_at) };
}

export function toMemberRow(r: Row): MemberRow {
  return { id: r.id as string, since: Number(r.since), lastSeen: Number(r.last_seen) };
}

/** Column arrays of held leases, for `unnest($::int[], $::bigint[])`. */
export function leaseArrays(leases: readonly HeldLease[]): [number[], number[]] {
  return [leases.map((l) => l.partition), leases.map((l) => l.epoch)];
}

/** What a fenced write is made under: its leases, and its devices this member does not own. */
export interface FenceCheck {
  member: string;
  /** See Fence.holdMs. */
  holdMs: number | undefined;
  /** Partition -> the epoch the write is made under, with the devices of the write in it. */
  leases: Map<number, { epoch: number; devices: string[] }>;
  unowned: string[];
}

export function fenceCheck(fence: Fence, deviceIds: Iterable<string>): FenceCheck {
  const check: FenceCheck = { member: fence.member, holdMs: fence.holdMs, leases: new Map(), unowned: [] };
  const seen = new Set<string>();
  for (const id of deviceIds) {
    if (seen.has(id)) continue;
    seen.add(id);
    const lease = fence.leaseOf(id);
    if (lease === null) {
      check.unowned.push(id);
      continue;
    }
    const held = check.leases.get(lease.partition);
    if (held === undefined) {
      check.leases.set(lease.partition, { epoch: lease.epoch, devices: [id] });
      continue;
    }
    held.devices.push(id);
    // One partition under two epochs in one write: the fence changed under it, and neither is
    // trusted (-1 is no lease's epoch).
    if (held.epoch !== lease.epoch) held.epoch = -1;
  }
  return check;
}

/** A write refused by its fence: nothing of it was stored (see FencedFailure). */
export class FencedError extends TethralError implements FencedFailure {
  readonly fenced = true as const;

  constructor(
    readonly partitions: number[],
    readonly deviceIds: string[],
    readonly epochs: number[] = [],
  ) {
    const shown = deviceIds.slice(0, 5).map((id) => JSON.stringify(id)).join(", ") + (deviceIds.length > 5 ? ", ..." : "");
    const where = partitions.length > 0 ? ` (stale leases of partitions ${partitions.join(", ")})` : "";
    super("CONFLICT", `this member no longer owns the devices ${shown}${where}: nothing of the write was stored`);
  }
}

/** Runs the check of `fenceCheck` on the transaction's connection; throws FencedError when anything is stale or unowned. */
export async function assertFence(
  c: { query(sql: string, params: unknown[]): Promise<{ rows: Row[] }> },
  check: FenceCheck,
): Promise<void> {
  const parts = [...check.leases.keys()];
  const current = new Map<number, number>();
  const holding = check.holdMs !== undefined && Number.isInteger(check.holdMs) && check.holdMs > 0;
  if (parts.length > 0) {
    // One round trip: the lease rows share-locked, the member's application name set (a successor
    // finds the transaction by it if the member gets stuck in it) and, when asked, the idle limit.
    const name = memberApplicationName(check.member);
    const { rows } = holding ? await c.query(FENCE_LEASES_HOLDING, [parts, check.member, name, String(check.holdMs)]) : await c.query(FENCE_LEASES, [parts, check.member, name]);
    for (const r of rows) current.set(Number(r.part), Number(r.epoch));
  } else if (holding) {
    await c.query(`SET LOCAL idle_in_transaction_session_timeout = ${check.holdMs}`, []);
  }
  const stale: [number, number][] = [];
  const refused = [...check.unowned];
  for (const [part, { epoch, devices }] of check.leases) {
    if (current.get(part) === epoch) continue;
    stale.push([part, epoch]);
    refused.push(...devices);
  }
  stale.sort((a, b) => a[0] - b[0]);
  if (refused.length > 0) throw new FencedError(stale.map(([part]) => part), refused, stale.map(([, epoch]) => epoch));
}
