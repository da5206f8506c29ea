import { z } from "zod";
import { TethralError, type ErrorDetail, invalid } from "./errors";
import { DEVICE_STATUSES, PRIORITIES, type JsonObject } from "./types";

/** Limits on what the engine accepts. A value past a limit is refused with INVALID, never cut. */
export const LIMITS = {
  idLength: 128,
  textLength: 256,
  listItems: 64,
  listItemLength: 64,
  jsonDepth: 16,
  metadataBytes: 64 * 1024,
  propertiesBytes: 256 * 1024,
  propertyKeys: 256,
  eventDataBytes: 256 * 1024,
  keyLength: 128,
  maxHeartbeatTimeout: 30 * 24 * 3600,
} as const;

/** The characters of a device id, as a regular-expression class. */
export const DEVICE_ID_CHARS = "[A-Za-z0-9._:-]";
export const DEVICE_ID_PATTERN = new RegExp(`^${DEVICE_ID_CHARS}{1,${LIMITS.idLength}}$`);
export const PROTOCOL_PATTERN = /^[a-z][a-z0-9_-]{0,31}$/;

/**
 * NUL characters and broken UTF-16 (a lone surrogate) are refused in every string: PostgreSQL
 * stores NUL in neither TEXT nor JSONB, SQLite replaces lone surrogates, and a value must read
 * back from every store exactly as it was written.
 */
const TEXT_MESSAGE = "must be well-formed Unicode without NUL characters (U+0000)";

function badText(s: string): boolean {
  return s.includes("\u0000") || !s.isWellFormed();
}

/** Keys that would reach an object's prototype if copied with plain assignment. */
const FORBIDDEN_KEY = "__proto__";

/** `checkJsonObject` for any JSON value (an event's data may be a number or a list). */
export function checkJsonValue(value: unknown, field: string, maxBytes: number): ErrorDetail | null {
  if (value === undefined) return null;
  // Kept and put back: a getter the walk reads may itself check a value meanwhile.
  const outer = jsonBytesAtMost;
  jsonBytesAtMost = 0;
  let problem: ErrorDetail | null;
  let bound: number;
  try {
    problem = walk(value, 0);
    bound = jsonBytesAtMost;
  } finally {
    jsonBytesAtMost = outer;
  }
  if (problem) return { field: field + problem.field, message: problem.message };
  // The walk bounds the JSON's size from above: only a value that may be too large is serialized.
  checkedBytesAtMost = bound;
  if (bound <= maxBytes) return null;
  const bytes = Buffer.byteLength(JSON.stringify(value));
  if (bytes > maxBytes) return { field, message: `is ${bytes} bytes of JSON, more than the ${maxBytes} allowed` };
  checkedBytesAtMost = bytes;
  return null;
}

/** Text naming who or what caused something (a source, a cause id): short, plain and well-formed. */
export function checkLabel(value: unknown, field: string, max = 128): ErrorDetail | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== "string" || value.length === 0 || value.length > max || badText(value)) {
    return { field, message: `must be text of 1 to ${max} characters` };
  }
  return null;
}

/**
 * Checks that `value` is a plain JSON object within the limits: finite numbers, no `__proto__`
 * keys at any depth, bounded depth, key count and serialized size. Returns the first problem as
 * `{field, message}` with the field's dotted path, or null when the value is fine.
 * `constructor` and `prototype` are ordinary data keys: they are kept, and the engine only
 * ever copies own properties, so they cannot reach a prototype.
 */
export function checkJsonObject(
  value: unknown,
  field: string,
  maxBytes: number,
  maxKeys: number = Number.POSITIVE_INFINITY,
): ErrorDetail | null {
  if (!isPlainObject(value)) return { field, message: "must be a JSON object" };
  if (maxKeys !== Number.POSITIVE_INFINITY && countKeys(value) > maxKeys) return { field, message: `has more than ${maxKeys} keys` };
  return checkJsonValue(value, field, maxBytes);
}

/**
 * What `walk` has seen so far can take at most this many bytes as JSON: a string's UTF-16 unit at
 * most 6 (an escape such as \u001f; a character outside ASCII 2 to 4 for one or two units), a
 * finite number's text at most 25 characters (-0.0000019953823596627614), each value a
 * separator. Set by `checkJsonValue`, which keeps and restores an outer check's.
 */
