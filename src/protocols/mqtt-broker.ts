import type { EventEmitter } from "node:events";
import { type Server, type Socket, createServer } from "node:net";
import { Aedes, type AedesPublishPacket, type AuthenticateError, type Client, type PublishPacket, type Subscription } from "aedes";
import { TethralError, errorMessage } from "../core/errors";
import {
  DeviceSessions,
  MAX_CLIENT_ID_LENGTH,
  MAX_CONNECTIONS_PER_DEVICE,
  SERVICE_OWNER,
  ServiceAccount,
  type Session,
  newSession,
  sessionName,
} from "./mqtt-sessions";
import { type TopicScheme, filterMatches } from "./mqtt-topics";
import { type ListenError, listen } from "./listen";
import { AEDES_PUBLISH_REFUSAL, CONNACK, type SessionStore, refusal, rename } from "./mqtt-aedes";
import { guardPacketSize } from "./mqtt-packet-size";
import { PublisherHold, busyHealth } from "./intake-hold";
import { PendingWrites } from "./pending-writes";
import { type TwinPublish, twinMessage, twinNotPublished } from "./mqtt-twin";
import type { DeviceTwin } from "../core/types";
import type { MqttMode } from "./mqtt";
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

/** What `authorizePublish` answers for a QoS 1 report the hub took: acknowledged once stored. */
const AFTER_STORE = Symbol("after store");

/**
 * The embedded broker: aedes on a TCP port, with devices authenticated at CONNECT (username =
 * device id, password = token, any client id: see mqtt-sessions) and confined to their own
 * topics. The hub reads device messages in-process from aedes's `published` hook, so ingest
 * costs no extra socket.
 */
export class EmbeddedBroker implements MqttMode {
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private boundPort: number | null = null;
  private context: AdapterContext | null = null;
  private stopping: Promise<void> | null = null;
  private readonly sockets = new Set<Socket>();
  private readonly sessions = new WeakMap<Client, Session>();
  /** Devices with a connection or a persistent session, by device id. */
  private readonly devices = new Map<string, DeviceSessions>();
  private readonly pending = new PendingWrites(() => this.context?.counters ?? null);
  /** Devices with a live connection, and those the hub was told can take commands. */
  private liveCount = 0;
  private readyCount = 0;
  private readyOrder = 0;
  /** Device connections from authentication to their socket's close. */
  private connections = 0;
  private readonly figures = { connectsRefused: 0, publishesRefused: 0, subscriptionsRefused: 0, oversizedPackets: 0, topicsUnknown: 0, twinsPublished: 0 };
  private readonly service: ServiceAccount | null;
  /** While the intake is busy, the connections that publish are not read (see intake-hold). */
  private readonly hold = new PublisherHold();
  /** The payloads of messages the hub refused, until their copies have gone nowhere (see takeIn). */
  private readonly refusedPayloads = new WeakSet<Buffer>();

  constructor(private readonly options: EmbeddedBrokerOptions) {
    this.service = ServiceAccount.from(options.serviceUsername, options.servicePassword);
  }

  /**
   * The bound port (the real one when configured as 0), or null before start and after stop.
   * Kept from the listen, not asked of the socket: the command queue reads `health()` before
   * every send, and `server.address()` is a system call (getsockname) each time.
   */
  get port(): number | null {
    return this.boundPort;
  }

