// Cluster mode's start-up checks (CONTRACT §8): what `npm start` refuses before Node-RED starts,
// each as one line naming the variable to change.
import pg from "pg";
import { errorMessage, isTethralError } from "../core/errors";
import { clusterFromEnv, leaseSecondsFromEnv, memberIdFromEnv, partitionsFromEnv, postgresUrlProblem } from "../nodes/hub-config";
import { mqttUrlProblem } from "../protocols/mqtt";
import { StartupError } from "./options";

/** What the database check needs: the partition count this member will join with, and where. */
export interface ClusterStart {
  partitions: number;
  db: string;
}

/** A refusal of the hub's settings as a start-up line naming its variable. */
function refusal(err: unknown): StartupError {
  const variable = isTethralError(err) ? err.details[0]?.field : undefined;
  return new StartupError(`${errorMessage(err)}${variable ? `: fix ${variable}` : ""}`, variable);
}

/**
 * Null when TETHRAL_CLUSTER is off or unset. With it on: TETHRAL_DB must be a PostgreSQL
 * (CockroachDB) URL and TETHRAL_MQTT_URL an external broker, shared by every member; the other
 * cluster variables must be valid.
 */
export function clusterFromEnvironment(env: NodeJS.ProcessEnv): ClusterStart | null {
  let partitions: number;
  try {
    if (!clusterFromEnv(env)) return null;
    partitions = partitionsFromEnv(env);
    leaseSecondsFromEnv(env);
    memberIdFromEnv(env, undefined);
  } catch (err) {
    throw refusal(err);
  }
  const db = env.TETHRAL_DB?.trim() ?? "";
  if (!/^postgres(ql)?:/i.test(db)) {
    throw new StartupError(
      `TETHRAL_CLUSTER=on needs a PostgreSQL or CockroachDB database shared by every member: set TETHRAL_DB to its postgres:// URL${db ? "" : " (it is unset)"}`,
      "TETHRAL_DB",
    );
  }
  const dbProblem = postgresUrlProblem(db);
  if (dbProblem) throw new StartupError(`invalid environment variable TETHRAL_DB: ${dbProblem}`, "TETHRAL_DB");
  const broker = env.TETHRAL_MQTT_URL?.trim() ?? "";
  if (!broker) {
    throw new StartupError("TETHRAL_CLUSTER=on needs an external MQTT broker shared by every member: set TETHRAL_MQTT_URL to its URL", "TETHRAL_MQTT_URL");
  }
  const brokerProblem = mqttUrlProblem(broker);
  if (brokerProblem) throw new StartupError(`invalid environment variable TETHRAL_MQTT_URL: ${brokerProblem}`, "TETHRAL_MQTT_URL");
  return { partitions, db };
}

const UNDEFINED_TABLE = "42P01";
const CONNECT_TIMEOUT_MS = 5000;

/**
 * Refuses a partition count that differs from the one the cluster's database was first used
 * with. A database without the cluster's table has not been used by a cluster yet; one that
 * cannot be reached is left to the hub, which reports it and tries again (as without a cluster).
 */
export async function checkClusterDatabase(cluster: ClusterStart): Promise<void> {
  const client = new pg.Client({ connectionString: cluster.db, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  // A connection lost after the check is of no interest here; unhandled, it would end the process.
  client.on("error", () => undefined);
  let recorded: number | null = null;
  try {
    await client.connect();
    const result = await client.query<{ partitions: number | string }>("SELECT partitions FROM cluster_meta");
    if (result.rows.length > 0) recorded = Number(result.rows[0]!.partitions);
  } catch (err) {
    if ((err as { code?: unknown }).code !== UNDEFINED_TABLE) return;
  } finally {
    await client.end().catch(() => undefined);
  }
  if (recorded !== null && recorded !== cluster.partitions) {
    throw new StartupError(
      `TETHRAL_PARTITIONS is ${cluster.partitions}, but the cluster's database was first used with ${recorded} partitions: set TETHRAL_PARTITIONS=${recorded} on every member`,
      "TETHRAL_PARTITIONS",
    );
  }
}
