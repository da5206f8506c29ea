import { endClient } from "./mqtt-end";
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from "mqtt";
import { TethralError, errorMessage } from "../core/errors";
import type { DeviceTwin } from "../core/types";
import type { MqttAdapterOptions, MqttMode } from "./mqtt";
import { busyHealth } from "./intake-hold";
import { PendingWrites } from "./pending-writes";
import { PartitionSessions } from "./mqtt-partitions";
import { hubClientOptions } from "./mqtt-client";
import type { PartitionHost } from "../core/ports/protocol";
import { type TwinPublish, twinMessage, twinNotPublished } from "./mqtt-twin";
import { type TopicScheme, checkSharedGroup } from "./mqtt-topics";
import { type AdapterContext, type AdapterStatistics, type CommandFrame, type ProtocolHealth, type SendOutcome, encodeCommand } from "./types";

/** The schemes mqtt.js connects with: TCP and TLS (each under two names) and WebSocket. */
const MQTT_URL_SCHEMES = ["mqtt:", "mqtts:", "tcp:", "tls:", "ssl:", "ws:", "wss:"];

/** Why `url` cannot name an MQTT broker, or null: one check for the hub's settings and the adapter. */
export function mqttUrlProblem(url: string): string | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "must be a URL like mqtt://host:1883";
  }
  return MQTT_URL_SCHEMES.includes(parsed.protocol) ? null : "must start with mqtt://, mqtts://, ws:// or wss://";
}

const DEFAULT_START_TIMEOUT_MS = 3000;
const DEFAULT_RECONNECT_MS = 1000;
const DEFAULT_MAX_RECONNECT_MS = 30_000;
/** How long stop() lets a broker answer DISCONNECT before the socket is cut. */

/**
 * A client of an external broker. It reconnects by itself, with a doubling delay (mqtt.js alone
 * retries at a fixed period), and subscribes again on every connection, so a broker that lost its
 * sessions (a restart) still delivers. Commands are refused while disconnected, so the hub keeps
 * them queued: the hub owns the durable queue, not this client.
 */
export class ExternalBroker implements MqttMode {
  /** The broker's port is the broker's own, not the hub's. */
  readonly port = null;
  private client: MqttClient | null = null;
  private context: AdapterContext | null = null;
  private stopping: Promise<void> | null = null;
  private subscribed = false;
  /** Connected since the last close. */
  private up = false;
  private lastError: string | null = null;
  private failures = 0;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private startWaiter: (() => void) | null = null;
  /** From each device's retained status topic; only devices the hub accepted a status from. */
  private readonly presence = new Map<string, boolean>();
  /**
   * Devices whose presence the status topic told before the broker connection was lost, and has
   * not told again since: not sent to until it does (its retained copy on resubscribing, or the
   * device announcing itself after reconnecting). A restarted broker forgets subscriptions and
   * retained messages, so a command sent before the device is back is dropped for want of a
   * subscriber, though the broker acknowledged it.
   */
  private readonly unconfirmed = new Set<string>();
  private readonly pending = new PendingWrites(() => this.context?.counters ?? null);
  private readonly figures = { connects: 0, connectionsLost: 0, reconnectsScheduled: 0, subscribeFailures: 0, oversized: 0, topicsUnknown: 0, twinsPublished: 0 };
  private filters: string[];
  /** Cluster mode: each partition's device messages on a session of its own (the member's client then reads only presence). */
  private partitions: PartitionSessions | null = null;
  /** The client's stream while it is corked for the PUBACKs of a read (see `holdAcks`). */
  private acksHeld: MqttClient["stream"] | null = null;
  /** Twins of removed devices not cleared on the broker yet (it was unreachable); cleared at the next connection. */
  private readonly clearsDue = new Set<string>();
  /** The go-on of the message last taken, kept while the intake is busy: until called, the hub's connection is not read. */
  private waiting: (() => void) | null = null;
  private offIntake: (() => void) | null = null;
  private pauses = 0;

  constructor(
    private readonly options: MqttAdapterOptions,
    private readonly url: string,
    private readonly topics: TopicScheme,
  ) {
    const problem = mqttUrlProblem(url);
    if (problem) throw new TethralError("INVALID", `MQTT url "${url}": ${problem}`);
    if (options.protocolVersion !== undefined && options.protocolVersion !== 4 && options.protocolVersion !== 5) {
      throw new TethralError("INVALID", "MQTT protocolVersion: must be 4 (3.1.1) or 5");
    }
    if (options.sharedGroup !== undefined) checkSharedGroup(options.sharedGroup);
    this.filters = topics.hubFilters(options.sharedGroup);
  }

