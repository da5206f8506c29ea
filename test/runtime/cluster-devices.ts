import mqtt, { type MqttClient } from "mqtt";
import { WebSocket } from "ws";

// Devices for the cluster's end-to-end test and bench:cluster (CONTRACT §2 and §8), written to be
// checked afterwards: every telemetry report carries a sequence number, and a device keeps what it
// sent, what the broker acknowledged (QoS 1 PUBACK) and every command it was given.
// Commands: `hold` answers after `params.ms` (a command still `sent` when its owner dies, and the
// ones queued behind it); anything else answers at once. The answer echoes the params and names
// the device's last sequence number.

/** What a device was asked to do: each command id with the times it arrived (more than once is a redelivery). */
export type CommandLog = Map<string, number>;

interface CommandFrame {
  id: string;
  command: string;
  params?: { ms?: number } & Record<string, unknown>;
}

function answer(deviceId: string, seq: number, command: CommandFrame): Record<string, unknown> {
  return { device: deviceId, command: command.command, params: command.params ?? {}, seq };
}

/** Telemetry of the `seq`-th report: the sequence number, and a value that moves with it. */
function telemetry(seq: number): { seq: number; temperature: number } {
  return { seq, temperature: 20 + (seq % 50) / 10 };
}

/**
 * An MQTT device on the cluster's broker: user name = its id, password = its token, QoS 1
 * telemetry on `{root}/devices/{id}/telemetry`, commands on QoS 1, answers on `responses`.
 */
export class MqttDevice {
  /** The last sequence number sent; 0 before the first. */
  seq = 0;
  /** Sequence numbers the broker acknowledged (PUBACK): each one must end up a stored point. */
  readonly acked = new Set<number>();
  readonly commands: CommandLog = new Map();
  private client: MqttClient | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly pending = new Set<Promise<void>>();
  private readonly holds = new Set<NodeJS.Timeout>();

  constructor(
    readonly id: string,
    private readonly token: string,
    private readonly broker: string,
    private readonly root = "tethral",
  ) {}

  private topic(kind: string): string {
    return `${this.root}/devices/${this.id}/${kind}`;
  }

  /** Connects and subscribes to its commands; resolves once subscribed. */
  async connect(): Promise<void> {
    const client = mqtt.connect(this.broker, {
      clientId: `dev-${this.id}`,
      username: this.id,
      password: this.token,
      protocolVersion: 4,
      keepalive: 30,
      reconnectPeriod: 500,
      connectTimeout: 10_000,
    });
    this.client = client;
    client.on("message", (topic, payload) => {
      if (topic !== this.topic("commands")) return;
      let command: CommandFrame;
      try {
        command = JSON.parse(payload.toString()) as CommandFrame;
      } catch {
        return;
      }
      this.commands.set(command.id, (this.commands.get(command.id) ?? 0) + 1);
      const respond = () => {
        this.client?.publish(this.topic("responses"), JSON.stringify({ id: command.id, ok: true, result: answer(this.id, this.seq, command) }), { qos: 1 });
      };
      const ms = Number(command.params?.ms ?? 0);
      if (command.command === "hold" && ms > 0) {
        const t = setTimeout(() => {
          this.holds.delete(t);
          respond();
        }, ms);
        this.holds.add(t);
      } else respond();
    });
    await new Promise<void>((resolve, reject) => {
      client.once("connect", () => resolve());
      client.once("error", reject);
    });
    await client.subscribeAsync(this.topic("commands"), { qos: 1 });
  }

  /** Reports every `intervalMs` until `pause()` or `stop()`. */
  report(intervalMs: number): void {
    this.pause();
    this.timer = setInterval(() => this.send(), intervalMs);
    this.send();
  }

  /** One report now. */
  send(): void {
    const client = this.client;
    if (!client) return;
    const seq = ++this.seq;
    const done = new Promise<void>((resolve) => {
      client.publish(this.topic("telemetry"), JSON.stringify(telemetry(seq)), { qos: 1 }, (err) => {
        if (!err) this.acked.add(seq);
        resolve();
      });
    });
    this.pending.add(done);
    void done.then(() => this.pending.delete(done));
  }

