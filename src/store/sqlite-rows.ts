import { invalid, errorMessage } from "../core/errors";
import { checkPointOf, pointText } from "./series";
import { PointBatch } from "../core/point-batch";
import type { DeviceStatus, JsonObject, Priority } from "../core/types";
import {
  type CommandRow,
  type CommandStatus,
  type DeviceRow,
  type EventRow,
  type HistoryRow,
  PENDING_COMMAND_STATUSES,
  type StateRow,
  type TokenRow,
  type WriteBatch,
} from "../core/ports/store";

/**
 * Columns, raw rows and their mapping to the store's row shapes, for the SQLite store. The
 * encoding and decoding run on the store's side, the SQL on the database thread in between.
 */

export const DEVICE_COLS = [
  "id", "name", "protocol", "address", "manufacturer", "model", "firmware", "capabilities", "tags",
  "heartbeat_timeout", "metadata", "status", "last_seen", "created_at", "updated_at",
];
/** The columns a device is loaded with: DEVICE_COLS (what a device write sets), and what presence writes set besides. */
export const DEVICE_LOAD_COLS = [...DEVICE_COLS, "learned_timeout", "offline_since"];
/** JSON columns, read as JSON (not as text holding JSON) where the database builds a page of rows (see `jsonPageSql`). */
const JSON_COLS: ReadonlySet<string> = new Set(["capabilities", "tags", "metadata", "properties", "desired"]);

/**
 * A page of a table in primary-key order as one JSON text, built by SQLite: `[[row], …]`, the
 * last key and the count. Handing one string to the store's side costs a copy, where 100,000
 * rows as arrays cost a structured clone each way and three JSON.parse calls a device; JSON
 * columns come out as JSON values, so the single JSON.parse on that side builds the objects.
 * Numbers round-trip: SQLite writes a REAL with the 17 digits it needs. A page holds at most
 * the given rows and stops at the row that takes its text past the given characters (always one row at
 * least): rows of up to half a megabyte each (a state's properties and desired) must not make a
 * text longer than V8's or SQLite's longest. Parameters: the key to start after, rows, characters.
 */
export function jsonPageSql(table: string, key: string, cols: readonly string[]): string {
  const values = cols.map((c) => (JSON_COLS.has(c) ? `json(${c})` : c)).join(", ");
  return `SELECT '[' || coalesce(group_concat(row, ','), '') || ']', max(k), count(*) FROM (
      SELECT k, row, sum(length(row)) OVER (ORDER BY k ROWS UNBOUNDED PRECEDING) - length(row) AS before
      FROM (SELECT ${key} AS k, json_array(${values}) AS row FROM ${table} WHERE ${key} > ? ORDER BY ${key} LIMIT ?)
    ) WHERE before < ?`;
}

/** A page as `jsonPageSql` answers it: rows as JSON text, the last key (the next page starts after it), the count. */
export type JsonPage = [rows: string, last: string | null, count: number];

export const STATE_COLS = ["device_id", "properties", "desired", "version", "changed_at", "updated_at", "reported_at", "rev", "point_ts"];
/** `history_runs`: a run of one device's transitions (see sqlite-history.ts). */
export const RUN_COLS = ["device_id", "first_at", "last_at", "last_version", "n", "rows"];
export const EVENT_COLS = ["id", "type", "priority", "source", "device_id", "data", "ts", "expires_at", "cause_id", "parent_cause_id"];
export const COMMAND_COLS = [
  "id", "device_id", "command", "params", "status", "attempts", "priority", "created_at", "sent_at",
  "completed_at", "expires_at", "result", "error", "options",
];

export const updateAll = (cols: string[], key: string) =>
  cols.filter((c) => c !== key).map((c) => `${c} = excluded.${c}`).join(", ");

/** The tail of each multi-row insert: what a conflict on the key does. */
export const ON_CONFLICT = {
  states: `ON CONFLICT(device_id) DO UPDATE SET ${updateAll(STATE_COLS, "device_id")} WHERE excluded.rev >= states.rev`,
  history_runs: "",
  events: "ON CONFLICT(id) DO NOTHING",
} as const;
export type ChunkTable = keyof typeof ON_CONFLICT;
export const CHUNK_COLS: Record<ChunkTable, string[]> = { states: STATE_COLS, history_runs: RUN_COLS, events: EVENT_COLS };

export const PENDING_SQL = PENDING_COMMAND_STATUSES.map((s) => `'${s}'`).join(", ");

