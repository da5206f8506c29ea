import { newId, newTimeId } from "./ids";
import type { Clock, TimerHandle } from "./clock";
import { TethralError, invalid } from "./errors";
import { iso } from "./json";
import {
  type EventMap,
  type HubEventType,
  PRIORITIES,
  PRIORITY_RANK,
  type Priority,
  RESERVED_EVENT_PREFIXES,
  type TethralEvent,
} from "./types";

/**
 * A subscriber. Every subscriber (and the history) receives the same event object: treat it as
 * read-only, and copy what you want to change.
 */
export type EventHandler = (event: TethralEvent) => void | PromiseLike<unknown>;

/**
 * What a full subscriber queue gives up:
 * - `drop-newest`: the event that did not fit;
 * - `drop-oldest`: the event that has waited longest;
 * - `drop-lowest` (default): the oldest event of the lowest queued priority, if that priority is
 *   not above the newcomer's; otherwise the newcomer. A flood of low events never pushes out a
 *   critical one.
 */
export type DropPolicy = "drop-newest" | "drop-oldest" | "drop-lowest";

export interface SubscribeOptions {
  /** Type patterns: exact (`device.online`), prefix (`device.*`) or `*`. Default `*`. */
  types?: string | string[];
  minPriority?: Priority;
  deviceId?: string | string[];
  source?: string | string[];
  filter?: (event: TethralEvent) => boolean;
  /** Owner key: `unsubscribeOwner(owner)` removes every subscription it made at once. */
  owner?: string;
  name?: string;
  /** Events waiting while the handler is busy. Default 1000. */
  queueLimit?: number;
  dropPolicy?: DropPolicy;
  /** Retries of a handler whose promise rejects. Default 3. */
  retries?: number;
  /** First retry delay; doubles each time, up to 30 s. Default 100 ms. */
  retryDelayMs?: number;
}

export interface PublishOptions {
  priority?: Priority;
  source?: string;
  deviceId?: string | null;
  causeId?: string | null;
  /** Absolute expiry (epoch ms, ISO string or Date); an expired event is neither delivered nor kept. */
  expiresAt?: number | string | Date | null;
  /** Relative expiry in ms, an alternative to `expiresAt`. */
  ttlMs?: number;
}

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

export interface EventStatistics {
  published: number;
  delivered: number;
  failed: number;
  retried: number;
  dropped: number;
  expired: number;
  subscribers: number;
  historySize: number;
  byType: Record<string, number>;
  byPriority: Record<Priority, number>;
}

export interface HistoryQuery {
  type?: string | string[];
  priority?: Priority | Priority[];
  minPriority?: Priority;
  deviceId?: string;
  source?: string;
  since?: number | string | Date;
  limit?: number;
}

export interface EventBusOptions {
  historySize?: number;
  /** Types kept out of history (high-volume ones). Default `message.received`. */
  transientTypes?: string[];
  /** Told about every handler failure, after retries; the bus itself never throws it on. */
  onHandlerError?: (error: unknown, event: TethralEvent, subscription: string) => void;
  defaultSource?: string;
}

interface Envelope {
  event: TethralEvent;
  rank: number;
  expiresAt: number;
  seq: number;
}

const MAX_RETRY_DELAY_MS = 30_000;
const MAX_TYPE_KEYS = 1000;
const USER_TYPE_PATTERN = /^[A-Za-z0-9_.:/-]{1,128}$/;
const NEVER = Number.POSITIVE_INFINITY;

type TypeMatcher = (type: string) => boolean;

function compilePattern(pattern: string): TypeMatcher {
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

class Subscription {
  readonly lanes = [new Lane(), new Lane(), new Lane(), new Lane()];
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
    readonly filter: ((e: TethralEvent) => boolean) | null,
    readonly owner: string | null,
    readonly queueLimit: number,
    readonly dropPolicy: DropPolicy,
    readonly retries: number,
    readonly retryDelayMs: number,
    name: string,
  ) {
    this.stats = { name, delivered: 0, failed: 0, retried: 0, dropped: 0, expired: 0, queued: 0, maxQueued: 0 };
  }
}

export interface SubscriptionHandle {
  readonly id: string;
  unsubscribe(): void;
  stats(): SubscriptionStats;
}

