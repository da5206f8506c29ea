import { type AddressInfo, type Server, type Socket, createServer } from "node:net";
import { Aedes, type AedesOptions } from "aedes";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";


export interface DeviceOptions extends IClientOptions {
  id: string;
  token?: string;
  root?: string;
}

/** A real mqtt.js client acting as a device; by default it does not reconnect by itself. */
export class MqttDevice {
  readonly messages: { topic: string; payload: string; retain: boolean }[] = [];
  closed = false;
  /** The last CONNACK's session-present flag: the broker kept a persistent session for this client id. */
  sessionPresent = false;

  private constructor(
    readonly client: MqttClient,
    readonly id: string,
    readonly root: string,
  ) {
    client.on("message", (topic, payload, packet) => this.messages.push({ topic, payload: payload.toString("utf8"), retain: packet.retain }));
    client.on("close", () => (this.closed = true));
    client.on("connect", (connack) => {
      this.closed = false;
      this.sessionPresent = connack.sessionPresent;
    });
  }

  static options(opts: DeviceOptions): IClientOptions {
    const { id, token, root: _root, ...rest } = opts;
    return { clientId: id, username: id, password: token, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...rest };
  }

  static connect(url: string, opts: DeviceOptions): Promise<MqttDevice> {
    const client = mqtt.connect(url, MqttDevice.options(opts));
    const device = new MqttDevice(client, opts.id, opts.root ?? "tethral");
    return new Promise((resolve, reject) => {
      // Only a failure to connect ends the client: a later error (a reconnection refused while
      // its broker restarts) is the client's to retry.
      const refused = (err: Error) => {
        client.end(true);
        reject(err);
      };
      client.once("error", refused);
      client.once("connect", () => {
        client.off("error", refused);
        // A listener keeps such a later error from being thrown.
        client.on("error", () => undefined);
        resolve(device);
      });
    });
  }

  /** Connects and expects a refusal: resolves with the CONNACK return code. */
  static async refused(url: string, opts: DeviceOptions): Promise<number> {
    try {
      const d = await MqttDevice.connect(url, opts);
      await d.end();
    } catch (err) {
      return (err as { code?: number }).code ?? -1;
    }
    throw new Error(`${opts.id} was let in`);
  }

  topic(level: string, id = this.id): string {
    return `${this.root}/devices/${id}/${level}`;
  }

  publish(level: string, payload: string | Buffer | object, options: { qos?: 0 | 1; retain?: boolean; id?: string } = {}): Promise<void> {
    const body = typeof payload === "string" || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload);
    return new Promise((resolve, reject) => {
      this.client.publish(this.topic(level, options.id), body, { qos: options.qos ?? 1, retain: options.retain ?? false }, (err) =>
        err ? reject(err) : resolve(),
      );
    });
  }

  /** Resolves with the granted QoS of each filter (128: refused). */
  subscribe(filters: string | string[], qos: 0 | 1 = 1): Promise<number[]> {
    return new Promise((resolve, reject) => {
      this.client.subscribe(filters, { qos }, (err, granted) => {
        // mqtt.js reports a refused filter (0x80) as an error carrying the SUBACK.
        const suback = (err as { packet?: { granted?: number[] } } | null)?.packet;
        if (suback?.granted) resolve(suback.granted);
        else if (err) reject(err);
        else resolve((granted ?? []).map((g) => g.qos));
      });
    });
  }

  unsubscribe(filter: string): Promise<void> {
    return new Promise((resolve, reject) => this.client.unsubscribe(filter, (err) => (err ? reject(err) : resolve())));
  }

  /** Answers every command on its responses topic with what `answer` returns. */
  answerCommands(answer: (command: { id: string; command: string; params: unknown }) => object): void {
    this.client.on("message", (topic, payload) => {
      if (topic !== this.topic("commands")) return;
      const command = JSON.parse(payload.toString("utf8")) as { id: string; command: string; params: unknown };
      this.client.publish(this.topic("responses"), JSON.stringify({ id: command.id, ...answer(command) }), { qos: 1 });
    });
  }

  commands(): { id: string; command: string; params: unknown }[] {
    return this.messages.filter((m) => m.topic === this.topic("commands")).map((m) => JSON.parse(m.payload));
  }

  /**
   * Publishes what the broker is expected to answer by cutting the connection. Not awaited: the
   * QoS 1 callback of a publish whose connection died waits for a reconnect that never comes.
   */
  publishExpectingCut(level: string, payload: string | Buffer, options: { id?: string; retain?: boolean } = {}): void {
    this.client.publish(this.topic(level, options.id), payload, { qos: 1, retain: options.retain ?? false }, () => undefined);
  }

  /** A polite DISCONNECT (the broker drops the will) while connected; otherwise just the cleanup. */
  end(): Promise<void> {
    return new Promise((resolve) => this.client.end(!this.client.connected, {}, () => resolve()));
  }

  /** The connection cut without DISCONNECT, as a device losing power: the broker publishes the will. */
  cut(): Promise<void> {
    return new Promise((resolve) => {
      this.client.once("close", () => this.client.end(true, {}, () => resolve()));
      this.client.stream.destroy();
    });
  }
}

