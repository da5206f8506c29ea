import { realpathSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import type { HubOptions } from "../core";
import { TethralError } from "../core/errors";
import { LIMITS, parseInput } from "../core/validation";
import { PostgresStore, type PostgresStoreOptions } from "../store/postgres";
import { SqliteStore } from "../store/sqlite";
import type { Store } from "../core/ports/store";
import { setting, toChoice, UNRESOLVED_ENV, unsetVariable } from "./setting-fields";

export { setting, toBoolean, toChoice, toNumber, toText, unresolvedEnv } from "./setting-fields";
export {
  CLUSTER_SETTINGS,
  MAX_LEASE_SECONDS,
  MAX_PARTITIONS,
  MIN_LEASE_SECONDS,
  type ClusterConfig,
  type ClusterSettings,
  clusterFromEnv,
  clusterSettingsFor,
  leaseSecondsFromEnv,
  memberIdFromEnv,
  parseClusterConfig,
  partitionsFromEnv,
} from "./cluster-config";

/** A tethral-hub node's settings, checked and with defaults filled in. */
export interface HubConfig {
  name: string;
  /** Seconds of silence before a device without its own timeout is offline. */
  defaultHeartbeatTimeout: number;
  adaptiveTimeout: boolean;
  adaptiveFactor: number;
  retention: boolean;
  retentionDays: number;
  stateHistorySize: number;
  eventHistorySize: number;
  /** Where the hub keeps its fleet across restarts: see `storageFor`. */
  storage: StorageSetting;
  /** The SQLite file of `storage: "sqlite"`, relative to the Node-RED user dir. */
  sqliteFile: string;
  /** `postgres://user@host:port/database` for `storage: "postgres"`; the password may be a credential. */
  postgresUrl: string;
  /** Days stored events are kept; 0 keeps them regardless of age (the row cap still applies). */
  eventRetentionDays: number;
  /** Days stored state history is kept; 0 keeps it regardless of age (the per-device cap still applies). */
  historyRetentionDays: number;
  /** Telemetry time series (CONTRACT §7): days raw points, 1-minute and 1-hour roll-ups are kept; 0 keeps them. */
  pointRetentionDays: number;
  minuteRetentionDays: number;
  hourRetentionDays: number;
  /** Also write a state-history entry for every telemetry report (the values are in the time series anyway). */
  historyOfReports: boolean;
  /** Event types not written to the store, comma-separated (recent ones stay in memory). */
  unstoredEvents: string;
  /** Anomaly detection: flapping (this many online/offline transitions within the window, in seconds). */
  flappingDetection: boolean;
  flappingThreshold: number;
  flappingWindow: number;
  /** Stuck values: unchanged for this many reports, or (when above 0) for this many seconds. */
  stuckDetection: boolean;
  stuckReports: number;
  stuckSeconds: number;
  /** Outliers: further than this many standard deviations from the usual, after a warm-up of samples. */
  outlierDetection: boolean;
  outlierZScore: number;
  outlierWarmup: number;
}

export const STORAGE_SETTINGS = ["auto", "sqlite", "postgres", "memory"] as const;
export type StorageSetting = (typeof STORAGE_SETTINGS)[number];

/** The file name used when no other is given, in the Node-RED user dir. */
export const DEFAULT_SQLITE_FILE = "tethral.sqlite";
/** The environment variable `storage: "auto"` reads (CONTRACT §6). */
export const DB_VARIABLE = "TETHRAL_DB";

export const HUB_CONFIG_DEFAULTS: HubConfig = {
  name: "",
  defaultHeartbeatTimeout: 60,
  adaptiveTimeout: false,
  adaptiveFactor: 3,
  retention: false,
  retentionDays: 30,
  stateHistorySize: 100,
  eventHistorySize: 1000,
  storage: "auto",
  sqliteFile: DEFAULT_SQLITE_FILE,
  postgresUrl: "",
  eventRetentionDays: 7,
  historyRetentionDays: 30,
  pointRetentionDays: 7,
  minuteRetentionDays: 90,
  hourRetentionDays: 3 * 365,
  historyOfReports: false,
  unstoredEvents: "message.received, state.changed",
  flappingDetection: true,
  flappingThreshold: 6,
  flappingWindow: 300,
  stuckDetection: true,
  stuckReports: 30,
  stuckSeconds: 0,
  outlierDetection: true,
  outlierZScore: 4,
  outlierWarmup: 20,
};

// Flapping clears once the window holds 2 transitions or fewer: it must take more to start.
export const MIN_FLAPPING_THRESHOLD = 3;
const DAY_SEC = 24 * 3600;

// Below 1.5 × its usual gap, a device that reports on a steady period would flap offline on
// ordinary jitter.
export const MIN_ADAPTIVE_FACTOR = 1.5;
export const MAX_ADAPTIVE_FACTOR = 100;
export const MAX_RETENTION_DAYS = 3650;
export const MAX_STATE_HISTORY = 10_000;
// The event bus allocates its history ring up front.
export const MAX_EVENT_HISTORY = 100_000;
const MAX_PATH_LENGTH = 4096;

const DAY_MS = 24 * 3600 * 1000;

const d = HUB_CONFIG_DEFAULTS;

// Not strict: a deployed node also carries id, type, z, x, y and Node-RED's own fields.
const hubConfigSchema = z.object({
  name: z.preprocess((v) => v ?? "", z.string({ error: "must be text" }).max(LIMITS.textLength)),
  defaultHeartbeatTimeout: setting.positive(LIMITS.maxHeartbeatTimeout, d.defaultHeartbeatTimeout),
  adaptiveTimeout: setting.flag(d.adaptiveTimeout),
  adaptiveFactor: setting.between(MIN_ADAPTIVE_FACTOR, MAX_ADAPTIVE_FACTOR, d.adaptiveFactor),
  retention: setting.flag(d.retention),
  retentionDays: setting.positive(MAX_RETENTION_DAYS, d.retentionDays),
  stateHistorySize: setting.count(MAX_STATE_HISTORY, d.stateHistorySize),
  eventHistorySize: setting.count(MAX_EVENT_HISTORY, d.eventHistorySize),
  eventRetentionDays: setting.between(0, MAX_RETENTION_DAYS, d.eventRetentionDays),
  historyRetentionDays: setting.between(0, MAX_RETENTION_DAYS, d.historyRetentionDays),
  pointRetentionDays: setting.between(0, MAX_RETENTION_DAYS, d.pointRetentionDays),
  minuteRetentionDays: setting.between(0, MAX_RETENTION_DAYS, d.minuteRetentionDays),
  hourRetentionDays: setting.between(0, MAX_RETENTION_DAYS, d.hourRetentionDays),
  historyOfReports: setting.flag(d.historyOfReports),
  unstoredEvents: setting
    .text(1000, d.unstoredEvents)
    .refine((v) => eventTypeList(v).every((t) => EVENT_TYPE.test(t)), "must be event types separated by commas (message.received, state.changed)"),
  flappingDetection: setting.flag(d.flappingDetection),
  flappingThreshold: setting.count(1000, d.flappingThreshold).refine((n) => n >= MIN_FLAPPING_THRESHOLD, `must be at least ${MIN_FLAPPING_THRESHOLD}`),
  flappingWindow: setting.positive(DAY_SEC, d.flappingWindow),
  stuckDetection: setting.flag(d.stuckDetection),
  stuckReports: setting.count(1_000_000, d.stuckReports).refine((n) => n >= 2, "must be at least 2"),
  stuckSeconds: setting.between(0, 30 * DAY_SEC, d.stuckSeconds),
  outlierDetection: setting.flag(d.outlierDetection),
  outlierZScore: setting.positive(100, d.outlierZScore),
  outlierWarmup: setting.count(1_000_000, d.outlierWarmup),
});

// The file and URL are checked only for the storage that uses them, as the editor does: a
// leftover URL (or one naming an unset variable) does not stop a hub that keeps a SQLite file.
const storageSchema = z
  .object({
    storage: z.preprocess(
      toChoice,
      z.enum(STORAGE_SETTINGS, { error: `must be one of ${STORAGE_SETTINGS.join(", ")}` }).default(d.storage),
    ),
    sqliteFile: setting.text(MAX_PATH_LENGTH, d.sqliteFile),
    postgresUrl: setting.text(MAX_PATH_LENGTH, d.postgresUrl),
  })
  .superRefine((config, ctx) => {
    const report = (field: string, message: string | null) => {
      if (message) ctx.addIssue({ code: "custom", path: [field], message });
    };
    if (config.storage === "sqlite") report("sqliteFile", sqliteFileProblem(config.sqliteFile));
    if (config.storage === "postgres") report("postgresUrl", postgresUrlProblem(config.postgresUrl, "storage is postgres"));
  });

const hubSettingsSchema = z.intersection(hubConfigSchema, storageSchema);

function sqliteFileProblem(file: string): string | null {
  const env = UNRESOLVED_ENV.exec(file);
  if (env) return unsetVariable(env[1]!);
  // better-sqlite3 would cut the name at the NUL and open another file.
  if (file.includes("\0")) return "must not contain a NUL character";
  return null;
}

/**
 * Why `url` cannot name a PostgreSQL database, or null. The message never repeats the URL:
 * it may hold a password, and it goes to the log.
 */
export function postgresUrlProblem(url: string, requiredWhen?: string): string | null {
  if (url === "") return requiredWhen ? `is required when ${requiredWhen}` : "is required";
  const env = UNRESOLVED_ENV.exec(url);
  if (env) return unsetVariable(env[1]!);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "must be a URL like postgres://user@host:5432/database";
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    return "must start with postgres:// or postgresql://";
  }
  return null;
}