let jsonBytesAtMost = 0;
const MAX_NUMBER_TEXT = 25;

/**
 * The first problem in a JSON value, its field relative to the value (`.key`, `[3]`, or "" for
 * the value itself): paths are built only on the way back up from a problem, not for every key.
 */
function walk(value: unknown, depth: number): ErrorDetail | null {
  if (value === null) {
    jsonBytesAtMost += 5;
    return null;
  }
  switch (typeof value) {
    case "string":
      jsonBytesAtMost += 6 * value.length + 3;
      return badText(value) ? { field: "", message: TEXT_MESSAGE } : null;
    case "boolean":
      jsonBytesAtMost += 6;
      return null;
    case "number":
      jsonBytesAtMost += MAX_NUMBER_TEXT + 1;
      return Number.isFinite(value) ? null : { field: "", message: "must be a finite number" };
    case "object": {
      if (depth >= LIMITS.jsonDepth) return { field: "", message: `nests deeper than ${LIMITS.jsonDepth} levels` };
      jsonBytesAtMost += 3;
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          const p = walk(value[i], depth + 1);
          if (p) return { field: `[${i}]${p.field}`, message: p.message };
        }
        return null;
      }
      if (!isPlainObject(value)) return { field: "", message: "must be plain JSON" };
      // for…in over own keys: unlike Object.keys, it builds no array for an object of a known shape.
      for (const key in value) {
        if (!Object.hasOwn(value, key)) continue;
        if (key === FORBIDDEN_KEY) return { field: `.${key}`, message: "the key __proto__ is not allowed" };
        if (badText(key)) return { field: "", message: `a key ${TEXT_MESSAGE}` };
        if (key.length > LIMITS.keyLength) {
          return { field: `.${clip(key, 32)}…`, message: `key longer than ${LIMITS.keyLength} characters` };
        }
        jsonBytesAtMost += 6 * key.length + 3;
        const p = walk(value[key], depth + 1);
        if (p) return { field: `.${key}${p.field}`, message: p.message };
      }
      return null;
    }
    default:
      return { field: "", message: `must be JSON, not ${typeof value}` };
  }
}

/** An object's own enumerable keys, counted without building their list. */
export function countKeys(value: object): number {
  let n = 0;
  for (const key in value) if (Object.hasOwn(value, key)) n++;
  return n;
}

/**
 * An object literal's shape: its prototype is `Object.prototype` — this realm's or another's (a
 * Node-RED function node runs in a vm context of its own, and its `{}` is built there) — or null.
 */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as object | null;
  if (proto === Object.prototype || proto === null) return true;
  // Another realm's Object.prototype: the root of its chain, with that realm's Object as constructor.
  if (Object.getPrototypeOf(proto) !== null || !Object.hasOwn(proto, "hasOwnProperty")) return false;
  const ctor = (proto as { constructor?: unknown }).constructor;
  return typeof ctor === "function" && ctor.name === "Object" && Object.prototype.toString.call(value) === "[object Object]";
}

const text = (max: number = LIMITS.textLength) =>
  z
    .string()
    .min(1, "must not be empty")
    .max(max, `must be at most ${max} characters`)
    .refine((s) => !badText(s), TEXT_MESSAGE);

const list = z
  .array(text(LIMITS.listItemLength))
  .max(LIMITS.listItems, `must have at most ${LIMITS.listItems} items`);

const jsonObject = (maxBytes: number) =>
  z.unknown().superRefine((value, ctx) => {
    const problem = checkJsonObject(value, "", maxBytes);
    if (problem) {
      const sub = problem.field.replace(/^\./, "").split(/\.|\[|\]/).filter(Boolean);
      ctx.addIssue({ code: "custom", message: problem.message, path: sub });
    }
  }) as unknown as z.ZodType<JsonObject>;

export const deviceIdSchema = z
  .string()
  .regex(DEVICE_ID_PATTERN, "must be 1-128 characters of A-Z a-z 0-9 . _ : -");

const url = z.string().max(2048).refine((s) => URL.canParse(s), "must be a URL");