// Rows as SQLite gives them in raw mode: one array per row, in the order of the *_COLS lists.
// Arrays cost the database thread and the copy between threads far less than keyed objects.
/** A transition as a run holds it, in its JSON array. */
export type RunEntry = [id: string, at: number, version: number, from: unknown, to: unknown, reason: string, causeId: string | null];
export type RawEvent = [
  id: string, type: string, priority: string, source: string, deviceId: string | null, data: string,
  timestamp: number, expiresAt: number, causeId: string | null, parentCauseId: string | null,
];
export type RawCommand = [
  id: string, deviceId: string, command: string, params: string, status: string, attempts: number,
  priority: string, createdAt: number, sentAt: number, completedAt: number, expiresAt: number,
  result: string | null, error: string | null, options: string,
];
export type RawToken = [deviceId: string, hash: string, createdAt: number];
export const TOKEN_COLS = ["device_id", "hash", "created_at"];

/** JSON text of a value; a value JSON cannot carry (BigInt, a cycle, a function) is INVALID. */
export function json(value: unknown, field: string): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value === undefined ? null : value);
  } catch (err) {
    throw invalid(field, `cannot be stored as JSON: ${errorMessage(err)}`);
  }
  if (text === undefined) throw invalid(field, "cannot be stored as JSON");
  return text;
}

