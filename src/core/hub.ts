import { newId } from "./ids";
import { AnomalyDetector, type AnomalyOptions, type AnomalyStatistics, DEFAULT_ANOMALY_OPTIONS } from "./anomaly";
import { type Clock, systemClock } from "./clock";
import { type TethralError, invalid, notFound } from "./errors";
import {
  EventBus,
  type EventBusOptions,
  type EventHandler,
  type HistoryQuery,
  type PublishOptions,
  type SubscribeOptions,
  type SubscriptionHandle,
} from "./events";
import { DEFAULT_HEARTBEAT_OPTIONS, HeartbeatMonitor, type HeartbeatOptions, type HeartbeatTracker } from "./heartbeat";
import { iso, isoOrNull } from "./json";
import { type DeviceRecord, DeviceRegistry, type DeviceFilter, type DeviceList, type DeviceStatistics, toDevice } from "./registry";
import { type ChangeCause, DEFAULT_STATE_OPTIONS, StateManager, type StateOptions, type StateStatistics } from "./state";
import type { Device, DeviceState, DeviceStatus, JsonObject, StateHistoryEntry, TethralEvent } from "./types";

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? (T[K] extends unknown[] ? T[K] : DeepPartial<T[K]>) : T[K] };

export interface HubOptions {
  clock?: Clock;
  heartbeat?: DeepPartial<HeartbeatOptions>;
  state?: Partial<StateOptions>;
  anomaly?: DeepPartial<AnomalyOptions>;
  events?: EventBusOptions;
}

/** What a device sent, after the protocol adapter has decoded it. */
export type InboundKind = "telemetry" | "heartbeat" | "state" | "status";

export interface InboundMessage {
  kind: InboundKind;
  /** telemetry: an object of values; state: `{status?, properties?}`; status: "online" | "offline". */
  data?: unknown;
  protocol?: string | null;
  /** Id of the message, carried into the state history and events as their cause. */
  causeId?: string;
}

export interface IngestResult {
  deviceId: string;
  status: DeviceStatus;
  /** True when the message changed the device's state (status or a property). */
  changed: boolean;
  /** The id carried into history and events; null when nothing was recorded and none was given. */
  causeId: string | null;
}

const INBOUND_KINDS: readonly InboundKind[] = ["telemetry", "heartbeat", "state", "status"];
const DEVICE_REPORTABLE: readonly DeviceStatus[] = ["online", "offline", "error"];

export interface HubStatistics {
  devices: DeviceStatistics;
  state: StateStatistics & { anomalies: AnomalyStatistics };
  messages: { received: number; rejected: number; byKind: Record<string, number> };
}

export interface HubHealth {
  status: "ok" | "degraded";
  components: Record<string, { status: "ok" | "degraded" | "stopped"; [figure: string]: unknown }>;
}

/**
 * The composition root: registry, heartbeat monitor, state manager, anomaly detector and event
 * bus, wired together. Device traffic enters through `ingest`; flows use the other methods.
 * `start()` arms the timers; after `stop()` nothing the hub made is left running.
 */
export class Hub {
  readonly clock: Clock;
  readonly events: EventBus;
  readonly registry: DeviceRegistry;
  readonly state: StateManager;
  readonly heartbeat: HeartbeatMonitor;
  readonly anomaly: AnomalyDetector;
  private running = false;
  private readonly messages = { received: 0, rejected: 0, byKind: { telemetry: 0, heartbeat: 0, state: 0, status: 0 } };

