import { AnomalyDetector, type AnomalyOptions, type AnomalyStatistics, DEFAULT_ANOMALY_OPTIONS } from "./anomaly";
import { type Clock, beforeDeadline, systemClock } from "./clock";
import { DeviceTraffic } from "./device-traffic";
import { TethralError, invalid, notFound } from "./errors";
import { PROTOCOL_PATTERN, checkLabel } from "./validation";
import {
  EventBus,
  type EventBusOptions,
  type EventStatistics,
  type EventHandler,
  type EventsMatching,
  type HistoryQuery,
  type PublishOptions,
  type SubscribeOptions,
  type SubscriptionHandle,
} from "./events";
import { DEFAULT_HEARTBEAT_OPTIONS, HeartbeatMonitor, type HeartbeatOptions, type HeartbeatTracker } from "./heartbeat";
import type { InboundMessage, IngestResult } from "./inbound";
import { KeyedLock } from "./keyed-lock";
import { type DeepPartial, merge } from "./options";
import { type DeviceRecord, DeviceRegistry, type DeviceFilter, type DeviceList, type DeviceStatistics, toDevice } from "./registry";
import { type ChangeCause, DEFAULT_STATE_OPTIONS, StateManager, type StateListQuery, type StateOptions, type StateStatistics } from "./state";
import { eventOf, eventQueryOf, historyEntry, inputOf, patchOf } from "./stored-rows";
import { DEFAULT_PERSISTENCE_OPTIONS, Persistence, type PersistenceOptions, type PersistenceStatistics } from "../store/persistence";
import type { Store } from "../store/types";
import type { Command, Device, DeviceState, DeviceTwin, StateHistoryEntry, TethralEvent } from "./types";
import { twinOf } from "./twin";
import { type CommandListQuery, type CommandOptions, DEFAULT_COMMAND_OPTIONS, parseCommandListQuery } from "./command-input";
import { CommandTracker, type CommandStatistics } from "./commands";
import { ProcessMonitor } from "./process-monitor";
import { HubMetrics } from "./metrics";
import { DEFAULT_GATEWAY_OPTIONS, DeviceGateway, type TransportRefusal } from "./gateway";
import { DeviceTokens } from "./tokens";
import type { DeviceMessage, ProtocolAdapter, ProtocolCounters, ProtocolHealth, ReceiveResult } from "../protocols/types";

export type { InboundKind, InboundMessage, IngestResult } from "./inbound";
export type { CommandListQuery, CommandOptions } from "./command-input";
export type { CommandStatistics } from "./commands";

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

/** A device as registration answers it: with its token, the only time the token is shown. */
export type RegisteredDevice = Device & { token?: string };

export interface ProtocolStatistics extends ProtocolCounters {
  status: ProtocolHealth["status"];
  connected: number;
  [figure: string]: unknown;
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
  private started = false;
  /** Devices whose registration is being written: they take no traffic until it is durable. */
  private readonly registering = new Set<string>();
  private readonly persistence: Persistence | null;
  /** One durable change per device at a time: a registration, update, removal or desired state. */
  private readonly locks = new KeyedLock();
  private readonly warn: (message: string) => void;
  private readonly traffic: DeviceTraffic;
  readonly tokens: DeviceTokens;
  readonly commands: CommandTracker;
  private readonly gateway: DeviceGateway;
  private readonly adapters = new Map<string, ProtocolAdapter>();
  /** Adapters that would not start, with why: the hub runs without them (health says so). */
  private readonly adapterFailures = new Map<string, string>();
  private readonly startedAdapters = new Set<ProtocolAdapter>();
  private readonly processMonitor = new ProcessMonitor();
  /** Prometheus metrics (GET /api/metrics): a registry of this hub's own. */
  readonly metrics: HubMetrics;

