import os from "node:os";
import { z } from "zod";
import { DEFAULT_LEASE_SECONDS, DEFAULT_PARTITIONS } from "../core";
import { TethralError } from "../core/errors";
import { parseInput } from "../core/validation";
import { FALSE_WORDS, NOT_A_NUMBER, NOT_TEXT, toChoice, toNumber, toText, TRUE_WORDS, unresolvedEnv } from "./setting-fields";

/**
 * Cluster mode's settings (CONTRACT §8): the tethral-hub node's fields, then TETHRAL_CLUSTER,
 * TETHRAL_MEMBER_ID, TETHRAL_PARTITIONS and TETHRAL_LEASE_SECONDS, then the defaults.
 */

export const CLUSTER_SETTINGS = ["auto", "on", "off"] as const;
export const MAX_PARTITIONS = 4096;
export const MIN_LEASE_SECONDS = 2;
export const MAX_LEASE_SECONDS = 300;
const MAX_MEMBER_ID_LENGTH = 200;

/** The cluster settings of a tethral-hub node; blank fields are the environment's, else the defaults. */
export interface ClusterConfig {
  /** auto: TETHRAL_CLUSTER (off when unset). */
  cluster: (typeof CLUSTER_SETTINGS)[number];
  /** Blank: TETHRAL_MEMBER_ID, else `<host name>:<port>`. */
  memberId: string;
  /** null: TETHRAL_PARTITIONS, else 64. */
  partitions: number | null;
  /** null: TETHRAL_LEASE_SECONDS, else 10. */
  leaseSeconds: number | null;
}

const clusterSchema = z.object({
  cluster: z.preprocess(toChoice, z.enum(CLUSTER_SETTINGS, { error: `must be one of ${CLUSTER_SETTINGS.join(", ")}` }).default("auto")),
  memberId: z.preprocess(
    (v, ctx) => (typeof v === "string" && unresolvedEnv(v.trim(), ctx) ? z.NEVER : toText(v)),
    z.string(NOT_TEXT).max(MAX_MEMBER_ID_LENGTH, `must be at most ${MAX_MEMBER_ID_LENGTH} characters`).default(""),
  ),
  partitions: z.preprocess(
    toNumber,
    z.number(NOT_A_NUMBER).int("must be a whole number").min(1, "must be at least 1").max(MAX_PARTITIONS, `must be at most ${MAX_PARTITIONS}`).nullable().default(null),
  ),
  leaseSeconds: z.preprocess(
    toNumber,
    z.number(NOT_A_NUMBER).min(MIN_LEASE_SECONDS, `must be at least ${MIN_LEASE_SECONDS}`).max(MAX_LEASE_SECONDS, `must be at most ${MAX_LEASE_SECONDS}`).nullable().default(null),
  ),
});

export function parseClusterConfig(def: unknown): ClusterConfig {
  return parseInput(clusterSchema, def, "Tethral hub settings") as ClusterConfig;
}

/** The cluster settings in force: the node's, then the environment's, then the defaults. */
export interface ClusterSettings {
  enabled: boolean;
  /** What turned cluster mode on or off, for the one line that refuses it. */
  source: "setting" | "TETHRAL_CLUSTER" | "default";
  memberId: string;
  partitions: number;
  leaseMs: number;
}

function clusterEnvError(variable: string, message: string): TethralError {
  return new TethralError("INVALID", `invalid environment variable ${variable}: ${message}`, [{ field: variable, message }]);
}

/** TETHRAL_CLUSTER: true for on, false for off or unset; INVALID otherwise. */
export function clusterFromEnv(env: NodeJS.ProcessEnv): boolean {
  const raw = env.TETHRAL_CLUSTER?.trim().toLowerCase();
  if (!raw) return false;
  if (TRUE_WORDS.has(raw)) return true;
  if (FALSE_WORDS.has(raw)) return false;
  throw clusterEnvError("TETHRAL_CLUSTER", "must be on or off");
}

/** TETHRAL_PARTITIONS, else the default; INVALID names the variable. */
export function partitionsFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = env.TETHRAL_PARTITIONS?.trim();
  if (!raw) return DEFAULT_PARTITIONS;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < 1 || n > MAX_PARTITIONS) throw clusterEnvError("TETHRAL_PARTITIONS", `must be a whole number from 1 to ${MAX_PARTITIONS}`);
  return n;
}

/** TETHRAL_LEASE_SECONDS, else the default; INVALID names the variable. */
export function leaseSecondsFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = env.TETHRAL_LEASE_SECONDS?.trim();
  if (!raw) return DEFAULT_LEASE_SECONDS;
  const n = Number(raw);
  if (!/^\d+(\.\d+)?$/.test(raw) || n < MIN_LEASE_SECONDS || n > MAX_LEASE_SECONDS) {
    throw clusterEnvError("TETHRAL_LEASE_SECONDS", `must be a number of seconds from ${MIN_LEASE_SECONDS} to ${MAX_LEASE_SECONDS}`);
  }
  return n;
}

/** TETHRAL_MEMBER_ID, else this machine's host name and the runtime's port. */
export function memberIdFromEnv(env: NodeJS.ProcessEnv, port: number | undefined): string {
  const raw = env.TETHRAL_MEMBER_ID?.trim();
  if (raw) {
    if (raw.length > MAX_MEMBER_ID_LENGTH) throw clusterEnvError("TETHRAL_MEMBER_ID", `must be at most ${MAX_MEMBER_ID_LENGTH} characters`);
    return raw;
  }
  const fromEnv = env.PORT?.trim();
  return `${os.hostname()}:${port ?? (fromEnv && /^\d+$/.test(fromEnv) ? Number(fromEnv) : 1880)}`;
}

/**
 * The cluster settings with the environment applied (CONTRACT §8). `port` is the port the
 * runtime serves on (Node-RED's uiPort once bound): two members on one machine differ by it.
 */
export function clusterSettingsFor(config: ClusterConfig, env: NodeJS.ProcessEnv = process.env, port?: number): ClusterSettings {
  let enabled: boolean;
  let source: ClusterSettings["source"] = "setting";
  if (config.cluster === "auto") {
    enabled = clusterFromEnv(env);
    source = env.TETHRAL_CLUSTER?.trim() ? "TETHRAL_CLUSTER" : "default";
  } else enabled = config.cluster === "on";
  // Out of cluster mode the partition and lease variables are not used, so not checked either.
  return {
    enabled,
    source,
    memberId: config.memberId || memberIdFromEnv(env, port),
    partitions: config.partitions ?? (enabled ? partitionsFromEnv(env) : DEFAULT_PARTITIONS),
    leaseMs: Math.round((config.leaseSeconds ?? (enabled ? leaseSecondsFromEnv(env) : DEFAULT_LEASE_SECONDS)) * 1000),
  };
}