const EVENT_TYPE = /^[A-Za-z0-9_.:-]{1,128}$/;

/** The event types of a comma-separated setting, trimmed, empty ones left out. */
function eventTypeList(text: string): string[] {
  return text
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t.length > 0);
}

/** Checks a deployed tethral-hub node's properties; throws an INVALID TethralError naming every bad field. */
export function parseHubConfig(def: unknown): HubConfig {
  return parseInput(hubSettingsSchema, def, "Tethral hub settings");
}

/** What the Node-RED node adds to its settings: the store, and where its messages go. */
export interface HubHooks {
  store?: Store | null;
  onHandlerError?: NonNullable<HubOptions["events"]>["onHandlerError"];
  onWarning?: HubOptions["onWarning"];
}

export function toHubOptions(config: HubConfig, hooks: HubHooks = {}): HubOptions {
  const options: HubOptions = {
    heartbeat: {
      defaultTimeoutSec: config.defaultHeartbeatTimeout,
      adaptive: { enabled: config.adaptiveTimeout, factor: config.adaptiveFactor },
      retention: { enabled: config.retention, offlineForSec: config.retentionDays * 24 * 3600 },
    },
    state: { historySize: config.stateHistorySize, historyOfReports: config.historyOfReports },
    anomaly: {
      flapping: { enabled: config.flappingDetection, threshold: config.flappingThreshold, windowSec: config.flappingWindow },
      stuck: { enabled: config.stuckDetection, reports: config.stuckReports, seconds: config.stuckSeconds },
      outlier: { enabled: config.outlierDetection, zScore: config.outlierZScore, warmup: config.outlierWarmup },
    },
    events: { historySize: config.eventHistorySize, ...(hooks.onHandlerError && { onHandlerError: hooks.onHandlerError }) },
    persistence: {
      retention: {
        eventsMaxAgeMs: config.eventRetentionDays * DAY_MS,
        historyMaxAgeMs: config.historyRetentionDays * DAY_MS,
        // "State changes kept per device" means the same with a database as in memory.
        historyMaxPerDevice: config.stateHistorySize,
        pointsMaxAgeMs: config.pointRetentionDays * DAY_MS,
        rollups1mMaxAgeMs: config.minuteRetentionDays * DAY_MS,
        rollups1hMaxAgeMs: config.hourRetentionDays * DAY_MS,
      },
      unstoredEventTypes: eventTypeList(config.unstoredEvents),
    },
  };
  if (hooks.store) options.store = hooks.store;
  if (hooks.onWarning) options.onWarning = hooks.onWarning;
  return options;
}