  constructor(options: HubOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.events = new EventBus(this.clock, options.events);
    this.registry = new DeviceRegistry(this.events, this.clock);
    this.state = new StateManager(this.registry, this.events, this.clock, { ...DEFAULT_STATE_OPTIONS, ...options.state });
    this.anomaly = new AnomalyDetector(this.events, this.clock, merge(DEFAULT_ANOMALY_OPTIONS, options.anomaly));
    this.state.observer = this.anomaly;
    const registry = this.registry;
    const recordOf = (id: string): DeviceRecord | undefined => registry.record(id);
    this.heartbeat = new HeartbeatMonitor(
      this.clock,
      merge(DEFAULT_HEARTBEAT_OPTIONS, options.heartbeat),
      {
        onExpire: (id, lastSeen, timeoutMs) => this.expire(id, lastSeen, timeoutMs),
        onPurge: (id) => this.purge(id),
        onTimeoutLearned: (id, sec) => this.timeoutLearned(id, sec),
      },
      {
        get: (id) => recordOf(id)?.heartbeat as HeartbeatTracker | undefined,
        set: (id, tracker) => {
          const record = recordOf(id);
          if (record) record.heartbeat = tracker;
        },
        delete: (id) => {
          const record = recordOf(id);
          if (record) record.heartbeat = undefined;
        },
        get size() {
          return registry.size;
        },
      },
    );
  }

  get isRunning(): boolean {
    return this.running;
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.heartbeat.start();
    this.events.publish("hub.started", { devices: this.registry.size }, { source: "hub" });
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.events.publish("hub.stopped", { devices: this.registry.size }, { source: "hub" });
    this.heartbeat.stop();
    this.anomaly.stop();
    this.events.close();
  }

  // ── Registry ────────────────────────────────────────────────────────────────────────────

  registerDevice(input: unknown, cause: ChangeCause = {}): Device {
    const device = this.registry.register(input, cause);
    this.heartbeat.track(device.id, device.heartbeatTimeout);
    return device;
  }

  updateDevice(id: string, patch: unknown, cause: ChangeCause = {}): Device {
    const before = this.registry.record(id)?.heartbeatTimeout;
    const device = this.registry.update(id, patch, cause);
    if (device.heartbeatTimeout !== before) this.heartbeat.setTimeout(id, device.heartbeatTimeout);
    return device;
  }

  removeDevice(id: string, cause: ChangeCause & { reason?: "user" | "retention" } = {}): Device {
    const record = this.registry.record(id);
    if (record) {
      this.heartbeat.untrack(id);
      this.state.forget(record);
    }
    return this.registry.remove(id, { ...cause, reason: cause.reason ?? "user" });
  }

  getDevice(id: string): Device {
    return this.registry.get(id);
  }

  listDevices(filter: DeviceFilter = {}): DeviceList {
    return this.registry.list(filter);
  }

  deviceStatistics(): DeviceStatistics {
    return this.registry.statistics();
  }

  // ── Device traffic ──────────────────────────────────────────────────────────────────────

  /**
   * The one way in for device traffic. The message is checked before anything changes: a bad
   * one is refused (INVALID or NOT_FOUND), counted and published as `message.rejected`, and
   * leaves the device untouched. A good one is a heartbeat, then a state update, then a
   * `message.received` for subscribers.
   */
  ingest(deviceId: string, message: InboundMessage): IngestResult {
    const protocol = message.protocol ?? null;
    const record = this.registry.record(deviceId);
    if (!record) throw this.reject(deviceId, protocol, message.kind, notFound("device", deviceId), "unknown-device");
    let properties: JsonObject | null = null;
    let reported: DeviceStatus | null = null;
    if (message.kind !== "heartbeat") {
      try {
        ({ properties, reported } = parseInbound(message));
        if (properties) this.state.checkCapacity(deviceId, properties);
      } catch (err) {
        throw this.reject(deviceId, protocol, message.kind, err as TethralError, "invalid-payload");
      }
    }

    const now = this.clock.now();
    // A cause id is made only when something changes: a plain heartbeat allocates nothing.
    let causeId = message.causeId ?? null;
    const source = protocol ?? "device";
    let changed = false;
    if (reported === "offline") {
      changed = this.goOffline(deviceId, record.lastSeen, "reported", { causeId: (causeId ??= newId()), source, reason: "reported" });
    } else {
      record.lastSeen = now;
      const tracker = record.heartbeat as HeartbeatTracker | undefined;
      if (tracker !== undefined && this.heartbeat.beatTracker(tracker, now) && record.status !== "online" && record.status !== "maintenance") {
        const previous = record.status;
        this.state.setStatus(deviceId, "online", { causeId: (causeId ??= newId()), source, reason: "heartbeat" });
        this.events.publish("device.online", { previous, lastSeen: iso(now) }, { deviceId, source: "heartbeat", causeId });
        changed = true;
      }
      if (properties) {
        changed = this.state.report(deviceId, properties, { causeId: (causeId ??= newId()), source, reason: message.kind }) || changed;
      }
      if ((reported === "error" && record.status !== "maintenance") || (reported === "online" && record.status === "error")) {
        changed = this.state.setStatus(deviceId, reported, { causeId: (causeId ??= newId()), source, reason: "reported" }) || changed;
      }
    }
    this.messages.received++;
    this.messages.byKind[message.kind]++;
    if (this.events.hasSubscribers("message.received", deviceId)) {
      this.events.publish("message.received", { kind: message.kind, protocol, data: message.data ?? null }, {
        deviceId,
        source,
        causeId: (causeId ??= newId()),
      });
    }
    return { deviceId, status: record.status, changed, causeId };
  }