  /** Cluster mode (see `PartitionSessions`): called before `start`. */
  partitioned(host: PartitionHost): PartitionSessions {
    this.partitions ??= new PartitionSessions(host, this.url, this.options, this.topics, () => this.context);
    // Presence only: every member answers whether a device is connected.
    this.filters = [`${this.topics.prefix}+/status`];
    return this.partitions;
  }

  deviceAdded(deviceId: string): Promise<void> | null {
    return this.partitions?.added(deviceId) ?? null;
  }

  deviceRemoved(deviceId: string): void {
    this.presence.delete(deviceId);
    this.unconfirmed.delete(deviceId);
    this.partitions?.removed(deviceId);
  }

  start(context: AdapterContext): Promise<void> {
    this.context = context;
    this.partitions?.start(context);
    const o = this.options;
    const version = o.protocolVersion ?? 4;
    const clientOptions: IClientOptions = {
      ...hubClientOptions(o),
      clientId: o.clientId ?? `tethral-hub-${Math.random().toString(16).slice(2, 10)}`,
      protocolVersion: version,
      clean: o.clean ?? true,
      // MQTT 5 lets the hub tell the broker not to send it anything larger than it would accept.
      properties: version === 5 ? { maximumPacketSize: context.maxPayloadBytes + 4096 } : undefined,
    };
    const client = mqtt.connect(this.url, clientOptions);
    this.client = client;
    client.on("connect", () => this.onConnect(client));
    client.on("message", (topic, payload, packet) => this.onMessage(topic, payload, packet));
    client.on("error", (err) => {
      this.lastError = err.message;
    });
    client.on("close", () => this.onClose(client));
    client.handleMessage = (packet, callback) => {
      if (packet.qos > 0) this.holdAcks(client);
      this.taken(callback);
    };
    this.offIntake = context.intake.onChange((busy) => busy || this.readOn());
    return new Promise<void>((resolve) => {
      // A broker that is down must not keep Node-RED from starting: resolve anyway, keep trying.
      const timer = setTimeout(() => this.startWaiter?.(), o.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS);
      this.startWaiter = () => {
        clearTimeout(timer);
        this.startWaiter = null;
        resolve();
      };
    });
  }

  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.offIntake?.();
    this.offIntake = null;
    // Called now it would acknowledge a message to a broker that keeps it for the next hub.
    this.waiting = null;
    this.startWaiter?.();
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.pending.rejectAll("the MQTT adapter stopped");
    // Cluster mode: what was not acknowledged (not yet stored) goes to the partitions' next owners.
    await this.partitions?.stop();
    const client = this.client;
    if (client) {
      // A polite end (DISCONNECT) waits for every unacknowledged publish, possibly for ever:
      // with any in flight, and with a broker that does not close its side in time, cut instead.
      const graceful = Object.keys(client.outgoing).length === 0;
      await endClient(client, graceful);
    }
    this.subscribed = false;
    this.presence.clear();
    this.unconfirmed.clear();
  }

  send(deviceId: string, frame: CommandFrame, timeoutMs: number): Promise<SendOutcome> {
    const client = this.client;
    const context = this.context;
    if (!client || !context || this.stopping || !client.connected) {
      return Promise.reject(new TethralError("UNAVAILABLE", `not connected to the MQTT broker${this.lastError ? `: ${this.lastError}` : ""}`));
    }
    const payload = Buffer.from(encodeCommand(frame), "utf8");
    // mqtt.js keeps an unacknowledged publish and sends it again after a reconnect: the attempt
    // is given up here, but the command may still arrive (devices recognise repeats by id).
    return this.pending.write(
      payload.length,
      timeoutMs,
      `the MQTT broker did not acknowledge the command to "${deviceId}" within ${timeoutMs} ms`,
      (err) => `the MQTT broker did not take the command to "${deviceId}": ${err.message}`,
      (done) => client.publish(this.topics.commands(deviceId), payload, { qos: 1, retain: false }, (err) => done(err)),
    );
  }

  isConnected(deviceId: string): boolean | undefined {
    const up = this.presence.get(deviceId);
    if (up !== undefined) return up;
    return this.unconfirmed.has(deviceId) ? false : undefined;
  }

  /**
   * Published only while connected: every connection publishes every current twin again (a
   * restarted broker may have lost its retained messages), so a change made while away is not
   * queued twice.
   */
  publishTwin(deviceId: string, twin: DeviceTwin | null): void {
    this.retainTwin(deviceId, twin, "change");
  }

  private retainTwin(deviceId: string, twin: DeviceTwin | null, why: TwinPublish): void {
    const client = this.client;
    if (!client || this.stopping) return;
    if (!client.connected) {
      if (twin === null) this.clearsDue.add(deviceId);
      return;
    }
    this.clearsDue.delete(deviceId);
    const context = this.context;
    const payload = twinMessage(twin, why, this.figures, context?.counters);
    client.publish(this.topics.desired(deviceId), payload, { qos: 1, retain: true }, (err) => {
      if (err && !this.stopping && context) twinNotPublished(context, deviceId, err);
    });
  }

  private publishAllTwins(): void {
    const context = this.context;
    if (!context) return;
    for (const deviceId of [...this.clearsDue]) this.retainTwin(deviceId, null, "republish");
    for (const [deviceId, twin] of context.twins()) this.retainTwin(deviceId, twin, "republish");
  }

  health(): ProtocolHealth {
    const base = { mode: "external", url: redacted(this.url) };
    if (!this.client || this.stopping) return { status: "stopped", ...base };
    const down = this.partitions?.down() ?? [];
    if (this.client.connected && this.subscribed && down.length > 0) {
      const first = down[0]!;
      return { status: "degraded", ...base, subscribed: true, partitionSessionsDown: down.length, error: `partition ${first.partition}'s session is not connected${first.error ? `: ${first.error}` : ""}` };
    }
    if (this.client.connected && this.subscribed) return { status: "ok", ...base, subscribed: true, ...busyHealth(this.context?.intake) };
    const state = this.client.connected ? "subscribing" : "connecting";
    return { status: "degraded", ...base, state, subscribed: false, error: this.lastError ?? state };
  }

  statistics(): AdapterStatistics {
    let online = 0;
    for (const up of this.presence.values()) if (up) online++;
    return {
      connected: online,
      mode: "external",
      brokerConnected: this.client?.connected ?? false,
      subscribed: this.subscribed,
      devicesKnownOffline: this.presence.size - online,
      // Not sent to until their status speaks again (see `unconfirmed`).
      devicesUnconfirmed: this.unconfirmed.size,
      paused: this.waiting ? 1 : 0,
      pauses: this.pauses,
      ...this.figures,
      ...this.partitions?.statistics(),
    };
  }

  private onConnect(client: MqttClient): void {
    // Commands and answers are small: without this, Nagle's algorithm holds them back behind the
    // broker's delayed ACKs (tens of ms per round trip on loopback).
    (client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
    this.up = true;
    this.figures.connects++;
    this.failures = 0;
    this.publishAllTwins();
    client.subscribe(this.filters, { qos: 1 }, (err, granted) => {
      if (this.stopping || client !== this.client) return;
      const refused = granted?.filter((g) => g.qos === 128).map((g) => g.topic) ?? [];
      if (err || refused.length > 0) {
        this.figures.subscribeFailures++;
        this.lastError = err ? `subscribe failed: ${err.message}` : `the broker refused the subscriptions ${refused.join(", ")}`;
        this.context?.warn(this.lastError);
        return;
      }
      this.subscribed = true;
      this.lastError = null;
      this.startWaiter?.();
    });
  }

  private onClose(client: MqttClient): void {
    if (client !== this.client || this.stopping) return;
    this.subscribed = false;
    // One line per outage, not one per failed attempt.
    const why = this.lastError ? ` (${this.lastError})` : "";
    if (this.up) {
      this.figures.connectionsLost++;
      this.context?.warn(`connection to ${redacted(this.url)} lost${why}; reconnecting`);
    } else if (this.figures.connects === 0 && this.failures === 0) {
      this.context?.warn(`cannot reach the broker at ${redacted(this.url)}${why}; retrying in the background`);
    }
    this.up = false;
    // Its PUBACK would go out on the next connection, where the same packet id names another message.
    this.waiting = null;
    this.forgetPresence();
    this.scheduleReconnect(client);
  }

  private scheduleReconnect(client: MqttClient): void {
    const base = this.options.reconnectPeriod ?? DEFAULT_RECONNECT_MS;
    if (base <= 0 || this.reconnectTimer) return;
    const max = Math.max(base, this.options.maxReconnectPeriod ?? DEFAULT_MAX_RECONNECT_MS);
    // ±20 % so hubs that lost the same broker do not all come back in the same instant.
    const delay = Math.min(max, base * 2 ** Math.min(this.failures, 20)) * (0.8 + Math.random() * 0.4);
    this.failures++;
    this.figures.reconnectsScheduled++;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.stopping) return;
      // Passing the stores keeps unacknowledged publishes: reconnect() alone would start empty ones.
      client.reconnect({ incomingStore: client.incomingStore, outgoingStore: client.outgoingStore });
    }, delay);
  }

  /** The broker connection is gone, so is what its status topics said: the retained copies come again after reconnecting. */
  private forgetPresence(): void {
    const context = this.context;
    for (const [deviceId, up] of this.presence) {
      this.unconfirmed.add(deviceId);
      if (up) context?.disconnected(deviceId);
    }
    this.presence.clear();
  }

  /**
   * mqtt.js's backpressure hook, after each PUBLISH it emitted: it takes no next packet, nor
   * reads its stream further, until `callback`, which also sends a QoS 1 message's PUBACK. While
   * the intake is busy the hub stops there, so the broker's socket to it fills: the broker keeps
   * the QoS 1 messages it could not deliver (up to its own queue limits), unacknowledged, and
   * sends them when the hub reads again. QoS 0 messages are the broker's to queue or drop: Mosquitto
   * queues them for a connected client only up to max_queued_messages / max_queued_bytes and
   * drops the rest, so devices that must not lose a report publish it with QoS 1. Pings are not
   * read meanwhile either: a spell longer than the keep-alive costs a reconnect, nothing more.
   */
  private taken(callback: () => void): void {
    if (!this.context?.intake.busy || this.stopping) return callback();
    this.waiting = callback;
    this.pauses++;
  }

  /**
   * The PUBACKs of the QoS 1 messages of one read from the broker go out in one write. mqtt.js
   * handles a read's packets one after the other, each in a tick of its own, and writes each
   * PUBACK with a write of its own: a system call per message, 18 µs of the main thread's time
   * per QoS 1 message in a profile of bench:cluster's single runtime. The client's stream is corked at the
   * read's first QoS 1 message and uncorked once the loop has handled the read (setImmediate runs
   * after the ticks): each PUBACK still leaves in the loop turn that read its message, with the
   * others of that read. Measured (bench:cluster's single runtime, three alternating pairs):
   * 72–93 µs of CPU per message against 85–107.
   */
  private holdAcks(client: MqttClient): void {
    const stream = client.stream;
    if (this.acksHeld === stream || stream.destroyed) return;
    this.acksHeld = stream;
    stream.cork();
    setImmediate(() => {
      if (this.acksHeld === stream) this.acksHeld = null;
      stream.uncork();
    });
  }

  private readOn(): void {
    const callback = this.waiting;
    this.waiting = null;
    callback?.();
  }

  private onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    const context = this.context;
    if (!context || this.stopping) return;
    try {
      const parsed = this.topics.parse(topic);
      if (this.partitions) {
        // The partitions' sessions take the devices' messages; this client keeps presence only.
        if (parsed?.kind === "status" && payload.length <= context.maxPayloadBytes) this.trackPresence(parsed.deviceId, payload);
        return;
      }
      if (!parsed || parsed.kind === null) {
        this.figures.topicsUnknown++;
        context.reject({ kind: "publish", reason: "unknown-topic", message: `no such topic: ${topic.slice(0, 200)}` });
        return;
      }
      if (payload.length > context.maxPayloadBytes) {
        this.figures.oversized++;
        context.reject({ deviceId: parsed.deviceId, kind: parsed.kind, reason: "too-large", message: `payload of ${payload.length} bytes, more than ${context.maxPayloadBytes}` });
        return;
      }
      const result = context.receive({
        protocol: "mqtt",
        deviceId: parsed.deviceId,
        kind: parsed.kind,
        payload,
        authenticated: true,
        retained: packet.retain === true,
      });
      if (parsed.kind === "status") this.trackPresence(parsed.deviceId, result.ok ? payload : null);
    } catch (err) {
      context.counters.errors++;
      context.warn(`message on ${topic} not handled: ${errorMessage(err)}`);
    }
  }

  private trackPresence(deviceId: string, payload: Buffer | null): void {
    const text = payload && payload.length <= 16 ? payload.toString("utf8").trim().toLowerCase() : "";
    const up = text === "online" ? true : text === "offline" ? false : undefined;
    const before = this.presence.get(deviceId);
    this.unconfirmed.delete(deviceId);
    if (up === undefined) this.presence.delete(deviceId);
    else this.presence.set(deviceId, up);
    // The hub sends a device's queued commands when it hears the device is reachable again.
    if (up === true && before !== true) this.context?.connected(deviceId);
    else if (up !== true && before === true) this.context?.disconnected(deviceId);
  }
}

/** A URL without its password, for health and log lines. */
function redacted(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return url;
  }
}
