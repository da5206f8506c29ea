import { createHash, timingSafeEqual } from "node:crypto";
import type { EventEmitter } from "node:events";
import { type AddressInfo, type Server, type Socket, createServer } from "node:net";
import { Aedes, type AedesPublishPacket, type AuthenticateError, type Client, type PublishPacket, type Subscription } from "aedes";
import { TethralError } from "../core/errors";
import { type TopicScheme, filterMatches } from "./mqtt-topics";
import { PendingWrites } from "./pending-writes";
import { type AdapterContext, type AdapterStatistics, type CommandFrame, type ProtocolHealth, type SendOutcome, encodeCommand } from "./types";

export interface EmbeddedBrokerOptions {
  port: number;
  host: string;
  topics: TopicScheme;
  /** A client that may publish and subscribe anywhere (Node-RED's own mqtt nodes). Both or neither. */
  serviceUsername?: string;
  servicePassword?: string;
  /** Largest MQTT packet a client may send. Default: the hub's maxPayloadBytes plus room for the topic. */
  maxPacketBytes?: number;
  /** How long a socket may stay open without sending CONNECT. Default 10 s. */
  connectTimeoutMs?: number;
}

/** Room for the fixed and variable headers (topic, packet id, v5 properties) above the payload limit. */
const HEADER_ALLOWANCE = 4096;

/** CONNACK return codes of MQTT 3.1.1 (aedes declares them as an ambient const enum, unusable here). */
const CONNACK = { IDENTIFIER_REJECTED: 2, SERVER_UNAVAILABLE: 3, BAD_USERNAME_OR_PASSWORD: 4, NOT_AUTHORIZED: 5 } as const;

interface Session {
  readonly client: Client;
  /** Null for the service account. */
  readonly deviceId: string | null;
  /** False for a self-registering device until its `register` message is accepted. */
  known: boolean;
  /** The password of a device not yet known: the hub keeps it as the token of the registration. */
  token: string | undefined;
  /** Between clientReady and clientDisconnect. */
  live: boolean;
  /** The device's subscriptions that match its commands topic. */
  readonly commandFilters: Set<string>;
  /** Whether `context.connected` was the last thing the hub heard about this session. */
  announced: boolean;
}

/**
 * The embedded broker: aedes on a TCP port, with devices authenticated at CONNECT (username =
 * device id, password = token) and confined to their own topics. The hub reads device messages
 * in-process from aedes's `published` hook, so ingest costs no extra socket.
 */
export class EmbeddedBroker {
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private context: AdapterContext | null = null;
  private stopping: Promise<void> | null = null;
  private readonly sockets = new Set<Socket>();
  private readonly sessions = new WeakMap<Client, Session>();
  /** Devices between clientReady and clientDisconnect, by device id. */
  private readonly live = new Map<string, Session>();
  private readonly pending = new PendingWrites(() => this.context?.counters ?? null);
  private readyCount = 0;
  private readonly figures = { connectsRefused: 0, publishesRefused: 0, subscriptionsRefused: 0, oversizedPackets: 0, topicsUnknown: 0 };
  private readonly serviceHash: Buffer | null;

  constructor(private readonly options: EmbeddedBrokerOptions) {
    const { serviceUsername, servicePassword } = options;
    if ((serviceUsername === undefined) !== (servicePassword === undefined) || serviceUsername === "" || servicePassword === "") {
      throw new TethralError("INVALID", "MQTT service account: give both serviceUsername and servicePassword, non-empty, or neither");
    }
    this.serviceHash = servicePassword === undefined ? null : sha256(servicePassword);
  }

  /** The bound port (the real one when configured as 0), or null before start. */
  get port(): number | null {
    const address = this.server?.address() as AddressInfo | null | undefined;
    return address ? address.port : null;
  }

