import { errorMessage } from "../../core/errors";
import type { CommandFrame } from "../../protocols/types";
import type { DeviceSpec, ResolvedOptions } from "./options";
import { Backoff, TimerSet, between } from "./support";

/** What every simulated device reports. */
export interface Telemetry {
  temperature: number;
  humidity: number;
  battery: number;
}


export type CommandAnswer = { ok: true; result: unknown } | { ok: false; error: string };

/** What the simulation tells its listeners; also how its counters are kept. */
export interface SimulationEvents {
  registered: { deviceId: string; replaced: boolean };
  connected: { deviceId: string };
  disconnected: { deviceId: string; reason: string };
  telemetry: { deviceId: string; data: Telemetry };
  telemetryRefused: { deviceId: string; reason: string };
  command: { deviceId: string; commandId: string; command: string; ok: boolean; ms: number };
  dropped: { deviceId: string; seconds: number };
  restored: { deviceId: string };
  /** A connection or transport failure (the hub refused a connection, a socket error, ...). */
  problem: { deviceId: string | null; category: string; message: string };
}

/** What a device needs from its simulation: the settings and a way to tell what happened. */
export interface DeviceHost {
  readonly options: ResolvedOptions;
  emit<K extends keyof SimulationEvents>(type: K, data: SimulationEvents[K]): void;
}

/**
 * Readings that behave like a room sensor: the temperature wanders around a base and is pulled
 * back to it, the humidity likewise, the battery drains slowly (and is "replaced" when empty),
 * so charts and state-watch filters built on them show something plausible.
 */
class Sensor {
  private readonly baseTemperature = 18 + Math.random() * 6;
  private readonly baseHumidity = 35 + Math.random() * 25;
  private readonly drain = 0.02 + Math.random() * 0.05;
  private temperature = this.baseTemperature;
  private humidity = this.baseHumidity;
  private battery = 70 + Math.random() * 30;

  read(): Telemetry {
    this.temperature += (this.baseTemperature - this.temperature) * 0.1 + (Math.random() - 0.5) * 0.6;
    this.humidity += (this.baseHumidity - this.humidity) * 0.1 + (Math.random() - 0.5) * 2;
    this.battery -= this.drain;
    if (this.battery <= 0) this.battery = 100;
    return this.snapshot();
  }

  snapshot(): Telemetry {
    return {
      temperature: round(this.temperature, 2),
      humidity: round(Math.min(100, Math.max(0, this.humidity)), 1),
      battery: round(this.battery, 1),
    };
  }
}

function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

type Phase = "idle" | "running" | "dropped" | "stopped";

/**
 * One simulated device: its telemetry cadence, its drop cycle and its command behaviour. A
 * protocol subclass moves the bytes: `open()` connects (and calls `up()` once it can report, or
 * `lost()` when the connection fails or closes), `close()` lets go, `report()` sends one reading.
 * The device only reconnects, reports and drops while running; after `stop()` no timer of it is left.
 */
export abstract class SimulatedDevice {
  protected readonly timers = new TimerSet();
  private readonly backoff = new Backoff();
  private readonly sensor = new Sensor();
  private phase: Phase = "idle";
  private telemetryTimer: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  /** Whether the hub took the last report (request/response protocols tell "connected" by it). */
  protected lastReportOk = false;

  constructor(
    readonly spec: DeviceSpec,
    /** Undefined when the hub runs with device tokens off. */
    readonly token: string | undefined,
    protected readonly host: DeviceHost,
  ) {}

  get id(): string {
    return this.spec.id;
  }

  /** Whether the device can reach the hub now: a live connection, or a last report that was taken. */
  abstract get connected(): boolean;

  get dropped(): boolean {
    return this.phase === "dropped";
  }

  protected get running(): boolean {
    return this.phase === "running";
  }

  start(): void {
    if (this.phase !== "idle") return;
    this.phase = "running";
    this.open();
    if (this.spec.traits.drop) this.scheduleDrop();
  }

  async stop(): Promise<void> {
    if (this.phase === "stopped") return;
    this.phase = "stopped";
    this.timers.clear();
    await this.close("stop");
  }

  /** Connects (or, for request/response protocols, just calls `up()`). */
  protected abstract open(): void;
  /** `drop`: vanish as a device losing power would (an MQTT will fires); `stop`: sign off politely. */
  protected abstract close(how: "drop" | "stop"): Promise<void>;
  /** Sends one reading; rejects when the hub refused it or it could not be sent. */
  protected abstract report(data: Telemetry): Promise<void>;

