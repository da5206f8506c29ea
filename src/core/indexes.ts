import type { DeviceRecord } from "./registry";

/** The members of one index value: their count, and a walk over them in insertion order. */
export interface Members extends Iterable<DeviceRecord> {
  readonly size: number;
  /** Whether the members are in registration order (see LinkedMembers). */
  readonly inOrder: boolean;
  /** The members at [offset, offset+limit) in their order, or from the last with `fromTail`. */
  page(offset: number, limit: number, fromTail: boolean): DeviceRecord[];
  /** Appends the members `keep` accepts (all without one) to `into`, in order: a plain loop, for filters over large sets. */
  collect(into: DeviceRecord[], keep: ((r: DeviceRecord) => boolean) | null): void;
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

/** Links a list index keeps on each record: its group and its neighbours there. */
type ListLinks = readonly ["capGroup", "capPrev", "capNext"] | readonly ["tagGroup", "tagPrev", "tagNext"];

type PrevLink = LinkPair[0] | ListLinks[1];
type NextLink = LinkPair[1] | ListLinks[2];

/**
 * Records linked in a doubly linked list through two fields of each record, in the order they
 * were added. `inOrder` stays true while that is also registration order (a record moved in from
 * another value arrives with an older `seq` and ends it), so a filter on this list alone can page
 * it by walking, without collecting and sorting.
 *
 * A long page of such a list is read from an array of its members, made by one walk and kept
 * until the list next changes (8 bytes a member): following links waits on memory at every
 * record, while reads from an array overlap (10,000 of 1,000,000 devices: 2.6 ms by links, 0.35
 * ms from the array). A filter that collects the members reads the array when there is one.
 */
abstract class LinkedMembers implements Members {
  head: DeviceRecord | null = null;
  tail: DeviceRecord | null = null;
  size = 0;
  inOrder = true;
  /** The members in list order, while the list is unchanged since it was made; null otherwise. */
  private snapshot: DeviceRecord[] | null = null;

  constructor(
    private readonly prev: PrevLink,
    private readonly next: NextLink,
  ) {}

  /** Links `record` in at the tail. */
  append(record: DeviceRecord): void {
    const tail = this.tail;
    record[this.prev] = tail;
    record[this.next] = null;
    if (tail !== null) {
      tail[this.next] = record;
      if (tail.seq > record.seq) this.inOrder = false;
    } else this.head = record;
    this.tail = record;
    this.size++;
    this.snapshot = null;
  }

  /** Unlinks `record`, a member. */
  unlink(record: DeviceRecord): void {
    const p = record[this.prev];
    const n = record[this.next];
    if (p !== null) p[this.next] = n;
    else this.head = n;
    if (n !== null) n[this.prev] = p;
    else this.tail = p;
    record[this.prev] = null;
    record[this.next] = null;
    this.size--;
    this.snapshot = null;
  }

  *[Symbol.iterator](): Iterator<DeviceRecord> {
    for (let r = this.head; r !== null; r = r[this.next]) yield r;
  }

  /**
   * Reads the kept array when there is one, and otherwise walks the links without making one:
   * a list out of registration order (a status's, whose members come and go with every
   * online/offline change) is collected to be sorted, and an array kept for it would only be
   * thrown away at its next change.
   */
  collect(into: DeviceRecord[], keep: ((r: DeviceRecord) => boolean) | null): void {
    const all = this.snapshot;
    if (all !== null) {
      if (keep === null) for (let i = 0; i < all.length; i++) into.push(all[i]!);
      else for (let i = 0; i < all.length; i++) if (keep(all[i]!)) into.push(all[i]!);
      return;
    }
    const next = this.next;
    if (keep === null) for (let r = this.head; r !== null; r = r[next]) into.push(r);
    else for (let r = this.head; r !== null; r = r[next]) if (keep(r)) into.push(r);
  }

  /** The members at [offset, offset+limit) in the list's order, or from the tail with `fromTail`. */
  page(offset: number, limit: number, fromTail: boolean): DeviceRecord[] {
    const end = Math.min(this.size, offset + limit);
    if (offset >= end) return [];
    // A short page near its end is walked; a long one is read from the array.
    if (this.snapshot !== null || end > SHORT_PAGE) return orderedPage(this.all(), offset, limit, fromTail);
    const out: DeviceRecord[] = [];
    const step = fromTail ? this.prev : this.next;
    let r = fromTail ? this.tail : this.head;
    for (let i = 0; r !== null && i < offset; i++) r = r[step];
    for (; r !== null && out.length < limit; r = r[step]) out.push(r);
    return out;
  }

  private all(): DeviceRecord[] {
    let all = this.snapshot;
    if (all === null) {
      all = new Array<DeviceRecord>(this.size);
      let i = 0;
      for (let r = this.head; r !== null; r = r[this.next]) all[i++] = r;
      this.snapshot = all;
    }
    return all;
  }
}

/** Pages ending within this many members are walked by links rather than read from the array. */
const SHORT_PAGE = 1000;

/** Items [offset, offset+limit) of `items`, or of `items` reversed with `fromTail`. */
export function orderedPage<T>(items: readonly T[], offset: number, limit: number, fromTail: boolean): T[] {
  if (!fromTail) return items.slice(offset, offset + limit);
  const end = Math.max(0, items.length - offset);
  return items.slice(Math.max(0, end - limit), end).reverse();
}

class Chain extends LinkedMembers {
  constructor(
    readonly value: string,
    links: LinkPair,
  ) {
    super(links[0], links[1]);
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
    const key = this.foldCase ? value.toLowerCase() : value;
    let chain = this.chains.get(key);
    if (chain === undefined) {
      chain = new Chain(value, this.links);
      this.chains.set(key, chain);
    }
    chain.append(record);
    return chain.value === value ? chain.value : value;
  }