  async start(context: AdapterContext): Promise<void> {
    const maxPacket = this.options.maxPacketBytes ?? context.maxPayloadBytes + HEADER_ALLOWANCE;
    const broker = await Aedes.createBroker({
      connectTimeout: this.options.connectTimeoutMs ?? 10_000,
      // Client ids are device ids (up to 128 characters); 23 is an MQTT 3.1 limit aedes applies to 3.1 clients.
      maxClientsIdLength: 128,
      authenticate: (client, username, password, done) => done(...this.authenticate(client, username, password)),
      authorizePublish: (client, packet, done) => done(this.authorizePublish(client, packet)),
      authorizeSubscribe: (client, sub, done) => done(null, this.authorizeSubscribe(client, sub)),
      published: (packet, client, done) => {
        this.ingest(packet, client);
        done(null);
      },
    });
    // Without a listener an 'error' (a persistence failure) would crash Node-RED.
    (broker as EventEmitter).on("error", (err: Error) => context.warn(`broker: ${err.message}`));
    broker.on("clientReady", (client) => this.onReady(client));
    broker.on("clientDisconnect", (client) => this.onDisconnect(client));
    broker.on("subscribe", (subs, client) => this.onSubscribe(subs, client));
    broker.on("unsubscribe", (filters, client) => this.onUnsubscribe(filters, client));
    const server = createServer((socket) => {
      // Commands are small and latency matters; a peer that vanished without a FIN must be noticed.
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 60_000);
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
      guardPacketSize(socket, maxPacket, () => {
        this.figures.oversizedPackets++;
        context.reject({ reason: "too-large", message: `an MQTT packet larger than ${maxPacket} bytes` });
      });
      broker.handle(socket);
    });
    this.broker = broker;
    this.server = server;
    this.context = context;
    try {
      await listen(server, this.options.port, this.options.host);
    } catch (err) {
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      this.broker = this.server = this.context = null;
      throw err;
    }
    server.on("error", (err) => context.warn(`broker socket: ${err.message}`));
  }

  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.pending.rejectAll("the MQTT broker stopped");
    const server = this.server;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    const broker = this.broker;
    if (broker) await new Promise<void>((resolve) => broker.close(() => resolve()));
    // Sockets that never completed CONNECT are not aedes clients: broker.close() leaves them.
    for (const socket of this.sockets) socket.destroy();
    await closed;
    this.live.clear();
    this.readyCount = 0;
    this.broker = this.server = null;
  }

  send(deviceId: string, frame: CommandFrame, timeoutMs: number): Promise<SendOutcome> {
    const context = this.context;
    const broker = this.broker;
    const session = this.live.get(deviceId);
    if (!context || !broker || this.stopping) return Promise.reject(new TethralError("UNAVAILABLE", "the MQTT broker is not running"));
    // A QoS 1 publish nobody subscribes to is dropped by the broker: refuse, so the hub keeps the command queued.
    if (!session?.announced) {
      return Promise.reject(new TethralError("UNAVAILABLE", `device "${deviceId}" is not connected to the MQTT broker with a subscription to its commands topic`));
    }
    const payload = Buffer.from(encodeCommand(frame), "utf8");
    const packet: PublishPacket = { cmd: "publish", topic: this.options.topics.commands(deviceId), payload, qos: 1, retain: false, dup: false };
    const client = session.client;
    // The callback comes once the packet is written to the device's socket: a device that does
    // not read holds it until aedes's drain timeout, longer than an attempt should wait.
    return this.pending.write(
      payload.length,
      timeoutMs,
      `command to "${deviceId}" not written within ${timeoutMs} ms`,
      (err) => `command to "${deviceId}" not delivered: ${err.message}`,
      (done) =>
        broker.publish(packet, (err) => {
          // A persistent session keeps the packet for the device's return; a clean one lost it.
          done(err ?? (client.closed && client.clean ? new Error("the connection closed") : null));
        }),
    );
  }

  isConnected(deviceId: string): boolean {
    return this.live.get(deviceId)?.announced === true;
  }

  health(): ProtocolHealth {
    const base = { mode: "embedded", host: this.options.host, port: this.port ?? this.options.port };
    if (!this.broker || this.stopping) return { status: "stopped", ...base };
    if (!this.server?.listening) return { status: "degraded", error: "the broker is not listening", ...base };
    return { status: "ok", ...base, connected: this.live.size };
  }

  statistics(): AdapterStatistics {
    return {
      connected: this.live.size,
      mode: "embedded",
      port: this.port ?? this.options.port,
      commandReady: this.readyCount,
      clients: this.broker?.connectedClients ?? 0,
      sockets: this.sockets.size,
      ...this.figures,
    };
  }

  // ── aedes hooks ────────────────────────────────────────────────────────────────────────

  private authenticate(client: Client, username: string | undefined, password: Buffer | undefined): [AuthenticateError | null, boolean | null] {
    const context = this.context;
    if (!context || this.stopping) return [refusal(CONNACK.SERVER_UNAVAILABLE, "the broker is stopping"), null];
    if (username === undefined || username === "") {
      return this.refuseConnect(CONNACK.BAD_USERNAME_OR_PASSWORD, "the username must be the device id");
    }
    if (this.serviceHash && username === this.options.serviceUsername) {
      if (!password || !timingSafeEqual(sha256(password), this.serviceHash)) {
        return this.refuseConnect(CONNACK.BAD_USERNAME_OR_PASSWORD, "bad service password");
      }
      this.sessions.set(client, newSession(client, null, true));
      return [null, true];
    }
    const auth = context.authenticate("mqtt", username, password?.toString("utf8"));
    if (!auth.ok) {
      // Counted and published by the hub.
      this.figures.connectsRefused++;
      const code = auth.error.code === "NOT_FOUND" ? CONNACK.NOT_AUTHORIZED : auth.error.code === "UNAVAILABLE" ? CONNACK.SERVER_UNAVAILABLE : CONNACK.BAD_USERNAME_OR_PASSWORD;
      return [refusal(code, auth.error.message), null];
    }
    // The client id names the broker session: were it free, a device could take over another's
    // session, and with it the subscriptions and queued commands of a persistent one.
    if (client.id !== auth.deviceId) {
      return this.refuseConnect(CONNACK.IDENTIFIER_REJECTED, "the client id must be the device id");
    }
    this.sessions.set(client, newSession(client, auth.deviceId, auth.known, auth.known ? undefined : password?.toString("utf8")));
    return [null, true];
  }

  private refuseConnect(code: number, message: string): [AuthenticateError, null] {
    this.figures.connectsRefused++;
    this.context?.reject({ kind: "connect", reason: "connect-refused", message });
    return [refusal(code, message), null];
  }

  /** An error disconnects the client: MQTT 3.1.1 has no other way to refuse a publish. */
  private authorizePublish(client: Client | null, packet: PublishPacket): Error | null {
    if (!client) return null;
    if (packet.topic.startsWith("$")) return new Error("topics starting with $ are reserved");
    const session = this.sessions.get(client);
    if (!session) return new Error("not authenticated");
    if (session.deviceId === null) return null;
    const topics = this.options.topics;
    if (!topics.isOwn(packet.topic, session.deviceId)) return this.refusePublish(`device "${session.deviceId}" may not publish to ${packet.topic}`);
    // The broker keeps a retained message per topic: on made-up topics, a device could fill its memory.
    if (packet.retain && packet.payload.length > 0 && topics.parse(packet.topic)?.kind == null) {
      return this.refusePublish(`device "${session.deviceId}" may retain only its documented topics, not ${packet.topic}`);
    }
    const context = this.context;
    const bytes = typeof packet.payload === "string" ? Buffer.byteLength(packet.payload) : packet.payload.length;
    if (context && bytes > context.maxPayloadBytes) return this.refusePublish(`payload of ${bytes} bytes exceeds ${context.maxPayloadBytes}`);
    return null;
  }

  private refusePublish(message: string): Error {
    this.figures.publishesRefused++;
    this.context?.reject({ reason: "publish-refused", message });
    return new Error(message);
  }

  /** Null refuses the one filter (SUBACK 0x80) and keeps the connection. */
  private authorizeSubscribe(client: Client, sub: Subscription): Subscription | null {
    const session = this.sessions.get(client);
    if (!session) return null;
    if (session.deviceId === null) return sub;
    if (!this.options.topics.deviceMaySubscribe(sub.topic, session.deviceId)) {
      this.figures.subscriptionsRefused++;
      this.context?.reject({ deviceId: session.deviceId, kind: "subscribe", reason: "subscribe-refused", message: `may not subscribe to ${sub.topic}` });
      return null;
    }
    // A persistent session's subscriptions are restored during CONNECT, with no 'subscribe' event.
    if (!client.connected && this.isCommandFilter(sub.topic, session.deviceId)) session.commandFilters.add(sub.topic);
    return sub;
  }

  private ingest(packet: AedesPublishPacket, client: Client | null): void {
    const context = this.context;
    const session = client ? this.sessions.get(client) : undefined;
    if (!context || !session) return; // the hub's own commands and the broker's $SYS traffic
    // Closing the broker closes every client and so publishes every will: the devices did not
    // go offline, the hub went away. Their next connection, to the next broker, says so.
    if (this.stopping) return;
    try {
      const parsed = this.options.topics.parse(packet.topic);
      if (!parsed || parsed.kind === null) {
        // The service account may use other topics freely; a device only its documented ones.
        if (session.deviceId !== null) {
          this.figures.topicsUnknown++;
          context.reject({ deviceId: session.deviceId, reason: "unknown-topic", message: `no such topic: ${packet.topic.slice(0, 200)}` });
        }
        return;
      }
      context.receive({
        protocol: "mqtt",
        deviceId: parsed.deviceId,
        kind: parsed.kind,
        payload: packet.payload,
        // A session opened before its device was known proves nothing: its token is checked on
        // every message (the device may have been registered meanwhile with another token).
        ...(session.known ? { authenticated: true } : { token: session.token }),
        // A message arriving live is news even with the retain flag set; only a stored copy is old.
        retained: false,
      });

    } catch (err) {
      context.counters.errors++;
      context.warn(`message on ${packet.topic} not handled: ${(err as Error).message}`);
    }
  }

  /**
   * Closes every connection of a device whose credentials changed (token replaced, device
   * registered or removed), including sessions opened before it was known. It reconnects with
   * its token and is then a known device.
   */
  disconnect(deviceId: string, reason: string): void {
    // Client id = device id (enforced at CONNECT), so aedes finds every session of the device.
    const client = (this.broker as unknown as { clients?: Record<string, Client | undefined> } | null)?.clients?.[deviceId];
    const live = this.live.get(deviceId)?.client;
    const clients = new Set([client, live].filter((c): c is Client => c !== undefined));
    for (const c of clients) c.close();
    if (clients.size > 0) this.context?.warn(`closed the connection of device "${deviceId}": ${reason}`);
  }

  private onReady(client: Client): void {
    const session = this.sessions.get(client);
    if (!session || session.deviceId === null) return;
    const previous = this.live.get(session.deviceId);
    if (previous && previous !== session) {
      previous.live = false;
      this.announce(previous);
    }
    session.live = true;
    this.live.set(session.deviceId, session);
    this.announce(session);
  }

  private onDisconnect(client: Client): void {
    const session = this.sessions.get(client);
    if (!session || session.deviceId === null) return;
    session.live = false;
    if (this.live.get(session.deviceId) === session) this.live.delete(session.deviceId);
    this.announce(session);
  }

  private onSubscribe(subs: Subscription[], client: Client): void {
    const session = this.sessions.get(client);
    if (!session || session.deviceId === null) return;
    for (const sub of subs) {
      // aedes reports each filter with the QoS granted, 128 for a refused one.
      if ((sub.qos as number) !== 128 && this.isCommandFilter(sub.topic, session.deviceId)) session.commandFilters.add(sub.topic);
    }
    this.announce(session);
  }

  private onUnsubscribe(filters: string[], client: Client): void {
    const session = this.sessions.get(client);
    if (!session || session.deviceId === null) return;
    for (const filter of filters) session.commandFilters.delete(filter);
    this.announce(session);
  }

  private isCommandFilter(filter: string, deviceId: string): boolean {
    return filterMatches(filter, this.options.topics.commands(deviceId));
  }

  /** Tells the hub when a device becomes able to take commands, and when it stops being. */
  private announce(session: Session): void {
    const ready = session.live && session.known && session.commandFilters.size > 0 && this.live.get(session.deviceId!) === session;
    if (ready === session.announced || !this.context) return;
    session.announced = ready;
    this.readyCount += ready ? 1 : -1;
    if (ready) this.context.connected(session.deviceId!);
    else this.context.disconnected(session.deviceId!);
  }
}