/** A plain aedes broker (no authentication) standing in for an external one; restartable on its port. */
export class PlainBroker {
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(private readonly options: AedesOptions = {}) {}

  async start(port = this.port): Promise<this> {
    const broker = await Aedes.createBroker(this.options);
    const server = createServer((socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
      broker.handle(socket);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
    this.broker = broker;
    this.server = server;
    this.port = (server.address() as AddressInfo).port;
    return this;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    const { broker, server } = this;
    this.broker = this.server = null;
    if (!server || !broker) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }
}

/** MQTT 3.1.1 packets written by hand, for a raw socket that does what no client library would. */
export const rawPacket = {
  connect(o: { clientId: string; username?: string; password?: string; clean?: boolean; keepalive?: number }): Buffer {
    const flags = (o.username !== undefined ? 0x80 : 0) | (o.password !== undefined ? 0x40 : 0) | (o.clean === false ? 0 : 0x02);
    const keepalive = o.keepalive ?? 60;
    const parts = [utf8("MQTT"), Buffer.from([4, flags, keepalive >> 8, keepalive & 0xff]), utf8(o.clientId)];
    if (o.username !== undefined) parts.push(utf8(o.username));
    if (o.password !== undefined) parts.push(utf8(o.password));
    return packet(0x10, Buffer.concat(parts));
  },
  subscribe(filter: string, messageId = 1): Buffer {
    return packet(0x82, Buffer.concat([Buffer.from([messageId >> 8, messageId & 0xff]), utf8(filter), Buffer.from([1])]));
  },
  /** QoS 0, so any topic goes: a wildcard, an empty one. */
  publish(topic: string, payload: string): Buffer {
    return packet(0x30, Buffer.concat([utf8(topic), Buffer.from(payload, "utf8")]));
  },
};

function utf8(text: string): Buffer {
  const bytes = Buffer.from(text, "utf8");
  return Buffer.concat([Buffer.from([bytes.length >> 8, bytes.length & 0xff]), bytes]);
}

function packet(header: number, body: Buffer): Buffer {
  const length: number[] = [];
  let n = body.length;
  do {
    let digit = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) digit |= 0x80;
    length.push(digit);
  } while (n > 0);
  return Buffer.concat([Buffer.from([header, ...length]), body]);
}

const LEAKABLE = new Set(["TCPSocketWrap", "TCPServerWrap", "Timeout", "Immediate"]);

/** Counts of the process's sockets, servers and timers (the kinds an adapter could leave behind). */
export function activeHandles(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) if (LEAKABLE.has(kind)) counts[kind] = (counts[kind] ?? 0) + 1;
  return counts;
}

/** Kinds with more handles now than in `before`. */
export function handlesAbove(before: Record<string, number>): Record<string, number> {
  const extra: Record<string, number> = {};
  for (const [kind, n] of Object.entries(activeHandles())) if (n > (before[kind] ?? 0)) extra[kind] = n - (before[kind] ?? 0);
  return extra;
}
export { portIsFree, until } from "../helpers";
