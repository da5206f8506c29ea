import { errorMessage } from "../../core/errors";
import { ApiClient, ApiError } from "./api-client";
import { CoapTransport } from "./coap";
import { ConnectionlessDevice, type DeviceHost, SimulatedDevice, type SimulationEvents } from "./device";
import { deviceEndpoint } from "./endpoints";
import { HttpTransport } from "./http";
import { MqttDevice } from "./mqtt";
import { type DeviceSpec, type ResolvedOptions, type SimulationOptions, type Traits, deviceSpecs, resolveOptions } from "./options";
import { SimulationError, WarningLimiter } from "./support";
import { WebSocketDevice } from "./websocket";

/** Counters of a running simulation, for the summary line and for tests. */
export interface SimulationStats {
  protocol: string;
  /** Devices asked for. */
  devices: number;
  registered: number;
  /** Registrations that replaced a device of an earlier run (deleted and registered again). */
  replaced: number;
  /** Devices that can reach the hub now. */
  connected: number;
  /** Dropping devices away now. */
  away: number;
  telemetrySent: number;
  telemetryRefused: number;
  commandsOk: number;
  commandsFailed: number;
  drops: number;
  /** Connections lost or refused (each followed by a reconnect after a backoff delay). */
  disconnects: number;
  errors: number;
}

/** One simulated device as the simulation shows it. */
export interface SimulatedDeviceInfo {
  id: string;
  traits: Traits;
  connected: boolean;
  away: boolean;
}

type Listener<K extends keyof SimulationEvents> = (data: SimulationEvents[K]) => void;

const SIMULATOR_MANUFACTURER = "Tethral Simulator";
const CAPABILITIES = ["temperature", "humidity", "battery"];

/**
 * A fleet of simulated devices against a running hub (`npm run simulate`). `start()` reads the
 * hub's endpoints from `GET /health`, registers the devices through the REST API (replacing
 * those an earlier run left, since a token is shown only once) and connects each as a real
 * protocol client. `stop()` closes every socket, server and timer it made; it leaves the devices
 * registered, so they stay visible in the hub.
 */
export class Simulation implements DeviceHost {
  readonly options: ResolvedOptions;
  private readonly api: ApiClient;
  private readonly devices = new Map<string, SimulatedDevice>();
  private readonly listeners = new Map<keyof SimulationEvents, Set<(data: never) => void>>();
  private readonly limiter: WarningLimiter;
  private readonly counters = { registered: 0, replaced: 0, telemetrySent: 0, telemetryRefused: 0, commandsOk: 0, commandsFailed: 0, drops: 0, disconnects: 0, errors: 0 };
  private transport: CoapTransport | HttpTransport | null = null;
  private endpoint = "";
  private summaryTimer: NodeJS.Timeout | null = null;
  private starting: Promise<void> | null = null;
  private stopRequested = false;
  private stopping: Promise<void> | null = null;

  /** Throws a UsageError for options it cannot use; connects to nothing until `start()`. */
  constructor(options: SimulationOptions = {}) {
    this.options = resolveOptions(options);
    this.api = new ApiClient(this.options.api);
    this.limiter = new WarningLimiter((message) => this.options.log("warn", message));
  }

