import { AdapterSet } from "./adapter-set";
import { AnomalyDetector, type AnomalyStatistics, DEFAULT_ANOMALY_OPTIONS } from "./anomaly";
import { type Clock, beforeDeadline, systemClock } from "./clock";
import { type CommandListQuery, DEFAULT_COMMAND_OPTIONS, parseCommandListQuery } from "./command-input";
import { CommandTracker } from "./commands";
import { DeviceTraffic } from "./device-traffic";
import { DurableWrites, type RegisteredDevice, type RemoveCause } from "./durable-writes";
import { TethralError, errorMessage, isTethralError, notFound } from "./errors";
import {
  EventBus,
  type EventHandler,
  type EventStatistics,
  type EventsMatching,
  type HistoryQuery,
  type PublishOptions,
  type SubscribeOptions,
  type SubscriptionHandle,
} from "./events";
import { DEFAULT_GATEWAY_OPTIONS, DeviceGateway, type TransportRefusal } from "./gateway";
import type { HeartbeatMonitor } from "./heartbeat";
import type { InboundMessage, IngestResult } from "./inbound";
import { type ClusterInfo, type CommunicationStatistics, type HubHealth, type HubOptions, type HubStatistics } from "./hub-options";
import { healthOf } from "./hub-health";
import { HubMetrics } from "./metrics";
import { merge } from "./options";
import type { DeviceMessage, ProtocolAdapter, ReceiveResult } from "./ports/protocol";
import { Presence } from "./presence";
import { ProcessMonitor } from "./process-monitor";
import { Refusals } from "./refusals";
import { DeviceRegistry, type DeviceFilter, type DeviceRecord, type DeviceList, type DeviceStatistics, toDevice } from "./registry";
import { type ChangeCause, DEFAULT_STATE_OPTIONS, StateManager, type StateListQuery, type StateStatistics } from "./state";
import { StoredReads, loadFleet, storeHost } from "./stored-reads";
import { Intake } from "./intake";
import { type TelemetryAnswer, type TelemetryQueryInput, TimeSeries } from "./telemetry";
import { newTimeId } from "./ids";
import { DeviceTokens } from "./tokens";
import { twinCopy, twinOf } from "./twin";
import type { Command, Device, DeviceState, DeviceTwin, StateHistoryEntry, TethralEvent } from "./types";
import { DEFAULT_PERSISTENCE_OPTIONS, Persistence, STORED } from "./write-behind";
import { ClusterMember } from "./cluster/member";
import { clusterHealthOf, clusterInfoOf, clusterStoreHost } from "./cluster/view";
import { type LocalRequests, commandWaitMs, localRequests, registrationId, routedRequest } from "./cluster/routed";
import { type ClusterStore, isClusterStore } from "./ports/cluster";

