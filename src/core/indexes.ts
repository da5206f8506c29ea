import type { DeviceRecord } from "./registry";

/** The members of one index value: their count, and a walk over them in insertion order. */
export interface Members extends Iterable<DeviceRecord> {
  readonly size: number;
}

/**
 * value → records having it. Filters start from these instead of scanning the fleet. A
 * case-folding index keys each value by its lower case (a filter's `Acme` finds `ACME`), and
 * shows a key by the spelling it first met.
 */
export interface ValueIndex {
  /** Adds `record` under `value` and returns the index's shared copy of the string (when spelt alike). */
  add(value: string, record: DeviceRecord): string;
  delete(value: string, record: DeviceRecord): void;
  get(value: string): Members | undefined;
  counts(): Record<string, number>;
}

/** Links a single-valued index keeps on each record. */
type LinkPair = readonly ["statusPrev", "statusNext"] | readonly ["protocolPrev", "protocolNext"] | readonly ["makerPrev", "makerNext"];

class Chain implements Members {
  head: DeviceRecord | null = null;
  tail: DeviceRecord | null = null;
  size = 0;

  constructor(
    readonly value: string,
    private readonly next: LinkPair[1],
  ) {}

  *[Symbol.iterator](): Iterator<DeviceRecord> {
    for (let r = this.head; r !== null; r = r[this.next]) yield r;
  }
}

/**
 * An index of a field with one value per record (status, protocol, manufacturer): each value's
 * records form a doubly linked list through two fields of the record. Adding, moving and
 * removing a record costs a few pointer writes — no hashing — and each membership costs two
 * pointers instead of a hash-set entry. Statuses change on every online/offline transition,
 * so this is on the heartbeat's path too.
 */
export class ChainIndex implements ValueIndex {
  private readonly chains = new Map<string, Chain>();

  /** `foldCase` off for values that are lower case already (statuses change on the heartbeat's path). */
  constructor(
    private readonly links: LinkPair,
    private readonly foldCase = true,
  ) {}

  add(value: string, record: DeviceRecord): string {
    const [prev, next] = this.links;
    const key = this.foldCase ? value.toLowerCase() : value;
    let chain = this.chains.get(key);
    if (chain === undefined) {
      chain = new Chain(value, next);
      this.chains.set(key, chain);
    }
    record[prev] = chain.tail;
    record[next] = null;
    if (chain.tail !== null) chain.tail[next] = record;
    else chain.head = record;
    chain.tail = record;
    chain.size++;
    return chain.value === value ? chain.value : value;
  }

  /** Unlinks `record`, which must be in the chain of `value` (its current value). */
  delete(value: string, record: DeviceRecord): void {
    const key = this.foldCase ? value.toLowerCase() : value;
    const chain = this.chains.get(key);
    if (chain === undefined) return;
    const [prev, next] = this.links;
    const p = record[prev];
    const n = record[next];
    if (p !== null) p[next] = n;
    else if (chain.head === record) chain.head = n;
    else return; // not a member
    if (n !== null) n[prev] = p;
    else chain.tail = p;
    record[prev] = null;
    record[next] = null;
    if (--chain.size === 0) this.chains.delete(key);
  }

  get(value: string): Members | undefined {
    return this.chains.get(this.foldCase ? value.toLowerCase() : value);
  }

  counts(): Record<string, number> {
    const out: Record<string, number> = Object.create(null);
    for (const chain of this.chains.values()) out[chain.value] = chain.size;
    return out;
  }
}

/** An index of a list field (capabilities, tags): a set of records per value, case folded. */
export class SetIndex implements ValueIndex {
  private readonly buckets = new Map<string, { readonly value: string; readonly records: Set<DeviceRecord> }>();

  add(value: string, record: DeviceRecord): string {
    const key = value.toLowerCase();
    let bucket = this.buckets.get(key);
    if (bucket === undefined) {
      bucket = { value, records: new Set() };
      this.buckets.set(key, bucket);
    }
    bucket.records.add(record);
    return bucket.value === value ? bucket.value : value;
  }

  /** Removes `record` from `value`'s set; a record listing one value in two spellings is removed at the first. */
  delete(value: string, record: DeviceRecord): void {
    const key = value.toLowerCase();
    const bucket = this.buckets.get(key);
    if (bucket === undefined) return;
    bucket.records.delete(record);
    if (bucket.records.size === 0) this.buckets.delete(key);
  }

  get(value: string): ReadonlySet<DeviceRecord> | undefined {
    return this.buckets.get(value.toLowerCase())?.records;
  }

  counts(): Record<string, number> {
    const out: Record<string, number> = Object.create(null);
    for (const bucket of this.buckets.values()) out[bucket.value] = bucket.records.size;
    return out;
  }
}

/**
 * Shares equal strings and equal lists between records: a fleet has few distinct models,
 * firmware versions and capability lists. Bounded, so unique values cannot grow it forever.
 */
export class Interner {
  private readonly strings = new Map<string, string>();
  private readonly lists = new Map<string, readonly string[]>();

  constructor(private readonly max = 10_000) {}

  string<T extends string | undefined>(value: T): T {
    if (value === undefined) return value;
    const known = this.strings.get(value);
    if (known !== undefined) return known as T;
    if (this.strings.size < this.max) this.strings.set(value, value);
    return value;
  }

  /** The shared copy of a list, without duplicates; the caller's array is never kept. */
  list(values: readonly string[]): readonly string[] {
    const key = values.join("\u0000");
    const known = this.lists.get(key);
    if (known !== undefined) return known;
    const unique = values.length === 1 ? [values[0]!] : [...new Set(values)];
    // Not frozen: slicing a frozen array takes V8's slow path, and toDevice slices every list.
    if (this.lists.size < this.max) this.lists.set(key, unique);
    return unique;
  }
}
