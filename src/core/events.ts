import { newId, newTimeId } from "./ids";
import type { Clock } from "./clock";
import { invalid } from "./errors";
import { EventHistory, type HistoryQuery } from "./event-history";
import { iso } from "./json";
import { DEVICE_ID_PATTERN, LIMITS, checkJsonValue, checkLabel } from "./validation";
import {
  type DropPolicy,
  type Envelope,
  type EventHandler,
  NEVER,
  Subscription,
  type SubscriptionStats,
  compilePattern,
  toList,
} from "./subscription";
import {
  type EventMap,
  type HubEventType,
  PRIORITIES,
  PRIORITY_RANK,
  type Priority,
  RESERVED_EVENT_PREFIXES,
  type TethralEvent,
} from "./types";
import { toEpoch } from "./validation";

export type { DropPolicy, EventHandler, SubscriptionStats } from "./subscription";
export type { HistoryQuery } from "./event-history";

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

export interface EventBusOptions {
  historySize?: number;
  /** Types kept out of history (high-volume ones). Default `message.received`. */
  transientTypes?: string[];
  /** Told about every handler failure, after retries; the bus itself never throws it on. */
  onHandlerError?: (error: unknown, event: TethralEvent, subscription: string) => void;
  defaultSource?: string;
}

const MAX_RETRY_DELAY_MS = 30_000;
const MAX_TYPE_KEYS = 1000;
/** A user event's type (its prefix must not be one of RESERVED_EVENT_PREFIXES). */
export const USER_TYPE_PATTERN = /^[A-Za-z0-9_.:/-]{1,128}$/;
/** The longest time to live a user event may ask for: ten years, far past any history's retention. */
export const MAX_EVENT_TTL_SECONDS = 10 * 365 * 24 * 3600;

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
  private readonly history: EventHistory;
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
    this.history = new EventHistory(options.historySize ?? 1000);
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
    // User events come from flows: everything kept in history (and stored) must be plain JSON.
    const problem =
      checkLabel(options.source, "source", 64) ??
      checkLabel(options.causeId, "causeId") ??
      (options.deviceId !== undefined && options.deviceId !== null && !DEVICE_ID_PATTERN.test(String(options.deviceId))
        ? { field: "deviceId", message: "must be a device id" }
        : null) ??
      checkJsonValue(data, "data", LIMITS.eventDataBytes);
    if (problem) throw invalid(problem.field, problem.message);
    // Kept in history and handed to every subscriber: a copy, so the flow's own object may change later.
    return this.emit(type, data === undefined ? null : structuredClone(data), options);
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
    else if (sub.enqueue(env)) this.counters.dropped++;
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
      const env = sub.dequeue();
      if (!env) break;
      this.invoke(sub, env, 0);
    }
  }

  subscribe(options: SubscribeOptions, handler: EventHandler): SubscriptionHandle;
  subscribe(types: string | string[], handler: EventHandler, options?: Omit<SubscribeOptions, "types">): SubscriptionHandle;
  subscribe(
    first: SubscribeOptions | string | string[],
    handler: EventHandler,
    more: Omit<SubscribeOptions, "types"> = {},
  ): SubscriptionHandle {
    if (first === null || (typeof first !== "object" && typeof first !== "string")) {
      throw invalid("types", "must be type patterns or subscription options");
    }
    const options: SubscribeOptions = typeof first === "string" || Array.isArray(first) ? { ...more, types: first } : first;
    if (typeof handler !== "function") throw invalid("handler", "must be a function");
    checkSubscribeNumbers(options);
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
    this.counters.dropped += sub.clearQueue();
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
    this.history.add(env);
  }

  /** History, newest first. Expired events are left out: they have left the history. */
  query(q: HistoryQuery = {}): TethralEvent[] {
    return this.history.query(q, this.clock.now());
  }

  statistics(): EventStatistics {
    return {
      ...this.counters,
      subscribers: this.subs.size,
      historySize: this.history.liveCount(this.clock.now()),
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

function pushTo(map: Map<string, Subscription[]>, key: string, sub: Subscription): void {
  map.set(key, [...(map.get(key) ?? []), sub]);
}

function pullFrom(map: Map<string, Subscription[]>, key: string, sub: Subscription): void {
  const next = (map.get(key) ?? []).filter((s) => s !== sub);
  if (next.length === 0) map.delete(key);
  else map.set(key, next);
}

const DROP_POLICIES: readonly DropPolicy[] = ["drop-newest", "drop-oldest", "drop-lowest"];

/** A bad queue setting would break every publisher (or let a queue grow without bound). */
function checkSubscribeNumbers(o: SubscribeOptions): void {
  const whole = (v: unknown, field: string, min: number, max: number) => {
    if (v !== undefined && (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)) {
      throw invalid(field, `must be a whole number from ${min} to ${max}`);
    }
  };
  if (o.dropPolicy !== undefined && !DROP_POLICIES.includes(o.dropPolicy)) {
    throw invalid("dropPolicy", `must be one of ${DROP_POLICIES.join(", ")}`);
  }
  whole(o.queueLimit, "queueLimit", 1, 1_000_000);
  whole(o.retries, "retries", 0, 100);
  whole(o.retryDelayMs, "retryDelayMs", 0, 3_600_000);
  if (o.filter !== undefined && typeof o.filter !== "function") throw invalid("filter", "must be a function");
}