  constructor(options: HubOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.events = new EventBus(this.clock, options.events);
    this.registry = new DeviceRegistry(this.events, this.clock);
    this.state = new StateManager(this.registry, this.events, this.clock, { ...DEFAULT_STATE_OPTIONS, ...options.state });
    this.anomaly = new AnomalyDetector(this.events, this.clock, merge(DEFAULT_ANOMALY_OPTIONS, options.anomaly));
    this.state.observer = this.anomaly;
    this.state.twin = { onTwinChanged: (id) => this.deliverTwin(id, false) };
    const registry = this.registry;
    const recordOf = (id: string): DeviceRecord | undefined => registry.record(id);
    this.heartbeat = new HeartbeatMonitor(
      this.clock,
      merge(DEFAULT_HEARTBEAT_OPTIONS, options.heartbeat),
      {
        onExpire: (id, lastSeen, timeoutMs) => this.traffic.expire(id, lastSeen, timeoutMs),
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
      },
    );
    this.warn = options.onWarning ?? ((message) => console.warn(`[tethral] ${message}`));
    this.persistence = options.store ? this.wirePersistence(options.store, options.persistence) : null;
    this.traffic = new DeviceTraffic(this.registry, this.state, this.heartbeat, this.events, this.clock, this.persistence, (id) =>
      this.registering.has(id),
    );
    this.tokens = new DeviceTokens(options.store ?? null);
    this.commands = new CommandTracker(
      {
        device: (id) => {
          const r = this.registry.record(id);
          return r && !this.registering.has(id) ? toDevice(r) : undefined;
        },
        protocolOf: (id) => (this.registering.has(id) ? undefined : this.registry.record(id)?.protocol),
        adapter: (protocol) => {
          const adapter = this.adapters.get(protocol);
          return adapter && this.startedAdapters.has(adapter) ? adapter : undefined;
        },
      },
      this.events,
      this.clock,
      options.store ?? null,
      { ...DEFAULT_COMMAND_OPTIONS, ...options.commands },
      this.warn,
    );
    this.gateway = new DeviceGateway(
      this.registry,
      this.traffic,
      this.tokens,
      this.commands,
      (input, protocol, token) => this.register(input, { source: protocol }, token),
      {
        deviceTokens: options.deviceTokens ?? DEFAULT_GATEWAY_OPTIONS.deviceTokens,
        selfRegistration: options.selfRegistration ?? DEFAULT_GATEWAY_OPTIONS.selfRegistration,
        maxPayloadBytes: options.maxPayloadBytes ?? DEFAULT_GATEWAY_OPTIONS.maxPayloadBytes,
      },
      this.warn,
    );
    for (const adapter of options.protocols ?? []) this.checkAdapter(adapter);
    this.metrics = new HubMetrics({
      communication: () => this.communicationStatistics(),
      devices: () => this.registry.statistics(),
      events: () => this.events.statistics(),
      store: () => this.persistence?.statistics() ?? null,
      refusals: () => this.traffic.refusalCounts(),
      health: () => this.health(),
    });
    this.commands.onRoundTrip = (ms) => this.metrics.observeRoundTrip(ms);
  }

  private checkAdapter(adapter: ProtocolAdapter): void {
    if (!adapter || typeof adapter.name !== "string" || !PROTOCOL_PATTERN.test(adapter.name)) {
      throw new TethralError("INVALID", "a protocol adapter needs a name of 1-32 lower-case letters, digits, _ or -");
    }
    if (this.adapters.has(adapter.name)) throw new TethralError("CONFLICT", `protocol "${adapter.name}" is already served by another adapter`);
    this.adapters.set(adapter.name, adapter);
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
    this.heartbeat.start();
    this.events.subscribe({ types: "device.online", owner: "hub.commands", name: "commands" }, (event) => {
      if (event.deviceId) this.commands.kick(event.deviceId);
    });
    await this.commands.load();
    for (const adapter of this.adapters.values()) await this.startAdapter(adapter);
    this.commands.start();
    this.events.publish("hub.started", { devices: this.registry.size }, { source: "hub" });
  }

  /**
   * Adds a protocol adapter; on a running hub it starts now. One that fails to start (a port in
   * use) leaves the hub running without it: `health()` names the protocol and the error.
   */
  async addProtocol(adapter: ProtocolAdapter): Promise<void> {
    this.checkAdapter(adapter);
    if (this.running) await this.startAdapter(adapter);
  }