  private reject(deviceId: string, protocol: string | null, kind: unknown, error: TethralError, reason: string): TethralError {
    this.messages.rejected++;
    this.events.publish(
      "message.rejected",
      { reason, protocol, kind: typeof kind === "string" ? kind.slice(0, 32) : undefined, error: error.message },
      { deviceId: typeof deviceId === "string" && deviceId.length <= 128 ? deviceId : null, source: protocol ?? "device", priority: "low" },
    );
    return error;
  }

  // ── State ───────────────────────────────────────────────────────────────────────────────

  getState(id: string): DeviceState {
    return this.state.get(id);
  }

  /**
   * Sets desired values and/or the status (CONTRACT: PUT state). A status set by hand keeps
   * the heartbeat honest: `online` starts a fresh timeout, `offline` stops expecting traffic.
   */
  setState(id: string, input: unknown, cause: ChangeCause = {}): DeviceState {
    const before = this.registry.record(id)?.status;
    const state = this.state.set(id, input, { source: "user", ...cause });
    if (state.status !== before) {
      if (state.status === "online") this.heartbeat.revive(id);
      else if (state.status === "offline") this.heartbeat.markOffline(id);
    }
    return state;
  }

  stateHistory(id: string, limit?: number): StateHistoryEntry[] {
    return this.state.history(id, limit);
  }

  listStates(query: { status?: DeviceStatus; limit?: number; offset?: number } = {}): { states: DeviceState[]; total: number } {
    return this.state.list(query);
  }

  stateStatistics(): StateStatistics & { anomalies: AnomalyStatistics } {
    return { ...this.state.statistics(), anomalies: this.anomaly.statistics() };
  }

  // ── Events ──────────────────────────────────────────────────────────────────────────────

  /** Publishes a user event (types outside the hub's own prefixes). */
  publish(type: string, data: unknown, options: PublishOptions = {}): TethralEvent {
    if (options.deviceId !== undefined && options.deviceId !== null && !this.registry.has(options.deviceId)) {
      throw notFound("device", options.deviceId);
    }
    return this.events.publishCustom(type, data, { source: "flow", ...options });
  }

  subscribe(options: SubscribeOptions, handler: EventHandler): SubscriptionHandle {
    return this.events.subscribe(options, handler);
  }

  eventHistory(query: HistoryQuery = {}): TethralEvent[] {
    return this.events.query(query);
  }

  statistics(): HubStatistics {
    return {
      devices: this.registry.statistics(),
      state: this.stateStatistics(),
      messages: { ...this.messages, byKind: { ...this.messages.byKind } },
    };
  }

  health(): HubHealth {
    const up = this.running ? "ok" : "stopped";
    const components: HubHealth["components"] = {
      registry: { status: up, devices: this.registry.size },
      heartbeat: { status: up, tracked: this.heartbeat.size, ...this.heartbeat.pending },
      state: { status: up },
      events: { status: up, subscribers: this.events.subscriberCount },
    };
    return { status: this.running ? "ok" : "degraded", components };
  }

