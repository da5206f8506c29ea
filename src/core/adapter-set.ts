import { beforeDeadline } from "./clock";
import type { CommandTracker } from "./commands";
import { TethralError, errorMessage } from "./errors";
import type { DeviceGateway } from "./gateway";
import type { ProtocolAdapter, ProtocolCounters, ProtocolHealth } from "./ports/protocol";
import type { DeviceRecord, DeviceRegistry } from "./registry";
import { twinOf } from "./twin";
import type { DeviceTwin } from "./types";
import { PROTOCOL_PATTERN } from "./validation";

export interface ProtocolStatistics extends ProtocolCounters {
  status: ProtocolHealth["status"];
  connected: number;
  [figure: string]: unknown;
}

/**
 * The hub's protocol adapters: added (one per protocol name), started with the context the
 * gateway makes for each, stopped, asked for health and statistics, and told what concerns every
 * transport (a device's twin changed, a device must reconnect). An adapter that fails to start
 * leaves the hub running without it: health names the protocol and the error.
 */
export class AdapterSet {
  private readonly adapters = new Map<string, ProtocolAdapter>();
  /** Adapters that would not start, with why. */
  private readonly failures = new Map<string, string>();
  private readonly started = new Set<ProtocolAdapter>();
  /**
   * Whether a newer twin of the device waits for its version to be stored (the hub sets it; see
   * Hub.twinChanged): that one goes out once stored, and nothing older is sent meanwhile.
   */
  twinPending: (id: string) => boolean = () => false;

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly gateway: DeviceGateway,
    private readonly commands: CommandTracker,
    private readonly warn: (message: string) => void,
  ) {}

  add(adapter: ProtocolAdapter): void {
    if (!adapter || typeof adapter.name !== "string" || !PROTOCOL_PATTERN.test(adapter.name)) {
      throw new TethralError("INVALID", "a protocol adapter needs a name of 1-32 lower-case letters, digits, _ or -");
    }
    if (this.adapters.has(adapter.name)) throw new TethralError("CONFLICT", `protocol "${adapter.name}" is already served by another adapter`);
    this.adapters.set(adapter.name, adapter);
  }

  get names(): string[] {
    return [...this.adapters.keys()];
  }

  /** Every adapter, started or not. */
  all(): ProtocolAdapter[] {
    return [...this.adapters.values()];
  }

  /** A device was registered here: resolves once every adapter that must listens for it; null when none must (no wait). */
  deviceAdded(id: string): Promise<void> | null {
    let waits: Promise<void>[] | null = null;
    for (const adapter of this.started) {
      const wait = adapter.deviceAdded?.(id);
      if (wait) (waits ??= []).push(wait);
    }
    return waits === null ? null : Promise.all(waits).then(() => undefined);
  }

  /** Why an adapter refuses `address` for a device of `protocol` (see ProtocolAdapter.checkAddress), or null. */
  addressProblem(protocol: string, address: string): string | null {
    const adapter = this.adapters.get(protocol);
    try {
      const problem = adapter?.checkAddress?.(address);
      // Only a message refuses: a plugin's "" or false says nothing a user could act on.
      return typeof problem === "string" && problem.trim() !== "" ? problem : null;
    } catch (err) {
      // A plugin's check that throws is its own fault, not the address's.
      this.warn(`protocol "${protocol}" could not check an address: ${errorMessage(err)}`);
      return null;
    }
  }

  /** The running adapter of a protocol, if any: commands go out only through one. */
  running(protocol: string): ProtocolAdapter | undefined {
    const adapter = this.adapters.get(protocol);
    return adapter && this.started.has(adapter) ? adapter : undefined;
  }

  async startAll(): Promise<void> {
    for (const adapter of this.adapters.values()) await this.start(adapter);
  }

  async start(adapter: ProtocolAdapter): Promise<void> {
    const context = this.gateway.contextFor(adapter, (id) => this.commands.kick(id));
    try {
      await adapter.start(context);
      this.started.add(adapter);
      this.failures.delete(adapter.name);
      // Commands may have waited for this protocol (one added to a running hub).
      this.commands.kickProtocol(adapter.name);
    } catch (err) {
      const message = errorMessage(err);
      this.failures.set(adapter.name, message);
      this.warn(`protocol ${adapter.name} did not start: ${message}`);
      await adapter.stop().catch(() => undefined);
    }
  }

  /** Stops every started adapter, waiting at most ten seconds for all of them. */
  async stopAll(): Promise<void> {
    await beforeDeadline(
      Promise.all([...this.started].map((a) => a.stop().catch((err: unknown) => this.warn(`protocol ${a.name} did not stop cleanly: ${errorMessage(err)}`)))),
      Date.now() + 10_000,
    );
    this.started.clear();
  }

  health(name: string, adapter: ProtocolAdapter): ProtocolHealth {
    const failure = this.failures.get(name);
    if (failure !== undefined) return { status: "degraded", error: failure };
    if (!this.started.has(adapter)) return { status: "stopped" };
    try {
      return adapter.health();
    } catch (err) {
      return { status: "degraded", error: errorMessage(err) };
    }
  }

  /** Each adapter's health, by protocol name. */
  healths(): Map<string, ProtocolHealth> {
    const out = new Map<string, ProtocolHealth>();
    for (const [name, adapter] of this.adapters) out.set(name, this.health(name, adapter));
    return out;
  }

  /** Every protocol's counters, connections and status; protocols with traffic but no adapter too. */
  statistics(): Record<string, ProtocolStatistics> {
    const counters = this.gateway.allCounters();
    const protocols: Record<string, ProtocolStatistics> = {};
    for (const [name, adapter] of this.adapters) {
      const health = this.health(name, adapter);
      const stats = this.started.has(adapter) ? adapter.statistics() : { connected: 0 };
      protocols[name] = { ...(counters[name] ?? this.gateway.countersOf(name)), ...stats, status: health.status };
    }
    // HTTP reports through the REST flow, with no adapter of its own.
    for (const [name, c] of Object.entries(counters)) if (!protocols[name]) protocols[name] = { ...c, status: "ok", connected: 0 };
    return protocols;
  }

  /**
   * The one place that tells the adapters a device's twin changed (or, `removed`, that it is gone):
   * each delivers it to the device if it listens there. Worked out once, only if some adapter takes it.
   * `connectionsOnly`: a cluster member following another's device tells only the adapters whose
   * connections it holds (the owner publishes to the shared broker; a follower's copy may be older).
   */
  deliverTwin(id: string, removed: boolean, connectionsOnly = false, as?: DeviceTwin): void {
    let twin: DeviceTwin | null | undefined = removed ? null : as;
    let record: DeviceRecord | undefined;
    for (const adapter of this.started) {
      if (!adapter.twinChanged || (connectionsOnly && adapter.sharedIntake)) continue;
      if (!removed) {
        record ??= this.registry.record(id);
        if (!record) return;
        if (adapter.retainsTwins && record.protocol !== adapter.name) continue;
      }
      if (twin === undefined) twin = twinOf(record!);
      try {
        adapter.twinChanged(id, twin);
      } catch (err) {
        this.warn(`protocol ${adapter.name} could not deliver the twin of ${id}: ${errorMessage(err)}`);
      }
    }
  }

  /**
   * The device's protocol changed from `from`: an adapter that retains twins (a broker's retained
   * message) drops the copy it kept for the old protocol, and the twin goes to the new one's, so
   * a device finds its own twin where it now listens and no stale one where it did (a twin whose
   * version is not stored yet goes there once it is, see `twinPending`).
   */
  protocolChanged(id: string, from: string): void {
    for (const adapter of this.started) {
      if (!adapter.retainsTwins || adapter.name !== from || !adapter.twinChanged) continue;
      try {
        adapter.twinChanged(id, null);
      } catch (err) {
        this.warn(`protocol ${adapter.name} could not clear the twin of ${id}: ${errorMessage(err)}`);
      }
    }
    if (!this.twinPending(id)) this.deliverTwin(id, false);
  }

  /** A device was removed here. */
  deviceRemoved(id: string): void {
    for (const adapter of this.started) {
      try {
        adapter.deviceRemoved?.(id);
      } catch (err) {
        this.warn(`protocol ${adapter.name} could not forget ${id}: ${errorMessage(err)}`);
      }
    }
  }

  /** Whether any adapter runs (one that does not can hold no connection). */
  get anyStarted(): boolean {
    return this.started.size > 0;
  }

  /** Connections authenticated with what is no longer valid must not stay trusted. */
  disconnect(id: string, reason: string): void {
    for (const adapter of this.started) {
      try {
        adapter.disconnect?.(id, reason);
      } catch (err) {
        this.warn(`protocol ${adapter.name} could not drop ${id}: ${errorMessage(err)}`);
      }
    }
  }
}
