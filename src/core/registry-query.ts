import { z } from "zod";
import type { ListIndex, Members, ValueIndex } from "./indexes";
import type { DeviceRecord } from "./registry";
import { DEVICE_STATUSES } from "./types";

/**
 * The query side of the device registry: the filter callers give to `list`, the indexed
 * conditions it becomes, the sort orders and the paging.
 */

const SORT_FIELDS = ["registered", "id", "name", "createdAt", "updatedAt", "lastSeen", "status", "protocol", "manufacturer"] as const;
export type DeviceSortField = (typeof SORT_FIELDS)[number];

/**
 * A list filter as users write it: one value, a comma-separated list, or the parameter repeated
 * (`?tag=a,b`, `?tag=a&tag=b`), in any case: the values come out lower case and without
 * repeats. Blank means not given. A value that is no text, too long, or (with `allowed`) not one
 * of those is INVALID under the parameter's own name.
 */
export function listFilter(maxLength: number, allowed?: readonly string[]) {
  return z.preprocess(
    splitValues,
    z.unknown().transform((value, ctx): string[] | undefined => {
      if (value === undefined) return undefined;
      const list = value as unknown[];
      const problem = (message: string) => {
        ctx.issues.push({ code: "custom", message, input: value });
        return z.NEVER;
      };
      if (list.length > MAX_FILTER_VALUES) return problem(`must name at most ${MAX_FILTER_VALUES} values`);
      const out: string[] = [];
      for (const item of list) {
        if (typeof item !== "string" || item.length > maxLength) return problem(`must be text of at most ${maxLength} characters, or a list of such`);
        const folded = item.toLowerCase();
        if (allowed && !allowed.includes(folded)) return problem(`"${item.slice(0, 64)}" is not one of ${allowed.join(", ")}`);
        if (!out.includes(folded)) out.push(folded);
      }
      return out;
    }),
  );
}

const MAX_FILTER_VALUES = 64;

/** Text is split at commas and trimmed; a list is split item by item; nothing left is undefined. */
function splitValues(value: unknown): unknown {
  if (value === undefined || value === null) return undefined;
  const out: unknown[] = [];
  for (const item of Array.isArray(value) ? value : [value]) {
    if (typeof item !== "string") {
      out.push(item);
      continue;
    }
    for (const part of item.split(",")) {
      const trimmed = part.trim();
      if (trimmed !== "") out.push(trimmed);
    }
  }
  return out.length === 0 ? undefined : out;
}

const WHOLE = { error: "must be a whole number, 0 or more" };

/** A number, or its decimal text from a query string; blank or null means not given. */
const queryNumber = z.preprocess((v) => {
  if (v === null || v === undefined || (typeof v === "string" && v.trim() === "")) return undefined;
  if (typeof v === "string" && /^\s*\d+\s*$/.test(v)) return Number(v);
  return v;
}, z.unknown());

export const filterSchema = z.strictObject({
  status: listFilter(32, DEVICE_STATUSES),
  protocol: listFilter(64),
  manufacturer: listFilter(256),
  capability: listFilter(64),
  capabilityMatch: z.enum(["any", "all"]).optional(),
  tag: listFilter(64),
  tagMatch: z.enum(["any", "all"]).optional(),
  q: z.string().max(256).optional(),
  sort: z.enum(SORT_FIELDS).optional(),
  order: z.enum(["asc", "desc"]).optional(),
  limit: queryNumber.pipe(z.number(WHOLE).int(WHOLE).min(0, WHOLE).max(100_000, "must be at most 100000").optional()),
  offset: queryNumber.pipe(z.number(WHOLE).int(WHOLE).min(0, WHOLE).optional()),
});
/** A list filter's value as callers give it: one value, comma-separated values, or a list. */
export type FilterValues = string | readonly string[];

/**
 * A filter as callers give it; `limit` and `offset` may come as query-string text. Text
 * filters ignore case; `capabilityMatch` and `tagMatch` say whether a device must carry all
 * the values given (the default) or any of them.
 */
export type DeviceFilter = Omit<z.input<typeof filterSchema>, "status" | "protocol" | "manufacturer" | "capability" | "tag" | "limit" | "offset"> & {
  status?: FilterValues;
  protocol?: FilterValues;
  manufacturer?: FilterValues;
  capability?: FilterValues;
  tag?: FilterValues;
  limit?: number | string | null;
  offset?: number | string | null;
};

/** One indexed condition of a filter: the records it allows and a per-record test for the others. */
export interface Condition {
  size: number;
  /** The one list of records the condition allows, when it is one (a single value's). */
  single: Members | null;
  /** Appends the records it allows that `keep` accepts (all without one) to `into`. */
  collect: (into: DeviceRecord[], keep: ((r: DeviceRecord) => boolean) | null) => void;
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

/** Records whose single value (status, protocol, manufacturer) is one of `values` (lower case). */
export function unionCondition(index: ValueIndex, values: string[], field: (r: DeviceRecord) => string | undefined): Condition {
  const buckets = values.map((v) => index.get(v)).filter((b): b is Members => b !== undefined);
  const test = (r: DeviceRecord) => {
    const v = field(r);
    return v !== undefined && values.includes(v.toLowerCase());
  };
  return {
    size: buckets.reduce((n, b) => n + b.size, 0),
    single: buckets.length === 1 ? buckets[0]! : null,
    // A record has one status, protocol and manufacturer, so these buckets never overlap.
    collect: (into, keep) => {
      for (const b of buckets) b.collect(into, keep);
    },
    test,
  };
}

/**
 * Records carrying all (or any) of `values` (lower case) in a list field (capabilities, tags):
 * the groups of lists that match, each record once (a record is in one group per field).
 */
export function listCondition(index: ListIndex, values: string[], match: "any" | "all"): Condition {
  const groups = index.groupsWith(values, match);
  const matching = new Set(groups);
  return {
    size: groups.reduce((n, g) => n + g.size, 0),
    single: groups.length === 1 ? groups[0]! : null,
    collect: (into, keep) => {
      for (const group of groups) group.collect(into, keep);
    },
    test: (r) => {
      const group = index.groupOf(r);
      return group !== null && matching.has(group);
    },
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