/**
 * The hub's event bus. Delivery is synchronous while a subscriber is idle; while its handler is
 * busy (an async handler in flight, or re-entrant publishing) events wait in the subscriber's own
 * bounded queue, highest priority first, and are dropped by its policy when it is full — every
 * drop counted. A handler that throws or rejects never reaches the publisher or other subscribers.
 */
export class EventBus {
  private readonly exactAny = new Map<string, Subscription[]>();
  private patternAny: Subscription[] = [];
  private readonly byDevice = new Map<string, Subscription[]>();
  private readonly subs = new Map<string, Subscription>();
  private readonly history: (Envelope | undefined)[];
  private historyHead = 0;
  private historyCount = 0;
  private readonly transient: Set<string>;
  private seq = 0;
  private readonly counters = { published: 0, delivered: 0, failed: 0, retried: 0, dropped: 0, expired: 0 };
  private readonly byType = new Map<string, number>();
  private readonly byPriority: Record<Priority, number> = { low: 0, normal: 0, high: 0, critical: 0 };
  private readonly defaultSource: string;
  private readonly onHandlerError: EventBusOptions["onHandlerError"];

  constructor(
    private readonly clock: Clock,
    options: EventBusOptions = {},
  ) {
    this.history = new Array(Math.max(1, options.historySize ?? 1000));
    this.transient = new Set(options.transientTypes ?? ["message.received"]);
    this.defaultSource = options.defaultSource ?? "hub";
    this.onHandlerError = options.onHandlerError;
  }

  /** Publishes one of the hub's own events, typed from the event map. */
  publish<K extends HubEventType>(type: K, data: EventMap[K], options: PublishOptions = {}): TethralEvent<K, EventMap[K]> {
    return this.emit(type, data, options) as TethralEvent<K, EventMap[K]>;
  }

  /**
   * Publishes a user event. Its type must be 1-128 characters of `A-Za-z0-9_.:/-` and must not
   * use a prefix the hub owns (`device.`, `state.`, `message.`, `command.`, `hub.`, `store.`).
   */
  publishCustom(type: string, data: unknown, options: PublishOptions = {}): TethralEvent {
    if (typeof type !== "string" || !USER_TYPE_PATTERN.test(type)) {
      throw invalid("type", "must be 1-128 characters of A-Z a-z 0-9 _ . : / -");
    }
    if (RESERVED_EVENT_PREFIXES.some((p) => type.startsWith(p))) {
      throw invalid("type", `the prefixes ${RESERVED_EVENT_PREFIXES.join(" ")} are reserved for the hub's own events`);
    }
    if (options.priority !== undefined && !PRIORITIES.includes(options.priority)) {
      throw invalid("priority", `must be one of ${PRIORITIES.join(", ")}`);
    }
    return this.emit(type, data, options);
  }

  /** True when some subscriber could receive an event of this type for this device. */
  hasSubscribers(type: string, deviceId: string | null = null): boolean {
    if (this.exactAny.has(type)) return true;
    if (this.patternAny.some((s) => s.matchType(type))) return true;
    if (deviceId !== null) return this.byDevice.get(deviceId)?.some((s) => s.matchType(type)) ?? false;
    return false;
  }

  /** False for the transient types that are never kept in history. */
  keepsHistoryOf(type: string): boolean {
    return !this.transient.has(type);
  }

  private emit(type: string, data: unknown, options: PublishOptions): TethralEvent {
    const now = this.clock.now();
    const priority = options.priority ?? "normal";
    const expiresAt = expiryOf(options, now);
    const event: TethralEvent = {
      id: newTimeId(now),
      type,
      priority,
      source: options.source ?? this.defaultSource,
      deviceId: options.deviceId ?? null,
      data,
      timestamp: iso(now),
      expiresAt: expiresAt === NEVER ? null : iso(expiresAt),
      causeId: options.causeId ?? null,
    };
    this.counters.published++;
    this.byPriority[priority]++;
    this.countType(type);
    if (expiresAt <= now) {
      this.counters.expired++;
      return event;
    }
    const env: Envelope = { event, rank: PRIORITY_RANK[priority], expiresAt, seq: this.seq++ };
    if (!this.transient.has(type)) this.record(env);

    const exact = this.exactAny.get(type);
    if (exact) for (const sub of exact) this.offer(sub, env);
    if (this.patternAny.length > 0) for (const sub of this.patternAny) if (sub.matchType(type)) this.offer(sub, env);
    if (event.deviceId !== null) {
      const scoped = this.byDevice.get(event.deviceId);
      if (scoped) for (const sub of scoped) if (sub.matchType(type)) this.offer(sub, env);
    }
    return event;
  }