  get protocols(): string[] {
    return [...this.adapters.keys()];
  }

  private async startAdapter(adapter: ProtocolAdapter): Promise<void> {
    const context = this.gateway.contextFor(adapter, (id) => this.commands.kick(id));
    try {
      await adapter.start(context);
      this.startedAdapters.add(adapter);
      this.adapterFailures.delete(adapter.name);
      // Commands may have waited for this protocol (one added to a running hub).
      this.commands.kickProtocol(adapter.name);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.adapterFailures.set(adapter.name, message);
      this.warn(`protocol ${adapter.name} did not start: ${message}`);
      await adapter.stop().catch(() => undefined);
    }
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
    await beforeDeadline(
      Promise.all(
        [...this.startedAdapters].map((a) =>
          a.stop().catch((err: unknown) => this.warn(`protocol ${a.name} did not stop cleanly: ${err instanceof Error ? err.message : String(err)}`)),
        ),
      ),
      Date.now() + 10_000,
    );
    this.startedAdapters.clear();
    this.events.unsubscribeOwner("hub.commands");
    this.heartbeat.stop();
    this.anomaly.stop();
    const p = this.persistence;
    if (p) {
      // Bounded: a database that never answers must not keep a redeploy waiting for ever.
      const deadline = Date.now() + p.stopTimeoutMs;
      await beforeDeadline(this.locks.idle(), deadline);
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
    for (const row of devices) {
      const alive = row.status === "online" || row.status === "error";
      if (row.lastSeen > 0) {
        this.heartbeat.track(row.id, row.heartbeatTimeout ?? undefined, row.lastSeen, alive);
      } else if (alive) {
        // Set online by hand and never heard from: it gets one timeout from now, as before the restart.
        this.heartbeat.track(row.id, row.heartbeatTimeout ?? undefined);
        this.heartbeat.revive(row.id);
      }
      // A device never heard from otherwise gets its heartbeat bookkeeping with its first message.
    }
  }

  // ── Registry ────────────────────────────────────────────────────────────────────────────

  /**
   * Registers a device. With a store, the device is written before this resolves (and before
   * `device.registered` is published); if the write fails, nothing is registered (UNAVAILABLE).
   */
  async registerDevice(input: unknown, cause: ChangeCause = {}): Promise<RegisteredDevice> {
    return this.register(input, cause, undefined);
  }

  /**
   * Registration, with the token the device presented when it registered itself (kept instead
   * of a new one: the device already knows it).
   */
  private async register(input: unknown, cause: ChangeCause, presented: string | undefined): Promise<RegisteredDevice> {
    checkCause(cause);
    const p = this.persistence;
    const token = this.gateway.options.deviceTokens ? (presented ?? DeviceTokens.generate()) : undefined;
    if (!p) {
      const device = this.registry.register(input, { ...cause, silent: true });
      // In memory only: this cannot fail.
      if (token !== undefined) await this.tokens.save(device.id, token, this.clock.now());
      return this.registered(device, token, presented, cause);
    }
    const id = typeof (input as { id?: unknown } | null)?.id === "string" ? (input as { id: string }).id : "";
    return this.locks.run(id, async () => {
      const device = this.registry.register(input, { ...cause, silent: true });
      // Until it is durable the device takes no traffic (ingest answers NOT_FOUND).
      this.registering.add(device.id);
      p.hold(device.id);
      try {
        await p.writeDevice(this.registry.row(device.id)!);
        if (token !== undefined) {
          try {
            await this.tokens.save(device.id, token, this.clock.now());
          } catch (err) {
            await p.deleteDevice(device.id).catch(() => undefined);
            throw err;
          }
        }
      } catch (err) {
        this.registering.delete(device.id);
        this.forgetDevice(device.id, { silent: true });
        p.release(device.id, false);
        throw err;
      }
      this.registering.delete(device.id);
      p.release(device.id, true, true);
      return this.registered(device, token, presented, cause);
    });
  }

  /** A registration has taken effect: announced, and its token shown unless the device chose it. */
  private registered(device: Device, token: string | undefined, presented: string | undefined, cause: ChangeCause): RegisteredDevice {
    this.registry.announceRegistered(device.id, cause);
    // Connections made while the id was unknown (self-registration) must prove the token anew.
    this.disconnectEverywhere(device.id, "registered: connect again with the device's token");
    return token !== undefined && presented === undefined ? { ...device, token } : device;
  }

  /**
   * A new token for a device (the old one stops working at once); shown only in this answer.
   * For a device that lost its token, or one registered while tokens were off.
   */
  async rotateToken(id: string): Promise<{ deviceId: string; token: string }> {
    if (!this.registry.has(id)) throw notFound("device", String(id).slice(0, 128));
    // A token nobody checks would be a false promise of protection.
    if (!this.gateway.options.deviceTokens) {
      throw new TethralError("CONFLICT", "device tokens are off on this hub, so devices connect without one: turn them on (TETHRAL_DEVICE_TOKENS=on, or the hub's settings) first");
    }
    const token = DeviceTokens.generate();
    await this.locks.run(id, async () => {
      // Removed while waiting for the lock: no token for a device that is gone.
      if (!this.registry.has(id)) throw notFound("device", id);
      await this.tokens.save(id, token, this.clock.now());
    });
    this.disconnectEverywhere(id, "token replaced");
    return { deviceId: id, token };
  }

  /**
   * The one place that tells the adapters a device's twin changed (or, `removed`, that it is gone):
   * each delivers it to the device if it listens there. Worked out once, only if some adapter takes it.
   */
  private deliverTwin(id: string, removed: boolean): void {
    let twin: DeviceTwin | null | undefined = removed ? null : undefined;
    let record: DeviceRecord | undefined;
    for (const adapter of this.startedAdapters) {
      if (!adapter.twinChanged) continue;
      if (!removed) {
        record ??= this.registry.record(id);
        if (!record) return;
        if (adapter.retainsTwins && record.protocol !== adapter.name) continue;
      }
      if (twin === undefined) twin = twinOf(record!);
      try {
        adapter.twinChanged(id, twin);
      } catch (err) {
        this.warn(`protocol ${adapter.name} could not deliver the twin of ${id}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }

  /** Connections authenticated with what is no longer valid must not stay trusted. */
  private disconnectEverywhere(id: string, reason: string): void {
    for (const adapter of this.startedAdapters) {
      try {
        adapter.disconnect?.(id, reason);
      } catch (err) {
        this.warn(`protocol ${adapter.name} could not drop ${id}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }

  /** A partial update; with a store, written before it resolves, or not made at all (UNAVAILABLE). */
  async updateDevice(id: string, patch: unknown, cause: ChangeCause = {}): Promise<Device> {
    checkCause(cause);
    const p = this.persistence;
    if (!p) return this.applyUpdate(id, patch, cause, null);
    return this.locks.run(id, () => this.applyUpdate(id, patch, cause, p));
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
      // The row carried status and lastSeen as they were when it was built; a batch may have
      // written newer ones meanwhile. Write them again, so the newest lands last.
      p.markPresence(id);
    }
    this.registry.announceUpdated(id, changes, cause);
    if (changes.includes("heartbeatTimeout")) this.heartbeat.setTimeout(id, device.heartbeatTimeout);
    return device;
  }

  /** Removes a device with its state and history; with a store, deleted there first. */
  async removeDevice(id: string, cause: ChangeCause & { reason?: "user" | "retention" } = {}): Promise<Device> {
    checkCause(cause);
    const p = this.persistence;
    if (!p) return this.forgetDevice(id, cause);
    return this.locks.run(id, async () => {
      if (!this.registry.has(id)) throw notFound("device", id);
      p.hold(id);
      // No command status of this device may be written after its rows are deleted.
      const commands = await this.commands.holdDevice(id);
      try {
        await p.deleteDevice(id);
      } catch (err) {
        commands.resume();
        p.release(id, true, true);
        throw err;
      }
      const device = this.forgetDevice(id, cause);
      p.release(id, false);
      return device;
    });
  }

  private forgetDevice(id: string, cause: ChangeCause & { reason?: "user" | "retention"; silent?: boolean }): Device {
    const record = this.registry.record(id);
    if (record) {
      this.heartbeat.untrack(id);
      this.state.forget(record);
      this.tokens.forget(id);
      this.commands.deviceRemoved(id);
      // A registration that failed never had a twin anywhere.
      if (!cause.silent) this.deliverTwin(id, true);
      this.disconnectEverywhere(id, "device removed");
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
    const counters = this.gateway.allCounters();
    const protocols: Record<string, ProtocolStatistics> = {};
    for (const [name, adapter] of this.adapters) {
      const health = this.protocolHealth(name, adapter);
      const stats = this.startedAdapters.has(adapter) ? adapter.statistics() : { connected: 0 };
      protocols[name] = { ...(counters[name] ?? this.gateway.countersOf(name)), ...stats, status: health.status };
    }
    // Protocols with traffic but no adapter (HTTP reports through the REST flow).
    for (const [name, c] of Object.entries(counters)) if (!protocols[name]) protocols[name] = { ...c, status: "ok", connected: 0 };
    return { protocols, commands: this.commands.statistics() };
  }

  private protocolHealth(name: string, adapter: ProtocolAdapter): ProtocolHealth {
    const failure = this.adapterFailures.get(name);
    if (failure !== undefined) return { status: "degraded", error: failure };
    if (!this.startedAdapters.has(adapter)) return { status: "stopped" };
    try {
      return adapter.health();
    } catch (err) {
      return { status: "degraded", error: err instanceof Error ? err.message : String(err) };
    }
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
    checkCause(cause);
    const p = this.persistence;
    if (!p) return this.applyState(this.state.planSet(id, input), cause);
    return this.locks.run(id, async () => {
      const plan = this.state.planSet(id, input);
      if (!plan.changed) return this.state.get(id);
      const record = this.registry.record(id)!;
      const presence = plan.to.status !== undefined ? { id, status: plan.to.status, lastSeen: record.lastSeen } : null;
      // While the change is written, batches leave this device alone: a report meanwhile must
      // not overwrite the stored desired state with the old one.
      p.hold(id);
      try {
        await p.writeState(plan.row, presence);
      } catch (err) {
        p.release(id, true);
        throw err;
      }
      const state = this.applyState(plan, cause);
      p.release(id, true, true);
      return state;
    });
  }

  private applyState(plan: ReturnType<StateManager["planSet"]>, cause: ChangeCause): DeviceState {
    const before = this.registry.record(plan.deviceId)?.status;
    const state = this.state.applySet(plan, { source: "user", ...cause });
    if (state.status !== before) {
      const record = this.registry.record(plan.deviceId);
      if (record && record.heartbeat === undefined) this.heartbeat.track(plan.deviceId, record.heartbeatTimeout);
      if (state.status === "online") this.heartbeat.revive(plan.deviceId);
      // Offline, or unknown again after maintenance: the next message brings the device online.
      else if (state.status === "offline" || state.status === "unknown") this.heartbeat.markOffline(plan.deviceId);
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

  subscribe<P extends string = "*">(options: SubscribeOptions<P>, handler: EventHandler<EventsMatching<P>>): SubscriptionHandle {
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
    for (const [name, adapter] of this.adapters) {
      const h = this.protocolHealth(name, adapter);
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

  // ── Heartbeat callbacks ─────────────────────────────────────────────────────────────────

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

/** A cause from a flow ends up in events and history rows: plain, short text only. */
function checkCause(cause: ChangeCause): void {
  const problem =
    checkLabel(cause.causeId, "causeId") ?? checkLabel(cause.parentCauseId, "parentCauseId") ?? checkLabel(cause.source, "source", 64);
  if (problem) throw invalid(problem.field, problem.message);
}
