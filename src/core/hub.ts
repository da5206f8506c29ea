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
import { DEFAULT_PERSISTENCE_OPTIONS, Persistence, type PersistenceOptions, type PersistenceStatistics } from "../store/persistence";
import type { EventQuery, EventRow, Store } from "../store/types";
import { TethralError as TethralErrorClass } from "./errors";
import type { Device, DeviceRow, DeviceState, DeviceStatus, HistoryRow, JsonObject, Priority, StateHistoryEntry, TethralEvent } from "./types";
import { PRIORITIES, PRIORITY_RANK } from "./types";

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? (T[K] extends unknown[] ? T[K] : DeepPartial<T[K]>) : T[K] };

export interface HubOptions {
  clock?: Clock;
  heartbeat?: DeepPartial<HeartbeatOptions>;
  state?: Partial<StateOptions>;
  anomaly?: DeepPartial<AnomalyOptions>;
  events?: EventBusOptions;
  /** Where the hub keeps what it must remember across restarts; without one it keeps it in memory. */
  store?: Store;
  persistence?: DeepPartial<PersistenceOptions>;
  /** Problems nobody awaits (a failed background write or purge). Default: console.warn. */
  onWarning?: (message: string) => void;
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
  store: (PersistenceStatistics & { kind: string; description: string }) | null;
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
  private readonly persistence: Persistence | null;
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly warn: (message: string) => void;
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
    this.warn = options.onWarning ?? ((message) => console.warn(`[tethral] ${message}`));
    this.persistence = options.store ? this.wirePersistence(options.store, options.persistence) : null;
  }

  private wirePersistence(store: Store, options: DeepPartial<PersistenceOptions> | undefined): Persistence {
    const p = new Persistence(
      store,
      this.clock,
      {
        presence: (id) => {
          const r = this.registry.record(id);
          return r ? { id, status: r.status, lastSeen: r.lastSeen } : null;
        },
        state: (id) => this.state.row(id),
        degraded: (error) => this.events.publish("store.degraded", { error }, { source: "store", priority: "high" }),
        recovered: (pending) => this.events.publish("store.recovered", { pending }, { source: "store" }),
        warn: (message) => this.warn(message),
      },
      merge(DEFAULT_PERSISTENCE_OPTIONS, options),
    );
    this.state.sink = {
      onStateWritten: (id) => p.markState(id),
      onStatusWritten: (id) => p.markPresence(id),
      onHistory: (row) => p.addHistory(row),
    };
    this.events.recorder = (event, expiresAt) => p.addEvent(event, expiresAt);
    return p;
  }

  get isRunning(): boolean {
    return this.running;
  }

  /**
   * Opens the store (migrating it), loads every device and its state, and starts the timers.
   * Heartbeats resume from the stored lastSeen: a device silent while the hub was down goes
   * offline as soon as its timeout has passed.
   */
  async start(): Promise<void> {
    if (this.running) return;
    const p = this.persistence;
    if (p) {
      await p.store.open();
      try {
        await this.load(p.store);
      } catch (err) {
        await p.store.close().catch(() => undefined);
        throw err;
      }
      p.start();
    }
    this.running = true;
    this.heartbeat.start();
    this.events.publish("hub.started", { devices: this.registry.size }, { source: "hub" });
  }

  /** Stops the timers, writes what waits to the store and closes it. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.events.publish("hub.stopped", { devices: this.registry.size }, { source: "hub" });
    this.heartbeat.stop();
    this.anomaly.stop();
    const p = this.persistence;
    if (p) {
      await Promise.all([...this.locks.values()]);
      await p.stop();
      await p.store.close();
    }
    this.events.close();
  }

  /** Writes every waiting change to the store now (no-op without a store). */
  async flush(): Promise<void> {
    await this.persistence?.flushAll();
  }

  private async load(store: Store): Promise<void> {
    const [devices, states] = await Promise.all([store.loadDevices(), store.loadStates()]);
    // Registration order survives a restart: it is the default order of every listing.
    devices.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const now = this.clock.now();
    for (const row of devices) {
      this.registry.insert(inputOf(row), now, { status: row.status, lastSeen: row.lastSeen, createdAt: row.createdAt, updatedAt: row.updatedAt });
    }
    for (const row of states) if (this.registry.has(row.deviceId)) this.state.restore(row.deviceId, row);
    for (const row of devices) {
      const alive = row.status === "online" || row.status === "error";
      this.heartbeat.track(row.id, row.heartbeatTimeout ?? undefined, row.lastSeen, alive);
    }
  }

  /** One durable change per device at a time: a registration, update, removal or desired state. */
  private exclusive<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const before = this.locks.get(id) ?? Promise.resolve();
    const run = before.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(id, tail);
    void tail.then(() => {
      if (this.locks.get(id) === tail) this.locks.delete(id);
    });
    return run;
  }

  // ── Registry ────────────────────────────────────────────────────────────────────────────

  /**
   * Registers a device. With a store, the device is written before this resolves (and before
   * `device.registered` is published); if the write fails, nothing is registered (UNAVAILABLE).
   */
  async registerDevice(input: unknown, cause: ChangeCause = {}): Promise<Device> {
    const p = this.persistence;
    if (!p) return this.track(this.registry.register(input, cause));
    const id = typeof (input as { id?: unknown } | null)?.id === "string" ? (input as { id: string }).id : "";
    return this.exclusive(id, async () => {
      const device = this.registry.register(input, { ...cause, silent: true });
      p.hold(device.id, false);
      try {
        await p.writeDevice(this.registry.row(device.id)!);
      } catch (err) {
        this.registry.remove(device.id, { silent: true });
        p.release(device.id, false);
        throw err;
      }
      p.release(device.id, true);
      this.registry.announceRegistered(device.id, cause);
      return this.track(device);
    });
  }

  private track(device: Device): Device {
    this.heartbeat.track(device.id, device.heartbeatTimeout);
    return device;
  }

  /** A partial update; with a store, written before it resolves, or not made at all (UNAVAILABLE). */
  async updateDevice(id: string, patch: unknown, cause: ChangeCause = {}): Promise<Device> {
    const p = this.persistence;
    if (!p) return this.applyUpdate(id, patch, cause, null);
    return this.exclusive(id, () => this.applyUpdate(id, patch, cause, p));
  }

  private async applyUpdate(id: string, patch: unknown, cause: ChangeCause, p: Persistence | null): Promise<Device> {
    const before = this.registry.row(id);
    if (!before) throw notFound("device", id);
    const { device, changes } = this.registry.applyUpdate(id, patch);
    if (changes.length === 0) return device;
    if (p) {
      try {
        await p.writeDevice(this.registry.row(id)!);
      } catch (err) {
        this.registry.applyUpdate(id, patchOf(before), before.updatedAt);
        throw err;
      }
    }
    this.registry.announceUpdated(id, changes, cause);
    if (changes.includes("heartbeatTimeout")) this.heartbeat.setTimeout(id, device.heartbeatTimeout);
    return device;
  }

  /** Removes a device with its state and history; with a store, deleted there first. */
  async removeDevice(id: string, cause: ChangeCause & { reason?: "user" | "retention" } = {}): Promise<Device> {
    const p = this.persistence;
    if (!p) return this.forgetDevice(id, cause);
    return this.exclusive(id, async () => {
      if (!this.registry.has(id)) throw notFound("device", id);
      p.hold(id, true);
      try {
        await p.deleteDevice(id);
      } catch (err) {
        p.release(id, true);
        throw err;
      }
      const device = this.forgetDevice(id, cause);
      p.release(id, false);
      return device;
    });
  }

  private forgetDevice(id: string, cause: ChangeCause & { reason?: "user" | "retention" }): Device {
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
      this.persistence?.markPresence(deviceId);
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
   * Sets desired values and/or the status (CONTRACT: PUT state). With a store, the change is
   * written before it is applied and resolved; if the write fails, nothing changes
   * (UNAVAILABLE). A status set by hand keeps the heartbeat honest: `online` starts a fresh
   * timeout, `offline` stops expecting traffic.
   */
  async setState(id: string, input: unknown, cause: ChangeCause = {}): Promise<DeviceState> {
    const p = this.persistence;
    if (!p) return this.applyState(this.state.planSet(id, input), cause);
    return this.exclusive(id, async () => {
      const plan = this.state.planSet(id, input);
      if (!plan.changed) return this.state.get(id);
      const record = this.registry.record(id)!;
      const presence = plan.to.status !== undefined ? { id, status: plan.to.status, lastSeen: record.lastSeen } : null;
      await p.writeState(plan.row, presence);
      return this.applyState(plan, cause);
    });
  }

  private applyState(plan: ReturnType<StateManager["planSet"]>, cause: ChangeCause): DeviceState {
    const before = this.registry.record(plan.deviceId)?.status;
    const state = this.state.applySet(plan, { source: "user", ...cause });
    if (state.status !== before) {
      if (state.status === "online") this.heartbeat.revive(plan.deviceId);
      else if (state.status === "offline") this.heartbeat.markOffline(plan.deviceId);
    }
    return state;
  }

  /**
   * The last `limit` changes of a device, oldest first. With a store, from the store (so
   * history from before a restart is there); while it is unreachable, what memory holds.
   */
  async stateHistory(id: string, limit?: number): Promise<StateHistoryEntry[]> {
    if (!this.registry.has(id)) throw notFound("device", id);
    if (limit !== undefined && (!Number.isInteger(limit) || limit < 0 || limit > 10_000)) {
      throw invalid("history", "must be a whole number from 0 to 10000");
    }
    const p = this.persistence;
    if (!p) return this.state.history(id, limit);
    try {
      await p.flushAll();
      const rows = await p.store.stateHistory(id, limit ?? this.state.historySize);
      return rows.map(historyEntry);
    } catch {
      return this.state.history(id, limit);
    }
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

  /**
   * Event history, newest first. With a store, from the store (events from before a restart
   * included); while it is unreachable, what memory holds.
   */
  async eventHistory(query: HistoryQuery = {}): Promise<TethralEvent[]> {
    const p = this.persistence;
    if (!p) return this.events.query(query);
    const limit = query.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 0 || limit > 10_000) throw invalid("limit", "must be a whole number from 0 to 10000");
    const wanted = query.priority === undefined ? [...PRIORITIES] : Array.isArray(query.priority) ? query.priority : [query.priority];
    const minRank = query.minPriority === undefined ? 0 : PRIORITY_RANK[query.minPriority];
    const since = query.since === undefined ? undefined : toEpoch(query.since);
    const q: EventQuery = {
      types: query.type === undefined ? undefined : Array.isArray(query.type) ? query.type : [query.type],
      priorities: wanted.filter((pr: Priority) => PRIORITY_RANK[pr] >= minRank),
      deviceId: query.deviceId,
      source: query.source,
      since,
      limit,
    };
    try {
      await p.flushAll();
      return (await p.store.events(q, this.clock.now())).map(eventOf);
    } catch {
      return this.events.query(query);
    }
  }

  statistics(): HubStatistics {
    const p = this.persistence;
    return {
      devices: this.registry.statistics(),
      state: this.stateStatistics(),
      messages: { ...this.messages, byKind: { ...this.messages.byKind } },
      store: p ? { kind: p.store.kind, description: p.store.description, ...p.statistics() } : null,
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
    const p = this.persistence;
    if (p) {
      const stats = p.statistics();
      components.store = {
        status: !this.running ? "stopped" : p.isDegraded ? "degraded" : "ok",
        kind: p.store.kind,
        pending: stats.pending,
        dropped: stats.dropped,
      };
    }
    const degraded = !this.running || (p?.isDegraded ?? false);
    return { status: degraded ? "degraded" : "ok", components };
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
    this.removeDevice(id, { reason: "retention", source: "heartbeat" }).catch((err: unknown) =>
      this.warn(`could not remove long-offline device ${id}: ${err instanceof Error ? err.message : String(err)}`),
    );
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

/** A stored row as registration input (it was validated when first registered). */
function inputOf(row: DeviceRow) {
  return {
    id: row.id,
    name: row.name,
    protocol: row.protocol,
    address: row.address ?? undefined,
    manufacturer: row.manufacturer ?? undefined,
    model: row.model ?? undefined,
    firmware: row.firmware ?? undefined,
    capabilities: row.capabilities,
    tags: row.tags,
    heartbeatTimeout: row.heartbeatTimeout ?? undefined,
    metadata: row.metadata,
  };
}

/** The patch that puts a device's writable fields back as they were in `row`. */
function patchOf(row: DeviceRow): Record<string, unknown> {
  return {
    name: row.name,
    protocol: row.protocol,
    address: row.address,
    manufacturer: row.manufacturer,
    model: row.model,
    firmware: row.firmware,
    capabilities: row.capabilities,
    tags: row.tags,
    heartbeatTimeout: row.heartbeatTimeout,
    metadata: row.metadata,
  };
}

function historyEntry(row: HistoryRow): StateHistoryEntry {
  return { deviceId: row.deviceId, at: iso(row.at), version: row.version, from: row.from, to: row.to, reason: row.reason, causeId: row.causeId };
}

function eventOf(row: EventRow): TethralEvent {
  return {
    id: row.id,
    type: row.type,
    priority: row.priority,
    source: row.source,
    deviceId: row.deviceId,
    data: row.data,
    timestamp: iso(row.timestamp),
    expiresAt: row.expiresAt > 0 ? iso(row.expiresAt) : null,
    causeId: row.causeId,
  };
}

function toEpoch(value: number | string | Date): number {
  const ms = value instanceof Date ? value.getTime() : typeof value === "number" ? value : Date.parse(value);
  if (!Number.isFinite(ms)) throw new TethralErrorClass("INVALID", "since: must be a time", [{ field: "since", message: "must be a time" }]);
  return ms;
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

