import { z } from "zod";
import type { Members, SetIndex, ValueIndex } from "./indexes";
import type { DeviceRecord } from "./registry";
import { statusSchema } from "./validation";

/**
 * The query side of the device registry: the filter callers give to `list`, the indexed
 * conditions it becomes, the sort orders and the paging.
 */

const SORT_FIELDS = ["registered", "id", "name", "createdAt", "updatedAt", "lastSeen", "status", "protocol", "manufacturer"] as const;
export type DeviceSortField = (typeof SORT_FIELDS)[number];

const oneOrMany = <T extends z.ZodType>(item: T) =>
  z.union([item, z.array(item).min(1).max(64)]).transform((v) => (Array.isArray(v) ? v : [v]) as z.infer<T>[]);

const WHOLE = { error: "must be a whole number, 0 or more" };

/** A number, or its decimal text from a query string; blank or null means not given. */
const queryNumber = z.preprocess((v) => {
  if (v === null || v === undefined || (typeof v === "string" && v.trim() === "")) return undefined;
  if (typeof v === "string" && /^\s*\d+\s*$/.test(v)) return Number(v);
  return v;
}, z.unknown());

export const filterSchema = z.strictObject({
  status: oneOrMany(statusSchema).optional(),
  protocol: oneOrMany(z.string().min(1).max(64)).optional(),
  manufacturer: oneOrMany(z.string().min(1).max(256)).optional(),
  capability: oneOrMany(z.string().min(1).max(64)).optional(),
  capabilityMatch: z.enum(["any", "all"]).optional(),
  tag: oneOrMany(z.string().min(1).max(64)).optional(),
  tagMatch: z.enum(["any", "all"]).optional(),
  q: z.string().max(256).optional(),
  sort: z.enum(SORT_FIELDS).optional(),
  order: z.enum(["asc", "desc"]).optional(),
  limit: queryNumber.pipe(z.number(WHOLE).int(WHOLE).min(0, WHOLE).max(100_000, "must be at most 100000").optional()),
  offset: queryNumber.pipe(z.number(WHOLE).int(WHOLE).min(0, WHOLE).optional()),
});
/** A filter as callers give it; `limit` and `offset` may come as query-string text. */
export type DeviceFilter = Omit<z.input<typeof filterSchema>, "limit" | "offset"> & {
  limit?: number | string | null;
  offset?: number | string | null;
};

/** One indexed condition of a filter: the records it allows and a per-record test for the others. */
export interface Condition {
  size: number;
  records: () => Iterable<DeviceRecord>;
  test: (r: DeviceRecord) => boolean;
}

/** The test of a filter's `q`: a case-insensitive substring of id, name, manufacturer or model; null without one. */
export function textMatch(q: string | undefined): ((r: DeviceRecord) => boolean) | null {
  const needle = q?.trim().toLowerCase();
  return needle
    ? (r: DeviceRecord) =>
        r.id.toLowerCase().includes(needle) ||
        r.name.toLowerCase().includes(needle) ||
        (r.manufacturer?.toLowerCase().includes(needle) ?? false) ||
        (r.model?.toLowerCase().includes(needle) ?? false)
    : null;
}

export function unionCondition(index: ValueIndex, values: string[], test: (r: DeviceRecord) => boolean): Condition {
  const buckets = values.map((v) => index.get(v)).filter((b): b is Members => b !== undefined);
  return {
    size: buckets.reduce((n, b) => n + b.size, 0),
    // A record has one status, protocol and manufacturer, so these buckets never overlap.
    records:
      buckets.length === 1
        ? () => buckets[0]!
        : function* () {
            for (const b of buckets) yield* b;
          },
    test,
  };
}

export function listCondition(
  index: SetIndex,
  values: string[],
  match: "any" | "all",
  field: (r: DeviceRecord) => readonly string[],
): Condition {
  const buckets = values.map((v) => index.get(v));
  if (match === "all") {
    if (buckets.some((b) => b === undefined)) return { size: 0, records: () => [], test: () => false };
    const smallest = (buckets as ReadonlySet<DeviceRecord>[]).reduce((a, b) => (b.size < a.size ? b : a));
    const test = (r: DeviceRecord) => values.every((v) => field(r).includes(v));
    return {
      size: smallest.size,
      // As the driver, the smallest bucket still holds records that lack the other values.
      records:
        values.length === 1
          ? () => smallest
          : function* () {
              for (const record of smallest) if (test(record)) yield record;
            },
      test,
    };
  }
  const present = buckets.filter((b): b is ReadonlySet<DeviceRecord> => b !== undefined);
  return {
    size: present.reduce((n, b) => n + b.size, 0),
    records: function* () {
      // A device can carry several of the values: yield it from the first bucket that has it.
      for (let i = 0; i < present.length; i++) {
        for (const record of present[i]!) {
          let seen = false;
          for (let j = 0; j < i && !seen; j++) seen = present[j]!.has(record);
          if (!seen) yield record;
        }
      }
    },
    test: (r) => values.some((v) => field(r).includes(v)),
  };
}

const SORT_KEYS: Record<DeviceSortField, (r: DeviceRecord) => string | number> = {
  registered: (r) => r.seq,
  id: (r) => r.id,
  name: (r) => r.name,
  createdAt: (r) => r.createdAt,
  updatedAt: (r) => r.updatedAt,
  lastSeen: (r) => r.lastSeen,
  status: (r) => r.status,
  protocol: (r) => r.protocol,
  manufacturer: (r) => r.manufacturer ?? "",
};

export function compareBy(field: DeviceSortField, order: "asc" | "desc"): (a: DeviceRecord, b: DeviceRecord) => number {
  const sign = order === "desc" ? -1 : 1;
  if (field === "registered") return (a, b) => sign * (a.seq - b.seq);
  const key = SORT_KEYS[field];
  return (a, b) => {
    const ka = key(a);
    const kb = key(b);
    if (ka < kb) return -sign;
    if (ka > kb) return sign;
    return a.seq - b.seq;
  };
}

/**
 * The records at [offset, offset+limit) in `cmp` order. A small page of a large match set is
 * selected with a bounded heap (n log k) instead of sorting everything.
 */
export function pageOf(items: DeviceRecord[], cmp: (a: DeviceRecord, b: DeviceRecord) => number, offset: number, limit: number): DeviceRecord[] {
  const k = offset + limit;
  if (k === 0) return [];
  if (k * 8 >= items.length) return items.sort(cmp).slice(offset, k);
  // Max-heap of the k smallest so far: the root is the largest kept.
  const heap: DeviceRecord[] = [];
  const up = (i: number) => {
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (cmp(heap[i]!, heap[p]!) <= 0) break;
      [heap[i], heap[p]] = [heap[p]!, heap[i]!];
      i = p;
    }
  };
  const down = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && cmp(heap[l]!, heap[m]!) > 0) m = l;
      if (r < heap.length && cmp(heap[r]!, heap[m]!) > 0) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m]!, heap[i]!];
      i = m;
    }
  };
  for (const item of items) {
    if (heap.length < k) {
      heap.push(item);
      up(heap.length - 1);
    } else if (cmp(item, heap[0]!) < 0) {
      heap[0] = item;
      down(0);
    }
  }
  return heap.sort(cmp).slice(offset, k);
}
