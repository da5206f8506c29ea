import { z } from "zod";

// How a tethral-hub node's fields are read (hub-config.ts, protocol-config.ts, cluster-config.ts).

/**
 * Node-RED replaces a property that is exactly `${VAR}` with the variable's value, and leaves
 * it as written when the variable is not set: name the variable rather than say "not a number".
 */
export const UNRESOLVED_ENV = /^\$\{([^}]+)\}$/;

export const unsetVariable = (name: string) => `uses the environment variable ${name}, which is not set`;

export function unresolvedEnv(value: string, ctx: z.RefinementCtx): boolean {
  const env = UNRESOLVED_ENV.exec(value);
  if (env) ctx.addIssue({ code: "custom", message: unsetVariable(env[1]!) });
  return env !== null;
}

/** Editor fields arrive as strings (or numbers); blank means "use the default". */
export function toNumber(value: unknown, ctx: z.RefinementCtx): unknown {
  if (value === null || value === undefined) return undefined;
  if (typeof value !== "string") return value;
  const s = value.trim();
  if (s === "") return undefined;
  if (unresolvedEnv(s, ctx)) return z.NEVER;
  return /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s) ? Number(s) : s;
}

export const TRUE_WORDS = new Set(["true", "on", "yes", "1"]);
export const FALSE_WORDS = new Set(["false", "off", "no", "0", ""]);

/** Checkboxes give booleans; an `${ENV}` value gives a word. */
export function toBoolean(value: unknown, ctx: z.RefinementCtx): unknown {
  if (value === null || value === undefined) return undefined;
  if (typeof value !== "string") return value;
  const s = value.trim().toLowerCase();
  if (unresolvedEnv(value.trim(), ctx)) return z.NEVER;
  if (TRUE_WORDS.has(s)) return true;
  if (FALSE_WORDS.has(s)) return false;
  return value;
}

/** A text field: trimmed, blank means "use the default". `${VAR}` is checked where it is used. */
export function toText(value: unknown): unknown {
  if (value === null || value === undefined) return undefined;
  if (typeof value !== "string") return value;
  const s = value.trim();
  return s === "" ? undefined : s;
}

/** A choice from a select; an `${ENV}` value may give it in any case. */
export function toChoice(value: unknown, ctx: z.RefinementCtx): unknown {
  const s = toText(value);
  if (typeof s !== "string") return s;
  if (unresolvedEnv(s, ctx)) return z.NEVER;
  return s.toLowerCase();
}

export const NOT_A_NUMBER = { error: "must be a number" };
export const NOT_TEXT = { error: "must be text" };

/** Zod schemas of editor fields (strings, blanks, `${ENV}` values), shared by every hub setting. */
export const setting = {
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
  text: (max: number, fallback: string) =>
    z.preprocess(toText, z.string(NOT_TEXT).max(max, `must be at most ${max} characters`).default(fallback)),
};
