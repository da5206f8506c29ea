import type { JsonObject, JsonValue } from "./types";

/** A deep copy of a JSON value that copies own enumerable keys only (no prototype is ever reached). */
export function cloneJson<T extends JsonValue>(value: T): T {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map((v) => cloneJson(v)) as T;
  const out: JsonObject = {};
  for (const key of Object.keys(value)) defineValue(out, key, cloneJson((value as JsonObject)[key] as JsonValue));
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

const DAY_MS = 86_400_000;
const MAX_4_DIGIT_YEAR_MS = 253_402_300_800_000; // 10000-01-01T00:00:00.000Z
const isoBuffer = Buffer.from("0000-00-00T00:00:00.000Z", "latin1");
let cachedDay = Number.NaN;
let lastMs = Number.NaN;
let lastIso = "";

/**
 * Epoch ms as an ISO-8601 UTC string, as `Date#toISOString` gives it. Listing a large fleet
 * formats three timestamps per device, so the date part is cached per day and the result is
 * written as one flat string; the last value is remembered for bursts within a millisecond.
 */
export function iso(ms: number): string {
  if (ms === lastMs) return lastIso;
  if (!(ms >= 0 && ms < MAX_4_DIGIT_YEAR_MS) || !Number.isInteger(ms)) return new Date(ms).toISOString();
  const day = Math.floor(ms / DAY_MS);
  if (day !== cachedDay) {
    isoBuffer.write(new Date(day * DAY_MS).toISOString().slice(0, 11), 0, "latin1");
    cachedDay = day;
  }
  let t = ms - day * DAY_MS;
  const milli = t % 1000;
  t = (t - milli) / 1000;
  const sec = t % 60;
  t = (t - sec) / 60;
  const min = t % 60;
  const hour = (t - min) / 60;
  two(11, hour);
  two(14, min);
  two(17, sec);
  isoBuffer[20] = 48 + Math.floor(milli / 100);
  isoBuffer[21] = 48 + (Math.floor(milli / 10) % 10);
  isoBuffer[22] = 48 + (milli % 10);
  lastMs = ms;
  lastIso = isoBuffer.toString("latin1");
  return lastIso;
}

function two(at: number, n: number): void {
  isoBuffer[at] = 48 + Math.floor(n / 10);
  isoBuffer[at + 1] = 48 + (n % 10);
}

export function isoOrNull(ms: number): string | null {
  return ms > 0 ? iso(ms) : null;
}