export const deviceInputSchema = z.strictObject({
  id: deviceIdSchema,
  name: text().optional(),
  protocol: z.string().regex(PROTOCOL_PATTERN, "must be a protocol name such as mqtt, coap, websocket or http"),
  address: url.optional(),
  manufacturer: text().optional(),
  model: text().optional(),
  firmware: text().optional(),
  capabilities: list.optional(),
  tags: list.optional(),
  heartbeatTimeout: z.number().positive().max(LIMITS.maxHeartbeatTimeout).optional(),
  metadata: jsonObject(LIMITS.metadataBytes).optional(),
});
export type DeviceInput = z.infer<typeof deviceInputSchema>;

/** A partial update: every field optional, `null` clears an optional one, `id` may only repeat itself. */
export const devicePatchSchema = z.strictObject({
  id: deviceIdSchema.optional(),
  /** `null` resets the name to the device id. */
  name: text().nullable().optional(),
  protocol: deviceInputSchema.shape.protocol.optional(),
  address: url.nullable().optional(),
  manufacturer: text().nullable().optional(),
  model: text().nullable().optional(),
  firmware: text().nullable().optional(),
  capabilities: list.nullable().optional(),
  tags: list.nullable().optional(),
  heartbeatTimeout: z.number().positive().max(LIMITS.maxHeartbeatTimeout).nullable().optional(),
  metadata: jsonObject(LIMITS.metadataBytes).optional(),
});
export type DevicePatch = z.infer<typeof devicePatchSchema>;

export const statusSchema = z.enum(DEVICE_STATUSES);
export const prioritySchema = z.enum(PRIORITIES);

export const stateSetSchema = z.strictObject({
  desired: jsonObject(LIMITS.propertiesBytes).optional(),
  status: statusSchema.optional(),
  expectedVersion: z.number().int().nonnegative().optional(),
});
export type StateSetInput = z.infer<typeof stateSetSchema>;

/**
 * The first `n` UTF-16 units of `text` for a message, one fewer where the cut would split a
 * surrogate pair: half of one is no Unicode, and JSON would carry a lone surrogate (until
 * 2026-12-08 a key of emoji over the limit was named so).
 */
export function clip(text: string, n: number): string {
  if (text.length <= n) return text;
  const last = text.charCodeAt(n - 1);
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? n - 1 : n);
}

/**
 * Parses `input` with `schema`, or throws INVALID naming every bad field. The error message
 * names the first field so a log line alone says what to fix.
 */
export function parseInput<S extends z.ZodType>(schema: S, input: unknown, what: string): z.infer<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const details = spokenIssues(schema, input, result.error.issues).map((issue) => issueToDetail(issue));
  const first = details[0] ?? { field: what, message: "is invalid" };
  throw new TethralError("INVALID", `invalid ${what}: ${first.field} ${first.message}`, details);
}

/** A field's error as the API says it; `whole` names the input itself (a path of none). */
export function issueToDetail(issue: z.core.$ZodIssue, whole = "(body)"): ErrorDetail {
  const path = issue.path.map(String).join(".");
  if (issue.code === "unrecognized_keys") {
    const keys = issue.keys.join(", ");
    return { field: path ? `${path}.${keys}` : keys, message: "is not a known or writable field" };
  }
  if (issue.code === "invalid_type" && path === "") {
    return { field: whole, message: "must be a JSON object" };
  }
  return { field: path || whole, message: issue.message };
}

/**
 * The words of a field's error where its schema gives none: zod's own ("Invalid input: expected
 * string, received number", "Too small: expected number to be >0") said as the rest of the API
 * says it ("must be text", "must be more than 0"). Given to each parse, not set in zod's global
 * configuration, which other packages in the same Node-RED may share.
 */
const PARSE_PARAMS: z.core.ParseContext<z.core.$ZodIssue> = { error: spoken };

/**
 * A refused input's issues in those words: parsed again with the error map, so only a refusal
 * pays for it. Given to every parse, the map cost the registration hot path a third of its rate
 * (1,000,000 registrations: 89,000–101,000/s with it, 148,000–151,000 without, alternately on one
 * VM) and 180 bytes a device: zod then leaves its compiled path for one that builds a new output.
 */
export function spokenIssues(schema: z.ZodType, input: unknown, issues: z.core.$ZodIssue[]): z.core.$ZodIssue[] {
  const again = schema.safeParse(input, PARSE_PARAMS);
  return again.success ? issues : again.error.issues;
}

