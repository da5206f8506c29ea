import { DEFAULT_PARTITIONS, type ClusterInfo } from "../hub-options";
import type { PersistenceHost } from "../write-behind-options";
import type { ClusterMember } from "./member";

/** GET /api/cluster: the member's view, or a single runtime as a cluster of one owning every partition. */
export function clusterInfoOf(cluster: ClusterMember | null, memberId: string, startedAt: number, now: number): ClusterInfo {
  if (cluster) return cluster.info();
  const iso = (ms: number) => new Date(ms).toISOString();
  return {
    member: memberId,
    partitions: DEFAULT_PARTITIONS,
    members: [{ id: memberId, since: iso(startedAt || now), lastSeen: iso(now), partitions: [...Array(DEFAULT_PARTITIONS).keys()] }],
  };
}

/** The health's `cluster` component: degraded while a partition has no owner, the broker link is down or leases lag. */
export function clusterHealthOf(cluster: ClusterMember | null, memberId: string): { degraded: boolean; [figure: string]: unknown } {
  if (!cluster) return { degraded: false, mode: "single", member: memberId, partitions: DEFAULT_PARTITIONS, owned: DEFAULT_PARTITIONS, members: 1 };
  const s = cluster.statistics();
  const lagging = s.renewalLagSeconds * 1000 > cluster.options.leaseMs / 2;
  const problem = !s.linkConnected ? "no connection to the broker" : s.unowned > 0 ? `${s.unowned} partitions have no owner` : lagging ? "lease renewals are late" : null;
  return {
    degraded: problem !== null,
    mode: "cluster",
    member: s.member,
    partitions: s.partitions,
    owned: s.owned,
    members: s.members,
    unowned: s.unowned,
    renewalLagSeconds: Math.round(s.renewalLagSeconds * 1000) / 1000,
    ...(problem !== null && { error: problem }),
  };
}

/**
 * The write-behind's host in cluster mode: presence rows carry the last message's fingerprint, and
 * fenced writes drop leases. A single runtime (`cluster` null) keeps the plain host.
 */
export function clusterStoreHost(host: PersistenceHost, cluster: (() => ClusterMember | null) | null): PersistenceHost {
  if (!cluster) return host;
  return {
    ...host,
    presence: (id) => {
      const row = host.presence(id);
      const m = row ? cluster()?.lastMessageOf(id) : undefined;
      return m === undefined ? row : { ...row!, lastMessage: m };
    },
    fenced: (partitions, deviceIds, epochs) => cluster()?.fenced(partitions, deviceIds, epochs),
  };
}
