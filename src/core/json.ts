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

export function iso(ms: number): string {
  return new Date(ms).toISOString();
}

export function isoOrNull(ms: number): string | null {
  return ms > 0 ? new Date(ms).toISOString() : null;
}
