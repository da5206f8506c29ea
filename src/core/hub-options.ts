import type { ProtocolStatistics } from "./adapter-set";
import type { AnomalyOptions, AnomalyStatistics } from "./anomaly";
import type { Clock } from "./clock";
import type { CommandOptions } from "./command-input";
import type { CommandStatistics } from "./commands";
import type { EventBusOptions } from "./events";
import type { HeartbeatOptions } from "./heartbeat";
import type { DeepPartial } from "./options";
import type { ClusterLink } from "./ports/cluster";
import type { ProtocolAdapter } from "./ports/protocol";
import type { Store } from "./ports/store";
import type { DeviceStatistics } from "./registry";
import type { StateOptions, StateStatistics } from "./state";
import type { PersistenceOptions, PersistenceStatistics } from "./write-behind";

export interface HubOptions {
  clock?: Clock;
  heartbeat?: DeepPartial<HeartbeatOptions>;
  state?: Partial<StateOptions>;
  anomaly?: DeepPartial<AnomalyOptions>;
  events?: EventBusOptions;
  /** Where the hub keeps what it must remember across restarts; without one it keeps it in memory. */
  store?: Store;
  persistence?: DeepPartial<PersistenceOptions>;
  /** Problems nobody awaits (a failed background write or purge). Default: console.warn. */
  onWarning?: (message: string) => void;
  /** CONTRACT §4: devices get a token at registration and must present it. Default true. */
  deviceTokens?: boolean;
  /** Unknown devices may register themselves (MQTT `register`). Default false. */
  selfRegistration?: boolean;
  /** Largest payload accepted from a device, in bytes. Default 256 KiB. */
  maxPayloadBytes?: number;
  /** Protocol adapters, started with the hub (more can be added with `addProtocol`). */
  protocols?: ProtocolAdapter[];
  commands?: Partial<CommandOptions>;
  /** This runtime's name in `clusterInfo()` (CONTRACT §8 `TETHRAL_MEMBER_ID`). Default "local". */
  memberId?: string;
  /** Cluster mode (CONTRACT §8): the store must be a ClusterStore (PostgreSQL/CockroachDB). */
  cluster?: ClusterOptions;
}

/** CONTRACT §8: how this member joins the cluster that shares its store. */
export interface ClusterOptions {
  /** Unique in the cluster. */
  member: string;
  /** Partitions of the fleet (64 by default); must match the database's. */
  partitions: number;
  /** A member that has not renewed its leases for this long is dead (10 s by default). */
  leaseMs: number;
  /** Traffic between members (the broker). */
  link: ClusterLink;
}

export const DEFAULT_PARTITIONS = 64;
export const DEFAULT_LEASE_SECONDS = 10;

/** GET /api/cluster (CONTRACT §8). Times are ISO-8601. */
export interface ClusterInfo {
  member: string;
  partitions: number;
  members: { id: string; since: string; lastSeen: string; partitions: number[] }[];
}

export interface CommunicationStatistics {
  protocols: Record<string, ProtocolStatistics>;
  commands: CommandStatistics;
}

export interface HubStatistics {
  devices: DeviceStatistics;
  state: StateStatistics & { anomalies: AnomalyStatistics };
  messages: { received: number; rejected: number; byKind: Record<string, number> };
  store: (PersistenceStatistics & { kind: string; description: string }) | null;
}

export interface HubHealth {
  status: "ok" | "degraded";
  components: Record<string, { status: "ok" | "degraded" | "stopped"; [figure: string]: unknown }>;
}
