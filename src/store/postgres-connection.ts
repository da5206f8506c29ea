import pg from "pg";
import { TethralError } from "../core/errors";

/** Connection settings and driver-error classification of the PostgreSQL store. */

// ---- connection settings ----

/** The connection string pg gets (the password option put in) and the description for logs. */
export function connectionSettings(url: string, password?: string): { connectionString: string; description: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new TethralError("INVALID", "url: not a postgres:// URL");
  }
  if (u.protocol !== "postgres:" && u.protocol !== "postgresql:") {
    throw new TethralError("INVALID", "url: not a postgres:// URL");
  }
  if (password !== undefined && password !== "") {
    u.password = encodeURIComponent(password);
    // A URL without a host (a socket given as ?host=...) cannot carry userinfo: pg also reads
    // the password from the query string, which wins over userinfo.
    if (u.password === "") u.searchParams.set("password", password);
    else u.searchParams.delete("password");
  }
  const host = u.hostname || u.searchParams.get("host") || "localhost";
  const port = u.port || u.searchParams.get("port") || "5432";
  const database = decodeURIComponent(u.pathname.slice(1)) || decodeURIComponent(u.username) || "postgres";
  return { connectionString: u.toString(), description: `${host}:${port}/${database}` };
}

const INT8_OID = 20;
const parseInt8 = (value: string): number => Number(value);

export function bigintAsNumber(oid: number, format?: "text" | "binary"): (value: string) => unknown {
  if (oid === INT8_OID && format !== "binary") return parseInt8;
  return format === "binary" ? pg.types.getTypeParser(oid, "binary") : pg.types.getTypeParser(oid, "text");
}

// ---- error classification ----

const CONNECTION_ERRNOS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
]);
// pg's own messages for a connection lost or never made (they carry no code).
const CONNECTION_MESSAGES = new RegExp(
  [
    "Connection terminated",
    "Connection ended",
    "timeout exceeded when trying to connect",
    "Client has encountered a connection error",
    "not queryable",
    "Client was closed",
    "Too many connections",
  ].join("|"),
  "i",
);

export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/** The connection is gone or could not be made: the statement may not have reached the server. */
export function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && CONNECTION_ERRNOS.has(code)) return true;
  const state = sqlState(err);
  // 08: connection exception; 28: bad credentials; 3D000: no such database; 57P01-03: shutting
  // down; 53300: too many connections. Any other SQLSTATE came from a working connection.
  if (state !== undefined) return /^(08|28|57P0[123]$|3D000$|53300$)/.test(state);
  if (err instanceof AggregateError) return err.errors.some(isConnectionError);
  return CONNECTION_MESSAGES.test(err.message);
}

export function isSerializationFailure(err: unknown): boolean {
  const code = sqlState(err);
  return code === "40001" || code === "40P01";
}

export function isMigrationRace(err: unknown): boolean {
  // 23505: a duplicate in the catalog (pg_type); 42P07: duplicate table; 42710: duplicate object.
  const code = sqlState(err);
  return isSerializationFailure(err) || code === "23505" || code === "42P07" || code === "42710";
}

export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  if (err instanceof AggregateError && err.message === "") return err.errors.map(describeError).join("; ");
  return err.message || (err as { code?: string }).code || err.name;
}

export function withCause(err: TethralError, cause: unknown): TethralError {
  Object.defineProperty(err, "cause", { value: cause, writable: true, configurable: true, enumerable: false });
  return err;
}

export function backoffMs(attempt: number): number {
  const ceiling = Math.min(1000, 20 * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
