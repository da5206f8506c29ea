import { type ErrorCode, type ErrorDetail, isTethralError, TethralError } from "../core/errors";
import type { SqliteDatabase } from "./sqlite-database";

/** What the SQLite store and its database thread say to each other. */

/**
 * Pages the database thread lets into the WAL before it checkpoints itself, while its
 * checkpointer thread does that work (see `WalCheckpointer`): a backstop only.
 */
export const BACKSTOP_PAGES = 10_000;

/** Whether a store path names an in-memory database (`:memory:`, or blank: SQLite's private temporary one). */
export function isInMemoryPath(path: string): boolean {
  return path === ":memory:" || path === "";
}

/** The calls the thread answers: SqliteDatabase's public methods, by name. */
export const SQLITE_METHODS = [
  "open", "close", "ping", "walAutocheckpoint", "cacheSize", "schemaVersion", "upsertDevice", "deleteDevice", "upsertState", "writeBatch",
  "beginBatch", "writePart", "commitBatch", "rollbackBatch",
  "loadDevicesPage", "loadStatesPage", "stateHistory", "events", "putToken", "getToken", "loadTokens", "deleteToken",
  "putCommand", "putCommands", "getCommand", "pendingCommands", "deleteCommand", "deviceCommands", "purge",
  "points", "buckets", "telemetryKeys",
] as const satisfies readonly (keyof SqliteDatabase)[];

export type SqliteMethod = (typeof SQLITE_METHODS)[number];

export interface SqliteRequest {
  id: number;
  method: SqliteMethod;
  args: unknown[];
}

export type SqliteReply = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: WireError };

/** An error as plain data: structured clone keeps an Error's message but drops `code` and `details`. */
export interface WireError {
  name: string;
  message: string;
  code?: string;
  details?: ErrorDetail[];
  cause?: WireError;
}

export function toWire(err: unknown, depth = 0): WireError {
  if (!(err instanceof Error)) return { name: "Error", message: String(err) };
  const wire: WireError = { name: err.name, message: err.message };
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string") wire.code = code;
  if (isTethralError(err)) wire.details = err.details.map((d) => ({ field: d.field, message: d.message }));
  if (err.cause !== undefined && depth < 3) wire.cause = toWire(err.cause, depth + 1);
  return wire;
}

/** The error again, made on this side so its stack shows the caller; a TethralError stays one. */
export function fromWire(wire: WireError): Error {
  let err: Error;
  if (wire.name === "TethralError" && wire.code !== undefined) {
    err = new TethralError(wire.code as ErrorCode, wire.message, wire.details ?? []);
  } else {
    err = new Error(wire.message);
    err.name = wire.name;
    if (wire.code !== undefined) (err as Error & { code: string }).code = wire.code;
  }
  if (wire.cause) err.cause = fromWire(wire.cause);
  return err;
}
