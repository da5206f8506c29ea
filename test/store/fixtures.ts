import type { JsonObject } from "../../src/core/types";
import assert from "node:assert/strict";
import type { CommandRow, DeviceRow, EventRow, HistoryRow, StateRow, Store } from "../../src/core/ports/store";

/** Rows for store tests: complete, deterministic, every field overridable. */

export const T0 = Date.UTC(2026, 10, 27, 10, 0, 0);

export function deviceRow(id: string, over: Partial<DeviceRow> = {}): DeviceRow {
  return {
    id,
    name: `Device ${id}`,
    protocol: "mqtt",
    address: `tcp://10.0.0.1/${id}`,
    manufacturer: "Acme",
    model: "T-1000",
    firmware: "1.2.3",
    capabilities: ["temperature", "humidity"],
    tags: ["lab", "floor-2"],
    heartbeatTimeout: 30000,
    metadata: { room: "lab", rack: { row: 2, slot: [1, 2] }, enabled: true, note: null },
    status: "online",
    lastSeen: T0 + 500,
    createdAt: T0,
    updatedAt: T0 + 100,
    ...over,
  };
}

export function stateRow(deviceId: string, rev: number, over: Partial<StateRow> = {}): StateRow {
  return {
    deviceId,
    properties: { temperature: 20 + rev, unit: "C" },
    desired: { target: 21 },
    version: rev,
    changedAt: T0 + rev,
    updatedAt: T0 + rev,
    reportedAt: T0 + rev,
    pointTs: T0 + rev + 7,
    rev,
    ...over,
  };
}

export function historyRow(id: string, deviceId: string, at: number, version: number, over: Partial<HistoryRow> = {}): HistoryRow {
  return {
    id,
    deviceId,
    at,
    version,
    from: { status: "offline", properties: { temperature: version - 1 } },
    to: { status: "online", properties: { temperature: version } },
    reason: "report",
    causeId: `cause-${id}`,
    ...over,
  };
}

export function eventRow(id: string, type: string, timestamp: number, over: Partial<EventRow> = {}): EventRow {
  return {
    id,
    type,
    priority: "normal",
    source: "hub",
    deviceId: null,
    data: { n: 1, list: ["a", "b"] },
    timestamp,
    expiresAt: 0,
    causeId: null,
    parentCauseId: null,
    ...over,
  };
}

export function commandRow(id: string, deviceId: string, createdAt: number, over: Partial<CommandRow> = {}): CommandRow {
  return {
    id,
    deviceId,
    command: "reboot",
    params: { delay: 5, force: false } as JsonObject,
    status: "queued",
    attempts: 0,
    priority: "normal",
    createdAt,
    sentAt: 0,
    completedAt: 0,
    expiresAt: 0,
    result: null,
    error: null,
    options: { timeoutMs: 10000, retries: 2, wait: "ack" },
    ...over,
  };
}

export const byId = <T extends { id: string }>(rows: T[]): T[] => [...rows].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
export const byDeviceId = <T extends { deviceId: string }>(rows: T[]): T[] =>
  [...rows].sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));

/** Metadata of about `targetBytes` of JSON, nested `depth` levels deep, full of awkward keys. */
export function bigMetadata(targetBytes: number, depth: number): JsonObject {
  const awkward = JSON.parse(
    '{"__proto__": {"polluted": true}, "constructor": {"prototype": {"x": 1}}, "prototype": "p", "toString": "s", "": "empty key"}',
  ) as JsonObject;
  let nested: JsonObject = { leaf: "bottom 🌊", n: 1.5 };
  for (let i = 0; i < depth; i++) nested = { [`level${i}`]: nested, i, arr: [i, `'${i}"`, null] };
  const meta: JsonObject = {
    awkward,
    nested,
    numbers: [0, -1, 1.5, 0.1, 1e-7, 123456789012345, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 1.7976931348623157e308],
    text: [],
  };
  const filler = "Lorem 'ipsum' \"dolor\" \\ sit; DROP TABLE devices; -- αβγ 🚀 ";
  const text = meta.text as string[];
  let bytes = Buffer.byteLength(JSON.stringify(meta));
  for (;;) {
    const entry = `${text.length}:${filler}`;
    const more = Buffer.byteLength(JSON.stringify(entry)) + 1;
    if (bytes + more > targetBytes) return meta;
    text.push(entry);
    bytes += more;
  }
}

/**
 * The time series a migration to series ids must keep (both stores' migration tests write them
 * in the old layout first): d1's temperature (three points, two 1-minute roll-ups, one 1-hour)
 * and mode, d2's temperature, and d3's, whose series was never listed.
 */
export async function assertMigratedSeries(store: Store, m0: number, h0: number): Promise<void> {
  const all = { from: 0, to: T0 + 3_600_000, limit: 100 };
  assert.deepEqual(await store.points({ deviceId: "d1", key: "temperature", ...all }), [
    { ts: m0, value: 20.5 }, { ts: m0 + 1000, value: 21 }, { ts: m0 + 61_000, value: 22 },
  ]);
  assert.deepEqual(await store.points({ deviceId: "d1", key: "mode", ...all }), [{ ts: m0, value: "eco" }]);
  assert.deepEqual(await store.points({ deviceId: "d2", key: "temperature", ...all }), [{ ts: m0, value: 5 }]);
  assert.deepEqual(await store.points({ deviceId: "d3", key: "temperature", ...all }), [{ ts: m0, value: 7 }]);
  assert.deepEqual(await store.telemetryKeys("d1"), ["mode", "temperature"]);
  assert.deepEqual(await store.telemetryKeys("d3"), ["temperature"]);
  const minutes = { deviceId: "d1", key: "temperature", ...all, source: "1m", intervalMs: 60_000 } as const;
  assert.deepEqual(await store.buckets({ ...minutes, agg: "sum" }), [{ ts: m0, value: 41.5 }, { ts: m0 + 60_000, value: 22 }]);
  assert.deepEqual(await store.buckets({ ...minutes, key: "mode", agg: "last" }), [{ ts: m0, value: "eco" }]);
  assert.deepEqual(await store.buckets({ ...minutes, source: "1h", intervalMs: 3_600_000, agg: "count" }), [{ ts: h0, value: 3 }]);
}
