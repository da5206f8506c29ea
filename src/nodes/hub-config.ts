import { z } from "zod";
import type { HubOptions } from "../core";
import { LIMITS, parseInput } from "../core/validation";

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
}

export const HUB_CONFIG_DEFAULTS: HubConfig = {
  name: "",
  defaultHeartbeatTimeout: 60,
  adaptiveTimeout: false,
  adaptiveFactor: 3,
  retention: false,
  retentionDays: 30,
  stateHistorySize: 100,
  eventHistorySize: 1000,
};

// Below 1.5 × its usual gap, a device that reports on a steady period would flap offline on
// ordinary jitter.
export const MIN_ADAPTIVE_FACTOR = 1.5;
export const MAX_ADAPTIVE_FACTOR = 100;
export const MAX_RETENTION_DAYS = 3650;
export const MAX_STATE_HISTORY = 10_000;
// The event bus allocates its history ring up front.
export const MAX_EVENT_HISTORY = 100_000;

/**
 * Node-RED replaces a property that is exactly `${VAR}` with the variable's value, and leaves
 * it as written when the variable is not set: name the variable rather than say "not a number".
 */
const UNRESOLVED_ENV = /^\$\{([^}]+)\}$/;

function unresolvedEnv(value: string, ctx: z.RefinementCtx): boolean {
  const env = UNRESOLVED_ENV.exec(value);
  if (env) ctx.addIssue({ code: "custom", message: `uses the environment variable ${env[1]}, which is not set` });
  return env !== null;
}

/** Editor fields arrive as strings (or numbers); blank means "use the default". */
function toNumber(value: unknown, ctx: z.RefinementCtx): unknown {
  if (value === null || value === undefined) return undefined;
  if (typeof value !== "string") return value;
  const s = value.trim();
  if (s === "") return undefined;
  if (unresolvedEnv(s, ctx)) return z.NEVER;
  return /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s) ? Number(s) : s;
}

const TRUE_WORDS = new Set(["true", "on", "yes", "1"]);
const FALSE_WORDS = new Set(["false", "off", "no", "0", ""]);

/** Checkboxes give booleans; an `${ENV}` value gives a word. */
function toBoolean(value: unknown, ctx: z.RefinementCtx): unknown {
  if (value === null || value === undefined) return undefined;
  if (typeof value !== "string") return value;
  const s = value.trim().toLowerCase();
  if (unresolvedEnv(value.trim(), ctx)) return z.NEVER;
  if (TRUE_WORDS.has(s)) return true;
  if (FALSE_WORDS.has(s)) return false;
  return value;
}

const NOT_A_NUMBER = { error: "must be a number" };

const setting = {
  positive: (max: number, fallback: number) =>
    z.preprocess(
      toNumber,
      z.number(NOT_A_NUMBER).gt(0, "must be more than 0").max(max, `must be at most ${max}`).default(fallback),
    ),
  between: (min: number, max: number, fallback: number) =>
    z.preprocess(
      toNumber,
      z.number(NOT_A_NUMBER).min(min, `must be at least ${min}`).max(max, `must be at most ${max}`).default(fallback),
    ),
  count: (max: number, fallback: number) =>
    z.preprocess(
      toNumber,
      z
        .number(NOT_A_NUMBER)
        .int("must be a whole number")
        .min(1, "must be at least 1")
        .max(max, `must be at most ${max}`)
        .default(fallback),
    ),
  flag: (fallback: boolean) =>
    z.preprocess(toBoolean, z.boolean({ error: "must be true or false" }).default(fallback)),
};

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
});

/** Checks a deployed tethral-hub node's properties; throws an INVALID TethralError naming every bad field. */
export function parseHubConfig(def: unknown): HubConfig {
  return parseInput(hubConfigSchema, def, "Tethral hub settings");
}

export function toHubOptions(config: HubConfig, events: Pick<NonNullable<HubOptions["events"]>, "onHandlerError"> = {}): HubOptions {
  return {
    heartbeat: {
      defaultTimeoutSec: config.defaultHeartbeatTimeout,
      adaptive: { enabled: config.adaptiveTimeout, factor: config.adaptiveFactor },
      retention: { enabled: config.retention, offlineForSec: config.retentionDays * 24 * 3600 },
    },
    state: { historySize: config.stateHistorySize },
    events: { historySize: config.eventHistorySize, ...events },
  };
}