  /** The device can report: it does at once (so it shows online quickly), then every interval. */
  protected up(): void {
    if (!this.running) return;
    this.backoff.reset();
    this.host.emit("connected", { deviceId: this.id });
    this.timers.cancel(this.telemetryTimer);
    this.tick();
  }

  /** The connection failed or closed unasked: try again after a backoff delay. */
  protected lost(reason: string): void {
    if (!this.running) return;
    this.host.emit("disconnected", { deviceId: this.id, reason });
    this.timers.cancel(this.telemetryTimer);
    this.timers.cancel(this.reconnectTimer);
    this.reconnectTimer = this.timers.after(this.backoff.next(), () => {
      if (this.running) this.open();
    });
  }

  /**
   * Answers one command through `reply`, as the device's traits say: at once or after a slow
   * delay, with success or failure. Returns false, and never replies, when the device is away
   * (dropped or stopped): the transport should then stay silent as an unreachable device would.
   */
  handleCommand(frame: CommandFrame, reply: (answer: CommandAnswer) => void): boolean {
    if (!this.running) return false;
    const started = Date.now();
    const answer = this.answer(frame);
    const send = () => {
      if (this.phase === "stopped") return;
      reply(answer);
      this.host.emit("command", { deviceId: this.id, commandId: frame.id, command: frame.command, ok: answer.ok, ms: Date.now() - started });
    };
    if (this.spec.traits.slow) this.timers.after(between(this.host.options.slowDelay) * 1000, send);
    else send();
    return true;
  }

  /** `ping` answers `pong`, `read` the current readings; any other command is acknowledged with what it asked. */
  private answer(frame: CommandFrame): CommandAnswer {
    if (this.spec.traits.fail) return { ok: false, error: `simulated failure: ${this.id} cannot ${frame.command}` };
    const at = new Date().toISOString();
    if (frame.command === "ping") return { ok: true, result: { pong: true, at } };
    if (frame.command === "read") return { ok: true, result: this.sensor.snapshot() };
    return { ok: true, result: { command: frame.command, params: frame.params, at } };
  }

  private tick(): void {
    this.sendTelemetry();
    const seconds = this.host.options.interval * (0.8 + Math.random() * 0.4);
    this.telemetryTimer = this.timers.after(seconds * 1000, () => this.tick());
  }

  private sendTelemetry(): void {
    if (!this.running || !this.canReport()) return;
    const data = this.sensor.read();
    this.report(data).then(
      () => {
        this.lastReportOk = true;
        this.host.emit("telemetry", { deviceId: this.id, data });
      },
      (err: unknown) => {
        this.lastReportOk = false;
        if (this.phase !== "stopped") this.host.emit("telemetryRefused", { deviceId: this.id, reason: errorMessage(err) });
      },
    );
  }

  /** Connection protocols report only while connected; request/response ones always try. */
  protected canReport(): boolean {
    return true;
  }

  private scheduleDrop(): void {
    this.timers.after(between(this.host.options.dropUp) * 1000, () => void this.drop());
  }

  private async drop(): Promise<void> {
    if (!this.running) return;
    this.phase = "dropped";
    this.lastReportOk = false;
    this.timers.cancel(this.telemetryTimer);
    this.timers.cancel(this.reconnectTimer);
    const seconds = between(this.host.options.dropDown);
    this.host.emit("dropped", { deviceId: this.id, seconds: Math.round(seconds * 10) / 10 });
    this.timers.after(seconds * 1000, () => this.restore());
    await this.close("drop");
  }

  private restore(): void {
    if (this.phase !== "dropped") return;
    this.phase = "running";
    this.host.emit("restored", { deviceId: this.id });
    this.open();
    this.scheduleDrop();
  }
}

/**
 * A device that holds no connection (CoAP, HTTP): it counts as connected while its reports get
 * through, a drop is just silence, and its commands come to the simulator's shared server.
 */
export class ConnectionlessDevice extends SimulatedDevice {
  constructor(
    spec: DeviceSpec,
    token: string | undefined,
    host: DeviceHost,
    private readonly send: (id: string, token: string | undefined, data: Telemetry) => Promise<void>,
  ) {
    super(spec, token, host);
  }

  get connected(): boolean {
    return this.running && this.lastReportOk;
  }

  protected open(): void {
    this.up();
  }

  protected async close(): Promise<void> {}

  protected report(data: Telemetry): Promise<void> {
    return this.send(this.id, this.token, data);
  }
}