function spoken(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case "invalid_type":
      if (issue.input === undefined) return "is required";
      return `must be ${TYPE_WORDS[issue.expected] ?? issue.expected}`;
    case "too_small":
    case "too_big":
      return bound(issue.code === "too_small", issue.origin, Number((issue.code === "too_small" ? issue.minimum : issue.maximum) as number | bigint), issue.inclusive !== false);
    case "invalid_value":
      return issue.values.length === 1 ? `must be ${JSON.stringify(issue.values[0])}` : `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "not_multiple_of":
      return `must be a multiple of ${String(issue.divisor)}`;
    default:
      return undefined;
  }
}

const TYPE_WORDS: Record<string, string> = {
  string: "text",
  number: "a number",
  int: "a whole number",
  bigint: "a whole number",
  boolean: "true or false",
  array: "a list",
  object: "a JSON object",
  record: "a JSON object",
  null: "null",
};

/** "must be at least 1", "must be at most 128 characters", "must have at least 1 item". */
function bound(low: boolean, origin: string, limit: number, inclusive: boolean): string {
  if (origin === "string") return low && limit === 1 ? "must not be empty" : `must be ${low ? "at least" : "at most"} ${limit} characters`;
  if (origin === "array" || origin === "set") return `must have ${low ? "at least" : "at most"} ${limit} item${limit === 1 ? "" : "s"}`;
  if (inclusive) return `must be ${low ? "at least" : "at most"} ${limit}`;
  return `must be ${low ? "more" : "less"} than ${limit}`;
}

/**
 * An ISO-8601 time (RFC 3339 and its shorter forms: `2026-12-01`, `2026-12-01T10:00`,
 * `2026-12-01T10:00:00.5+01:00`) as epoch ms, NaN for anything else. Without a zone it is UTC,
 * as every time of the contract is, whatever the server's own time zone. A calendar date that
 * does not exist (February 30th) is none, and so is text around the time: Date.parse reads
 * "2026-12-07junk" as June 12th and "hello 2" as 2001.
 */
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?$/;

export function parseTime(text: string): number {
  const m = ISO_TIME.exec(text.trim());
  if (!m) return Number.NaN;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const [hour, minute, second] = [Number(m[4] ?? 0), Number(m[5] ?? 0), Number(m[6] ?? 0)];
  if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59) return Number.NaN;
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  if (date.getUTCDate() !== day) return Number.NaN;
  const ms = Number((m[7] ?? "").padEnd(3, "0").slice(0, 3));
  let offset = 0;
  if (m[9] !== undefined) {
    const [oh, om] = [Number(m[10]), Number(m[11] ?? 0)];
    if (oh > 23 || om > 59) return Number.NaN;
    offset = (m[9] === "-" ? -1 : 1) * (oh * 60 + om) * 60_000;
  }
  return date.getTime() + ((hour * 60 + minute) * 60 + second) * 1000 + ms - offset;
}

/** A time given as epoch ms, ISO text or a Date, as epoch ms; INVALID naming `field` when it is none of these. */
export function toEpoch(value: number | string | Date, field: string): number {
  const ms = value instanceof Date ? value.getTime() : typeof value === "number" ? value : parseTime(value);
  if (!Number.isFinite(ms)) throw invalid(field, "must be a time");
  return ms;
}

/** At least the bytes of JSON of the last value `checkJsonValue` passed. */
let checkedBytesAtMost = 0;
/** At least the bytes of JSON of the properties `checkProperties` last passed. */
let checkedPropertiesBytes = 0;

/**
 * At least the bytes of JSON of the properties `checkProperties` last passed (a bound, no
 * serialization): what the state manager adds to a device's total (see StateManager.checkCapacity).
 */
export function propertiesBytesAtMost(): number {
  return checkedPropertiesBytes;
}

/** Reported values as a device sends them: a JSON object within the size and key limits; INVALID otherwise. */
export function checkProperties(properties: unknown, field = "properties"): JsonObject {
  const problem = checkJsonObject(properties, field, LIMITS.propertiesBytes, LIMITS.propertyKeys);
  if (problem) throw invalid(problem.field, problem.message);
  checkedPropertiesBytes = checkedBytesAtMost;
  // Each top-level key is a time series of its own, and a series is named by its key.
  if (Object.hasOwn(properties as object, "")) throw invalid(field, "an empty key names no property");
  return properties as JsonObject;
}