export type { ClusterInfo, ClusterOptions, CommunicationStatistics, HubHealth, HubOptions, HubStatistics } from "./hub-options";
export { DEFAULT_LEASE_SECONDS, DEFAULT_PARTITIONS } from "./hub-options";
export type { InboundKind, InboundMessage, IngestResult } from "./inbound";
export type { CommandListQuery, CommandOptions } from "./command-input";
export type { CommandStatistics } from "./commands";
export type { ProtocolStatistics } from "./adapter-set";
export type { RegisteredDevice } from "./durable-writes";
export type { TelemetryAnswer, TelemetryQueryInput } from "./telemetry";

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
  /** Whether the hub can take more device messages now: busy while the store is behind (see `AdapterContext.intake`). */
  readonly intake: Intake;
  /** Telemetry time series (CONTRACT §7). */
  readonly series: TimeSeries;
  /** This runtime's name (CONTRACT §8 `TETHRAL_MEMBER_ID`). */
  readonly memberId: string;
  private running = false;
  private started = false;
  private startedAt = 0;
  private readonly warn: (message: string) => void;
  private readonly persistence: Persistence | null;
  /**
   * Twins whose versions are not stored yet, by device, oldest first, one per write-behind mark:
   * each written batch sends the newest it stored (see twinChanged).
   */
  private readonly unstoredTwins = new Map<string, { mark: number; twin: DeviceTwin; record: DeviceRecord }[]>();
  private readonly presence: Presence;
  private readonly refusals: Refusals;
  private readonly traffic: DeviceTraffic;
  private readonly commands: CommandTracker;
  private readonly gateway: DeviceGateway;
  private readonly adapters: AdapterSet;
  private readonly writes: DurableWrites;
  private readonly reads: StoredReads;
  private readonly processMonitor = new ProcessMonitor();
  /** Cluster mode (CONTRACT §8); null on a single runtime. */
  private readonly cluster: ClusterMember | null;
  private readonly commandWaitMs: number;
  /** Whether devices present tokens (HubOptions.deviceTokens). */
  private readonly deviceTokens: boolean;
  /** What this member runs when a request for one of its devices comes from another member. */
  private readonly local: LocalRequests = localRequests(() => this.writes, () => this.commands, (type, data, options) => this.publish(type, data, options));

  constructor(options: HubOptions = {}) {
    const clock = (this.clock = options.clock ?? systemClock);
    this.memberId = options.cluster?.member ?? options.memberId ?? "local";
    const warn = (this.warn = options.onWarning ?? ((message) => console.warn(`[tethral] ${message}`)));
    const c = options.cluster;
    if (c && !isClusterStore(options.store)) {
      throw new TethralError("INVALID", "cluster mode needs PostgreSQL or CockroachDB as the store (TETHRAL_DB=postgres://...)", [{ field: "TETHRAL_DB", message: "must be a PostgreSQL or CockroachDB URL in cluster mode" }]);
    }
    const po = merge(DEFAULT_PERSISTENCE_OPTIONS, options.persistence);
    this.commandWaitMs = (options.commands?.defaultTimeoutSec ?? DEFAULT_COMMAND_OPTIONS.defaultTimeoutSec) * 1000;
    this.intake = new Intake(po.intakeHighWater, Math.floor(po.intakeHighWater / 2));
    const p = (this.persistence = options.store
      ? new Persistence(options.store, clock, clusterStoreHost(storeHost(this, warn, (ms) => this.metrics.observeBatch(ms)), c ? () => this.cluster : null), po, this.intake)
      : null);
    const unstored = new Set(po.unstoredEventTypes);
    this.events = new EventBus(clock, {
      // A user who stores message.received wants it kept: it is then no longer transient.
      ...(p && !unstored.has("message.received") && { transientTypes: [] }),
      ...options.events,
      ...(p && { recorder: (event, expiresAt) => (unstored.has(event.type) ? undefined : p.addEvent(event, expiresAt)) }),
    });
    this.registry = new DeviceRegistry(this.events, clock);
    this.anomaly = new AnomalyDetector(this.events, clock, merge(DEFAULT_ANOMALY_OPTIONS, options.anomaly));
    this.state = new StateManager(this.registry, this.events, clock, { ...DEFAULT_STATE_OPTIONS, ...options.state }, {
      observer: this.anomaly,
      twin: { onTwinChanged: (id, stored) => this.twinChanged(id, stored) },
      ...(p && { sink: { onStateWritten: (id) => p.markState(id), onStatusWritten: (id) => p.markPresence(id), onHistory: (row) => p.addHistory(row) } }),
    });
    p?.onWritten((index) => this.twinsStored(index));
    this.presence = new Presence(this.registry, this.state, this.events, clock, options.heartbeat, {
      presenceChanged: (id) => p?.markPresence(id),
      back: (id) => this.commands.kick(id),
      purge: (id) => this.writes.remove(id, { reason: "retention", source: "heartbeat" }).catch((err: unknown) => warn(`could not remove long-offline device ${id}: ${errorMessage(err)}`)),
      ...(c && { owns: (id: string) => this.cluster?.owns(id) ?? true }),
    });
    this.heartbeat = this.presence.heartbeat;
    this.refusals = new Refusals(this.events);
    const r = po.retention;
    this.series = new TimeSeries(this.registry, p, clock, () => ({ raw: r.pointsMaxAgeMs, "1m": r.rollups1mMaxAgeMs, "1h": r.rollups1hMaxAgeMs }));
    this.traffic = new DeviceTraffic(this.registry, this.state, this.presence, this.refusals, this.events, clock, this.series, (id) => this.writes.isRegistering(id));
    this.tokens = new DeviceTokens(options.store ?? null, this.registry);
    const deviceTokens = (this.deviceTokens = options.deviceTokens ?? DEFAULT_GATEWAY_OPTIONS.deviceTokens);
    this.commands = new CommandTracker(
      {
        device: (id) => {
          const r = this.registry.record(id);
          return r && !this.writes.isRegistering(id) ? toDevice(r) : undefined;
        },
        protocolOf: (id) => (this.writes.isRegistering(id) ? undefined : this.registry.record(id)?.protocol),
        adapter: (protocol) => (this.cluster ? this.cluster.adapterFor(protocol, this.adapters.running(protocol)) : this.adapters.running(protocol)),
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
      merge(DEFAULT_GATEWAY_OPTIONS, { deviceTokens, selfRegistration: options.selfRegistration, maxPayloadBytes: options.maxPayloadBytes }),
      warn,
      this.intake,
    );
    this.adapters = new AdapterSet(this.registry, this.gateway, this.commands, warn);
    for (const adapter of options.protocols ?? []) this.adapters.add(adapter);
    this.registry.addressProblem = (protocol, address) => this.adapters.addressProblem(protocol, address);
    this.adapters.twinPending = (id) => this.unstoredTwins.has(id);
    this.gateway.stored = () => this.stored();
    this.writes = new DurableWrites(this.registry, this.state, this.presence, this.tokens, this.commands, this.adapters, p, clock, deviceTokens);
    this.reads = new StoredReads(p, this.registry, this.state, this.events, clock, unstored);
    const { registry, state, presence, tokens, commands } = this;
    this.cluster = c
      ? new ClusterMember(
          { registry, state, presence, tokens, commands, clock, warn, receive: (m) => this.gateway.receive(m), apply: (method, args) => routedRequest(this.local, method, args),
            adapter: (protocol) => this.adapters.running(protocol), adapters: () => this.adapters.all(), writtenMark: () => this.persistence!.writtenMark(), onWritten: (listener) => this.persistence!.onWritten(listener),
            flush: () => this.persistence!.flushAll(), discardWrites: (theirs) => this.persistence!.discard(theirs), writesInFlight: () => this.persistence!.inFlight(), deliverTwin: (id) => this.adapters.deliverTwin(id, false, true) },
          options.store as unknown as ClusterStore,
          c.link,
          { member: c.member, partitions: c.partitions, leaseMs: c.leaseMs, followMs: 500 },
        )
      : null;
    this.gateway.router = this.cluster;
    this.metrics = new HubMetrics({
      communication: () => this.communicationStatistics(),
      devices: () => this.registry.statistics(),
      events: () => this.events.statistics(),
      store: () => this.persistence?.statistics() ?? null,
      intake: () => this.intake.statistics(),
      series: () => this.series.statistics(),
      refusals: () => this.refusals.counts(),
      health: () => this.health(),
      cluster: () => this.cluster?.statistics() ?? null,
    });
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Opens and loads the store, starts the timers, then the command tracker and the protocol adapters. */
  async start(): Promise<void> {
    if (this.running) return;
    // Loading fills the registry: a second start on the same hub would load everything twice.
    if (this.started) throw new TethralError("UNAVAILABLE", "a hub starts once: create a new Hub to start again");
    this.started = true;
    this.startedAt = this.clock.now();
    const p = this.persistence;
    // A cluster member tracks heartbeats and loads commands per partition, as it takes them.
    const cluster = this.cluster;
    await p?.open(() => loadFleet(p.store, this.registry, this.state, this.presence, this.clock.now(), cluster === null));
    await this.tokens.load();
    this.running = true;
    this.processMonitor.start();
    this.presence.start();
    if (cluster) await cluster.connect();
    else await this.commands.load();
    await this.adapters.startAll();
    if (cluster) await cluster.join();
    this.commands.start();
    this.events.publish("hub.started", { devices: this.registry.size }, { source: "hub" });
  }

  /** Adds a protocol adapter, started now on a running hub (one that fails to start is named in `health()`). */
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
    // A cluster member writes what it holds and hands its partitions over at once.
    await this.cluster?.stop().catch((err: unknown) => this.warn(`cluster: ${errorMessage(err)}`));
    this.presence.stop();
    this.anomaly.stop();
    const p = this.persistence;
    if (p) {
      // Bounded: a database that never answers must not keep a redeploy waiting for ever.
      const deadline = Date.now() + p.stopTimeoutMs;
      await beforeDeadline(this.writes.idle(), deadline);
      await beforeDeadline(this.commands.stop(), deadline);
      await p.close(deadline);
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

  // ── Registry: changes go through DurableWrites ─────────────────────────────────────────

  /** Registers a device: durable before it resolves and is announced, or not made at all (UNAVAILABLE). */
  registerDevice(input: unknown, cause: ChangeCause = {}): Promise<RegisteredDevice> {
    // Not async (an in-memory registration is done before this returns), so a throw is caught
    // here: reading the id of an input whose getter throws must reject, as everything else does.
    try {
      if (this.cluster === null) return this.writes.register(input, cause);
      // In a cluster the token is made here, where the request came in, and goes with it to the
      // device's owner: asked again of the partition's next owner (the first owner's answer lost),
      // the registration is told from another's by it (see registeredBefore).
      const token = this.deviceTokens ? DeviceTokens.generate() : undefined;
      return this.routed(registrationId(input), "register", { input, cause, token }, () => this.writes.register(input, cause, undefined, token), 0, (err) =>
        this.registeredBefore(err, input, token),
      );
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Cluster mode: the owners' writes read back now (read your writes), not at the next follow. */
  private async readOwnersWrites(): Promise<void> {
    await this.cluster?.follow().catch(() => undefined);
  }

  /**
   * A registration asked again of a partition's next owner and refused there as CONFLICT: the
   * device it made the first time (its token the one this member made, or with device tokens off,
   * the device as the registration makes it), with that token; else the refusal.
   */
  private async registeredBefore(err: unknown, input: unknown, token: string | undefined): Promise<RegisteredDevice> {
    const id = registrationId(input);
    if (!isTethralError(err) || err.code !== "CONFLICT" || id === null) throw err;
    // The owner's writes, read back: this member may not be the owner.
    await this.readOwnersWrites();
    if (!this.registry.has(id)) throw err;
    // The token's hash from the database itself when this member's copy is behind.
    const made = token !== undefined ? await this.tokens.verifyStored(id, token) : this.registry.registers(id, input);
    if (!made) throw err;
    const device: RegisteredDevice = this.registry.get(id);
    if (token !== undefined) device.token = token;
    return device;
  }

  /** A new token for a device (the old one stops working at once), shown only in this answer. */
  async rotateToken(id: string): Promise<{ deviceId: string; token: string }> {
    return this.routed(id, "rotateToken", { id }, () => this.writes.rotateToken(id));
  }

  /** A partial update; with a store, written before it resolves, or not made at all (UNAVAILABLE). */
  async updateDevice(id: string, patch: unknown, cause: ChangeCause = {}): Promise<Device> {
    return this.routed(id, "update", { id, patch, cause }, () => this.writes.update(id, patch, cause));
  }

  /** Removes a device with its state and history; with a store, deleted there first. */
  async removeDevice(id: string, cause: RemoveCause = {}): Promise<Device> {
    if (this.cluster === null) return this.writes.remove(id, cause);
    // Asked again of the partition's next owner (the first owner's answer lost), a removal the
    // first owner made is NOT_FOUND there: it was done, and the device is answered as this member
    // last saw it.
    const before = this.registry.has(id) ? this.registry.get(id) : null;
    return this.routed(id, "remove", { id, cause }, () => this.writes.remove(id, cause), 0, async (err) => {
      if (before === null || !isTethralError(err) || err.code !== "NOT_FOUND") throw err;
      // Read your writes, as after an answer from the owner.
      await this.readOwnersWrites();
      return before;
    });
  }

  /**
   * A device's twin moved. It reaches the device once the state holding its version is stored:
   * a report that moves the delta is written behind, and a twin sent before would be lost to a
   * crash, with the version the device has seen; the next change after the restart then came
   * with a version the device had seen already, which a device must ignore (until 2026-12-08 it
   * was sent at once, and the version went back after a SIGKILL: a tester's find). A PUT of
   * desired state is stored before it is applied, and goes out at once. The twin goes as it was
   * at the change (a later change sends its own): the state's version moves with reports that
   * leave the twin alone, and what it has now may not be stored yet.
   */
  private twinChanged(id: string, stored: boolean): void {
    const mark = stored ? null : (this.persistence?.writtenMark() ?? null);
    const record = mark === null ? undefined : this.registry.record(id);
    if (mark === null || record === undefined) {
      this.unstoredTwins.delete(id);
      this.adapters.deliverTwin(id, false);
      return;
    }
    // At most two twins wait: the one a write in flight stores, and the newest, whose mark moves
    // on with each change (a database that is away, or a backlog, would otherwise pile them up).
    const twin = twinOf(record);
    const waiting = this.unstoredTwins.get(id);
    const last = waiting?.at(-1);
    if (last !== undefined && (last.mark === mark || waiting!.length >= 2)) {
      last.mark = mark;
      last.twin = twin;
      last.record = record;
    } else if (waiting) waiting.push({ mark, twin, record });
    else this.unstoredTwins.set(id, [{ mark, twin, record }]);
  }

  /** Sends each device the newest of its twins a write that just committed stored (see twinChanged). */
  private twinsStored(index: number): void {
    for (const [id, waiting] of this.unstoredTwins) {
      let n = 0;
      while (n < waiting.length && waiting[n]!.mark < index) n++;
      if (n === 0) continue;
      const newest = waiting[n - 1]!;
      if (n === waiting.length) this.unstoredTwins.delete(id);
      else waiting.splice(0, n);
      // Removed meanwhile (and maybe registered again: another device under the same id).
      if (this.registry.record(id) !== newest.record) continue;
      // Cluster mode: a device another member took over meanwhile is that member's to publish
      // (its rows here were fenced out, not stored).
      if (this.cluster !== null && !this.cluster.owns(id)) continue;
      this.adapters.deliverTwin(id, false, false, newest.twin);
    }
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

  /** A flow's report for a device (see `DeviceTraffic.ingest`): a bad one is refused and changes nothing. */
  ingest(deviceId: string, message: InboundMessage): IngestResult {
    const c = this.cluster;
    if (c && typeof deviceId === "string" && this.registry.has(deviceId) && !c.owns(deviceId)) {
      // Another member's device: its report goes there, in order with the device's own messages.
      c.forwardReport(deviceId, message);
      return { deviceId, status: this.registry.record(deviceId)!.status, changed: false, causeId: null };
    }
    return this.traffic.ingest(deviceId, message);
  }

  /** A device's message as an adapter (or the REST flow, as `http`) hands it over; see `DeviceGateway.receive`. Never throws. */
  receive(message: DeviceMessage): ReceiveResult {
    return this.gateway.receive(message);
  }

  /**
   * Resolves true once what the hub has taken in so far is in its database (at once without
   * one, or when it all is already); false when the hub stops first. A device's report is
   * acknowledged only then (MQTT PUBACK, CoAP 2.04, the REST flow's 204, a published event's
   * answer), so a crash loses nothing acknowledged (see Persistence.whenStored).
   */
  stored(): Promise<boolean> {
    return this.persistence ? this.persistence.whenStored() : STORED;
  }

  /** A device message its transport refused before it could be read (the REST flow's body that is not JSON, say). */
  rejectMessage(protocol: string, refusal: TransportRefusal): void {
    this.gateway.rejectFor(protocol, refusal);
  }

  // ── Commands ────────────────────────────────────────────────────────────────────────────

  /** Sends a command (CONTRACT §1): durable before it resolves, `queued`, or with `wait: true` once it has ended. */
  async sendCommand(deviceId: string, input: unknown): Promise<Command> {
    if (this.cluster === null) return this.commands.submit(deviceId, input);
    const waitMs = commandWaitMs(input, this.commandWaitMs);
    // In a cluster the id is made here, where the request came in: asked again of the partition's
    // next owner (the first owner's answer lost), the command the first owner stored is answered,
    // not a second one made.
    const id = newTimeId(this.clock.now());
    return this.routed(deviceId, "command", { deviceId, input, id }, (again) => this.commands.submit(deviceId, input, id, again), waitMs);
  }

  async getCommand(id: string): Promise<Command> {
    return this.commands.get(id);
  }

  /** Resolves once the command has ended, or with the command as it is after `limitMs` (default: its attempts' time). */
  async waitForCommand(id: string, limitMs?: number): Promise<Command> {
    if (!this.cluster) return this.commands.wait(id, limitMs);
    const { deviceId } = await this.commands.get(id);
    return this.routed(deviceId, "wait", { id, deviceId, limitMs }, () => this.commands.wait(id, limitMs), limitMs ?? this.commandWaitMs);
  }

  async cancelCommand(id: string): Promise<Command> {
    if (!this.cluster) return this.commands.cancel(id);
    const { deviceId } = await this.commands.get(id);
    // Asked again of the partition's next owner (the first owner's answer lost), a cancel the
    // first owner made is CONFLICT there (already ended): answered with the cancelled command.
    return this.routed(deviceId, "cancel", { id, deviceId }, () => this.commands.cancel(id), 0, async (err) => {
      if (!isTethralError(err) || err.code !== "CONFLICT") throw err;
      const now = await this.commands.get(id);
      if (now.status !== "cancelled") throw err;
      return now;
    });
  }

  /** A device's commands, newest first: `status` (one, a comma-separated list or a list), `limit` (default 100, at most 1000). */
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
    return twinCopy(record);
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

  /** Sets desired values and/or the status (CONTRACT: PUT state): durable before it applies, or no change (UNAVAILABLE). */
  async setState(id: string, input: unknown, cause: ChangeCause = {}): Promise<DeviceState> {
    if (this.cluster === null) return this.writes.setState(id, input, cause);
    // Asked again of the partition's next owner (the first owner's answer lost), a change with
    // `expectedVersion` the first owner made is CONFLICT there: answered with the state when it
    // is the version after the expected one and already as the change asks. (Without
    // `expectedVersion`, doing it again changes nothing.)
    return this.routed(id, "setState", { id, input, cause }, () => this.writes.setState(id, input, cause), 0, async (err) => {
      const expected = (input as { expectedVersion?: unknown } | null)?.expectedVersion;
      if (!isTethralError(err) || err.code !== "CONFLICT" || typeof expected !== "number") throw err;
      await this.readOwnersWrites();
      const now = this.state.get(id);
      if (now.version !== expected + 1 || this.state.planSet(id, { ...(input as object), expectedVersion: now.version }).changed) throw err;
      return now;
    });
  }

  /** The last `limit` changes of a device, oldest first, from the store when there is one (see `StoredReads`). */
  async stateHistory(id: string, limit?: number): Promise<StateHistoryEntry[]> {
    return this.reads.stateHistory(id, limit);
  }

  listStates(query: StateListQuery = {}): { states: DeviceState[]; total: number } {
    return this.state.list(query);
  }

  stateStatistics(): StateStatistics & { anomalies: AnomalyStatistics } {
    return { ...this.state.statistics(), anomalies: this.anomaly.statistics() };
  }

  /** CONTRACT §7: a device's raw points or aggregated buckets. INVALID names the bad parameter; UNAVAILABLE without a store. */
  async telemetry(id: string, query: TelemetryQueryInput = {}): Promise<TelemetryAnswer> {
    return this.series.query(id, query);
  }

  /** The keys a device has reported as series, sorted. */
  async telemetryKeys(id: string): Promise<string[]> {
    return this.series.keys(id);
  }

  // ── Events ──────────────────────────────────────────────────────────────────────────────

  /** Publishes a user event (types outside the hub's own prefixes); returns a copy of it. */
  publish(type: string, data: unknown, options: PublishOptions = {}): TethralEvent {
    if (options.deviceId !== undefined && options.deviceId !== null && !this.registry.has(options.deviceId)) {
      throw notFound("device", options.deviceId);
    }
    // The caller's copy: the bus's own object is in history and subscribers' queues, and may be waiting to be stored.
    return structuredClone(this.events.publishCustom(type, data, { source: "flow", ...options }));
  }

  /** `publish`, on the cluster member that owns the event's device (CONTRACT §8); the same on a single runtime. */
  async publishEvent(type: string, data: unknown, options: PublishOptions = {}): Promise<TethralEvent> {
    const deviceId = options.deviceId ?? null;
    return this.routed(deviceId, "publish", { type, data, options }, async () => {
      const event = this.publish(type, data, options);
      // Answered once stored, as a device's report is acknowledged (see `stored`).
      if (!(await this.stored())) throw new TethralError("UNAVAILABLE", "the hub stopped before the event was stored");
      return event;
    });
  }

  /**
   * Runs `local` here, or on the cluster member that owns `deviceId` (see `ClusterMember.route`).
   * `extraMs`: how much longer than a plain request the answer may take (a command's `wait`).
   * Never throws: each `local` is async or returns a promise it rejects, and `route` is async.
   */
  private routed<T>(
    deviceId: string | null,
    method: string,
    args: Record<string, unknown>,
    local: (again: boolean) => Promise<T>,
    extraMs = 0,
    askedAgain?: (err: unknown) => Promise<T>,
  ): Promise<T> {
    const c = this.cluster;
    if (c === null || deviceId === null || typeof deviceId !== "string") return local(false);
    return c.route(deviceId, method, args, local, extraMs > 0 ? extraMs + c.options.leaseMs + 10_000 : undefined, askedAgain);
  }

  subscribe<P extends string = "*">(options: SubscribeOptions<P>, handler: EventHandler<EventsMatching<P>>): SubscriptionHandle {
    return this.events.subscribe(options, handler);
  }

  /** Event history, newest first, from the store when there is one (see `StoredReads`). */
  async eventHistory(query: HistoryQuery = {}): Promise<TethralEvent[]> {
    return this.reads.eventHistory(query);
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

  /** CONTRACT §8 `GET /api/cluster`: the members and the partitions each owns; a single runtime is a cluster of one. */
  clusterInfo(): ClusterInfo {
    return clusterInfoOf(this.cluster, this.memberId, this.startedAt, this.clock.now());
  }

  /**
   * Whether this member runs the cluster's one-per-cluster work (it owns partition 0); always true
   * on a single runtime. Flows gate timers with it (README, Cluster mode).
   */
  get isLeader(): boolean {
    return this.cluster?.isLeader ?? true;
  }

  health(): HubHealth {
    return healthOf(this.running, {
      registry: { devices: this.registry.size },
      heartbeat: { tracked: this.heartbeat.size, ...this.heartbeat.pending },
      state: {},
      events: { subscribers: this.events.subscriberCount },
      commands: this.commands.statistics(),
      protocols: this.adapters.healths(),
      store: this.persistence,
      process: this.processMonitor.reading(),
      cluster: clusterHealthOf(this.cluster, this.memberId),
    });
  }
}