/** An event type pattern as a GLOB: case-sensitive like the bus's matching; only `*` is special. */
export function typeGlob(pattern: string): string {
  return pattern.replace(/[[?]/g, (c) => `[${c}]`);
}

/** A device of a JSON page: its JSON columns parsed already. */
export const deviceOfPage = (r: unknown[]): DeviceRow => ({
  id: r[0] as string, name: r[1] as string, protocol: r[2] as string, address: r[3] as string | null,
  manufacturer: r[4] as string | null, model: r[5] as string | null, firmware: r[6] as string | null,
  capabilities: r[7] as string[], tags: r[8] as string[], heartbeatTimeout: r[9] as number | null,
  metadata: r[10] as JsonObject, status: r[11] as DeviceStatus, lastSeen: r[12] as number, createdAt: r[13] as number,
  updatedAt: r[14] as number, ...((r[15] as number) > 0 && { learnedTimeout: r[15] as number }), ...((r[16] as number) > 0 && { offlineSince: r[16] as number }),
});
export const stateOfPage = (r: unknown[]): StateRow => ({
  deviceId: r[0] as string, properties: r[1] as JsonObject, desired: r[2] as JsonObject, version: r[3] as number,
  changedAt: r[4] as number, updatedAt: r[5] as number, reportedAt: r[6] as number, rev: r[7] as number, pointTs: r[8] as number,
});
export const toHistory = (deviceId: string) => (e: RunEntry): HistoryRow => ({
  id: e[0], deviceId, at: e[1], version: e[2], from: e[3] as HistoryRow["from"], to: e[4] as HistoryRow["to"], reason: e[5], causeId: e[6],
});
export const toEvent = (r: RawEvent): EventRow => ({
  id: r[0], type: r[1], priority: r[2] as Priority, source: r[3], deviceId: r[4], data: JSON.parse(r[5]) as unknown,
  timestamp: r[6], expiresAt: r[7], causeId: r[8], parentCauseId: r[9],
});
export const toCommand = (r: RawCommand): CommandRow => ({
  id: r[0], deviceId: r[1], command: r[2], params: JSON.parse(r[3]) as JsonObject, status: r[4] as CommandStatus,
  attempts: r[5], priority: r[6] as Priority, createdAt: r[7], sentAt: r[8], completedAt: r[9], expiresAt: r[10],
  result: r[11] === null ? null : (JSON.parse(r[11]) as unknown), error: r[12], options: JSON.parse(r[13]) as JsonObject,
});
export const toToken = (r: RawToken): TokenRow => ({ deviceId: r[0], hash: r[1], createdAt: r[2] });

export const deviceParams = (row: DeviceRow): unknown[] => [
  row.id, row.name, row.protocol, row.address, row.manufacturer, row.model, row.firmware,
  json(row.capabilities, "capabilities"), json(row.tags, "tags"), row.heartbeatTimeout,
  json(row.metadata, "metadata"), row.status, row.lastSeen, row.createdAt, row.updatedAt,
];
export const tokenParams = (row: TokenRow): unknown[] => [row.deviceId, row.hash, row.createdAt];
export const commandParams = (row: CommandRow): unknown[] => [
  row.id, row.deviceId, row.command, json(row.params, "params"), row.status, row.attempts, row.priority,
  row.createdAt, row.sentAt, row.completedAt, row.expiresAt,
  row.result === null || row.result === undefined ? null : json(row.result, "result"), row.error,
  json(row.options, "options"),
];
export const stateParams = (s: StateRow, out: unknown[]) =>
  out.push(s.deviceId, json(s.properties, "properties"), json(s.desired, "desired"), s.version, s.changedAt,
    s.updatedAt, s.reportedAt, s.rev, s.pointTs ?? 0);

/** A whole number as JSON; anything else is INVALID (a run's text must stay JSON). */
function integer(value: number, field: string): string {
  if (!Number.isSafeInteger(value)) throw invalid(field, "must be a whole number");
  return String(value);
}

/** A text as JSON; anything else is INVALID. */
function text(value: unknown, field: string): string {
  if (typeof value !== "string") throw invalid(field, "must be text");
  return JSON.stringify(value);
}

function entryText(h: HistoryRow): string {
  return `[${text(h.id, "id")},${integer(h.at, "at")},${integer(h.version, "version")},${json(h.from, "from")},${json(h.to, "to")},${text(h.reason, "reason")},${h.causeId === null || h.causeId === undefined ? "null" : text(h.causeId, "causeId")}]`;
}

/**
 * A run's text ends at the row that takes it past this many characters: a row's snapshots may be
 * large (a state holds up to half a megabyte), and a run must stay far below SQLite's longest
 * value (a billion bytes) and V8's longest string.
 */
export const RUN_MAX_CHARS = 1 << 20;

/**
 * The rows of a part as `history_runs` parameters (RUN_COLS order): one run for each stretch of
 * consecutive rows of one device (a new one past RUN_MAX_CHARS), in the order given (the store
 * gives a batch's rows grouped by device, each device's as they came).
 */
function historyRuns(rows: readonly HistoryRow[]): unknown[] {
  const out: unknown[] = [];
  for (let i = 0; i < rows.length; ) {
    const deviceId = rows[i]!.deviceId;
    if (typeof deviceId !== "string") throw invalid("deviceId", "must be text");
    let firstAt = Number.POSITIVE_INFINITY;
    let lastAt = Number.NEGATIVE_INFINITY;
    let lastVersion = Number.NEGATIVE_INFINITY;
    let body = "[";
    let k = i;
    do {
      const h = rows[k]!;
      body += k === i ? entryText(h) : `,${entryText(h)}`;
      if (h.at < firstAt) firstAt = h.at;
      if (h.at > lastAt || (h.at === lastAt && h.version > lastVersion)) {
        lastAt = h.at;
        lastVersion = h.version;
      }
      k++;
    } while (k < rows.length && rows[k]!.deviceId === deviceId && body.length < RUN_MAX_CHARS);
    out.push(deviceId, firstAt, lastAt, lastVersion, k - i, `${body}]`);
    i = k;
  }
  return out;
}

export const eventParams = (e: EventRow, out: unknown[]) =>
  out.push(e.id, e.type, e.priority, e.source, e.deviceId, json(e.data, "data"), e.timestamp, e.expiresAt, e.causeId,
    e.parentCauseId);

/**
 * A write batch as the database thread takes it: each kind of row but the points flattened into
 * one array of SQL parameters, in column order, JSON columns already text; the points in
 * columns (`EncodedPoints`). See `encodeBatch`.
 */
export interface EncodedBatch {
  /** status, last_seen, learned timeout (0: none), offline since (0: none), id per row: the UPDATE's parameters. */
  presence: unknown[];
  states: unknown[];
  history: unknown[];
  events: unknown[];
  points: EncodedPoints;
}

/**
 * A batch's points in columns: `cols` holds four numbers a point (the index in `names` of its
 * device id, that of its key, ts, and num, NaN for none) and goes to the database thread by
 * transfer, not by copy; `vals` holds each point's text value (`pointColumns`), or is null when
 * no point has one. Device ids and keys repeat across a batch's points (a device's report gives
 * several), so each is sent once. Measured by structured clone against the flat array of five
 * values a point it replaced: 0.05 against 0.47 µs a point on the hub's thread.
 */
export interface EncodedPoints {
  names: string[];
  cols: Float64Array;
  vals: (string | null)[] | null;
}

/** Numbers a point takes in `EncodedPoints.cols`. */
export const POINT_COLS = 4;

function flatten<T>(rows: readonly T[], toParams: (row: T, out: unknown[]) => void): unknown[] {
  const out: unknown[] = [];
  for (const row of rows) toParams(row, out);
  return out;
}

/**
 * Encodes a batch on the hub's thread, JSON columns included. Handing the row objects over by
 * structured clone costs this thread a little less (measured: 1.1 against 1.6 µs a row of
 * telemetry), but rebuilding them costs the database thread 2.3 µs a row, more than half of
 * the write itself, and cut batched writes by a third; flat arrays of text and numbers cost it
 * 0.9 µs. JSON here also keeps what is stored exactly as before (toJSON, dropped functions),
 * and a row JSON cannot carry fails before anything is sent, as the INVALID error it always was.
 */
export function encodeBatch(batch: WriteBatch, offset = 0): EncodedBatch {
  const points = PointBatch.of(batch.points);
  return encodePart(batch, { from: points, order: null, start: 0, end: points.length }, offset);
}

/**
 * Points of a batch to write, without copying them: those of `from` at `start` to `end` of
 * `order` (a permutation of its indexes), or of `from` itself when `order` is null.
 */
export interface PointRange {
  from: PointBatch;
  order: Uint32Array | null;
  start: number;
  end: number;
}

/** `encodeBatch` of a batch's rows but its points, and of `points`. An invalid point is named by its index in `from`, plus `offset`. */
export function encodePart(batch: WriteBatch, points: PointRange, offset = 0): EncodedBatch {
  const presence: unknown[] = [];
  for (const p of batch.presence) presence.push(p.status, p.lastSeen, p.learnedTimeout ?? 0, p.offlineSince ?? 0, p.id);
  return {
    presence,
    states: flatten(batch.states, stateParams),
    history: historyRuns(batch.history),
    events: flatten(batch.events, eventParams),
    points: encodePoints(points, offset),
  };
}

function encodePoints({ from, order, start, end }: PointRange, offset: number): EncodedPoints {
  const names: string[] = [];
  const index = new Map<string, number>();
  const name = (text: string): number => {
    let i = index.get(text);
    if (i === undefined) {
      i = names.length;
      names.push(text);
      index.set(text, i);
    }
    return i;
  };
  const n = end - start;
  const cols = new Float64Array(n * POINT_COLS);
  let vals: (string | null)[] | null = null;
  let lastDevice: string | null = null;
  let device = 0;
  for (let k = 0; k < n; k++) {
    const i = order === null ? start + k : order[start + k]!;
    const o = k * POINT_COLS;
    const deviceId = from.deviceIds[i]!;
    const value = from.value(i);
    cols[o + 2] = checkPointOf(deviceId, from.keys[i]!, from.times[i]!, value, offset + i);
    // A device's points come one after another: its name is looked up once a run.
    if (deviceId !== lastDevice) {
      device = name(deviceId);
      lastDevice = deviceId;
    }
    cols[o] = device;
    cols[o + 1] = name(from.keys[i]!);
    if (typeof value === "number") cols[o + 3] = value;
    else {
      cols[o + 3] = Number.NaN;
      (vals ??= new Array<string | null>(n).fill(null))[k] = pointText(value);
    }
  }
  return { names, cols, vals };
}

/**
 * The batch cut into parts of at most `max` rows, in its order: presence, states, history,
 * events, then `points` (the batch's own points are not read).
 */
export function splitBatch(batch: WriteBatch, points: PointRange, max: number): { part: WriteBatch; points: PointRange }[] {
  const parts: { part: WriteBatch; points: PointRange }[] = [];
  const none = (at: number): PointRange => ({ from: points.from, order: points.order, start: at, end: at });
  const empty = (): WriteBatch => ({ presence: [], states: [], history: [], events: [] });
  let part = empty();
  let range = none(points.start);
  let room = max;
  const next = () => {
    parts.push({ part, points: range });
    part = empty();
    range = none(range.end);
    room = max;
  };
  const cut = <K extends "presence" | "states" | "history" | "events">(kind: K) => {
    const rows = batch[kind];
    for (let i = 0; i < rows.length; ) {
      if (room === 0) next();
      const n = Math.min(room, rows.length - i);
      part[kind] = rows.slice(i, i + n) as WriteBatch[K];
      i += n;
      room -= n;
    }
  };
  cut("presence");
  cut("states");
  cut("history");
  cut("events");
  for (let at = points.start; at < points.end; ) {
    if (room === 0) next();
    const n = Math.min(room, points.end - at);
    range = { ...range, start: at, end: at + n };
    at += n;
    room -= n;
  }
  parts.push({ part, points: range });
  return parts;
}

