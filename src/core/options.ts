/** Options as callers give them: any nested field may be left out and keeps its default. */
export type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? (T[K] extends unknown[] ? T[K] : DeepPartial<T[K]>) : T[K] };

/** `defaults` with `override` laid over it field by field; an array is one value, replaced whole. */
export function merge<T extends object>(defaults: T, override: DeepPartial<T> | undefined): T {
  if (!override) return defaults;
  const out = { ...defaults } as Record<string, unknown>;
  for (const [key, value] of Object.entries(override)) {
    if (value === undefined) continue;
    const base = (defaults as Record<string, unknown>)[key];
    out[key] =
      base !== null && typeof base === "object" && !Array.isArray(base) && typeof value === "object" && value !== null
        ? merge(base as object, value as DeepPartial<object>)
        : value;
  }
  return out as T;
}