  async start(context: AdapterContext): Promise<void> {
    const maxPacket = this.options.maxPacketBytes ?? context.maxPayloadBytes + HEADER_ALLOWANCE;
    const broker = await Aedes.createBroker({
      connectTimeout: this.options.connectTimeoutMs ?? 10_000,
      // 23 is the MQTT 3.1 limit aedes applies to 3.1 clients; 3.1.1 ones are checked at authentication.
      maxClientsIdLength: MAX_CLIENT_ID_LENGTH,
      authenticate: (client, username, password, done) => done(...this.authenticate(client, username, password)),
      authorizePublish: (client, packet, done) => {
        const outcome = this.authorizePublish(client, packet);
        if (outcome !== AFTER_STORE) return done(outcome);
        // A QoS 1 report the hub took: aedes writes its PUBACK (and reads the connection's next
        // packets) once what it changed is in the database, so a crash loses nothing acknowledged.
        void context.stored().then(
          (stored) => done(stored ? null : new Error("the hub stopped before the message was stored")),
          (err: Error) => done(err),
        );
      },
      authorizeSubscribe: (client, sub, done) => done(null, this.authorizeSubscribe(client, sub)),
      // What the hub refused reaches no subscriber (see takeIn). A forwarded copy keeps the payload.
      authorizeForward: (_client, packet) => (this.refusedPayloads.has(packet.payload as Buffer) ? null : packet),
      published: (packet, client, done) => {
        // QoS 2 is taken in once aedes knows it is no resent copy (see takeIn).
        if (packet.qos === 2) this.ingest(packet, client);
        done(null);
      },
    });
    // Without a listener an 'error' (a persistence failure) would crash Node-RED.
    (broker as EventEmitter).on("error", (err: Error) => context.warn(`broker: ${err.message}`));
    broker.on("clientReady", (client) => this.onReady(client));
    broker.on("clientDisconnect", (client) => this.onDisconnect(client));
    broker.on("clientError", (client, err) => this.onClientError(client, err));
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
      const client = this.hold.attach(socket, () => broker.handle(socket));
      // A connection may end anywhere in CONNECT, where aedes may send neither ready nor
      // disconnect: the socket's close is the one sure end.
      socket.once("close", () => this.onClosed(client));
    });
    this.broker = broker;
    this.server = server;
    this.context = context;
    // Retained messages live in this broker's memory: the twins it kept before a restart are
    // retained again before any device can connect and subscribe.
    for (const [deviceId, twin] of context.twins()) this.retainTwin(deviceId, twin, "republish");
    const { port, host } = this.options;
    try {
      this.boundPort = await listen(server, port, host);
    } catch (err) {
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      this.broker = this.server = this.context = null;
      const { code, reason } = err as ListenError;
      const advice = code === "EADDRINUSE" ? " (set TETHRAL_MQTT_PORT or the hub's MQTT port)" : "";
      throw new TethralError("UNAVAILABLE", `MQTT broker: ${reason}${advice}`);
    }
    server.on("error", (err) => context.warn(`broker socket: ${err.message}`));
    this.hold.start(context.intake);
  }

  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.pending.rejectAll("the MQTT broker stopped");
    this.hold.stop();
    const server = this.server;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    const broker = this.broker;
    if (broker) await new Promise<void>((resolve) => broker.close(() => resolve()));
    // Sockets that never completed CONNECT are not aedes clients: broker.close() leaves them.
    for (const socket of this.sockets) socket.destroy();
    await closed;
    this.boundPort = null;
    this.devices.clear();
    this.liveCount = this.readyCount = this.connections = 0;
    this.broker = this.server = null;
  }

  send(deviceId: string, frame: CommandFrame, timeoutMs: number): Promise<SendOutcome> {
    const context = this.context;
    const broker = this.broker;
    if (!context || !broker || this.stopping) return Promise.reject(new TethralError("UNAVAILABLE", "the MQTT broker is not running"));
    // With nobody subscribed the command would go nowhere: refuse, so the hub keeps it queued.
    const session = this.devices.get(deviceId)?.commandSession();
    if (!session) {
      return Promise.reject(new TethralError("UNAVAILABLE", `device "${deviceId}" is not connected to the MQTT broker with a subscription to its commands topic`));
    }
    const payload = Buffer.from(encodeCommand(frame), "utf8");
    const packet: PublishPacket = { cmd: "publish", topic: this.options.topics.commands(deviceId), payload, qos: 1, retain: false, dup: false };
    const client = session.client;
    // To one connection, not to the topic: a device with several connections subscribed (a
    // firmware and a script) runs a command once, and a persistent session it left under another
    // client id does not pile up commands the hub counts as sent. The callback comes once the
    // packet is written to the device's socket: a device that does not read holds it until
    // aedes's drain timeout, longer than an attempt should wait.
    return this.pending.write(
      payload.length,
      timeoutMs,
      `command to "${deviceId}" not written within ${timeoutMs} ms`,
      (err) => `command to "${deviceId}" not delivered: ${err.message}`,
      (done) =>
        client.publish(packet, (err) => {
          // A persistent session keeps the packet for the device's return; a clean one lost it.
          done(err ?? (client.closed && client.clean ? new Error("the connection closed") : null));
        }),
    );
  }

  /**
   * The device's twin on `{root}/devices/{id}/desired`, retained with QoS 1: a device subscribing
   * later (or again) gets the current one at once. Null (the device was removed) clears it.
   */
  publishTwin(deviceId: string, twin: DeviceTwin | null): void {
    this.retainTwin(deviceId, twin, "change");
  }

  private retainTwin(deviceId: string, twin: DeviceTwin | null, why: TwinPublish): void {
    const broker = this.broker;
    const context = this.context;
    if (!broker || !context || this.stopping) return;
    const payload = twinMessage(twin, why, this.figures, context.counters);
    const packet: PublishPacket = { cmd: "publish", topic: this.options.topics.desired(deviceId), payload, qos: 1, retain: true, dup: false };
    broker.publish(packet, (err) => err && twinNotPublished(context, deviceId, err));
  }

  isConnected(deviceId: string): boolean {
    return this.devices.get(deviceId)?.announced === true;
  }

  health(): ProtocolHealth {
    const base = { mode: "embedded", host: this.options.host, port: this.port ?? this.options.port };
    if (!this.broker || this.stopping) return { status: "stopped", ...base };
    if (!this.server?.listening) return { status: "degraded", error: "the broker is not listening", ...base };
    return { status: "ok", ...base, connected: this.liveCount, ...busyHealth(this.context?.intake) };
  }

  statistics(): AdapterStatistics {
    return {
      connected: this.liveCount,
      mode: "embedded",
      port: this.port ?? this.options.port,
      commandReady: this.readyCount,
      deviceConnections: this.connections,
      clients: this.broker?.connectedClients ?? 0,
      sockets: this.sockets.size,
      ...this.figures,
      ...this.hold.figures(),
    };
  }

  // ── aedes hooks ────────────────────────────────────────────────────────────────────────

  private authenticate(client: Client, username: string | undefined, password: Buffer | undefined): [AuthenticateError | null, boolean | null] {
    const context = this.context;
    if (!context || this.stopping) return [refusal(CONNACK.SERVER_UNAVAILABLE, "the broker is stopping"), null];
    // Gone already (aedes drops the answer): nothing must be kept for it.
    if (client.closed) return [refusal(CONNACK.SERVER_UNAVAILABLE, "the connection closed"), null];
    if (username === undefined || username === "") {
      return this.refuseConnect(CONNACK.BAD_USERNAME_OR_PASSWORD, "the username must be the device id");
    }
    // As the client sent it, or the one aedes made up for an empty id.
    const clientId = client.id;
    if (this.service && username === this.service.username) {
      if (!this.service.accepts(password)) {
        return this.refuseConnect(CONNACK.BAD_USERNAME_OR_PASSWORD, "bad service password");
      }
      rename(client, sessionName(SERVICE_OWNER, clientId));
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
    const deviceId = auth.deviceId;
    if (clientId.length > MAX_CLIENT_ID_LENGTH) {
      return this.refuseConnect(CONNACK.IDENTIFIER_REJECTED, `the client id is longer than ${MAX_CLIENT_ID_LENGTH} characters`, deviceId);
    }
    const name = sessionName(deviceId, clientId);
    let device = this.devices.get(deviceId);
    if (device && device.othersThan(name) >= MAX_CONNECTIONS_PER_DEVICE) {
      return this.refuseConnect(CONNACK.SERVER_UNAVAILABLE, `device "${deviceId}" holds ${MAX_CONNECTIONS_PER_DEVICE} connections already`, deviceId);
    }
    if (!device) this.devices.set(deviceId, (device = new DeviceSessions()));
    rename(client, name);
    this.forget(device.connecting(name, !client.clean));
    const session = newSession(client, deviceId, auth.known, auth.known ? undefined : password?.toString("utf8"));
    this.sessions.set(client, session);
    device.open.add(session);
    this.connections++;
    return [null, true];
  }

  private refuseConnect(code: number, message: string, deviceId: string | null = null): [AuthenticateError, null] {
    this.figures.connectsRefused++;
    this.context?.reject({ deviceId, kind: "connect", reason: "connect-refused", message });
    return [refusal(code, message), null];
  }

  /** Drops what aedes keeps of persistent sessions a device has outgrown (see DeviceSessions.connecting). */
  private forget(names: string[]): void {
    const store = (this.broker as unknown as { persistence?: SessionStore } | null)?.persistence;
    for (const name of names) {
      store?.cleanSubscriptions({ id: name }).catch((err: unknown) => this.context?.warn(`could not forget the session ${name}: ${errorMessage(err)}`));
    }
  }

  /** An error disconnects the client: MQTT 3.1.1 has no other way to refuse a publish. */
  private authorizePublish(client: Client | null, packet: PublishPacket): Error | null | typeof AFTER_STORE {
    if (!client) return null;
    const session = this.sessions.get(client);
    if (packet.topic.startsWith("$")) return this.refusePublish(session?.deviceId ?? null, `topics starting with $ are reserved: ${packet.topic.slice(0, 200)}`);
    if (!session) return new Error("not authenticated");
    if (session.deviceId === null) return this.takeIn(packet, client);
    const topics = this.options.topics;
    if (!topics.isOwn(packet.topic, session.deviceId)) return this.refusePublish(session.deviceId, `device "${session.deviceId}" may not publish to ${packet.topic.slice(0, 200)}`);
    // The twin is what the hub says is desired: a device reports its state instead.
    if (topics.isDesired(packet.topic, session.deviceId)) {
      return this.refusePublish(session.deviceId, `device "${session.deviceId}" may not publish to its desired topic (the hub's): report on .../state`);
    }
    // Commands come from the hub: one published there by a device (another of its connections
    // listening) would be taken for the hub's. Until 2026-12-07 the broker handed it on.
    if (topics.isCommands(packet.topic, session.deviceId)) {
      return this.refusePublish(session.deviceId, `device "${session.deviceId}" may not publish to its commands topic (the hub's): answer on .../responses`);
    }
    // The broker keeps a retained message per topic: on made-up topics, a device could fill its memory.
    if (packet.retain && packet.payload.length > 0 && topics.parse(packet.topic)?.kind == null) {
      return this.refusePublish(session.deviceId, `device "${session.deviceId}" may retain only its documented topics, not ${packet.topic.slice(0, 200)}`);
    }
    const context = this.context;
    const bytes = typeof packet.payload === "string" ? Buffer.byteLength(packet.payload) : packet.payload.length;
    if (context && bytes > context.maxPayloadBytes) return this.refusePublish(session.deviceId, `payload of ${bytes} bytes exceeds ${context.maxPayloadBytes}`);
    return this.takeIn(packet, client);
  }

  /**
   * A publish the broker lets through is taken in here, as it is authorised: before the broker
   * acknowledges it (PUBACK), retains it or hands it to subscribers, and in the order the device
   * sent it (aedes handles every packet of one read at once, and the packets that wait for a
   * PUBACK's write or a retained copy's store would overtake each other). A message the hub
   * refuses (not JSON, a bad shape, a token no longer valid) is then neither retained nor handed
   * on: until 2026-12-08 a refused retained report was kept and given to every later subscriber,
   * the device itself at its next boot among them. The connection stays, as before. QoS 2 is
   * taken in after, once: aedes knows only then whether a packet is a copy sent again (after a
   * reconnection too) of one it has; a refused QoS 2 message still reaches live subscribers.
   */
  private takeIn(packet: PublishPacket, client: Client): null | typeof AFTER_STORE {
    // An empty retained message is MQTT's way to clear the one kept on that topic: the broker's
    // business, no report (a device decommissioned clears its retained status so).
    if (packet.qos === 2 || (packet.retain && packet.payload.length === 0)) return null;
    const taken = this.ingest(packet as AedesPublishPacket, client);
    if (taken === false && Buffer.isBuffer(packet.payload)) {
      packet.retain = false;
      this.refusedPayloads.add(packet.payload);
    }
    // A command's answer need not wait: a command's end is written behind it (at least once).
    return taken === true && packet.qos === 1 && !packet.topic.endsWith("/responses") ? AFTER_STORE : null;
  }

  private refusePublish(deviceId: string | null, message: string): Error {
    this.figures.publishesRefused++;
    this.context?.reject({ deviceId, kind: "publish", reason: "publish-refused", message });
    return new Error(message);
  }

  /** Publishes aedes refused by itself are refusals like the others: counted and published. */
  private onClientError(client: Client, err: Error): void {
    if (!AEDES_PUBLISH_REFUSAL.test(err.message) || this.stopping) return;
    this.refusePublish(this.sessions.get(client)?.deviceId ?? null, `MQTT: ${err.message}`);
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

  /** Hands a publish to the hub; false when the hub refused it, true when taken, null when not the hub's. */
  private ingest(packet: AedesPublishPacket, client: Client | null): boolean | null {
    const context = this.context;
    const session = client ? this.sessions.get(client) : undefined;
    if (!context || !session) return null; // the hub's own commands and the broker's $SYS traffic
    // Closing the broker closes every client and so publishes every will: the devices did not
    // go offline, the hub went away. Their next connection, to the next broker, says so.
    if (this.stopping) return null;
    try {
      const parsed = this.options.topics.parse(packet.topic);
      if (!parsed || parsed.kind === null) {
        // The service account may use other topics freely; a device only its documented ones.
        if (session.deviceId === null) return null;
        this.figures.topicsUnknown++;
        context.reject({ deviceId: session.deviceId, kind: "publish", reason: "unknown-topic", message: `no such topic: ${packet.topic.slice(0, 200)}` });
        return false;
      }
      const taken = context.receive({
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
      // Read already, so taken; the connection's next bytes wait while the intake is busy.
      this.hold.published(client!);
      return taken.ok;
    } catch (err) {
      context.counters.errors++;
      context.warn(`message on ${packet.topic} not handled: ${errorMessage(err)}`);
      return null;
    }
  }

  /**
   * Closes every connection of a device whose credentials changed (token replaced, device
   * registered or removed), including those opened before it was known or still in CONNECT. It
   * reconnects with its token and is then a known device.
   */
  disconnect(deviceId: string, reason: string): void {
    const open = [...(this.devices.get(deviceId)?.open ?? [])];
    for (const session of open) session.client.close();
    if (open.length > 0) this.context?.warn(`closed the connection of device "${deviceId}": ${reason}`);
  }

  private onReady(client: Client): void {
    const session = this.sessions.get(client);
    if (!session || session.deviceId === null) return;
    // aedes can finish a CONNECT whose socket closed meanwhile, after its clientDisconnect.
    if (client.closed || !this.devices.get(session.deviceId)?.open.has(session)) return;
    session.live = true;
    session.readyOrder = ++this.readyOrder;
    this.refresh(session.deviceId);
  }

  private onDisconnect(client: Client): void {
    const session = this.sessions.get(client);
    if (!session || session.deviceId === null) return;
    session.live = false;
    this.refresh(session.deviceId);
  }

  /** The socket closed, wherever the connection was: in CONNECT, live, or taken over. */
  private onClosed(client: Client): void {
    const session = this.sessions.get(client);
    if (!session || session.deviceId === null) return;
    const device = this.devices.get(session.deviceId);
    session.live = false;
    if (!device?.open.delete(session)) return;
    this.connections--;
    this.refresh(session.deviceId);
    if (device.empty) this.devices.delete(session.deviceId);
  }

  private onSubscribe(subs: Subscription[], client: Client): void {
    const session = this.sessions.get(client);
    if (!session || session.deviceId === null) return;
    for (const sub of subs) {
      // aedes reports each filter with the QoS granted, 128 for a refused one.
      if ((sub.qos as number) !== 128 && this.isCommandFilter(sub.topic, session.deviceId)) session.commandFilters.add(sub.topic);
    }
    this.refresh(session.deviceId);
  }

  private onUnsubscribe(filters: string[], client: Client): void {
    const session = this.sessions.get(client);
    if (!session || session.deviceId === null) return;
    for (const filter of filters) session.commandFilters.delete(filter);
    this.refresh(session.deviceId);
  }

  private isCommandFilter(filter: string, deviceId: string): boolean {
    return filterMatches(filter, this.options.topics.commands(deviceId));
  }

  /** Keeps the live count, and tells the hub when a device becomes able to take commands and when it stops being. */
  private refresh(deviceId: string): void {
    const device = this.devices.get(deviceId);
    if (!device || !this.context) return;
    const live = device.hasLive();
    if (live !== device.live) {
      device.live = live;
      this.liveCount += live ? 1 : -1;
    }
    const ready = device.commandSession() !== null;
    if (ready === device.announced) return;
    device.announced = ready;
    this.readyCount += ready ? 1 : -1;
    if (ready) this.context.connected(deviceId);
    else this.context.disconnected(deviceId);
  }
}