  private offer(sub: Subscription, env: Envelope): void {
    if (!sub.active || env.rank < sub.minRank) return;
    const e = env.event;
    if (sub.sources !== null && !sub.sources.has(e.source)) return;
    if (sub.filter !== null) {
      let pass: boolean;
      try {
        pass = sub.filter(e);
      } catch (err) {
        this.fail(sub, env, err);
        return;
      }
      if (!pass) return;
    }
    if (!sub.busy && sub.queued === 0) this.invoke(sub, env, 0);
    else this.enqueue(sub, env);
    if (!sub.busy && sub.queued > 0) this.drain(sub);
  }

  private invoke(sub: Subscription, env: Envelope, attempt: number): void {
    if (env.expiresAt <= this.clock.now()) {
      // A retry of an event that expired meanwhile arrives with `busy` still set: release it.
      sub.busy = false;
      sub.stats.expired++;
      this.counters.expired++;
      return;
    }
    sub.busy = true;
    let result: void | PromiseLike<unknown>;
    try {
      result = sub.handler(env.event);
    } catch (err) {
      sub.busy = false;
      this.fail(sub, env, err);
      return;
    }
    if (result !== undefined && result !== null && typeof (result as PromiseLike<unknown>).then === "function") {
      (result as PromiseLike<unknown>).then(
        () => {
          sub.busy = false;
          sub.stats.delivered++;
          this.counters.delivered++;
          this.drain(sub);
        },
        (err: unknown) => this.retryOrFail(sub, env, attempt, err),
      );
      return;
    }
    sub.busy = false;
    sub.stats.delivered++;
    this.counters.delivered++;
  }

  private retryOrFail(sub: Subscription, env: Envelope, attempt: number, err: unknown): void {
    if (sub.active && attempt < sub.retries) {
      sub.stats.retried++;
      this.counters.retried++;
      const delay = Math.min(MAX_RETRY_DELAY_MS, sub.retryDelayMs * 2 ** attempt);
      sub.retryTimer = this.clock.setTimeout(() => {
        sub.retryTimer = null;
        this.invoke(sub, env, attempt + 1);
        if (!sub.busy) this.drain(sub);
      }, delay);
      return;
    }
    sub.busy = false;
    this.fail(sub, env, err);
    this.drain(sub);
  }

  private fail(sub: Subscription, env: Envelope, err: unknown): void {
    sub.stats.failed++;
    this.counters.failed++;
    if (this.onHandlerError) {
      try {
        this.onHandlerError(err, env.event, sub.stats.name);
      } catch {
        // A broken error hook must not break delivery either.
      }
    }
  }

  private drain(sub: Subscription): void {
    while (sub.active && !sub.busy && sub.queued > 0) {
      const env = this.dequeue(sub);
      if (!env) break;
      this.invoke(sub, env, 0);
    }
  }

  private enqueue(sub: Subscription, env: Envelope): void {
    if (sub.queued >= sub.queueLimit) {
      const victim = this.victim(sub, env);
      sub.stats.dropped++;
      this.counters.dropped++;
      if (victim === null) return;
      sub.lanes[victim]!.shift();
      sub.queued--;
    }
    sub.lanes[env.rank]!.push(env);
    sub.queued++;
    sub.stats.queued = sub.queued;
    if (sub.queued > sub.stats.maxQueued) sub.stats.maxQueued = sub.queued;
  }

  /** The lane whose head is evicted to make room, or null when the newcomer is dropped. */
  private victim(sub: Subscription, incoming: Envelope): number | null {
    switch (sub.dropPolicy) {
      case "drop-newest":
        return null;
      case "drop-oldest": {
        let lane: number | null = null;
        let oldest = NEVER;
        for (let r = 0; r < 4; r++) {
          const head = sub.lanes[r]!.peek();
          if (head && head.seq < oldest) {
            oldest = head.seq;
            lane = r;
          }
        }
        return lane;
      }
      case "drop-lowest": {
        for (let r = 0; r <= incoming.rank; r++) if (sub.lanes[r]!.length > 0) return r;
        return null;
      }
    }
  }

