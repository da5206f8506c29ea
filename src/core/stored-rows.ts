import type { HistoryQuery } from "./events";
import { invalid } from "./errors";
import { iso } from "./json";
import { type DeviceRow, type HistoryRow, PRIORITIES, PRIORITY_RANK, type Priority, type StateHistoryEntry, type TethralEvent } from "./types";
import { timeOf } from "./telemetry-query";
import type { EventQuery, EventRow } from "./ports/store";

/** Conversions between the store's rows and queries and the engine's own shapes. */

/** The patch that puts a device's writable fields back as they were in `row`. */
export function patchOf(row: DeviceRow): Record<string, unknown> {
  return {
    name: row.name,
    protocol: row.protocol,
    address: row.address,
    manufacturer: row.manufacturer,
    model: row.model,
    firmware: row.firmware,
    capabilities: row.capabilities,
    tags: row.tags,
    heartbeatTimeout: row.heartbeatTimeout,
    metadata: row.metadata,
  };
}

export function historyEntry(row: HistoryRow): StateHistoryEntry {
  return { deviceId: row.deviceId, at: iso(row.at), version: row.version, from: row.from, to: row.to, reason: row.reason, causeId: row.causeId };
}

export function eventOf(row: EventRow): TethralEvent {
  return {
    id: row.id,
    type: row.type,
    priority: row.priority,
    source: row.source,
    deviceId: row.deviceId,
    data: row.data,
    timestamp: iso(row.timestamp),
    expiresAt: row.expiresAt > 0 ? iso(row.expiresAt) : null,
    causeId: row.causeId,
    parentCauseId: row.parentCauseId,
  };
}

/** An event-history query as the store takes it: priorities spelled out, `since` as epoch ms. */
export function eventQueryOf(query: HistoryQuery): EventQuery {
  const limit = query.limit ?? 100;
  if (!Number.isInteger(limit) || limit < 0 || limit > 10_000) throw invalid("limit", "must be a whole number from 0 to 10000");
  const wanted = query.priority === undefined ? [...PRIORITIES] : Array.isArray(query.priority) ? query.priority : [query.priority];
  const minRank = query.minPriority === undefined ? 0 : PRIORITY_RANK[query.minPriority];
  const since = query.since === undefined ? undefined : timeOf(query.since, "since");
  return {
    types: query.type === undefined ? undefined : Array.isArray(query.type) ? query.type : [query.type],
    priorities: wanted.filter((pr: Priority) => PRIORITY_RANK[pr] >= minRank),
    deviceId: query.deviceId,
    source: query.source,
    since,
    limit,
  };
}

/** An event as the store keeps it (`expiresAt` 0: it does not expire). */
export function eventRow(event: TethralEvent, expiresAt: number): EventRow {
  return {
    id: event.id,
    type: event.type,
    priority: event.priority,
    source: event.source,
    deviceId: event.deviceId,
    data: event.data,
    timestamp: Date.parse(event.timestamp),
    expiresAt,
    causeId: event.causeId,
    parentCauseId: event.parentCauseId,
  };
}