// ── Storage ──────────────────────────────────────────────────────────────────────────────────

/** The node's credentials (kept by Node-RED apart from the flow file, encrypted). */
export interface HubCredentials {
  postgresPassword?: string;
}

/** Where the setting came from, for the log line that says where the fleet is kept. */
export type StorageSource = "setting" | typeof DB_VARIABLE | "default";

export type StorageChoice =
  | { kind: "memory"; source: StorageSource }
  | { kind: "sqlite"; source: StorageSource; path: string }
  | { kind: "postgres"; source: StorageSource; options: PostgresStoreOptions };

const POSTGRES_SCHEME = /^postgres(ql)?:/i;

/**
 * Which store a hub with `config` uses:
 * - `memory`: none; the hub forgets its fleet when it stops.
 * - `sqlite`: `config.sqliteFile`, relative to `userDir`.
 * - `postgres`: `config.postgresUrl`; the password credential, when given, overrides the URL's.
 * - `auto`: TETHRAL_DB when it is set (a postgres:// or postgresql:// URL, `:memory:`, or a
 *   SQLite file relative to `userDir`), else `tethral.sqlite` in `userDir`.
 *
 * `userDir` is Node-RED's user directory; without one (node-red-node-test-helper, or an
 * embedding that sets none) relative paths are resolved against the current directory, as
 * anywhere else: never a temporary directory, which a reboot or a service restart may empty.
 * Throws an INVALID TethralError for a TETHRAL_DB that is not usable.
 */
