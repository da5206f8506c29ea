import { AdapterSet, type ProtocolStatistics } from "./adapter-set";
import { AnomalyDetector, type AnomalyOptions, type AnomalyStatistics, DEFAULT_ANOMALY_OPTIONS } from "./anomaly";
import { type Clock, beforeDeadline, systemClock } from "./clock";
import { type CommandListQuery, type CommandOptions, DEFAULT_COMMAND_OPTIONS, parseCommandListQuery } from "./command-input";
import { CommandTracker, type CommandStatistics } from "./commands";
import { DeviceTraffic } from "./device-traffic";
import { DurableWrites, type RegisteredDevice, type RemoveCause } from "./durable-writes";
import { TethralError, errorMessage, invalid, notFound } from "./errors";
import {
  EventBus,
  type EventBusOptions,
  type EventHandler,
  type EventStatistics,
  type HistoryQuery,
  type PublishOptions,
  type SubscribeOptions,
  type SubscriptionHandle,
} from "./events";
import { DEFAULT_GATEWAY_OPTIONS, DeviceGateway, type TransportRefusal } from "./gateway";
import type { HeartbeatMonitor, HeartbeatOptions } from "./heartbeat";
import type { InboundMessage, IngestResult } from "./inbound";
import { HubMetrics } from "./metrics";
import { type DeepPartial, merge } from "./options";
import type { DeviceMessage, ProtocolAdapter, ReceiveResult } from "./ports/protocol";
import type { Store } from "./ports/store";
import { Presence } from "./presence";
import { ProcessMonitor } from "./process-monitor";
import { Refusals } from "./refusals";
import { DeviceRegistry, type DeviceFilter, type DeviceList, type DeviceStatistics, toDevice } from "./registry";
import { type ChangeCause, DEFAULT_STATE_OPTIONS, StateManager, type StateListQuery, type StateOptions, type StateStatistics } from "./state";
import { eventOf, eventQueryOf, historyEntry, inputOf } from "./stored-rows";
import { DeviceTokens } from "./tokens";
import { twinOf } from "./twin";
import type { Command, Device, DeviceState, DeviceTwin, StateHistoryEntry, TethralEvent } from "./types";
import { DEFAULT_PERSISTENCE_OPTIONS, Persistence, type PersistenceOptions, type PersistenceStatistics } from "./write-behind";

export type { InboundKind, InboundMessage, IngestResult } from "./inbound";
export type { CommandListQuery, CommandOptions } from "./command-input";
export type { CommandStatistics } from "./commands";
export type { ProtocolStatistics } from "./adapter-set";
export type { RegisteredDevice } from "./durable-writes";

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
  /** CONTRACT §4: devices get a token at registration and must present it. Default true. */
  deviceTokens?: boolean;
  /** Unknown devices may register themselves (MQTT `register`). Default false. */
  selfRegistration?: boolean;
  /** Largest payload accepted from a device, in bytes. Default 256 KiB. */
  maxPayloadBytes?: number;
  /** Protocol adapters, started with the hub (more can be added with `addProtocol`). */
  protocols?: ProtocolAdapter[];
  commands?: Partial<CommandOptions>;
}

export interface CommunicationStatistics {
  protocols: Record<string, ProtocolStatistics>;
  commands: CommandStatistics;
}

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
 * The composition root and the facade flows use. Device traffic enters through `receive` (an
 * adapter's message) or `ingest` (a flow's report) and goes gateway → traffic → presence and
 * state → event bus; a flow's change goes through `DurableWrites` to the store and then to the
 * adapters. `start()` loads the store and arms the timers; after `stop()` nothing the hub made
 * is left running. docs/ARCHITECTURE.md draws the whole.
 */
export class Hub {
  readonly clock: Clock;
  readonly events: EventBus;
  readonly registry: DeviceRegistry;
  readonly state: StateManager;
  readonly heartbeat: HeartbeatMonitor;
  readonly anomaly: AnomalyDetector;
  readonly tokens: DeviceTokens;
  /** Prometheus metrics (GET /api/metrics): a registry of this hub's own. */
  readonly metrics: HubMetrics;
  private running = false;
  private started = false;
  private readonly warn: (message: string) => void;
  private readonly persistence: Persistence | null;
  private readonly presence: Presence;
  private readonly refusals: Refusals;
  private readonly traffic: DeviceTraffic;
  private readonly commands: CommandTracker;
  private readonly gateway: DeviceGateway;
  private readonly adapters: AdapterSet;
  private readonly writes: DurableWrites;
  private readonly processMonitor = new ProcessMonitor();

