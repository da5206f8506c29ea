import { invalid, TethralError, errorMessage } from "../core/errors";
import type { DeviceStatus, JsonObject, Priority, StateSnapshot } from "../core/types";
import type { CommandRow, CommandStatus, DevicePresenceRow, DeviceRow, EventQuery, EventRow, HistoryRow, RetentionPolicy, StateRow, TokenRow } from "../core/ports/store";
import { DB_NOW } from "./postgres-cluster";

/**
 * The SQL of the PostgreSQL store: statements, row mapping and input checks. PostgreSQL cannot hold a NUL character
 * in TEXT or JSONB, nor a lone UTF-16 surrogate (the driver would silently turn it into U+FFFD):
 * such values are refused with INVALID before anything is sent, naming the field, so a batch
 * never half-fails on the server and nothing is stored other than as given.
 */

// Matches \u0000 or a \uD800-\uDFFF escape that is not itself escaped (an odd run of backslashes).
// JSON.stringify escapes exactly these: NUL as \u0000 and lone surrogates (ES2019) as \udXXX;
// well-formed pairs are written as the characters themselves.
const BAD_JSON_ESCAPE = /(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/i;
// A NUL, or a surrogate that is not part of a well-formed pair.
const BAD_TEXT = /\0|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** A TEXT parameter, checked. */
export function text(value: string, field: string): string {
  if (BAD_TEXT.test(value)) throw invalid(field, "contains a NUL character or a lone surrogate, which PostgreSQL cannot store");
  return value;
}

export function optText(value: string | null | undefined, field: string): string | null {
  return value === null || value === undefined ? null : text(value, field);
}

/**
 * A JSONB parameter as JSON text: pg would send a JS array as a PostgreSQL array, and a string
 * unquoted, so every JSON value goes as text the server casts with `::jsonb`.
 */
export function json(value: unknown, field: string): string {
  let out: string | undefined;
  try {
    out = JSON.stringify(value);
  } catch (err) {
    throw invalid(field, `is not JSON (${errorMessage(err)})`);
  }
  // undefined (or a function) has no JSON form: it is kept as JSON null.
  if (out === undefined) return "null";
  if (out.includes("\\u") && BAD_JSON_ESCAPE.test(out)) {
    throw invalid(field, "contains a NUL character or a lone surrogate, which PostgreSQL cannot store");
  }
  return out;
}

/** A nullable JSONB parameter: null and undefined are SQL NULL. */
export function optJson(value: unknown, field: string): string | null {
  return value === null || value === undefined ? null : json(value, field);
}

type Row = Record<string, unknown>;

const num = (v: unknown): number => (typeof v === "number" ? v : Number(v));
const str = (v: unknown): string => v as string;
const optStr = (v: unknown): string | null => (v === null || v === undefined ? null : (v as string));

export function toDeviceRow(r: Row): DeviceRow {
  return {
    id: str(r.id),
    name: str(r.name),
    protocol: str(r.protocol),
    address: optStr(r.address),
    manufacturer: optStr(r.manufacturer),
    model: optStr(r.model),
    firmware: optStr(r.firmware),
    capabilities: r.capabilities as string[],
    tags: r.tags as string[],
    heartbeatTimeout: r.heartbeat_timeout === null ? null : num(r.heartbeat_timeout),
    metadata: r.metadata as JsonObject,
    status: r.status as DeviceStatus,
    lastSeen: num(r.last_seen),
    ...(r.last_message !== undefined && r.last_message !== null && Number(r.last_message) !== 0 && { lastMessage: Number(r.last_message) }),
    ...(r.learned_timeout !== undefined && r.learned_timeout !== null && Number(r.learned_timeout) > 0 && { learnedTimeout: Number(r.learned_timeout) }),
    ...(r.offline_since !== undefined && r.offline_since !== null && Number(r.offline_since) > 0 && { offlineSince: Number(r.offline_since) }),
    createdAt: num(r.created_at),
    updatedAt: num(r.updated_at),
  };
}

/**
 * Device, state and token rows as toDeviceRow, toStateRow and toTokenRow read them: named, so a
 * column only a cluster's following reads (stored_at) is not fetched and parsed with each of a
 * fleet's rows.
 */
export const DEVICE_ROW = "id, name, protocol, address, manufacturer, model, firmware, capabilities, tags, heartbeat_timeout, metadata, status, last_seen, last_message, learned_timeout, offline_since, created_at, updated_at";
export const STATE_ROW = "device_id, properties, desired, version, changed_at, updated_at, reported_at, rev, point_ts";
export const TOKEN_ROW = "device_id, hash, created_at";

/** A device's token; `stored_at`, the database's clock, is what cluster members follow tokens by. */
export const UPSERT_TOKEN = `INSERT INTO device_tokens (device_id, hash, created_at, stored_at) VALUES ($1, $2, $3, ${DB_NOW})
  ON CONFLICT (device_id) DO UPDATE SET hash = excluded.hash, created_at = excluded.created_at, stored_at = excluded.stored_at`;

export function toStateRow(r: Row): StateRow {
  return {
    deviceId: str(r.device_id),
    properties: r.properties as JsonObject,
    desired: r.desired as JsonObject,
    version: num(r.version),
    changedAt: num(r.changed_at),
    updatedAt: num(r.updated_at),
    reportedAt: num(r.reported_at),
    rev: num(r.rev),
    pointTs: num(r.point_ts),
  };
}

export function toHistoryRow(r: Row): HistoryRow {
  return {
    id: str(r.id),
    deviceId: str(r.device_id),
    at: num(r.at),
    version: num(r.version),
    from: r.from_state as StateSnapshot,
    to: r.to_state as StateSnapshot,
    reason: str(r.reason),
    causeId: optStr(r.cause_id),
  };
}

export function toEventRow(r: Row): EventRow {
  return {
    id: str(r.id),
    type: str(r.type),
    priority: r.priority as Priority,
    source: str(r.source),
    deviceId: optStr(r.device_id),
    data: r.data,
    timestamp: num(r.ts),
    expiresAt: num(r.expires_at),
    causeId: optStr(r.cause_id),
    parentCauseId: optStr(r.parent_cause_id),
  };
}

export function toTokenRow(r: Row): TokenRow {
  return { deviceId: str(r.device_id), hash: str(r.hash), createdAt: num(r.created_at) };
}

export function toCommandRow(r: Row): CommandRow {
  return {
    id: str(r.id),
    deviceId: str(r.device_id),
    command: str(r.command),
    params: r.params as JsonObject,
    status: r.status as CommandStatus,
    attempts: num(r.attempts),
    priority: r.priority as Priority,
    createdAt: num(r.created_at),
    sentAt: num(r.sent_at),
    completedAt: num(r.completed_at),
    expiresAt: num(r.expires_at),
    result: r.result ?? null,
    error: optStr(r.error),
    options: r.options as JsonObject,
  };
}

/** A LIKE pattern for an event-type pattern: `*` matches anything, everything else literally. */
export function likePattern(pattern: string): string {
  return pattern.split("*").map((part) => part.replace(/[\\%_]/g, (c) => `\\${c}`)).join("%");
}

/** The SELECT of an event-history query: unexpired events that match, newest first. */
export function eventsQuery(query: EventQuery, now: number): { sql: string; params: unknown[] } {
  const params: unknown[] = [now];
  const where = ["(expires_at = 0 OR expires_at > $1)"];
  const param = (value: unknown): string => `$${params.push(value)}`;
  if (query.types && query.types.length > 0) {
    const exact = query.types.filter((t) => !t.includes("*"));
    const alternatives = query.types.filter((t) => t.includes("*")).map((t) => `type LIKE ${param(likePattern(t))} ESCAPE '\\'`);
    if (exact.length > 0) alternatives.unshift(`type = ANY(${param(exact)}::text[])`);
    where.push(`(${alternatives.join(" OR ")})`);
  }
  // An empty list matches nothing (a priority filter and a minimum that leave no priority).
  if (query.priorities !== undefined) where.push(`priority = ANY(${param(query.priorities)}::text[])`);
  if (query.deviceId !== undefined) where.push(`device_id = ${param(query.deviceId)}`);
  if (query.source !== undefined) where.push(`source = ${param(query.source)}`);
  if (query.since !== undefined) where.push(`ts >= ${param(query.since)}`);
  const limit = param(Math.floor(query.limit));
  return { sql: `SELECT * FROM events WHERE ${where.join(" AND ")} ORDER BY ts DESC, id DESC LIMIT ${limit}`, params };
}

/**
 * Column arrays of rows, for `unnest($1::text[], ...)`: one parameter per column, any row count.
 * With `where`, a refused value names its row in the batch: by position (`events[12].data`), or
 * by device id for the rows merged per device (`states["d1"].properties`).
 */
export function columns<T>(
  rows: readonly T[],
  pick: ReadonlyArray<(row: T) => unknown>,
  where?: { kind: string; offset: number; key?: (row: T) => string },
): unknown[][] {
  const out: unknown[][] = pick.map(() => new Array<unknown>(rows.length));
  let i = 0;
  try {
    for (; i < rows.length; i++) {
      const row = rows[i]!;
      for (let c = 0; c < pick.length; c++) out[c]![i] = pick[c]!(row);
    }
  } catch (err) {
    const detail = err instanceof TethralError ? err.details[0] : undefined;
    if (!where || !detail) throw err;
    const at = where.key ? JSON.stringify(where.key(rows[i]!)) : String(where.offset + i);
    throw invalid(`${where.kind}[${at}].${detail.field}`, detail.message);
  }
  return out;
}

// ---- single-row statements: parameters checked as they are built ----

/**
 * Registering an id clears the tombstone its removal left (see migration 4), in the same
 * statement: a data-modifying WITH runs whether or not it is read (PostgreSQL and CockroachDB).
 */
export const UPSERT_DEVICE = `WITH untombstoned AS (DELETE FROM removed_devices WHERE device_id = $1)
       INSERT INTO devices (id, name, protocol, address, manufacturer, model, firmware, capabilities, tags,
         heartbeat_timeout, metadata, status, last_seen, created_at, updated_at, stored_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11::jsonb, $12, $13, $14, $15, ${DB_NOW})
       ON CONFLICT (id) DO UPDATE SET name = excluded.name, protocol = excluded.protocol,
         address = excluded.address, manufacturer = excluded.manufacturer, model = excluded.model,
         firmware = excluded.firmware, capabilities = excluded.capabilities, tags = excluded.tags,
         heartbeat_timeout = excluded.heartbeat_timeout, metadata = excluded.metadata, status = excluded.status,
         last_seen = excluded.last_seen, created_at = excluded.created_at, updated_at = excluded.updated_at,
         stored_at = excluded.stored_at`;

export function deviceParams(d: DeviceRow): unknown[] {
  return [
    text(d.id, "id"),
    text(d.name, "name"),
    text(d.protocol, "protocol"),
    optText(d.address, "address"),
    optText(d.manufacturer, "manufacturer"),
    optText(d.model, "model"),
    optText(d.firmware, "firmware"),
    json(d.capabilities, "capabilities"),
    json(d.tags, "tags"),
    d.heartbeatTimeout,
    json(d.metadata, "metadata"),
    text(d.status, "status"),
    d.lastSeen,
    d.createdAt,
    d.updatedAt,
  ];
}

// ---- batch statements: unnest of one array per column, so one statement text serves any row count ----

export const DELETE_DEVICE = [
  "DELETE FROM devices WHERE id = $1",
  "DELETE FROM states WHERE device_id = $1",
  "DELETE FROM device_tokens WHERE device_id = $1",
  "DELETE FROM state_history WHERE device_id = $1",
  "DELETE FROM commands WHERE device_id = $1",
];

/**
 * `stored_at`: the database's clock, what cluster members follow the row by (see migration 11).
 * A row without a fingerprint (0: a status set with a desired state, or no cluster) keeps the
 * stored one, which a successor skips resent messages by.
 */
export const UPDATE_PRESENCE = `UPDATE devices AS d SET status = v.status, last_seen = v.last_seen,
  last_message = CASE WHEN v.last_message = 0 THEN d.last_message ELSE v.last_message END,
  learned_timeout = CASE WHEN v.learned_timeout = 0 THEN d.learned_timeout ELSE v.learned_timeout END, offline_since = v.offline_since, stored_at = ${DB_NOW}
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[]) AS v(id, status, last_seen, last_message, learned_timeout, offline_since) WHERE d.id = v.id`;
export const PRESENCE_COLUMNS = [
  (p: DevicePresenceRow) => text(p.id, "id"),
  (p: DevicePresenceRow) => text(p.status, "status"),
  (p: DevicePresenceRow) => p.lastSeen,
  (p: DevicePresenceRow) => p.lastMessage ?? 0,
  (p: DevicePresenceRow) => p.learnedTimeout ?? 0,
  (p: DevicePresenceRow) => p.offlineSince ?? 0,
];

export const UPSERT_STATES = `INSERT INTO states (device_id, properties, desired, version, changed_at, updated_at, reported_at, rev, point_ts, stored_at)
  SELECT v.device_id, v.properties::jsonb, v.desired::jsonb, v.version, v.changed_at, v.updated_at, v.reported_at, v.rev, v.point_ts, ${DB_NOW}
  FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
    AS v(device_id, properties, desired, version, changed_at, updated_at, reported_at, rev, point_ts)
  ON CONFLICT (device_id) DO UPDATE SET properties = excluded.properties, desired = excluded.desired,
    version = excluded.version, changed_at = excluded.changed_at, updated_at = excluded.updated_at,
    reported_at = excluded.reported_at, rev = excluded.rev, point_ts = excluded.point_ts, stored_at = excluded.stored_at
  WHERE states.rev <= excluded.rev`;
export const STATE_COLUMNS = [
  (s: StateRow) => text(s.deviceId, "deviceId"),
  (s: StateRow) => json(s.properties, "properties"),
  (s: StateRow) => json(s.desired, "desired"),
  (s: StateRow) => s.version,
  (s: StateRow) => s.changedAt,
  (s: StateRow) => s.updatedAt,
  (s: StateRow) => s.reportedAt,
  (s: StateRow) => s.rev,
  (s: StateRow) => s.pointTs ?? 0,
];

export const INSERT_HISTORY = `INSERT INTO state_history (id, device_id, at, version, from_state, to_state, reason, cause_id)
  SELECT v.id, v.device_id, v.at, v.version, v.from_state::jsonb, v.to_state::jsonb, v.reason, v.cause_id
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[])
    AS v(id, device_id, at, version, from_state, to_state, reason, cause_id)
  ON CONFLICT (id) DO NOTHING`;
export const HISTORY_COLUMNS = [
  (h: HistoryRow) => text(h.id, "id"),
  (h: HistoryRow) => text(h.deviceId, "deviceId"),
  (h: HistoryRow) => h.at,
  (h: HistoryRow) => h.version,
  (h: HistoryRow) => json(h.from, "from"),
  (h: HistoryRow) => json(h.to, "to"),
  (h: HistoryRow) => text(h.reason, "reason"),
  (h: HistoryRow) => optText(h.causeId, "causeId"),
];

export const INSERT_EVENTS = `INSERT INTO events (id, type, priority, source, device_id, data, ts, expires_at, cause_id, parent_cause_id)
  SELECT v.id, v.type, v.priority, v.source, v.device_id, v.data::jsonb, v.ts, v.expires_at, v.cause_id, v.parent_cause_id
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::text[], $10::text[])
    AS v(id, type, priority, source, device_id, data, ts, expires_at, cause_id, parent_cause_id)
  ON CONFLICT (id) DO NOTHING`;
export const EVENT_COLUMNS = [
  (e: EventRow) => text(e.id, "id"),
  (e: EventRow) => text(e.type, "type"),
  (e: EventRow) => text(e.priority, "priority"),
  (e: EventRow) => text(e.source, "source"),
  (e: EventRow) => optText(e.deviceId, "deviceId"),
  (e: EventRow) => json(e.data, "data"),
  (e: EventRow) => e.timestamp,
  (e: EventRow) => e.expiresAt,
  (e: EventRow) => optText(e.causeId, "causeId"),
  (e: EventRow) => optText(e.parentCauseId, "parentCauseId"),
];

export const UPSERT_COMMANDS = `INSERT INTO commands (id, device_id, command, params, status, attempts, priority, created_at, sent_at,
    completed_at, expires_at, result, error, options)
  SELECT v.id, v.device_id, v.command, v.params::jsonb, v.status, v.attempts, v.priority, v.created_at, v.sent_at,
    v.completed_at, v.expires_at, v.result::jsonb, v.error, v.options::jsonb
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[],
    $10::bigint[], $11::bigint[], $12::text[], $13::text[], $14::text[])
    AS v(id, device_id, command, params, status, attempts, priority, created_at, sent_at, completed_at, expires_at, result, error, options)
  ON CONFLICT (id) DO UPDATE SET device_id = excluded.device_id, command = excluded.command,
    params = excluded.params, status = excluded.status, attempts = excluded.attempts,
    priority = excluded.priority, created_at = excluded.created_at, sent_at = excluded.sent_at,
    completed_at = excluded.completed_at, expires_at = excluded.expires_at, result = excluded.result,
    error = excluded.error, options = excluded.options`;
export const COMMAND_COLUMNS = [
  (c: CommandRow) => text(c.id, "id"),
  (c: CommandRow) => text(c.deviceId, "deviceId"),
  (c: CommandRow) => text(c.command, "command"),
  (c: CommandRow) => json(c.params, "params"),
  (c: CommandRow) => text(c.status, "status"),
  (c: CommandRow) => c.attempts,
  (c: CommandRow) => text(c.priority, "priority"),
  (c: CommandRow) => c.createdAt,
  (c: CommandRow) => c.sentAt,
  (c: CommandRow) => c.completedAt,
  (c: CommandRow) => c.expiresAt,
  (c: CommandRow) => optJson(c.result, "result"),
  (c: CommandRow) => optText(c.error, "error"),
  (c: CommandRow) => json(c.options, "options"),
];

/** Rows per statement: bounds the message size of one statement (parameters stay one per column). */
const CHUNK_ROWS = 5000;

/** Column arrays of `rows` in statements of at most CHUNK_ROWS rows. */
export function chunkedColumns<T>(
  kind: string,
  rows: readonly T[],
  pick: ReadonlyArray<(row: T) => unknown>,
  key?: (row: T) => string,
): unknown[][][] {
  const out: unknown[][][] = [];
  for (let offset = 0; offset < rows.length; offset += CHUNK_ROWS) {
    out.push(columns(rows.slice(offset, offset + CHUNK_ROWS), pick, { kind, offset, key }));
  }
  return out;
}

/**
 * One row per key, in first-seen order: a multi-row `ON CONFLICT DO UPDATE` may not touch a row
 * twice, and `UPDATE ... FROM` with two matches picks either. `replaces(next, kept)` decides.
 */
export function lastById<T>(rows: readonly T[], key: (row: T) => string, replaces: (next: T, kept: T) => boolean): T[] {
  if (rows.length < 2) return rows as T[];
  const index = new Map<string, number>();
  const out: T[] = [];
  for (const row of rows) {
    const k = key(row);
    const at = index.get(k);
    if (at === undefined) {
      index.set(k, out.length);
      out.push(row);
    } else if (replaces(row, out[at]!)) {
      out[at] = row;
    }
  }
  return out;
}

/**
 * One bounded round of retention over history, events and commands (at most `n` rows of each),
 * through `query` (the store's, with its retries and error codes).
 */
export async function purgeRows(
  query: (sql: string, params: unknown[]) => Promise<{ rowCount: number | null; rows: Record<string, unknown>[] }>,
  policy: RetentionPolicy,
  now: number,
  n: number,
): Promise<{ history: number; events: number; commands: number }> {
  const result = { history: 0, events: 0, commands: 0 };
  const deleteIds = async (table: string, select: string, params: unknown[]) =>
    (await query(`DELETE FROM ${table} WHERE id IN (${select})`, params)).rowCount ?? 0;
  if (policy.historyMaxAgeMs > 0) {
    result.history += await deleteIds("state_history", "SELECT id FROM state_history WHERE at < $1 LIMIT $2", [now - policy.historyMaxAgeMs, n]);
  }
  if (policy.historyMaxPerDevice > 0 && result.history < n) {
    result.history += await deleteIds(
      "state_history",
      `SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY device_id ORDER BY at DESC, version DESC) AS rn
         FROM state_history) ranked WHERE rn > $1 LIMIT $2`,
      [policy.historyMaxPerDevice, n - result.history],
    );
  }
  // Expired events go whatever the policy; old ones only when an age limit is set.
  result.events += await deleteIds(
    "events",
    policy.eventsMaxAgeMs > 0
      ? "SELECT id FROM events WHERE ts < $3 OR (expires_at <> 0 AND expires_at <= $1) LIMIT $2"
      : "SELECT id FROM events WHERE expires_at <> 0 AND expires_at <= $1 LIMIT $2",
    policy.eventsMaxAgeMs > 0 ? [now, n, now - policy.eventsMaxAgeMs] : [now, n],
  );
  if (policy.eventsMaxRows > 0 && result.events < n) {
    const { rows } = await query("SELECT COUNT(*) AS count FROM events", []);
    const excess = Math.min(Number(rows[0]!.count) - policy.eventsMaxRows, n - result.events);
    if (excess > 0) result.events += await deleteIds("events", "SELECT id FROM events ORDER BY ts, id LIMIT $1", [excess]);
  }
  if (policy.commandsMaxAgeMs > 0) {
    result.commands = await deleteIds(
      "commands",
      "SELECT id FROM commands WHERE completed_at > 0 AND completed_at < $1 LIMIT $2",
      [now - policy.commandsMaxAgeMs, n],
    );
  }
  return result;
}