export function storageFor(
  config: HubConfig,
  credentials: HubCredentials = {},
  userDir?: string,
  env: NodeJS.ProcessEnv = process.env,
): StorageChoice {
  const base = userDir || process.cwd();
  const file = (p: string) => path.resolve(base, p);
  switch (config.storage) {
    case "memory":
      return { kind: "memory", source: "setting" };
    case "sqlite":
      return { kind: "sqlite", source: "setting", path: file(config.sqliteFile) };
    case "postgres": {
      const options: PostgresStoreOptions = { url: config.postgresUrl };
      const password = credentials.postgresPassword;
      if (password !== undefined && password !== "") options.password = password;
      return { kind: "postgres", source: "setting", options };
    }
    case "auto": {
      const db = env[DB_VARIABLE]?.trim();
      if (!db) return { kind: "sqlite", source: "default", path: file(DEFAULT_SQLITE_FILE) };
      if (db === ":memory:") return { kind: "memory", source: DB_VARIABLE };
      if (POSTGRES_SCHEME.test(db)) {
        const problem = postgresUrlProblem(db);
        if (problem) {
          throw new TethralError("INVALID", `invalid environment variable ${DB_VARIABLE}: ${problem}`, [
            { field: DB_VARIABLE, message: problem },
          ]);
        }
        return { kind: "postgres", source: DB_VARIABLE, options: { url: db } };
      }
      return { kind: "sqlite", source: DB_VARIABLE, path: file(db) };
    }
  }
}

/** The store of `choice`, not yet opened (`hub.start()` opens it); null for memory. */
export function storeOf(choice: StorageChoice): Store | null {
  switch (choice.kind) {
    case "memory":
      return null;
    case "sqlite":
      return new SqliteStore({ path: choice.path });
    case "postgres":
      return new PostgresStore(choice.options);
  }
}

/**
 * What names a store's database whatever way its settings spell it: a SQLite file by its real
 * path (a symbolic link to it, or to a folder on its way, is the same file), a PostgreSQL server
 * on this machine by one name (localhost, 127.0.0.1 and ::1 are the same server). Until
 * 2026-12-08 a second hub on another spelling of the same database started, and the two hubs
 * wrote over each other's fleet (a tester's find).
 */
export function databaseClaim(store: Pick<Store, "kind" | "description">): string | null {
  if (store.kind === "sqlite") {
    // Each in-memory database is a database of its own.
    if (store.description === ":memory:") return null;
    const file = path.resolve(store.description);
    try {
      return `sqlite:${realpathSync(file)}`;
    } catch {
      try {
        return `sqlite:${path.join(realpathSync(path.dirname(file)), path.basename(file))}`;
      } catch {
        return `sqlite:${file}`;
      }
    }
  }
  if (store.kind === "postgres") {
    const at = store.description.lastIndexOf(":", store.description.indexOf("/"));
    const host = store.description.slice(0, at).replace(/^\[|\]$/g, "").toLowerCase();
    const loopback = host === "localhost" || host === "::1" || /^127\./.test(host);
    return `postgres:${loopback ? "loopback" : host}${store.description.slice(at)}`;
  }
  return `${store.kind}:${store.description}`;
}
