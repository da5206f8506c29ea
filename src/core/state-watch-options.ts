import { z } from "zod";
import { type AnomalyKind, DEVICE_STATUSES, type DeviceStatus } from "./types";
import { DEVICE_ID_PATTERN, LIMITS, parseInput } from "./validation";

/** A `tethral-state-watch` node's settings: what it watches, read from the editor's fields. */

export const ANOMALY_KINDS = ["flapping", "stuck", "outlier"] as const satisfies readonly AnomalyKind[];

/** The longest "for": a week, well inside what one timer can wait (about 24.8 days). */
export const MAX_FOR_SECONDS = 7 * 24 * 3600;
/** Devices or properties one watch may name. */
export const MAX_WATCH_ITEMS = 1000;

/** What a `tethral-state-watch` watches, checked and with defaults filled in. */
export interface StateWatchOptions {
  /** Devices watched; empty = every device. */
  deviceIds: string[];
  /** Without `properties`: fire when the status becomes one of these. With them: the status the device must have. Empty = any. */
  statuses: DeviceStatus[];
  /** Reported or desired keys a change must touch; empty = any. */
  properties: string[];
  /** Fire on `state.changed` (and, without `onlyOnChange`, on reports). */
  changes: boolean;
  /** `state.anomaly` kinds that fire; empty = none. */
  anomalies: AnomalyKind[];
  /** Off: a report that repeats the current value of a watched property or status fires too. */
  onlyOnChange: boolean;
  /** Skip a status change from or to `unknown`, and a property change from or to no value (null). */
  ignoreUnknown: boolean;
  /** Fire only once the matching state has held this long; 0 = at once. */
  forSeconds: number;
  /** Send the current state of every matching device when the node starts watching. */
  outputOnDeploy: boolean;
}

/**
 * Editor fields arrive as text separated by `separator`; flows written by hand may give arrays.
 * Device ids hold no spaces or commas; property keys may hold spaces, so only commas part them.
 */
const toList = (separator: RegExp) => (value: unknown): unknown => {
  if (value === null || value === undefined) return [];
  const items = typeof value === "string" ? value.split(separator) : value;
  if (!Array.isArray(items)) return value;
  const out: unknown[] = [];
  for (const item of items) {
    const v = typeof item === "string" ? item.trim() : item;
    if (v !== "" && !out.includes(v)) out.push(v);
  }
  return out;
};

function toFlag(value: unknown): unknown {
  if (typeof value !== "string") return value;
  const s = value.trim().toLowerCase();
  return s === "true" ? true : s === "false" ? false : value;
}

function toNumber(value: unknown): unknown {
  if (value === null || value === undefined) return 0;
  if (typeof value !== "string") return value;
  const s = value.trim();
  return s === "" ? 0 : /^[+-]?(\d+\.?\d*|\.\d+)$/.test(s) ? Number(s) : s;
}

const list = <T extends z.ZodType>(item: T, separator = /,/) =>
  z.preprocess(toList(separator), z.array(item).max(MAX_WATCH_ITEMS, `must name at most ${MAX_WATCH_ITEMS}`));
const flag = (fallback: boolean) => z.preprocess(toFlag, z.boolean({ error: "must be true or false" }).default(fallback));

const optionsSchema = z
  .object({
    deviceIds: list(z.string().regex(DEVICE_ID_PATTERN, "must be device ids (1-128 characters of A-Z a-z 0-9 . _ : -)"), /[\s,]+/),
    statuses: list(z.enum(DEVICE_STATUSES, { error: `must be among ${DEVICE_STATUSES.join(", ")}` })),
    properties: list(z.string().max(LIMITS.keyLength, `must be keys of at most ${LIMITS.keyLength} characters`)),
    changes: flag(true),
    anomalies: list(z.enum(ANOMALY_KINDS, { error: `must be among ${ANOMALY_KINDS.join(", ")}` })),
    onlyOnChange: flag(true),
    ignoreUnknown: flag(false),
    forSeconds: z.preprocess(
      toNumber,
      z.number({ error: "must be a number of seconds" }).min(0, "must be 0 or more").max(MAX_FOR_SECONDS, `must be at most ${MAX_FOR_SECONDS}`),
    ),
    outputOnDeploy: flag(false),
  })
  .refine((o) => o.changes || o.anomalies.length > 0, {
    message: "watches nothing: choose state changes and/or anomaly kinds",
    path: ["changes"],
  });

/** Checks a node's settings; throws INVALID naming the field. */
export function parseStateWatchOptions(input: unknown): StateWatchOptions {
  return parseInput(optionsSchema, input, "state watch") as StateWatchOptions;
}
