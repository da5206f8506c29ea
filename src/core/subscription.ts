import type { TimerHandle } from "./clock";
import type { HubEvent, HubEventOf, HubEventType, RESERVED_EVENT_PREFIXES, UserEvent } from "./types";

/**
 * A subscriber. Every subscriber (and the history) receives the same event object: treat it as
 * read-only, and copy what you want to change.
 */
export type EventHandler<E extends HubEvent = HubEvent> = (event: E) => void | PromiseLike<unknown>;

/** The hub's own types one pattern matches; a star anywhere but at the end is left to run time. */
type OwnTypesMatching<P extends string> = P extends "*"
  ? HubEventType
  : P extends `${infer Head}*`
    ? Head extends `${string}*${string}`
      ? HubEventType
      : Extract<HubEventType, `${Head}${string}`>
    : P extends `${string}*${string}`
      ? HubEventType
      : Extract<HubEventType, P>;

/** User events cannot take a type under the hub's prefixes: such a pattern matches none. */
type UserEventsMatching<P extends string> = P extends `${(typeof RESERVED_EVENT_PREFIXES)[number]}${string}` ? never : UserEvent;

/**
 * What a subscription to the type patterns `P` receives: `"state.changed"` gives that event with
 * its data typed, `"device.*"` the union of the device events, a pattern known only at run time
 * (`string`) or one that user events may match adds `UserEvent`.
 */
export type EventsMatching<P extends string> = string extends P
  ? HubEvent
  : P extends string
    ? HubEventOf<OwnTypesMatching<P>> | UserEventsMatching<P>
    : never;

/**
 * What a full subscriber queue gives up:
 * - `drop-newest`: the event that did not fit;
 * - `drop-oldest`: the event that has waited longest;
 * - `drop-lowest` (default): the oldest event of the lowest queued priority, if that priority is
 *   not above the newcomer's; otherwise the newcomer. A flood of low events never pushes out a
 *   critical one.
 */
export type DropPolicy = "drop-newest" | "drop-oldest" | "drop-lowest";

export interface SubscriptionStats {
  name: string;
  delivered: number;
  failed: number;
  retried: number;
  dropped: number;
  expired: number;
  queued: number;
  maxQueued: number;
}

/** An event as the bus carries it: with its priority rank, expiry (epoch ms) and publish order. */
export interface Envelope {
  event: HubEvent;
  rank: number;
  expiresAt: number;
  seq: number;
}

/** The expiry of an event that never expires. */
export const NEVER = Number.POSITIVE_INFINITY;

export type TypeMatcher = (type: string) => boolean;

export function compilePattern(pattern: string): TypeMatcher {
  if (pattern === "*") return () => true;
  const star = pattern.indexOf("*");
  if (star === -1) return (t) => t === pattern;
  if (star === pattern.length - 1) {
    const prefix = pattern.slice(0, -1);
    return (t) => t.startsWith(prefix);
  }
  const re = new RegExp(`^${pattern.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`);
  return (t) => re.test(t);
}

/** One matcher for several: a loop, since an arrow inside `some` would be a closure made for every event matched. */
export function anyOf(matchers: TypeMatcher[]): TypeMatcher {
  if (matchers.length === 1) return matchers[0]!;
  return (t) => {
    for (let i = 0; i < matchers.length; i++) if (matchers[i]!(t)) return true;
    return false;
  };
}

export function toList<T>(v: T | T[]): T[] {
  return Array.isArray(v) ? v : [v];
}

/** A FIFO with O(1) shift that compacts itself. */
class Lane {
  private items: Envelope[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(e: Envelope): void {
    this.items.push(e);
  }

  peek(): Envelope | undefined {
    return this.items[this.head];
  }

  shift(): Envelope | undefined {
    const e = this.items[this.head];
    if (e === undefined) return undefined;
    this.items[this.head++] = undefined as unknown as Envelope;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return e;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }
}

/**
 * One subscriber as the bus keeps it: what it wants, and its own bounded queue of events waiting
 * while its handler is busy, one lane per priority.
 */
export class Subscription {
  private readonly lanes = [new Lane(), new Lane(), new Lane(), new Lane()];
  queued = 0;
  busy = false;
  active = true;
  retryTimer: TimerHandle | null = null;
  readonly stats: SubscriptionStats;

  constructor(
    readonly id: string,
    readonly handler: EventHandler,
    readonly matchType: TypeMatcher,
    readonly exactTypes: string[] | null,
    readonly minRank: number,
    readonly deviceIds: Set<string> | null,
    readonly sources: Set<string> | null,
    readonly filter: ((e: HubEvent) => boolean) | null,
    readonly owner: string | null,
    readonly queueLimit: number,
    readonly dropPolicy: DropPolicy,
    readonly retries: number,
    readonly retryDelayMs: number,
    name: string,
  ) {
    this.stats = { name, delivered: 0, failed: 0, retried: 0, dropped: 0, expired: 0, queued: 0, maxQueued: 0 };
  }

  /** Queues an event; when the queue is full, the drop policy gives one up. True when one was dropped. */
  enqueue(env: Envelope): boolean {
    let dropped = false;
    if (this.queued >= this.queueLimit) {
      const victim = this.victim(env);
      this.stats.dropped++;
      dropped = true;
      if (victim === null) return dropped;
      this.lanes[victim]!.shift();
      this.queued--;
    }
    this.lanes[env.rank]!.push(env);
    this.queued++;
    this.stats.queued = this.queued;
    if (this.queued > this.stats.maxQueued) this.stats.maxQueued = this.queued;
    return dropped;
  }

  /** The lane whose head is evicted to make room, or null when the newcomer is dropped. */
  private victim(incoming: Envelope): number | null {
    switch (this.dropPolicy) {
      case "drop-newest":
        return null;
      case "drop-oldest": {
        let lane: number | null = null;
        let oldest = NEVER;
        for (let r = 0; r < 4; r++) {
          const head = this.lanes[r]!.peek();
          if (head && head.seq < oldest) {
            oldest = head.seq;
            lane = r;
          }
        }
        return lane;
      }
      case "drop-lowest": {
        for (let r = 0; r <= incoming.rank; r++) if (this.lanes[r]!.length > 0) return r;
        return null;
      }
    }
  }

  /** The next queued event: the oldest of the highest priority waiting. */
  dequeue(): Envelope | undefined {
    for (let r = 3; r >= 0; r--) {
      const lane = this.lanes[r]!;
      if (lane.length > 0) {
        this.queued--;
        this.stats.queued = this.queued;
        return lane.shift();
      }
    }
    return undefined;
  }

  /** Empties the queue; what waited is counted as dropped. Returns how many that were. */
  clearQueue(): number {
    const dropped = this.queued;
    this.stats.dropped += dropped;
    for (const lane of this.lanes) lane.clear();
    this.queued = 0;
    this.stats.queued = 0;
    return dropped;
  }
}