function newSession(client: Client, deviceId: string | null, known: boolean, token?: string): Session {
  return { client, deviceId, known, token, live: false, commandFilters: new Set(), announced: false };
}

function refusal(returnCode: number, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode: returnCode as AuthenticateError["returnCode"] });
}

function sha256(value: string | Buffer): Buffer {
  return createHash("sha256").update(value).digest();
}

/**
 * aedes buffers a whole packet before it looks at it, up to the 256 MB MQTT allows, and has no
 * size limit of its own. This reads the fixed header of each packet as the bytes go by (aedes
 * pulls them with `socket.read()`) and cuts a connection whose next packet declares more than
 * `limit` bytes, before its body arrives. It only counts: no bytes are copied.
 */
function guardPacketSize(socket: Socket, limit: number, onOversize: () => void): void {
  let remaining = 0; // body bytes of the current packet still to come
  let lengthBytes = -1; // -1: the next byte is a packet type; 0-3: inside the remaining-length field
  let length = 0;
  let multiplier = 1;
  const fits = (chunk: Buffer): boolean => {
    let i = 0;
    while (i < chunk.length) {
      if (remaining > 0) {
        const skip = Math.min(remaining, chunk.length - i);
        remaining -= skip;
        i += skip;
      } else if (lengthBytes < 0) {
        i++;
        lengthBytes = length = 0;
        multiplier = 1;
      } else {
        const byte = chunk[i++]!;
        length += (byte & 0x7f) * multiplier;
        multiplier *= 128;
        lengthBytes++;
        if ((byte & 0x80) === 0) {
          if (length > limit) return false;
          remaining = length;
          lengthBytes = -1;
        } else if (lengthBytes === 4) {
          return false; // a malformed length: aedes would drop the connection too
        }
      }
    }
    return true;
  };
  const read = socket.read.bind(socket);
  socket.read = (size?: number) => {
    const chunk: unknown = read(size);
    if (Buffer.isBuffer(chunk) && !fits(chunk)) {
      onOversize();
      socket.destroy();
      return null;
    }
    return chunk;
  };
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off("listening", onListening);
      const why = err.code === "EADDRINUSE" ? "the port is in use (set TETHRAL_MQTT_PORT or the hub's MQTT port)" : err.message;
      reject(new TethralError("UNAVAILABLE", `MQTT broker cannot listen on ${host}:${port}: ${why}`));
    };
    const onListening = (): void => {
      server.off("error", onError);
      resolve();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen(port, host);
  });
}
