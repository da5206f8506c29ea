import mqtt, { type IClientOptions, type IClientSubscribeOptions, type IPublishPacket, type MqttClient } from "mqtt";
import { generate } from "mqtt-packet";
import { fingerprintOf } from "../core/cluster/replay";
import { errorMessage } from "../core/errors";
import type { PartitionHost, PartitionedIntake } from "../core/ports/protocol";
import type { MqttAdapterOptions } from "./mqtt";
import { endClient } from "./mqtt-end";
import { hubClientOptions } from "./mqtt-client";
import { COMMANDS_LEVEL, DESIRED_LEVEL, type TopicScheme } from "./mqtt-topics";
import type { AdapterContext } from "./types";

/** How long the broker keeps a partition's session (and queues its messages) while no member holds it. */
export const SESSION_EXPIRY_SECONDS = 7 * 24 * 3600;
/** Device filters per SUBSCRIBE packet. */
const SUBSCRIBE_BATCH = 500;
/** Redelivered messages come first after a reconnection; this long without one ends them. */
const REDELIVERY_QUIET_MS = 100;
/** A message of a partition this member does not apply this instant (a late renewal) is looked at again after this long. */
const NOT_OWNED_RETRY_MS = 50;
const RECONNECT_MS = 1_000;
/** How long a registration waits for its subscription before it answers anyway. */
const SUBSCRIBE_WAIT_MS = 5_000;
/** MQTT 5 DISCONNECT reason: another connection took the session over. */
const SESSION_TAKEN_OVER = 0x8e;

/**
 * Passed to mqtt.js's `handleMessage` callback for a QoS 1 message: it then goes on to the next
 * packet without sending the PUBACK, which is sent here once the message is stored.
 */
const ACKNOWLEDGED_LATER = new Error("acknowledged once stored");

/** The client id of a partition's session: the same on every member, one cluster per topic root. */
export function partitionClientId(root: string, partition: number): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < root.length; i++) h = Math.imul(h ^ root.charCodeAt(i), 0x01000193);
  return `tethral-${(h >>> 0).toString(16).padStart(8, "0")}-p${partition}`;
}

interface Session {
  partition: number;
  client: MqttClient;
  /** False once closed or cut: nothing more is applied or acknowledged. */
  open: boolean;
  /** Counts connections: an acknowledgement is sent only on the connection its message came by. */
  generation: number;
  /** QoS 1 messages taken and not yet acknowledged: their packet ids, and the write marks they wait for (nondecreasing). */
  toAck: number[];
  marks: number[];
  /** Messages whose changes were stored already when taken: acknowledged at the end of the turn. */
  ackNow: number[];
  /** After each connection: the redelivered messages, held until they end, then sorted out (see `endRedelivery`). */
  redelivered: IPublishPacket[] | null;
  redeliveryTimer: NodeJS.Timeout | null;
  /** A message is waiting (intake busy, or the partition not ours this instant). */
  holding: boolean;
  resumeIntake: (() => void) | null;
  reconnectTimer: NodeJS.Timeout | null;
  takenOver: boolean;
  ready: Promise<void>;
  readyDone: () => void;
  lastError: string | null;
}

export interface PartitionIntakeStatistics {
  partitionSessions: number;
  partitionSessionsConnected: number;
  partitionMessages: number;
  partitionAcks: number;
  partitionRedelivered: number;
  partitionDuplicatesSkipped: number;
  partitionPendingAcks: number;
  partitionSubscribeFailures: number;
}

/**
 * Cluster mode on an external broker (CONTRACT §8): each partition's device messages come on an
 * MQTT 5 session of its own, client id `tethral-<root hash>-p<partition>`, clean start off, one
 * subscription `{root}/devices/{id}/+` per registered device of the partition. Only the
 * partition's owner holds the session, so each message reaches one member, once.
 *
 * - A QoS 1 message is acknowledged only once what it changed is in the database
 *   (`PartitionHost.writtenMark`, `onWritten`). The broker keeps every message not acknowledged, and every one
 *   that comes while no member holds the session (a dead owner's lease gap), and gives them to
 *   the next holder: nothing a device had acknowledged by the broker is lost with a member.
 * - Redelivered messages (the DUP flag, first after a connection) may have been stored but not
 *   acknowledged. The owner stores with each device's presence a fingerprint of the last message
 *   it applied, packet id included (unique among the messages in flight); a redelivered message
 *   up to the one with that fingerprint is skipped (and acknowledged), the rest applied in order.
 * - A new holder connecting with the same client id makes the broker close a frozen predecessor's
 *   connection: the broker fences the session as the database fences the writes.
 * - The member's own client then subscribes only to `{root}/devices/+/status`, for presence.
 */
