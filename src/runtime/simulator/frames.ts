import type { JsonObject } from "../../core/types";
import type { CommandFrame } from "../../protocols/types";

/** A command frame `{"id", "command", "params"}` from JSON text (or an already parsed value), or null. */
export function parseCommand(input: string | unknown): CommandFrame | null {
  let value: unknown = input;
  if (typeof input === "string") {
    try {
      value = JSON.parse(input);
    } catch {
      return null;
    }
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  const { id, command, params } = value as Record<string, unknown>;
  if (typeof id !== "string" || typeof command !== "string") return null;
  const ok = typeof params === "object" && params !== null && !Array.isArray(params);
  return { id, command, params: ok ? (params as JsonObject) : {} };
}