  constructor(options: HubOptions = {}) {
    const clock = (this.clock = options.clock ?? systemClock);
    const warn = (this.warn = options.onWarning ?? ((message) => console.warn(`[tethral] ${message}`)));
    this.events = new EventBus(clock, options.events);
    this.registry = new DeviceRegistry(this.events, clock);
    this.anomaly = new AnomalyDetector(this.events, clock, merge(DEFAULT_ANOMALY_OPTIONS, options.anomaly));
    const p = (this.persistence = options.store ? this.wirePersistence(options.store, options.persistence) : null);
    this.state = new StateManager(this.registry, this.events, clock, { ...DEFAULT_STATE_OPTIONS, ...options.state }, {
      observer: this.anomaly,
      twin: { onTwinChanged: (id) => this.adapters.deliverTwin(id, false) },
      ...(p && { sink: { onStateWritten: (id) => p.markState(id), onStatusWritten: (id) => p.markPresence(id), onHistory: (row) => p.addHistory(row) } }),
    });
    this.presence = new Presence(this.registry, this.state, this.events, clock, options.heartbeat, {
      presenceChanged: (id) => p?.markPresence(id),
      back: (id) => this.commands.kick(id),
      purge: (id) => this.writes.remove(id, { reason: "retention", source: "heartbeat" }).catch((err: unknown) => warn(`could not remove long-offline device ${id}: ${errorMessage(err)}`)),
    });
    this.heartbeat = this.presence.heartbeat;
    this.refusals = new Refusals(this.events);
    this.traffic = new DeviceTraffic(this.registry, this.state, this.presence, this.refusals, this.events, clock, (id) => this.writes.isRegistering(id));
    this.tokens = new DeviceTokens(options.store ?? null);
    const deviceTokens = options.deviceTokens ?? DEFAULT_GATEWAY_OPTIONS.deviceTokens;
    this.commands = new CommandTracker(
      {
        device: (id) => {
          const r = this.registry.record(id);
          return r && !this.writes.isRegistering(id) ? toDevice(r) : undefined;
        },
        protocolOf: (id) => (this.writes.isRegistering(id) ? undefined : this.registry.record(id)?.protocol),
        adapter: (protocol) => this.adapters.running(protocol),
      },
      this.events,
      clock,
      options.store ?? null,
      { ...DEFAULT_COMMAND_OPTIONS, ...options.commands },
      warn,
      (ms) => this.metrics.observeRoundTrip(ms),
    );
    this.gateway = new DeviceGateway(
      this.registry,
      this.traffic,
      this.refusals,
      this.tokens,
      this.commands,
      (input, protocol, token) => this.writes.register(input, { source: protocol }, token),
      {
        deviceTokens,
        selfRegistration: options.selfRegistration ?? DEFAULT_GATEWAY_OPTIONS.selfRegistration,
        maxPayloadBytes: options.maxPayloadBytes ?? DEFAULT_GATEWAY_OPTIONS.maxPayloadBytes,
      },
      warn,
    );
    this.adapters = new AdapterSet(this.registry, this.gateway, this.commands, warn);
    for (const adapter of options.protocols ?? []) this.adapters.add(adapter);
    this.writes = new DurableWrites(this.registry, this.state, this.presence, this.tokens, this.commands, this.adapters, p, clock, deviceTokens);
    this.metrics = new HubMetrics({
      communication: () => this.communicationStatistics(),
      devices: () => this.registry.statistics(),
      events: () => this.events.statistics(),
      store: () => this.persistence?.statistics() ?? null,
      refusals: () => this.refusals.counts(),
      health: () => this.health(),
    });
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
        // The metrics are made after the store: the first batch is written long after both.
        batchWritten: (ms) => this.metrics.observeBatch(ms),
      },
      merge(DEFAULT_PERSISTENCE_OPTIONS, options),
    );
    this.events.recorder = (event, expiresAt) => p.addEvent(event, expiresAt);
    return p;
  }

  get isRunning(): boolean {
    return this.running;
  }

  /**
   * Opens the store (migrating it), loads every device and its state, starts the timers, then
   * the command tracker and the protocol adapters.
   */
  async start(): Promise<void> {
    if (this.running) return;
    // Loading fills the registry: a second start on the same hub would load everything twice.
    if (this.started) throw new TethralError("UNAVAILABLE", "a hub starts once: create a new Hub to start again");
    this.started = true;
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
    await this.tokens.load();
    this.running = true;
    this.processMonitor.start();
    this.presence.start();
    await this.commands.load();
    await this.adapters.startAll();
    this.commands.start();
    this.events.publish("hub.started", { devices: this.registry.size }, { source: "hub" });
  }

  /**
   * Adds a protocol adapter; on a running hub it starts now. One that fails to start (a port in
   * use) leaves the hub running without it: `health()` names the protocol and the error.
   */
  async addProtocol(adapter: ProtocolAdapter): Promise<void> {
    this.adapters.add(adapter);
    if (this.running) await this.adapters.start(adapter);
  }

  get protocols(): string[] {
    return this.adapters.names;
  }

  /** Stops the timers, writes what waits to the store and closes it. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.processMonitor.stop();
    this.events.publish("hub.stopped", { devices: this.registry.size }, { source: "hub" });
    // Commands stop before the adapters, so sends they abort on the way out stay pending.
    this.commands.halt();
    // Then the devices: nothing new comes in while the rest winds down.
    await this.adapters.stopAll();
    this.presence.stop();
    this.anomaly.stop();
    const p = this.persistence;
    if (p) {
      // Bounded: a database that never answers must not keep a redeploy waiting for ever.
      const deadline = Date.now() + p.stopTimeoutMs;
      await beforeDeadline(this.writes.idle(), deadline);
      await beforeDeadline(this.commands.stop(), deadline);
      await p.stop();
      await beforeDeadline(p.store.close(), deadline + 1000);
    } else {
      await this.commands.stop();
    }
    this.events.close();
  }

  /** Writes every waiting change to the store now (no-op without a store). */
  async flush(): Promise<void> {
    await this.persistence?.flushAll();
    await this.commands.flush();
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
    this.presence.restore(devices);
  }

  // ── Registry: changes go through DurableWrites ─────────────────────────────────────────

  /**
   * Registers a device. With a store, the device is written before this resolves (and before
   * `device.registered` is published); if the write fails, nothing is registered (UNAVAILABLE).
   */
  async registerDevice(input: unknown, cause: ChangeCause = {}): Promise<RegisteredDevice> {
    return this.writes.register(input, cause);
  }

  /**
   * A new token for a device (the old one stops working at once); shown only in this answer.
   * For a device that lost its token, or one registered while tokens were off.
   */
  async rotateToken(id: string): Promise<{ deviceId: string; token: string }> {
    return this.writes.rotateToken(id);
  }

  /** A partial update; with a store, written before it resolves, or not made at all (UNAVAILABLE). */
  async updateDevice(id: string, patch: unknown, cause: ChangeCause = {}): Promise<Device> {
    return this.writes.update(id, patch, cause);
  }

  /** Removes a device with its state and history; with a store, deleted there first. */
  async removeDevice(id: string, cause: RemoveCause = {}): Promise<Device> {
    return this.writes.remove(id, cause);
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
    return this.traffic.ingest(deviceId, message);
  }

  /**
   * A message from a device over a protocol, as an adapter hands it over: decoded, the device
   * and its token checked, then ingested (or matched to its command). The REST flow's
   * `POST /api/devices/{id}/telemetry` comes in here with protocol `http`. Never throws: a
   * refusal comes back as `{ok: false, error}` (INVALID, UNAUTHORIZED or NOT_FOUND).
   */
  receive(message: DeviceMessage): ReceiveResult {
    return this.gateway.receive(message);
  }

  /**
   * A device message its transport refused before it could be read (the flow runtime's HTTP
   * server refusing a body that is not JSON, say): counted for the protocol and published as
   * `message.rejected`, as the hub's own refusals are.
   */
  rejectMessage(protocol: string, refusal: TransportRefusal): void {
    this.gateway.rejectFor(protocol, refusal);
  }

  // ── Commands ────────────────────────────────────────────────────────────────────────────

  /**
   * Sends a command (CONTRACT §1, REST `POST /api/devices/{id}/command`). Written to the store
   * before it resolves; with `wait: true` it resolves once the command has ended, otherwise at
   * once with status `queued`. NOT_FOUND for an unknown device, INVALID for bad input.
   */
  async sendCommand(deviceId: string, input: unknown): Promise<Command> {
    return this.commands.submit(deviceId, input);
  }

  async getCommand(id: string): Promise<Command> {
    return this.commands.get(id);
  }

  /**
   * Resolves once the command has ended, or with the command as it is after `limitMs` (default:
   * as long as its attempts can take; a command waiting for an absent device stays queued).
   */
  async waitForCommand(id: string, limitMs?: number): Promise<Command> {
    return this.commands.wait(id, limitMs);
  }

  async cancelCommand(id: string): Promise<Command> {
    return this.commands.cancel(id);
  }

  /**
   * A device's commands, newest first (REST `GET /api/devices/{id}/commands`): `status` (one,
   * a comma-separated list or a list) and `limit` (default 100, at most 1000). With a store,
   * finished commands are there as long as its retention keeps them (7 days by default).
   */
  async deviceCommands(deviceId: string, query: CommandListQuery = {}): Promise<Command[]> {
    const { statuses, limit } = parseCommandListQuery(query);
    if (typeof deviceId !== "string" || !this.registry.has(deviceId)) throw notFound("device", String(deviceId).slice(0, 128));
    return this.commands.ofDevice(deviceId, statuses, limit);
  }

  /** Commands not ended yet, of one device or all. */
  pendingCommands(deviceId?: string): Command[] {
    return this.commands.pending(deviceId);
  }

  communicationStatistics(): CommunicationStatistics {
    return { protocols: this.adapters.statistics(), commands: this.commands.statistics() };
  }

  // ── State ───────────────────────────────────────────────────────────────────────────────

  getState(id: string): DeviceState {
    return this.state.get(id);
  }

  /** A device's twin (CONTRACT §2): `{desired, delta, version}`. NOT_FOUND for an unknown device. */
  getTwin(id: string): DeviceTwin {
    const record = this.registry.record(id);
    if (!record) throw notFound("device", id);
    const twin = twinOf(record);
    return { desired: structuredClone(twin.desired), delta: twin.delta, version: twin.version };
  }

  /**
   * A device reading its own twin (HTTP `GET /api/devices/{id}/desired`): its token is checked as
   * for any message of it, and the read is a sign of life (a heartbeat). Never throws: a refusal
   * (UNAUTHORIZED, NOT_FOUND) is counted, published as `message.rejected` and returned.
   */
  readTwin(protocol: string, deviceId: string, token: string | undefined): { ok: true; twin: DeviceTwin } | { ok: false; error: TethralError } {
    const result = this.gateway.receive({ protocol, deviceId, kind: "heartbeat", payload: null, ...(token !== undefined && { token }) });
    if (!result.ok) return result;
    return { ok: true, twin: this.getTwin(deviceId) };
  }

  /**
   * Sets desired values and/or the status (CONTRACT: PUT state). With a store, the change is
   * written before it is applied and resolved; if the write fails, nothing changes
   * (UNAVAILABLE). A status set by hand keeps the heartbeat honest: `online` starts a fresh
   * timeout, `offline` stops expecting traffic.
   */
  async setState(id: string, input: unknown, cause: ChangeCause = {}): Promise<DeviceState> {
    return this.writes.setState(id, input, cause);
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
    return this.readStored(
      async (store) => (await store.stateHistory(id, limit ?? this.state.historySize)).map(historyEntry),
      () => this.state.history(id, limit),
    );
  }

  /**
   * Reads from the store once everything waiting is written; from memory without a store, and
   * while the store is unreachable (at once when it is known to be, instead of after a timeout).
   */
  private async readStored<T>(read: (store: Store) => Promise<T>, fromMemory: () => T): Promise<T> {
    const p = this.persistence;
    if (!p || p.isDegraded) return fromMemory();
    try {
      await p.flushAll();
      return await read(p.store);
    } catch {
      return fromMemory();
    }
  }

  listStates(query: StateListQuery = {}): { states: DeviceState[]; total: number } {
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
    if (!this.persistence) return this.events.query(query);
    const q = eventQueryOf(query);
    return this.readStored(
      async (store) => (await store.events(q, this.clock.now())).map(eventOf),
      () => this.events.query(query),
    );
  }

  /** Events published, delivered, dropped and expired since the hub started, by type and priority. */
  eventStatistics(): EventStatistics {
    return this.events.statistics();
  }

  statistics(): HubStatistics {
    const p = this.persistence;
    return {
      devices: this.registry.statistics(),
      state: this.stateStatistics(),
      messages: this.traffic.statistics(),
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
    const commands = this.commands.statistics();
    components.commands = { status: up, pending: commands.pending, inFlight: commands.inFlight };
    let protocolsDegraded = false;
    for (const [name, h] of this.adapters.healths()) {
      components[`protocol:${name}`] = h;
      if (this.running && h.status !== "ok") protocolsDegraded = true;
    }
    const p = this.persistence;
    let storeDegraded = false;
    if (p) {
      const stats = p.statistics();
      const pressure = p.pressure;
      storeDegraded = p.isDegraded || pressure !== null;
      components.store = {
        status: !this.running ? "stopped" : storeDegraded ? "degraded" : "ok",
        kind: p.store.kind,
        pending: stats.pending,
        backlog: stats.backlog,
        dropped: stats.dropped,
        ...(pressure !== null && { error: pressure }),
      };
    }
    components.process = { status: up, ...this.processMonitor.reading() };
    const degraded = !this.running || storeDegraded || protocolsDegraded;
    return { status: degraded ? "degraded" : "ok", components };
  }
}
