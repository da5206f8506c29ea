import { invalid } from "./errors";
import type { DropPolicy, EventsMatching, SubscriptionStats } from "./subscription";
import { NEVER, toList } from "./subscription";
import { type DeviceReport, type HubEvent, PRIORITIES, type Priority, RESERVED_EVENT_PREFIXES } from "./types";
import { DEVICE_ID_PATTERN, LIMITS, checkJsonValue, checkLabel, toEpoch } from "./validation";

/** What callers hand the event bus, and the checks it makes at its edge. */

export interface SubscribeOptions<P extends string = string> {
  /** Type patterns: exact (`device.online`), prefix (`device.*`) or `*`. Default `*`. */
  types?: P | P[];
  minPriority?: Priority;
  deviceId?: string | string[];
  source?: string | string[];
  filter?: (event: EventsMatching<P>) => boolean;
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
  /** The cause of the cause: the event whose flow message made this change. */
  parentCauseId?: string | null;
  /** Absolute expiry (epoch ms, ISO string or Date); an expired event is neither delivered nor kept. */
  expiresAt?: number | string | Date | null;
  /** Relative expiry in ms, an alternative to `expiresAt`. */
  ttlMs?: number;
  /**
   * `message.received` only: what the hub parsed from the message. Subscribers find it as the
   * event's `report`; it stays out of the event's JSON, the history and the store.
   */
  report?: DeviceReport;
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
  onHandlerError?: (error: unknown, event: HubEvent, subscription: string) => void;
  defaultSource?: string;
  /** Told about every event kept in history (the write-behind store keeps them). */
  recorder?: (event: HubEvent, expiresAt: number) => void;
}

export interface SubscriptionHandle {
  readonly id: string;
  unsubscribe(): void;
  stats(): SubscriptionStats;
}

/** A user event's type (its prefix must not be one of RESERVED_EVENT_PREFIXES). */
export const USER_TYPE_PATTERN = /^[A-Za-z0-9_.:/-]{1,128}$/;
/** A type, or a pattern of types with `*` for any run of characters, that an event's type can match. */
export const SUBSCRIBED_TYPE_PATTERN = /^[A-Za-z0-9_.:/*-]{1,128}$/;
/** The longest time to live a user event may ask for: ten years, far past any history's retention. */
export const MAX_EVENT_TTL_SECONDS = 10 * 365 * 24 * 3600;

/** Checks a user event before it is published: it comes from a flow, and what history keeps must be plain JSON. */
export function checkUserEvent(type: string, data: unknown, options: PublishOptions): void {
  if (typeof type !== "string" || !USER_TYPE_PATTERN.test(type)) {
    throw invalid("type", "must be 1-128 characters of A-Z a-z 0-9 _ . : / -");
  }
  if (RESERVED_EVENT_PREFIXES.some((p) => type.startsWith(p))) {
    throw invalid("type", `the prefixes ${RESERVED_EVENT_PREFIXES.join(" ")} are reserved for the hub's own events`);
  }
  if (options.priority !== undefined && !PRIORITIES.includes(options.priority)) {
    throw invalid("priority", `must be one of ${PRIORITIES.join(", ")}`);
  }
  const problem =
    checkLabel(options.source, "source", 64) ??
    checkLabel(options.causeId, "causeId") ??
    checkLabel(options.parentCauseId, "parentCauseId") ??
    (options.deviceId !== undefined && options.deviceId !== null && !DEVICE_ID_PATTERN.test(String(options.deviceId))
      ? { field: "deviceId", message: "must be a device id" }
      : null) ??
    checkJsonValue(data, "data", LIMITS.eventDataBytes);
  if (problem) throw invalid(problem.field, problem.message);
}

const DROP_POLICIES: readonly DropPolicy[] = ["drop-newest", "drop-oldest", "drop-lowest"];

/** Checks a subscription's settings and returns its type patterns: a bad queue setting would break every publisher. */
export function checkSubscribeOptions<P extends string>(o: SubscribeOptions<P>): string[] {
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
  const patterns: string[] = toList(o.types ?? "*");
  if (patterns.length === 0 || patterns.some((p) => typeof p !== "string" || p.length === 0 || p.length > 128)) {
    throw invalid("types", "must be one or more type patterns such as device.online, device.* or *");
  }
  if (o.minPriority !== undefined && !PRIORITIES.includes(o.minPriority)) {
    throw invalid("minPriority", `must be one of ${PRIORITIES.join(", ")}`);
  }
  return patterns;
}

/** The largest epoch ms a Date can hold: past it, formatting the expiry as ISO would throw. */
const MAX_DATE_MS = 8.64e15;

/** An event's expiry as epoch ms (`NEVER` without one). */
export function expiryOf(options: PublishOptions, now: number): number {
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