  /** Subscribes to one kind of event; returns the function that unsubscribes. */
  on<K extends keyof SimulationEvents>(type: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener as (data: never) => void);
    return () => set.delete(listener as (data: never) => void);
  }

  /** Counts what happened and tells the listeners; devices call it. */
  emit<K extends keyof SimulationEvents>(type: K, data: SimulationEvents[K]): void {
    this.count(type, data);
    for (const listener of this.listeners.get(type) ?? []) (listener as Listener<K>)(data);
  }

  /**
   * Discovers the endpoint, registers the devices and starts them. Rejects with a
   * SimulationError (hub unreachable, protocol off, an id taken by a real device, ...) after
   * undoing what it started. A `stop()` during start ends it early (registrations in flight finish).
   */
  start(): Promise<void> {
    if (this.starting || this.stopRequested) return Promise.reject(new SimulationError("a simulation starts once and not after stop()"));
    this.starting = this.run().catch(async (err: unknown) => {
      await this.shutdown();
      throw err;
    });
    return this.starting;
  }

  /**
   * Stops every device and closes every socket, server and timer. Idempotent. During `start()`
   * it waits for start to give up first, so nothing start opens late is left behind.
   */
  stop(): Promise<void> {
    this.stopRequested = true;
    this.stopping ??= (this.starting ?? Promise.resolve()).catch(() => undefined).then(() => this.shutdown());
    return this.stopping;
  }

  stats(): SimulationStats {
    let connected = 0;
    let away = 0;
    for (const device of this.devices.values()) {
      if (device.connected) connected++;
      if (device.dropped) away++;
    }
    return { protocol: this.options.protocol, devices: this.options.devices, connected, away, ...this.counters };
  }

  /** The devices started so far, with their traits. */
  deviceList(): SimulatedDeviceInfo[] {
    return [...this.devices.values()].map((d) => ({ id: d.id, traits: { ...d.spec.traits }, connected: d.connected, away: d.dropped }));
  }

  /** Where the devices talk to the hub (known after start). */
  get deviceEndpoint(): string {
    return this.endpoint;
  }

  /** The one-line summary printed every `summary` seconds. */
  summary(): string {
    const s = this.stats();
    const away = s.away ? `, ${s.away} away` : "";
    return (
      `${s.protocol}: ${s.registered}/${s.devices} registered, ${s.connected} connected${away} · ` +
      `telemetry ${s.telemetrySent} sent, ${s.telemetryRefused} refused · commands ${s.commandsOk} ok, ${s.commandsFailed} failed · ` +
      `${s.drops} drops, ${s.errors} errors`
    );
  }

  private async run(): Promise<void> {
    await this.discover();
    if (this.stopRequested) return;
    await this.openTransport();
    if (this.stopRequested) return;
    await this.registerAll();
    if (this.stopRequested) return;
    if (this.options.summary > 0) this.summaryTimer = setInterval(() => this.options.log("info", this.summary()), this.options.summary * 1000);
  }

  /** Safe to run twice: every step lets go of what is still held. */
  private async shutdown(): Promise<void> {
    if (this.summaryTimer) clearInterval(this.summaryTimer);
    this.summaryTimer = null;
    await Promise.all([...this.devices.values()].map((d) => d.stop()));
    await this.transport?.stop();
    this.api.close();
  }

  private async discover(): Promise<void> {
    let health;
    try {
      health = await this.api.health();
    } catch (err) {
      if (err instanceof ApiError && err.status === 0) {
        throw new SimulationError(`${err.message}: is the hub running (npm start)? Give its API URL with --api`);
      }
      throw err;
    }
    const { url, warnings } = deviceEndpoint(this.options, health.body);
    this.endpoint = url;
    for (const warning of warnings) this.options.log("warn", warning);
  }

  /** CoAP and HTTP devices take commands on a server of ours, whose address they register with. */
  private async openTransport(): Promise<void> {
    const lookup = (id: string) => this.devices.get(id);
    if (this.options.protocol === "coap") {
      this.transport = new CoapTransport(this.endpoint, this.options.listen, lookup, (message) => this.problem(null, "coap-transport", message));
    } else if (this.options.protocol === "http") {
      this.transport = new HttpTransport(this.options.listen, lookup);
    } else return;
    await this.transport.start();
  }

  /** Registers and starts the devices, a few at a time; the first failure ends it. */
  private async registerAll(): Promise<void> {
    const specs = deviceSpecs(this.options);
    let next = 0;
    let failure: unknown = null;
    const worker = async () => {
      while (next < specs.length && failure === null && !this.stopRequested) {
        const spec = specs[next++]!;
        try {
          await this.registerAndStart(spec);
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.options.registrationConcurrency, specs.length) }, worker));
    if (failure !== null) throw failure;
  }

  private async registerAndStart(spec: DeviceSpec): Promise<void> {
    const { token, replaced } = await this.register(spec);
    if (this.stopRequested) return;
    const device = this.makeDevice(spec, token);
    this.devices.set(spec.id, device);
    this.emit("registered", { deviceId: spec.id, replaced });
    device.start();
  }

  /**
   * `POST /devices`; on 409 a device an earlier run made (`metadata.simulated`) is deleted and
   * registered again, since its token was shown only once. Anyone else's device is left alone.
   */
  private async register(spec: DeviceSpec): Promise<{ token: string | undefined; replaced: boolean }> {
    const record = this.recordOf(spec);
    try {
      return { token: tokenOf(await this.api.register(record)), replaced: false };
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 409) throw registrationError(spec.id, err);
    }
    const existing = await this.api.getDevice(spec.id).catch((err: unknown) => {
      throw registrationError(spec.id, err);
    });
    const metadata = existing.metadata as { simulated?: unknown } | undefined;
    if (metadata?.simulated !== true) {
      throw new SimulationError(`device "${spec.id}" already exists and was not made by the simulator: choose another --prefix (now "${this.options.prefix}")`);
    }
    try {
      await this.api.removeDevice(spec.id).catch((err: unknown) => {
        if (!(err instanceof ApiError && err.status === 404)) throw err;
      });
      return { token: tokenOf(await this.api.register(record)), replaced: true };
    } catch (err) {
      throw registrationError(spec.id, err);
    }
  }

  private recordOf(spec: DeviceSpec): Record<string, unknown> {
    const { protocol, heartbeat } = this.options;
    const behaviour = Object.entries(spec.traits).filter(([, on]) => on).map(([trait]) => trait);
    return {
      id: spec.id,
      name: `Simulated ${protocol} device ${spec.number}`,
      protocol,
      ...(this.transport ? { address: this.transport.addressOf(spec.id) } : {}),
      heartbeatTimeout: heartbeat,
      manufacturer: SIMULATOR_MANUFACTURER,
      model: `SIM-${protocol.toUpperCase()}`,
      capabilities: CAPABILITIES,
      tags: ["simulated"],
      metadata: { simulated: true, behaviour },
    };
  }

  private makeDevice(spec: DeviceSpec, token: string | undefined): SimulatedDevice {
    switch (this.options.protocol) {
      case "mqtt":
        return new MqttDevice(spec, token, this, this.endpoint);
      case "websocket":
        return new WebSocketDevice(spec, token, this, this.endpoint);
      case "coap":
        return new ConnectionlessDevice(spec, token, this, (id, t, data) => (this.transport as CoapTransport).report(id, t, "telemetry", data));
      case "http":
        return new ConnectionlessDevice(spec, token, this, (id, t, data) => this.api.telemetry(id, t, data));
    }
  }

  private count<K extends keyof SimulationEvents>(type: K, data: SimulationEvents[K]): void {
    const c = this.counters;
    switch (type) {
      case "registered":
        c.registered++;
        if ((data as SimulationEvents["registered"]).replaced) c.replaced++;
        break;
      case "telemetry":
        c.telemetrySent++;
        break;
      case "telemetryRefused": {
        const { deviceId, reason } = data as SimulationEvents["telemetryRefused"];
        c.telemetryRefused++;
        this.limiter.warn("telemetry-refused", `telemetry of ${deviceId} refused: ${reason}`);
        break;
      }
      case "command":
        if ((data as SimulationEvents["command"]).ok) c.commandsOk++;
        else c.commandsFailed++;
        break;
      case "dropped":
        c.drops++;
        break;
      case "disconnected":
        c.disconnects++;
        break;
      case "problem": {
        const { category, message } = data as SimulationEvents["problem"];
        c.errors++;
        this.limiter.warn(category, message);
        break;
      }
    }
  }

  private problem(deviceId: string | null, category: string, message: string): void {
    this.emit("problem", { deviceId, category, message });
  }
}

function tokenOf(record: Record<string, unknown>): string | undefined {
  return typeof record.token === "string" ? record.token : undefined;
}

function registrationError(id: string, err: unknown): SimulationError {
  if (err instanceof ApiError && err.status === 0) return new SimulationError(`registering ${id}: ${err.message}`);
  return new SimulationError(`registering ${id} failed: ${errorMessage(err)}`);
}
