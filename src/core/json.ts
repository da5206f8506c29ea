import { emptyObject } from "./plain";
import type { JsonObject, JsonValue } from "./types";

/** A deep copy of a JSON value that copies own enumerable keys only (no prototype is ever reached). */
export function cloneJson<T extends JsonValue>(value: T): T {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map((v) => cloneJson(v)) as T;
  // Not a literal: clones travel in events, which the event history keeps (see plain.ts).
  const out: JsonObject = emptyObject();
  // for…in over own keys: unlike Object.keys, it builds no array for an object of a known shape.
  for (const key in value) if (Object.hasOwn(value, key)) defineValue(out, key, cloneJson((value as JsonObject)[key] as JsonValue));
  return out as T;
}

/**
 * Sets a key as an own data property, so a key named `__proto__` or `constructor` stays plain
 * data. Plain assignment would call the `__proto__` setter instead.
 */
export function defineValue(target: JsonObject, key: string, value: JsonValue): void {
  if (key === "__proto__") {
    Object.defineProperty(target, key, { value, writable: true, enumerable: true, configurable: true });
  } else {
    target[key] = value;
  }
}

/** Structural equality of two JSON values. */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const ak = Object.keys(a);
  if (ak.length !== Object.keys(b).length) return false;
  for (const k of ak) {
    if (!Object.hasOwn(b, k) || !jsonEqual((a as JsonObject)[k], (b as JsonObject)[k])) return false;
  }
  return true;
}

export function isEmptyObject(value: object): boolean {
  for (const _ in value) return false;
  return true;
}

const MAX_4_DIGIT_YEAR_MS = 253_402_300_800_000; // 10000-01-01T00:00:00.000Z
/** ".000Z" … ".999Z": the millisecond tail of every ISO text. */
const MILLI_TAILS = Array.from({ length: 1000 }, (_, i) => `.${String(i).padStart(3, "0")}Z`);
/**
 * A direct-mapped cache by epoch second (second mod 256): "YYYY-MM-DDTHH:MM:SS" of that second,
 * and the last whole text made in it with its millisecond time.
 */
const SECOND_SLOTS = 256;
const slotSecond = new Float64Array(SECOND_SLOTS).fill(Number.NaN);
const slotHead: string[] = new Array<string>(SECOND_SLOTS).fill("");
const slotMs = new Float64Array(SECOND_SLOTS).fill(Number.NaN);
const slotText: string[] = new Array<string>(SECOND_SLOTS).fill("");

/**
 * Epoch ms as an ISO-8601 UTC string, as `Date#toISOString` gives it. Listing a large fleet
 * formats three timestamps per device, and a fleet's timestamps crowd into few seconds (often the
 * same millisecond: created and updated together), so the text up to the second is cached per
 * second, the milliseconds come from a table, and the last text of each second is kept whole.
 */
export function iso(ms: number): string {
  if (!(ms >= 0 && ms < MAX_4_DIGIT_YEAR_MS) || !Number.isInteger(ms)) return new Date(ms).toISOString();
  // Division and floor, not `%`: past 2^31 a remainder is a floating-point call.
  const second = Math.floor(ms / 1000);
  const slot = second & (SECOND_SLOTS - 1);
  if (slotMs[slot] === ms) return slotText[slot]!;
  const milli = ms - second * 1000;
  let head = slotHead[slot]!;
  if (slotSecond[slot] !== second) {
    head = new Date(ms - milli).toISOString().slice(0, 19);
    slotSecond[slot] = second;
    slotHead[slot] = head;
  }
  const text = head + MILLI_TAILS[milli]!;
  slotMs[slot] = ms;
  slotText[slot] = text;
  return text;
}

export function isoOrNull(ms: number): string | null {
  return ms > 0 ? iso(ms) : null;
}