  /** Unlinks `record`, which must be in the chain of `value` (its current value). */
  delete(value: string, record: DeviceRecord): void {
    const key = this.foldCase ? value.toLowerCase() : value;
    const chain = this.chains.get(key);
    if (chain === undefined) return;
    if (record[this.links[0]] === null && chain.head !== record) return; // not a member
    chain.unlink(record);
    if (chain.size === 0) this.chains.delete(key);
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

/**
 * The records whose list (capabilities or tags) holds the same values, case folded: a fleet has
 * few distinct lists, so a filter works on a handful of groups instead of on every record.
 */
export class ListGroup extends LinkedMembers {
  constructor(
    readonly key: string,
    /** The list's values, lower case and without repeats. */
    readonly values: readonly string[],
    links: ListLinks,
  ) {
    super(links[1], links[2]);
  }
}

/** One value of a list index: its count, its groups, and the spelling it was first met in. */
interface ListValue {
  readonly value: string;
  size: number;
  readonly groups: Set<ListGroup>;
}

/**
 * An index of a list field (capabilities, tags). Each record sits in the group of its list
 * (a doubly linked chain through three fields of the record, as in ChainIndex); each value
 * knows the groups holding it. Registering a device costs a few pointer writes and one lookup
 * of its list, where a hash set per value grew and rehashed with the fleet, and a filter on
 * several values intersects groups, not records.
 */
export class ListIndex {
  private readonly groups = new Map<string, ListGroup>();
  private readonly values = new Map<string, ListValue>();

  constructor(private readonly links: ListLinks) {}

  /** Adds `record` under its list (without repeats of one spelling; may be empty). */
  add(list: readonly string[], record: DeviceRecord): void {
    const [groupOf, prev, next] = this.links;
    record[groupOf] = null;
    record[prev] = null;
    record[next] = null;
    if (list.length === 0) return;
    const key = list.length === 1 ? list[0]!.toLowerCase() : list.map((v) => v.toLowerCase()).join("\u0000");
    let group = this.groups.get(key);
    if (group === undefined) group = this.newGroup(key, list);
    record[groupOf] = group;
    group.append(record);
    for (const v of group.values) this.values.get(v)!.size++;
  }

  /** Removes `record` from its group (a record with an empty list is in none). */
  delete(record: DeviceRecord): void {
    const groupOf = this.links[0];
    const group = record[groupOf];
    if (group === null) return;
    group.unlink(record);
    record[groupOf] = null;
    for (const v of group.values) {
      const entry = this.values.get(v)!;
      entry.size--;
      if (group.size === 0) {
        entry.groups.delete(group);
        if (entry.groups.size === 0) this.values.delete(v);
      }
    }
    if (group.size === 0) this.groups.delete(group.key);
  }

  /** The groups of records carrying all (or any) of `values`, which are lower case. */
  groupsWith(values: readonly string[], match: "all" | "any"): ListGroup[] {
    const entries = values.map((v) => this.values.get(v));
    if (match === "all") {
      if (entries.some((e) => e === undefined)) return [];
      const present = entries as ListValue[];
      const fewest = present.reduce((a, b) => (b.groups.size < a.groups.size ? b : a));
      const out: ListGroup[] = [];
      for (const group of fewest.groups) if (values.every((v) => group.values.includes(v))) out.push(group);
      return out;
    }
    const out = new Set<ListGroup>();
    for (const entry of entries) if (entry !== undefined) for (const group of entry.groups) out.add(group);
    return [...out];
  }

  /** The group a record sits in, for a filter's per-record test. */
  groupOf(record: DeviceRecord): ListGroup | null {
    return record[this.links[0]];
  }

  counts(): Record<string, number> {
    const out: Record<string, number> = Object.create(null);
    for (const entry of this.values.values()) out[entry.value] = entry.size;
    return out;
  }

  private newGroup(key: string, list: readonly string[]): ListGroup {
    const folded: string[] = [];
    const spellings: string[] = [];
    for (const spelt of list) {
      const v = spelt.toLowerCase();
      if (folded.includes(v)) continue;
      folded.push(v);
      spellings.push(spelt);
    }
    const group = new ListGroup(key, folded, this.links);
    this.groups.set(key, group);
    for (let i = 0; i < folded.length; i++) {
      let entry = this.values.get(folded[i]!);
      if (entry === undefined) {
        entry = { value: spellings[i]!, size: 0, groups: new Set() };
        this.values.set(folded[i]!, entry);
      }
      entry.groups.add(group);
    }
    return group;
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
    // Validated text holds no NUL, so a lone value is its own key (and builds no string).
    const key = values.length === 1 ? values[0]! : values.join("\u0000");
    const known = this.lists.get(key);
    if (known !== undefined) return known;
    const unique = values.length === 1 ? [values[0]!] : [...new Set(values)];
    // Not frozen: slicing a frozen array takes V8's slow path, and toDevice slices every list.
    if (this.lists.size < this.max) this.lists.set(key, unique);
    return unique;
  }
}