  private dequeue(sub: Subscription): Envelope | undefined {
    for (let r = 3; r >= 0; r--) {
      const lane = sub.lanes[r]!;
      if (lane.length > 0) {
        sub.queued--;
        sub.stats.queued = sub.queued;
        return lane.shift();
      }
    }
    return undefined;
  }

  subscribe(options: SubscribeOptions, handler: EventHandler): SubscriptionHandle;
  subscribe(types: string | string[], handler: EventHandler, options?: Omit<SubscribeOptions, "types">): SubscriptionHandle;
  subscribe(
    first: SubscribeOptions | string | string[],
    handler: EventHandler,
    more: Omit<SubscribeOptions, "types"> = {},
  ): SubscriptionHandle {
    const options: SubscribeOptions = typeof first === "string" || Array.isArray(first) ? { ...more, types: first } : first;
    if (typeof handler !== "function") throw invalid("handler", "must be a function");
    const patterns = toList(options.types ?? "*");
    if (patterns.length === 0 || patterns.some((p) => typeof p !== "string" || p.length === 0 || p.length > 128)) {
      throw invalid("types", "must be one or more type patterns such as device.online, device.* or *");
    }
    if (options.minPriority !== undefined && !PRIORITIES.includes(options.minPriority)) {
      throw invalid("minPriority", `must be one of ${PRIORITIES.join(", ")}`);
    }
    const matchers = patterns.map(compilePattern);
    const exact = patterns.every((p) => !p.includes("*")) ? [...new Set(patterns)] : null;
    const deviceIds = options.deviceId === undefined ? null : new Set(toList(options.deviceId));
    const id = newId();
    const sub = new Subscription(
      id,
      handler,
      matchers.length === 1 ? matchers[0]! : (t) => matchers.some((m) => m(t)),
      exact,
      PRIORITY_RANK[options.minPriority ?? "low"],
      deviceIds,
      options.source === undefined ? null : new Set(toList(options.source)),
      options.filter ?? null,
      options.owner ?? null,
      Math.max(1, options.queueLimit ?? 1000),
      options.dropPolicy ?? "drop-lowest",
      Math.max(0, options.retries ?? 3),
      Math.max(0, options.retryDelayMs ?? 100),
      options.name ?? `${patterns.join(",")}#${id.slice(0, 8)}`,
    );
    this.subs.set(id, sub);
    if (deviceIds) {
      for (const d of deviceIds) pushTo(this.byDevice, d, sub);
    } else if (exact) {
      for (const t of exact) pushTo(this.exactAny, t, sub);
    } else {
      this.patternAny = [...this.patternAny, sub];
    }
    return {
      id,
      unsubscribe: () => this.remove(sub),
      stats: () => ({ ...sub.stats }),
    };
  }

  /** Removes every subscription made under `owner`. */
  unsubscribeOwner(owner: string): number {
    let n = 0;
    for (const sub of [...this.subs.values()]) {
      if (sub.owner === owner) {
        this.remove(sub);
        n++;
      }
    }
    return n;
  }

  private remove(sub: Subscription): void {
    if (!sub.active) return;
    sub.active = false;
    this.subs.delete(sub.id);
    if (sub.retryTimer !== null) {
      this.clock.clearTimeout(sub.retryTimer);
      sub.retryTimer = null;
    }
    // Events still waiting are never delivered now: count them as dropped.
    sub.stats.dropped += sub.queued;
    this.counters.dropped += sub.queued;
    for (const lane of sub.lanes) lane.clear();
    sub.queued = 0;
    sub.stats.queued = 0;
    // Copy-on-write lists: a publish iterating the old array is not disturbed.
    if (sub.deviceIds) {
      for (const d of sub.deviceIds) pullFrom(this.byDevice, d, sub);
    } else if (sub.exactTypes) {
      for (const t of sub.exactTypes) pullFrom(this.exactAny, t, sub);
    } else {
      this.patternAny = this.patternAny.filter((s) => s !== sub);
    }
  }

  /** Removes every subscription and cancels every pending retry. */
  close(): void {
    for (const sub of [...this.subs.values()]) this.remove(sub);
  }

  get subscriberCount(): number {
    return this.subs.size;
  }

  /** Pending retry timers, for tests and health reports. */
  get pendingRetries(): number {
    let n = 0;
    for (const sub of this.subs.values()) if (sub.retryTimer !== null) n++;
    return n;
  }