  pause(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Stops reporting, waits for the acknowledgements still owed (up to 10 s), and disconnects. */
  async stop(): Promise<void> {
    this.pause();
    for (const t of this.holds) clearTimeout(t);
    this.holds.clear();
    await Promise.race([Promise.all(this.pending), new Promise((resolve) => setTimeout(resolve, 10_000))]);
    await this.client?.endAsync(true);
    this.client = null;
  }
}

/**
 * A WebSocket device behind a load balancer: it connects to one member of `endpoints` and, when
 * that connection closes or stops answering pings (a member killed or frozen), to the next one.
 * No acknowledgement exists for a frame, so only what it sent is kept.
 */
export class WsDevice {
  seq = 0;
  readonly commands: CommandLog = new Map();
  /** Index into `endpoints` of the member it is connected to (or trying). */
  at: number;
  /** Connections opened, the first included. */
  connections = 0;
  private ws: WebSocket | null = null;
  private timer: NodeJS.Timeout | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  private stopped = false;
  private lastPong = 0;
  private readonly holds = new Set<NodeJS.Timeout>();

  constructor(
    readonly id: string,
    private readonly token: string,
    /** WebSocket URLs of the members, `ws://127.0.0.1:PORT/tethral/ws`. */
    private readonly endpoints: string[],
    start: number,
  ) {
    this.at = start % endpoints.length;
  }

  get connected(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /** Connects to its first member; resolves once connected. */
  connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = this.open();
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
  }

  /** Moves to member `index` (closing the connection it has). */
  async moveTo(index: number): Promise<void> {
    this.at = index % this.endpoints.length;
    const old = this.ws;
    this.ws = null;
    old?.terminate();
    await new Promise<void>((resolve, reject) => {
      const ws = this.open();
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
  }

  private open(): WebSocket {
    const url = new URL(this.endpoints[this.at]!);
    url.searchParams.set("device", this.id);
    url.searchParams.set("token", this.token);
    // A frozen member accepts the TCP connection (the kernel does) but never upgrades it.
    const ws = new WebSocket(url, { handshakeTimeout: 2000, perMessageDeflate: false });
    this.ws = ws;
    this.connections++;
    ws.on("open", () => {
      this.lastPong = Date.now();
      if (this.watchdog) clearInterval(this.watchdog);
      this.watchdog = setInterval(() => {
        if (this.ws !== ws) return;
        // The member has not answered pings for 3 s: it is gone or frozen; try the next one.
        if (Date.now() - this.lastPong > 3000) ws.terminate();
        else ws.ping();
      }, 1000);
    });
    ws.on("pong", () => (this.lastPong = Date.now()));
    ws.on("message", (data) => this.frame(ws, String(data)));
    ws.on("error", () => undefined);
    ws.on("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      this.at = (this.at + 1) % this.endpoints.length;
      setTimeout(() => {
        if (!this.stopped && this.ws === null) this.open();
      }, 200);
    });
    return ws;
  }

  private frame(ws: WebSocket, text: string): void {
    let frame: { type?: string } & Partial<CommandFrame>;
    try {
      frame = JSON.parse(text) as typeof frame;
    } catch {
      return;
    }
    if (frame.type !== "command" || typeof frame.id !== "string") return;
    const command = frame as CommandFrame;
    this.commands.set(command.id, (this.commands.get(command.id) ?? 0) + 1);
    const respond = () => {
      // The answer goes on the connection the device has then, as firmware would.
      const now = this.ws ?? ws;
      if (now.readyState === WebSocket.OPEN) now.send(JSON.stringify({ type: "response", id: command.id, ok: true, result: answer(this.id, this.seq, command) }));
    };
    const ms = Number(command.params?.ms ?? 0);
    if (command.command === "hold" && ms > 0) {
      const t = setTimeout(() => {
        this.holds.delete(t);
        respond();
      }, ms);
      this.holds.add(t);
    } else respond();
  }

  report(intervalMs: number): void {
    this.pause();
    this.timer = setInterval(() => this.send(), intervalMs);
    this.send();
  }

  /** One report now, when connected (a report while it reconnects is not made: nothing was sent). */
  send(): void {
    if (!this.connected) return;
    this.ws!.send(JSON.stringify({ type: "telemetry", data: telemetry(++this.seq) }));
  }

  pause(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.pause();
    if (this.watchdog) clearInterval(this.watchdog);
    for (const t of this.holds) clearTimeout(t);
    this.holds.clear();
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      await new Promise<void>((resolve) => {
        ws.once("close", () => resolve());
        ws.close();
        setTimeout(() => {
          ws.terminate();
          resolve();
        }, 1000);
      });
    }
  }
}
