import { newId, newTimeId } from "./ids";
import type { Clock } from "./clock";
import { invalid } from "./errors";
import { EventHistory, type HistoryQuery } from "./event-history";
import {
  type EventBusOptions,
  type EventStatistics,
  type PublishOptions,
  type SubscribeOptions,
  type SubscriptionHandle,
  checkSubscribeOptions,
  checkUserEvent,
  expiryOf,
} from "./event-options";
import { iso } from "./json";
import { plainConstructor } from "./plain";
import {
  type EventHandler,
  type Envelope,
  type EventsMatching,
  NEVER,
  Subscription,
  type SubscriptionStats,
  anyOf,
  compilePattern,
  toList,
} from "./subscription";
import {
  type DeviceReport,
  type EventMap,
  type HubEvent,
  type HubEventType,
  PRIORITY_RANK,
  isHubEventType,
  type Priority,
  type TethralEvent,
  type UserEvent,
} from "./types";

export type { DropPolicy, EventHandler, EventsMatching, SubscriptionStats } from "./subscription";
export type { HistoryQuery } from "./event-history";
export type { EventBusOptions, EventStatistics, PublishOptions, SubscribeOptions, SubscriptionHandle } from "./event-options";
export { MAX_EVENT_TTL_SECONDS, USER_TYPE_PATTERN } from "./event-options";

const MAX_RETRY_DELAY_MS = 30_000;
const MAX_TYPE_KEYS = 1000;