  // ── Heartbeat callbacks ─────────────────────────────────────────────────────────────────

  private expire(id: string, lastSeen: number, timeoutMs: number): void {
    const record = this.registry.record(id);
    if (!record) return;
    this.goOffline(id, lastSeen, "timeout", { source: "heartbeat" }, timeoutMs);
  }

  /** Offline and its event, unless maintenance (alarms suppressed) or already there. */
  private goOffline(id: string, lastSeen: number, reason: string, cause: ChangeCause, timeoutMs?: number): boolean {
    const record = this.registry.record(id)!;
    this.heartbeat.markOffline(id);
    if (record.status === "maintenance" || record.status === "offline" || record.status === "unknown") return false;
    const previous = record.status;
    this.state.setStatus(id, "offline", { ...cause, reason: reason === "timeout" ? "heartbeat-timeout" : reason });
    this.events.publish(
      "device.offline",
      {
        previous,
        lastSeen: isoOrNull(lastSeen),
        timeout: (timeoutMs ?? this.heartbeat.effectiveTimeoutSec(id) * 1000) / 1000,
        reason,
      },
      { deviceId: id, source: "heartbeat", priority: "high", causeId: cause.causeId ?? null },
    );
    return true;
  }

  private purge(id: string): void {
    const record = this.registry.record(id);
    if (!record || record.status !== "offline") return;
    this.removeDevice(id, { reason: "retention", source: "heartbeat" });
  }

  private timeoutLearned(id: string, sec: number): void {
    const record = this.registry.record(id);
    if (!record) return;
    this.events.publish(
      "device.updated",
      { device: toDevice(record), changes: ["effectiveTimeout"], reason: "adaptive-timeout", effectiveTimeout: sec },
      { deviceId: id, source: "heartbeat", priority: "low" },
    );
  }
}

function parseInbound(message: InboundMessage): { properties: JsonObject | null; reported: DeviceStatus | null } {
  if (!INBOUND_KINDS.includes(message.kind)) {
    throw invalid("kind", `must be one of ${INBOUND_KINDS.join(", ")}`);
  }
  switch (message.kind) {
    case "heartbeat":
      return { properties: null, reported: null };
    case "telemetry":
      return { properties: StateManager.checkProperties(message.data, "data"), reported: null };
    case "status": {
      const s = typeof message.data === "string" ? message.data.trim().toLowerCase() : message.data;
      if (s !== "online" && s !== "offline") throw invalid("data", 'a status message must be "online" or "offline"');
      return { properties: null, reported: s };
    }
    case "state": {
      const data = message.data;
      if (data === null || typeof data !== "object" || Array.isArray(data)) throw invalid("data", "must be a JSON object");
      const { status, properties, ...rest } = data as { status?: unknown; properties?: unknown };
      const extra = Object.keys(rest);
      if (extra.length > 0) throw invalid(`data.${extra[0]}`, "is not a state field (status, properties)");
      if (status !== undefined && !DEVICE_REPORTABLE.includes(status as DeviceStatus)) {
        throw invalid("data.status", `must be one of ${DEVICE_REPORTABLE.join(", ")}`);
      }
      return {
        properties: properties === undefined ? null : StateManager.checkProperties(properties, "data.properties"),
        reported: (status as DeviceStatus | undefined) ?? null,
      };
    }
  }
}

function merge<T extends object>(defaults: T, override: DeepPartial<T> | undefined): T {
  if (!override) return defaults;
  const out = { ...defaults } as Record<string, unknown>;
  for (const [key, value] of Object.entries(override)) {
    if (value === undefined) continue;
    const base = (defaults as Record<string, unknown>)[key];
    out[key] =
      base !== null && typeof base === "object" && !Array.isArray(base) && typeof value === "object" && value !== null
        ? merge(base as object, value as DeepPartial<object>)
        : value;
  }
  return out as T;
}