export class PartitionSessions implements PartitionedIntake {
  private readonly sessions = new Map<number, Session>();
  private stopped = false;
  private offIntake: (() => void) | null = null;
  private offWritten: (() => void) | null = null;
  private readonly figures = { messages: 0, acks: 0, redelivered: 0, duplicatesSkipped: 0, subscribeFailures: 0 };

  constructor(
    private readonly host: PartitionHost,
    private readonly url: string,
    private readonly options: MqttAdapterOptions,
    private readonly topics: TopicScheme,
    private readonly context: () => AdapterContext | null,
  ) {}

  /** Listens to the intake (to go on reading once it is no longer busy) and to the writes (to acknowledge what they stored). */
  start(context: AdapterContext): void {
    this.offWritten = this.host.onWritten((index) => {
      for (const s of this.sessions.values()) this.stored(s, index);
    });
    this.offIntake = context.intake.onChange((busy) => {
      if (busy) return;
      for (const s of this.sessions.values()) {
        const resume = s.resumeIntake;
        s.resumeIntake = null;
        resume?.();
      }
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.offIntake?.();
    this.offIntake = null;
    this.offWritten?.();
    this.offWritten = null;
    await Promise.all([...this.sessions.keys()].map((p) => this.close(p)));
  }

  open(partition: number): Promise<void> {
    const existing = this.sessions.get(partition);
    if (existing?.open) return existing.ready;
    const context = this.context();
    if (this.stopped || !context) return Promise.resolve();
    const o = this.options;
    const clientOptions: IClientOptions = {
      ...hubClientOptions(o),
      clientId: partitionClientId(this.topics.root, partition),
      protocolVersion: 5,
      clean: false,
      properties: { sessionExpiryInterval: SESSION_EXPIRY_SECONDS, maximumPacketSize: context.maxPayloadBytes + 4096 },
    };
    let readyDone: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => (readyDone = resolve));
    const client = mqtt.connect(this.url, clientOptions);
    const s: Session = {
      partition,
      client,
      open: true,
      generation: 0,
      toAck: [],
      marks: [],
      ackNow: [],
      redelivered: null,
      redeliveryTimer: null,
      holding: false,
      resumeIntake: null,
      reconnectTimer: null,
      takenOver: false,
      ready,
      readyDone,
      lastError: null,
    };
    this.sessions.set(partition, s);
    client.handleMessage = (packet, callback) => this.handle(s, packet as IPublishPacket, callback);
    client.on("connect", () => this.connected(s));
    client.on("error", (err) => {
      s.lastError = err.message;
    });
    client.on("disconnect", (packet) => {
      if (packet.reasonCode === SESSION_TAKEN_OVER) s.takenOver = true;
    });
    client.on("close", () => this.closed(s));
    // A broker that cannot be reached does not hold the takeover up: the session is connected as soon as it can be.
    const timer = setTimeout(readyDone, o.startTimeoutMs ?? 3_000);
    return ready.finally(() => clearTimeout(timer));
  }

  async close(partition: number): Promise<void> {
    const s = this.sessions.get(partition);
    if (!s) return;
    this.sessions.delete(partition);
    this.end(s);
    // DISCONNECT keeps the session (its expiry is set): what was not acknowledged goes to the next holder.
    await endClient(s.client, true);
  }

  cut(partition: number): void {
    const s = this.sessions.get(partition);
    if (!s) return;
    this.sessions.delete(partition);
    this.end(s);
    void endClient(s.client, false);
  }

  private end(s: Session): void {
    s.open = false;
    s.readyDone();
    if (s.redeliveryTimer) clearTimeout(s.redeliveryTimer);
    if (s.reconnectTimer) clearTimeout(s.reconnectTimer);
    s.redeliveryTimer = s.reconnectTimer = null;
    s.resumeIntake = null;
    s.redelivered = null;
  }

  /** Resolves once the broker delivers the device's messages to its partition's session here (null: not held here, or not connected). */
  added(deviceId: string): Promise<void> | null {
    const s = this.sessions.get(this.host.partitionOf(deviceId));
    if (!s?.open || !s.client.connected) return null;
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, SUBSCRIBE_WAIT_MS);
      this.subscribe(s, [deviceId]).finally(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  removed(deviceId: string): void {
    const s = this.sessions.get(this.host.partitionOf(deviceId));
    if (!s?.open || !s.client.connected) return;
    s.client.unsubscribe(this.filterOf(deviceId), (err) => {
      if (err && s.open) this.host.warn(`mqtt: partition ${s.partition}: could not unsubscribe from ${deviceId}'s topics: ${err.message}`);
    });
  }

  statistics(): PartitionIntakeStatistics {
    let connected = 0;
    let pending = 0;
    for (const s of this.sessions.values()) {
      if (s.client.connected) connected++;
      pending += s.toAck.length;
    }
    return {
      partitionSessions: this.sessions.size,
      partitionSessionsConnected: connected,
      partitionMessages: this.figures.messages,
      partitionAcks: this.figures.acks,
      partitionRedelivered: this.figures.redelivered,
      partitionDuplicatesSkipped: this.figures.duplicatesSkipped,
      partitionPendingAcks: pending,
      partitionSubscribeFailures: this.figures.subscribeFailures,
    };
  }

  /** Sessions not connected (for health), with their last error. */
  down(): { partition: number; error: string | null }[] {
    return [...this.sessions.values()].filter((s) => !s.client.connected).map((s) => ({ partition: s.partition, error: s.lastError }));
  }

  private filterOf(deviceId: string): string {
    return `${this.topics.prefix}${deviceId}/+`;
  }

  private connected(s: Session): void {
    if (!s.open) return;
    (s.client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
    s.generation++;
    // What the last connection took and did not acknowledge comes again (and is skipped, or applied).
    s.toAck = [];
    s.marks = [];
    s.ackNow = [];
    s.takenOver = false;
    s.lastError = null;
    // What the last connection left unacknowledged comes first: held until it ends.
    s.redelivered = [];
    this.armRedelivery(s);
    const devices = this.host.devicesOf(s.partition);
    void this.subscribe(s, devices).finally(() => s.readyDone());
  }

  /** Subscribes (again: a subscription the session has is only replaced, its retained messages not sent again). */
  private async subscribe(s: Session, devices: string[]): Promise<void> {
    const options: IClientSubscribeOptions = { qos: 1, rh: 1 };
    for (let i = 0; i < devices.length && s.open; i += SUBSCRIBE_BATCH) {
      const filters: Record<string, IClientSubscribeOptions> = {};
      for (const id of devices.slice(i, i + SUBSCRIBE_BATCH)) filters[this.filterOf(id)] = options;
      await new Promise<void>((resolve) => {
        s.client.subscribe(filters, (err, granted) => {
          const refused = granted?.filter((g) => g.qos === 128).length ?? 0;
          if ((err || refused > 0) && s.open) {
            this.figures.subscribeFailures++;
            this.host.warn(`mqtt: partition ${s.partition}: ${err ? `subscribe failed: ${err.message}` : `the broker refused ${refused} device subscriptions`}`);
          }
          resolve();
        });
      });
    }
  }

  /**
   * A session's connection closed while it is held: taken again, unless the partition is no
   * longer this member's. Mosquitto closes a connection whose session another client took over
   * without saying so (no DISCONNECT 0x8E), so the lease is asked, with a beat: a member whose
   * lease moved does not take the session back from its successor.
   */
  private closed(s: Session): void {
    if (!s.open || this.stopped || s.reconnectTimer) return;
    s.reconnectTimer = setTimeout(() => {
      s.reconnectTimer = null;
      if (!s.open || this.stopped) return;
      if (s.takenOver) {
        this.host.warn(`mqtt: partition ${s.partition}: another member took its session over`);
        return;
      }
      void this.host.confirmOwnership(s.partition).then((owned) => {
        if (!s.open || this.stopped) return;
        // Not ours (now or any more): the member's lease hooks close or cut the session; until then it is looked at again.
        if (!owned) return this.closed(s);
        s.client.reconnect();
      });
    }, RECONNECT_MS);
  }

  /** mqtt.js's hook for each PUBLISH, one at a time: until `callback`, nothing more is read from this session. */
  private handle(s: Session, packet: IPublishPacket, callback: (err?: Error) => void): void {
    const generation = s.generation;
    const go = (): void => {
      s.holding = false;
      if (!s.open || s.generation !== generation) return;
      const context = this.context();
      if (context?.intake.busy) {
        s.holding = true;
        s.resumeIntake = go;
        return;
      }
      if (!this.host.ownsPartition(s.partition)) {
        // Not ours this instant (a renewal late, or a hand-over under way): it waits, unacknowledged,
        // until the partition is ours again or the session goes (the next holder gets it).
        s.holding = true;
        setTimeout(go, NOT_OWNED_RETRY_MS);
        return;
      }
      if (!this.take(s, packet)) {
        // The member found the partition not its own after all (its lease ran out in between).
        s.holding = true;
        setTimeout(go, NOT_OWNED_RETRY_MS);
        return;
      }
      callback(packet.qos > 0 ? ACKNOWLEDGED_LATER : undefined);
    };
    go();
  }

  /** False when the message was not taken (the member refused it as not its own this instant): it is offered again. */
  private take(s: Session, packet: IPublishPacket): boolean {
    if (s.redelivered !== null) {
      if (packet.dup) {
        this.figures.messages++;
        this.figures.redelivered++;
        s.redelivered.push(packet);
        this.armRedelivery(s);
        return true;
      }
      // Owned: `handle` has just asked. The redelivered messages come first; one refused, this waits too.
      if (!this.endRedelivery(s, true)) return false;
    }
    if (!this.apply(s, packet)) return false;
    this.figures.messages++;
    return true;
  }

  private armRedelivery(s: Session, quietMs = REDELIVERY_QUIET_MS): void {
    if (s.redeliveryTimer) clearTimeout(s.redeliveryTimer);
    s.redeliveryTimer = setTimeout(() => {
      s.redeliveryTimer = null;
      // Timers run before the loop reads its sockets. After a loop held longer than the quiet
      // time (a takeover's other work), the redelivered messages may be in the socket, unread:
      // they are read in this turn, before setImmediate's callbacks, and arm the timer again.
      // Ending here would apply them as new, a second time.
      setImmediate(() => {
        if (!s.open || s.redelivered === null || s.redeliveryTimer !== null) return;
        // A message waiting to be taken may be a redelivered one still: wait for it.
        if (s.holding) return this.armRedelivery(s);
        this.endRedelivery(s);
      });
    }, quietMs);
  }

  /**
   * The redelivered messages are over: per device, those up to the one whose fingerprint is the
   * last applied (stored by the previous holder, or applied here before a reconnection) are
   * skipped; the rest are applied, in order.
   */
  private endRedelivery(s: Session, owned = this.host.ownsPartition(s.partition)): boolean {
    if (!owned) {
      // Not ours this instant (a hand-over began while they were coming): like any message then,
      // they wait, unacknowledged, until the partition is ours again or the session goes to the
      // next holder. Applied here, they would be taken for messages of a device owned elsewhere.
      this.armRedelivery(s, NOT_OWNED_RETRY_MS);
      return false;
    }
    const list = s.redelivered ?? [];
    s.redelivered = null;
    if (s.redeliveryTimer) clearTimeout(s.redeliveryTimer);
    s.redeliveryTimer = null;
    const upTo = new Map<string, number>();
    list.forEach((packet, i) => {
      const parsed = this.topics.parse(packet.topic);
      if (!parsed || parsed.kind === null) return;
      const last = this.host.lastMessageOf(parsed.deviceId);
      if (last !== undefined && last !== 0 && fingerprintOf(parsed.kind, packet.payload, packet.messageId ?? 0) === last) upTo.set(parsed.deviceId, i);
    });
    for (let i = 0; i < list.length; i++) {
      const packet = list[i]!;
      const parsed = this.topics.parse(packet.topic);
      if (parsed && (upTo.get(parsed.deviceId) ?? -1) >= i) {
        this.figures.duplicatesSkipped++;
        this.pendAck(s, packet);
        continue;
      }
      if (!this.apply(s, packet)) {
        // The partition stopped being ours while they were applied (the lease ran out in the
        // loop): this one and the rest wait, as above, and are sorted out again then.
        s.redelivered = list.slice(i);
        this.armRedelivery(s, NOT_OWNED_RETRY_MS);
        return false;
      }
    }
    return true;
  }

  /** False when the member refused the message as not its own this instant: nothing done, nothing to acknowledge. */
  private apply(s: Session, packet: IPublishPacket): boolean {
    if (!this.deliver(packet)) return false;
    this.pendAck(s, packet);
    return true;
  }

  /** Hands the message to the member, or refuses it to the context (then done with too); false when the member refused it. */
  private deliver(packet: IPublishPacket): boolean {
    const context = this.context();
    const topic = packet.topic;
    const payload = typeof packet.payload === "string" ? Buffer.from(packet.payload) : packet.payload;
    try {
      const parsed = this.topics.parse(topic);
      if (!context) return true;
      if (!parsed || parsed.kind === null) {
        // A device's subtree holds the hub's own topics too (its commands, its twin): not for the hub.
        if (parsed && (parsed.level === COMMANDS_LEVEL || parsed.level === DESIRED_LEVEL)) return true;
        context.reject({ kind: "publish", reason: "unknown-topic", message: `no such topic: ${topic.slice(0, 200)}` });
        return true;
      }
      if (payload.length > context.maxPayloadBytes) {
        context.reject({ deviceId: parsed.deviceId, kind: parsed.kind, reason: "too-large", message: `payload of ${payload.length} bytes, more than ${context.maxPayloadBytes}` });
        return true;
      }
      return this.host.receive({ protocol: "mqtt", deviceId: parsed.deviceId, kind: parsed.kind, payload, authenticated: true, retained: packet.retain === true }, packet.messageId ?? 0) !== null;
    } catch (err) {
      if (context) {
        context.counters.errors++;
        context.warn(`message on ${topic} not handled: ${errorMessage(err)}`);
      }
      return true;
    }
  }

  /** A QoS 1 message is acknowledged once what it changed is stored (see `stored`). */
  private pendAck(s: Session, packet: IPublishPacket): void {
    if (packet.qos === 0 || packet.messageId === undefined) return;
    const mark = this.host.writtenMark();
    if (mark !== null) {
      s.toAck.push(packet.messageId);
      s.marks.push(mark);
      return;
    }
    // Nothing of it waits to be written: acknowledged at the end of this turn, with any others.
    if (s.ackNow.push(packet.messageId) > 1) return;
    const generation = s.generation;
    queueMicrotask(() => {
      const ids = s.ackNow;
      s.ackNow = [];
      this.ack(s, generation, ids);
    });
  }

  /** A write stored everything marked before `index`: the messages waiting for it are acknowledged, in one write. */
  private stored(s: Session, index: number): void {
    let n = 0;
    while (n < s.marks.length && s.marks[n]! < index) n++;
    if (n === 0) return;
    const ids = s.toAck.splice(0, n);
    s.marks.splice(0, n);
    this.ack(s, s.generation, ids);
  }

  private ack(s: Session, generation: number, ids: number[]): void {
    // A lost lease cut the session before its rows were dropped: nothing of it is acknowledged.
    if (!s.open || s.generation !== generation || !s.client.connected || ids.length === 0) return;
    const bytes = Buffer.concat(ids.map((messageId) => generate({ cmd: "puback", messageId, reasonCode: 0 }, { protocolVersion: 5 })));
    s.client.stream.write(bytes);
    this.figures.acks += ids.length;
  }
}