/** An event as a plain object, made by a constructor (see plain.ts): the keys in CONTRACT order. */
const EventObject = plainConstructor(function <T extends string, D>(
  this: TethralEvent<T, D>,
  id: string,
  type: T,
  priority: Priority,
  source: string,
  deviceId: string | null,
  data: D,
  timestamp: string,
  expiresAt: string | null,
  causeId: string | null,
  parentCauseId: string | null,
) {
  this.id = id;
  this.type = type;
  this.priority = priority;
  this.source = source;
  this.deviceId = deviceId;
  this.data = data;
  this.timestamp = timestamp;
  this.expiresAt = expiresAt;
  this.causeId = causeId;
  this.parentCauseId = parentCauseId;
});

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
  private readonly recorder: NonNullable<EventBusOptions["recorder"]> | null;

  constructor(
    private readonly clock: Clock,
    options: EventBusOptions = {},
  ) {
    this.history = new EventHistory(options.historySize ?? 1000);
    this.transient = new Set(options.transientTypes ?? ["message.received"]);
    this.defaultSource = options.defaultSource ?? "hub";
    this.onHandlerError = options.onHandlerError;
    this.recorder = options.recorder ?? null;
  }

  /** Publishes one of the hub's own events, typed from the event map. */
  publish<K extends HubEventType>(type: K, data: EventMap[K], options: PublishOptions = {}): TethralEvent<K, EventMap[K]> {
    return this.emit(type, data, options, options.report);
  }

  /**
   * Publishes a user event. Its type must be 1-128 characters of `A-Za-z0-9_.:/-` and must not
   * use a prefix the hub owns (`device.`, `state.`, `message.`, `command.`, `hub.`, `store.`).
   */
  publishCustom(type: string, data: unknown, options: PublishOptions = {}): UserEvent {
    checkUserEvent(type, data, options);
    // Kept in history and handed to every subscriber: a copy, so the flow's own object may change later.
    return this.emit(type, data === undefined ? null : structuredClone(data), options, undefined);
  }

  /** True when some subscriber could receive an event of this type for this device. */
  hasSubscribers(type: string, deviceId: string | null = null): boolean {
    if (this.exactAny.has(type)) return true;
    // Loops, not `some` with an arrow: every message asks this, and a closure over `type` was
    // about 100 bytes of garbage a heartbeat.
    if (anyMatches(this.patternAny, type)) return true;
    if (deviceId === null) return false;
    const scoped = this.byDevice.get(deviceId);
    return scoped !== undefined && anyMatches(scoped, type);
  }

  /** False for the transient types that are never kept in history. */
  keepsHistoryOf(type: string): boolean {
    return !this.transient.has(type);
  }

  private emit<T extends string, D>(type: T, data: D, options: PublishOptions, report: DeviceReport | undefined): TethralEvent<T, D> {
    const now = this.clock.now();
    const priority = options.priority ?? "normal";
    const expiresAt = expiryOf(options, now);
    // A constructor, not a literal: see plain.ts.
    const event = new EventObject<T, D>(
      newTimeId(now),
      type,
      priority,
      options.source ?? this.defaultSource,
      options.deviceId ?? null,
      data,
      iso(now),
      expiresAt === NEVER ? null : iso(expiresAt),
      options.causeId ?? null,
      options.parentCauseId ?? null,
    );
    this.counters.published++;
    this.byPriority[priority]++;
    this.countType(type);
    if (expiresAt <= now) {
      this.counters.expired++;
      return event;
    }
    const seq = this.seq++;
    const kept = !this.transient.has(type);
    if (kept) this.record(event, expiresAt);
    const exact = this.exactAny.get(type);
    // No one to offer it to (history alone, the usual case of a hub without flows listening):
    // no delivery envelope. A transient event still carries its report, as returned.
    if (exact === undefined && this.patternAny.length === 0 && (event.deviceId === null || !this.byDevice.has(event.deviceId))) {
      if (!kept && report !== undefined) withReport(event, report);
      return event;
    }
    // The report is for this process's subscribers: what history keeps and the store writes goes without it.
    const delivered = report === undefined ? event : withReport(kept ? { ...event } : event, report);
    const env: Envelope = { event: delivered, rank: PRIORITY_RANK[priority], expiresAt, seq };
    if (exact) for (const sub of exact) this.offer(sub, env);
    if (this.patternAny.length > 0) for (const sub of this.patternAny) if (sub.matchType(type)) this.offer(sub, env);
    // Read after the others were offered it: a handler may have subscribed to the device meanwhile.
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

  subscribe<P extends string = "*">(options: SubscribeOptions<P>, handler: EventHandler<EventsMatching<P>>): SubscriptionHandle;
  subscribe<P extends string>(
    types: P | P[],
    handler: EventHandler<EventsMatching<P>>,
    options?: Omit<SubscribeOptions<P>, "types">,
  ): SubscriptionHandle;
  subscribe<P extends string>(
    first: SubscribeOptions<P> | P | P[],
    handler: EventHandler<EventsMatching<P>>,
    more: Omit<SubscribeOptions<P>, "types"> = {},
  ): SubscriptionHandle {
    if (first === null || (typeof first !== "object" && typeof first !== "string")) {
      throw invalid("types", "must be type patterns or subscription options");
    }
    const options: SubscribeOptions<P> = typeof first === "string" || Array.isArray(first) ? { ...more, types: first } : first;
    if (typeof handler !== "function") throw invalid("handler", "must be a function");
    const patterns = checkSubscribeOptions(options);
    const matchers = patterns.map(compilePattern);
    const exact = patterns.every((p) => !p.includes("*")) ? [...new Set(patterns)] : null;
    const deviceIds = options.deviceId === undefined ? null : new Set(toList(options.deviceId));
    const id = newId();
    // The bus hands a subscriber only events its patterns match: the narrower type holds.
    const sub = new Subscription(
      id,
      handler as EventHandler,
      anyOf(matchers),
      exact,
      PRIORITY_RANK[options.minPriority ?? "low"],
      deviceIds,
      options.source === undefined ? null : new Set(toList(options.source)),
      (options.filter as ((event: HubEvent) => boolean) | undefined) ?? null,
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

  private record(event: HubEvent, expiresAt: number): void {
    if (this.recorder !== null) this.recorder(event, expiresAt === NEVER ? 0 : expiresAt);
    this.history.add(event, expiresAt);
  }

  /** History, newest first. Expired events are left out: they have left the history. */
  query(q: HistoryQuery = {}): HubEvent[] {
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
    // The hub's own types are always counted by name; user types, up to MAX_TYPE_KEYS of them,
    // the rest together under "(other)" (any caller can publish new types).
    else if (this.byType.size < MAX_TYPE_KEYS || isHubEventType(type)) this.byType.set(type, 1);
    else this.byType.set("(other)", (this.byType.get("(other)") ?? 0) + 1);
  }
}

function pushTo(map: Map<string, Subscription[]>, key: string, sub: Subscription): void {
  map.set(key, [...(map.get(key) ?? []), sub]);
}

function pullFrom(map: Map<string, Subscription[]>, key: string, sub: Subscription): void {
  const next = (map.get(key) ?? []).filter((s) => s !== sub);
  if (next.length === 0) map.delete(key);
  else map.set(key, next);
}

/** The event as this process's subscribers get it: with the report, which its JSON leaves out. */
function withReport<E extends object>(event: E, report: DeviceReport): E {
  return Object.defineProperty(event, "report", { value: report, enumerable: false });
}

/** Whether any of `subs` takes events of `type`. */
function anyMatches(subs: readonly Subscription[], type: string): boolean {
  for (let i = 0; i < subs.length; i++) if (subs[i]!.matchType(type)) return true;
  return false;
}
