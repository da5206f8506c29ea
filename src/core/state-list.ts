import { z } from "zod";
import { invalid } from "./errors";
import type { DeviceRecord, DeviceRegistry } from "./registry";
import { type FilterValues, listFilter } from "./registry-query";
import { stateView } from "./state-record";
import { DEVICE_STATUSES, type DeviceState, type DeviceStatus } from "./types";
import { parseInput } from "./validation";

/** `listStates` filters: one value, a comma-separated list or a list, in any case. */
export interface StateListQuery {
  status?: FilterValues;
  protocol?: FilterValues;
  limit?: number;
  offset?: number;
}

const stateFilterSchema = z.object({ status: listFilter(32, DEVICE_STATUSES), protocol: listFilter(64) });

/**
 * States page by page, filtered by status and protocol (each one value, a comma-separated
 * list or a list). Walks the smaller of the matching index buckets, never the whole fleet
 * unless no filter is given.
 */
export function listStates(registry: DeviceRegistry, query: StateListQuery): { states: DeviceState[]; total: number } {
  const offset = query.offset ?? 0;
  const limit = query.limit ?? 100;
  if (!Number.isInteger(limit) || limit < 0 || limit > 100_000) throw invalid("limit", "must be a whole number from 0 to 100000");
  if (!Number.isInteger(offset) || offset < 0) throw invalid("offset", "must be a whole number, 0 or more");
  const { status, protocol } = parseInput(stateFilterSchema, { status: query.status, protocol: query.protocol }, "state filter");
  const byStatus = status?.map((v) => registry.withStatus(v as DeviceStatus));
  const byProtocol = protocol?.map((v) => registry.withProtocol(v));
  const sizeOf = (buckets: Array<{ size: number } | undefined>) => buckets.reduce((n, b) => n + (b?.size ?? 0), 0);

  const states: DeviceState[] = [];
  const take = (record: DeviceRecord, i: number) => {
    if (i >= offset && i < offset + limit) states.push(stateView(record, record.state));
  };
  if (!byStatus && !byProtocol) {
    let i = 0;
    for (const record of registry.allRecords()) {
      if (i >= offset + limit) break;
      take(record, i++);
    }
    return { states, total: registry.size };
  }
  // One kind of filter: its buckets never overlap (a device has one status and one protocol).
  if (!byStatus || !byProtocol) {
    const buckets = (byStatus ?? byProtocol)!;
    let i = 0;
    page: for (const bucket of buckets) {
      for (const record of bucket ?? []) {
        if (i >= offset + limit) break page;
        take(record, i++);
      }
    }
    return { states, total: sizeOf(buckets) };
  }
  const statusFirst = sizeOf(byStatus) <= sizeOf(byProtocol);
  const driver = statusFirst ? byStatus : byProtocol;
  const wanted = new Set<string>(statusFirst ? protocol : status);
  let total = 0;
  for (const bucket of driver) {
    for (const record of bucket ?? []) {
      if (wanted.has(statusFirst ? record.protocol : record.status)) take(record, total++);
    }
  }
  return { states, total };
}