  subscriptionStats(): SubscriptionStats[] {
    return [...this.subs.values()].map((s) => ({ ...s.stats }));
  }

  /** Told about every event kept in history (the persistence layer stores them). */
  recorder: ((event: TethralEvent, expiresAt: number) => void) | null = null;

  private record(env: Envelope): void {
    if (this.recorder !== null) this.recorder(env.event, env.expiresAt === NEVER ? 0 : env.expiresAt);
    const cap = this.history.length;
    this.history[this.historyHead] = env;
    this.historyHead = (this.historyHead + 1) % cap;
    if (this.historyCount < cap) this.historyCount++;
  }

  /** History, newest first. Expired events are left out: they have left the history. */
  query(q: HistoryQuery = {}): TethralEvent[] {
    const matchType = q.type === undefined ? null : anyOf(toList(q.type).map(compilePattern));
    const priorities = q.priority === undefined ? null : new Set(toList(q.priority));
    const minRank = q.minPriority === undefined ? 0 : PRIORITY_RANK[q.minPriority];
    const since = q.since === undefined ? 0 : toEpoch(q.since, "since");
    const limit = Math.min(q.limit ?? 100, this.history.length);
    const now = this.clock.now();
    const cap = this.history.length;
    const out: TethralEvent[] = [];
    for (let i = 1; i <= this.historyCount && out.length < limit; i++) {
      const env = this.history[(this.historyHead - i + cap) % cap]!;
      const e = env.event;
      if (env.expiresAt <= now || env.rank < minRank) continue;
      if (matchType && !matchType(e.type)) continue;
      if (priorities && !priorities.has(e.priority)) continue;
      if (q.deviceId !== undefined && e.deviceId !== q.deviceId) continue;
      if (q.source !== undefined && e.source !== q.source) continue;
      if (since > 0 && Date.parse(e.timestamp) < since) continue;
      out.push(e);
    }
    return out;
  }

  statistics(): EventStatistics {
    const now = this.clock.now();
    let historySize = 0;
    for (let i = 0; i < this.historyCount; i++) if (this.history[i]!.expiresAt > now) historySize++;
    return {
      ...this.counters,
      subscribers: this.subs.size,
      historySize,
      byType: Object.fromEntries(this.byType),
      byPriority: { ...this.byPriority },
    };
  }

  private countType(type: string): void {
    const n = this.byType.get(type);
    if (n !== undefined) this.byType.set(type, n + 1);
    else if (this.byType.size < MAX_TYPE_KEYS) this.byType.set(type, 1);
    else this.byType.set("(other)", (this.byType.get("(other)") ?? 0) + 1);
  }
}

/** The largest epoch ms a Date can hold: past it, formatting the expiry as ISO would throw. */
const MAX_DATE_MS = 8.64e15;

function expiryOf(options: PublishOptions, now: number): number {
  if (options.ttlMs !== undefined) {
    if (!Number.isFinite(options.ttlMs) || Math.abs(now + options.ttlMs) > MAX_DATE_MS) {
      throw invalid("ttlMs", "must be a finite number of milliseconds");
    }
    return now + options.ttlMs;
  }
  if (options.expiresAt === undefined || options.expiresAt === null) return NEVER;
  const at = toEpoch(options.expiresAt, "expiresAt");
  if (Math.abs(at) > MAX_DATE_MS) throw invalid("expiresAt", "must be a time");
  return at;
}

function toEpoch(value: number | string | Date, field: string): number {
  const ms = value instanceof Date ? value.getTime() : typeof value === "number" ? value : Date.parse(value);
  if (!Number.isFinite(ms)) throw new TethralError("INVALID", `${field}: must be a time`, [{ field, message: "must be a time" }]);
  return ms;
}

function toList<T>(v: T | T[]): T[] {
  return Array.isArray(v) ? v : [v];
}

function anyOf(matchers: TypeMatcher[]): TypeMatcher {
  return matchers.length === 1 ? matchers[0]! : (t) => matchers.some((m) => m(t));
}

function pushTo(map: Map<string, Subscription[]>, key: string, sub: Subscription): void {
  map.set(key, [...(map.get(key) ?? []), sub]);
}

function pullFrom(map: Map<string, Subscription[]>, key: string, sub: Subscription): void {
  const next = (map.get(key) ?? []).filter((s) => s !== sub);
  if (next.length === 0) map.delete(key);
  else map.set(key, next);
}
