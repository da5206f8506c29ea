import { endClient } from "../protocols/mqtt-end";
import { NO_ANSWER } from "../core/ports/cluster";
import { randomUUID } from "node:crypto";
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from "mqtt";
import { ERROR_STATUS, type ErrorCode, type ErrorDetail, TethralError, errorMessage } from "../core/errors";
import type { ClusterHandler, ClusterLink, ForwardedMessage } from "../core/ports/cluster";
import { mqttUrlProblem } from "../protocols/mqtt";
import { DEFAULT_TOPIC_ROOT } from "../protocols/mqtt-topics";
import { WS_OPTIONS, mqttClientLog } from "../protocols/mqtt-client";

/** The broker the link uses: the external broker of the hub's MQTT settings, with its credentials. */
export interface MqttLinkOptions {
  url: string;
  /** The hub's MQTT topic root; the link's topics are under `<root>/_cluster/`. Default `tethral`. */
  root?: string;
  username?: string;
  password?: string;
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Default true. */
  rejectUnauthorized?: boolean;
  /** Seconds between pings. Default 15: a lost broker is noticed well within a lease. */
  keepalive?: number;
  /** Delay between reconnection attempts, ms. Default 1000. */
  reconnectPeriod?: number;
  /** How long `start()` waits for the first subscription before it rejects. Default 10 000 ms. */
  startTimeoutMs?: number;
}

/** What answers a call: the handler's value, or the error it threw. */
type Answer = { value: unknown } | { error: { code: string; message: string; details: unknown } };

interface Waiting {
  member: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

const QOS = { qos: 1 as const };
const DEFAULT_START_TIMEOUT_MS = 10_000;

/**
 * A member id as one topic level: `/`, `+`, `#` (and anything else outside [A-Za-z0-9._:-]) would
 * add levels, match others' topics or be refused by the broker. Percent-encoded, so two ids never
 * share a level: `%` itself is encoded too.
 */
export function topicLevel(member: string): string {
  let out = "";
  for (const byte of Buffer.from(member, "utf8")) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9._:-]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/**
 * JSON with bytes: a Uint8Array travels as `{"$bytes": base64}` and comes back as a Uint8Array.
 * An object key of the caller's that starts with `$` gets one more `$`, so no caller's value is
 * ever taken for bytes.
 */
export function toWire(value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  if (Array.isArray(value)) return value.map((v) => (v === undefined ? null : toWire(v)));
  if (value !== null && typeof value === "object") {
    const json = (value as { toJSON?: () => unknown }).toJSON;
    if (typeof json === "function") return toWire(json.call(value));
    const out: Record<string, unknown> = {};
    for (const [key, v] of Object.entries(value)) {
      if (v === undefined || typeof v === "function") continue;
      put(out, key.startsWith("$") ? `$${key}` : key, toWire(v));
    }
    return out;
  }
  return value;
}

export function fromWire(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(fromWire);
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value);
    if (entries.length === 1 && entries[0]![0] === "$bytes" && typeof entries[0]![1] === "string") {
      const buf = Buffer.from(entries[0]![1], "base64");
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    }
    const out: Record<string, unknown> = {};
    for (const [key, v] of entries) put(out, key.startsWith("$") ? key.slice(1) : key, fromWire(v));
    return out;
  }
  return value;
}

/** An own property even for `__proto__`, which an assignment would take as the object's prototype. */
function put(out: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
}

function encode(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(toWire(value)), "utf8");
}

function decode(payload: Buffer): unknown {
  return fromWire(JSON.parse(payload.toString("utf8")));
}

/** A handler's error as it travels; a code that is not one of CONTRACT §1's becomes UNAVAILABLE. */
function errorAnswer(err: unknown): Answer {
  const code = (err as { code?: unknown } | null)?.code;
  const details = (err as { details?: unknown } | null)?.details;
  return {
    error: {
      code: typeof code === "string" && Object.hasOwn(ERROR_STATUS, code) ? code : "UNAVAILABLE",
      message: errorMessage(err),
      details: Array.isArray(details) ? details : [],
    },
  };
}

/** The error a caller gets: a TethralError again, so a REST answer keeps its status (NOT_FOUND stays 404). */
function rebuilt(error: { code: string; message: string; details: unknown }): TethralError {
  const code: ErrorCode = Object.hasOwn(ERROR_STATUS, error.code) ? (error.code as ErrorCode) : "UNAVAILABLE";
  const details = Array.isArray(error.details)
    ? error.details.filter((d): d is ErrorDetail => typeof (d as ErrorDetail)?.field === "string" && typeof (d as ErrorDetail)?.message === "string")
    : [];
  return new TethralError(code, String(error.message), details);
}

/**
 * Traffic between cluster members over the external broker (CONTRACT §8), on a client of its own
 * (MQTT 5, clean start), under the hub's topic root:
 * - `<root>/_cluster/rpc/<member>`: requests to a member, with MQTT 5 response topic and
 *   correlation data;
 * - `<root>/_cluster/reply/<member>`: the answers to a member's requests;
 * - `<root>/_cluster/in`: forwarded device messages, which every member (this one included)
 *   receives, in the order this member published them.
 * QoS 1 throughout: the broker keeps what it has acknowledged for a connected subscriber, and
 * mqtt.js sends an unacknowledged publish again after a reconnect.
 */
export class MqttClusterLink implements ClusterLink {
  private client: MqttClient | null = null;
  private member = "";
  private handlers: { call: ClusterHandler; message(message: ForwardedMessage): void } | null = null;
  private subscribed = false;
  private stopping: Promise<void> | null = null;
  private readonly waiting = new Map<string, Waiting>();
  private readonly prefix: string;
  private lastError: string | null = null;
  /** Rejects a start still waiting for its first subscription (a stop during the start). */
  private abortStart: ((err: Error) => void) | null = null;

  constructor(private readonly options: MqttLinkOptions) {
    const problem = mqttUrlProblem(options.url);
    if (problem) throw new TethralError("INVALID", `cluster MQTT url: ${problem}`, [{ field: "TETHRAL_MQTT_URL", message: problem }]);
    this.prefix = `${options.root ?? DEFAULT_TOPIC_ROOT}/_cluster`;
  }

  get connected(): boolean {
    return this.client !== null && this.stopping === null && this.client.connected && this.subscribed;
  }

  private rpcTopic(member: string): string {
    return `${this.prefix}/rpc/${topicLevel(member)}`;
  }

  private replyTopic(member: string): string {
    return `${this.prefix}/reply/${topicLevel(member)}`;
  }

  private get inTopic(): string {
    return `${this.prefix}/in`;
  }

  start(member: string, handlers: { call: ClusterHandler; message(message: ForwardedMessage): void }): Promise<void> {
    if (this.client) return Promise.reject(new TethralError("UNAVAILABLE", "the cluster link starts once"));
    this.member = member;
    this.handlers = handlers;
    const o = this.options;
    const clientOptions: IClientOptions = {
      clientId: `tethral-cluster-${topicLevel(member)}`,
      username: o.username,
      password: o.password,
      protocolVersion: 5,
      clean: true,
      keepalive: o.keepalive ?? 15,
      reconnectPeriod: o.reconnectPeriod ?? 1000,
      // Subscribed again on every connection below: a clean start has no session to keep them.
      resubscribe: false,
      ca: o.ca,
      cert: o.cert,
      key: o.key,
      rejectUnauthorized: o.rejectUnauthorized ?? true,
      log: mqttClientLog(),
      wsOptions: { ...WS_OPTIONS },
    };
    const client = mqtt.connect(o.url, clientOptions);
    this.client = client;
    client.on("message", (topic, payload, packet) => this.onMessage(topic, payload, packet));
    client.on("error", (err) => {
      this.lastError = err.message;
    });
    client.on("close", () => {
      this.subscribed = false;
    });
    return new Promise<void>((resolve, reject) => {
      const timeoutMs = o.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.abortStart = null;
        reject(err);
      };
      const timer = setTimeout(() => {
        fail(new TethralError("UNAVAILABLE", `the cluster link could not subscribe at the broker within ${timeoutMs} ms (${this.lastError ?? "no connection"})`));
        void this.stop();
      }, timeoutMs);
      this.abortStart = fail;
      client.on("connect", () => {
        (client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
        client.subscribe([this.rpcTopic(member), this.replyTopic(member), this.inTopic], QOS, (err, granted) => {
          if (this.stopping || client !== this.client) return;
          const refused = granted?.filter((g) => g.qos === 128).map((g) => g.topic) ?? [];
          if (err || refused.length > 0) {
            this.lastError = err ? `subscribe failed: ${err.message}` : `the broker refused ${refused.join(", ")}`;
            return;
          }
          this.subscribed = true;
          this.lastError = null;
          if (!settled) {
            settled = true;
            clearTimeout(timer);
            this.abortStart = null;
            resolve();
          }
        });
      });
    });
  }

  call(member: string, method: string, args: unknown, timeoutMs: number): Promise<unknown> {
    // The caller may ask another member when this one has lost its partitions meanwhile (see `isNoAnswer`).
    const client = this.client;
    if (!client || this.stopping) return Promise.reject(new TethralError("UNAVAILABLE", `the cluster link is stopped: cannot call ${method} on member "${member}"`));
    const id = randomUUID();
    // When the caller stops waiting: a member that reads the request later (it was frozen, or
    // its connection stalled) must not act on it, or the caller's retry would act twice. The
    // member drops a request once `Date.now() > expires`, so the caller gives up only then too:
    // a timer can fire a few ms early by the wall clock (the event loop's cached time lags it).
    const expires = Date.now() + timeoutMs;
    return new Promise((resolve, reject) => {
      const giveUp = () => {
        const left = expires - Date.now();
        if (left >= 0) {
          const w = this.waiting.get(id);
          if (w) w.timer = setTimeout(giveUp, left + 1);
          return;
        }
        // A loop held past the deadline runs its expired timers before it reads its sockets,
        // where an answer that came in time may be waiting: taken for none, the call would be
        // retried, and done twice. Answers read in this turn settle the call before this runs.
        setImmediate(() => {
          if (!this.waiting.delete(id)) return;
          reject(new TethralError("UNAVAILABLE", `member "${member}" did not answer ${method} within ${timeoutMs} ms`, [NO_ANSWER]));
        });
      };
      const timer = setTimeout(giveUp, timeoutMs);
      this.waiting.set(id, { member, resolve, reject, timer });
      client.publish(
        this.rpcTopic(member),
        encode({ method, args, expires }),
        { ...QOS, properties: { responseTopic: this.replyTopic(this.member), correlationData: Buffer.from(id, "utf8") } },
        (err) => {
          // mqtt.js reports an error only when the publish is given up (the client ended).
          if (!err) return;
          const w = this.waiting.get(id);
          if (!w) return;
          this.waiting.delete(id);
          clearTimeout(w.timer);
          w.reject(new TethralError("UNAVAILABLE", `cannot call ${method} on member "${member}": ${err.message}`));
        },
      );
    });
  }

  /** Throws UNAVAILABLE once stopped; while disconnected the message is kept and sent on reconnection. */
  forward(message: ForwardedMessage): void {
    const client = this.client;
    if (!client || this.stopping) throw new TethralError("UNAVAILABLE", "the cluster link is stopped");
    // While disconnected mqtt.js keeps QoS 1 publishes and sends them, in order, on reconnection.
    client.publish(this.inTopic, encode(message), QOS);
  }

  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.abortStart?.(new TethralError("UNAVAILABLE", "the cluster link stopped before it had subscribed at the broker"));
    for (const [id, w] of this.waiting) {
      clearTimeout(w.timer);
      this.waiting.delete(id);
      w.reject(new TethralError("UNAVAILABLE", `the cluster link stopped before member "${w.member}" answered`));
    }
    this.subscribed = false;
    const client = this.client;
    if (!client) return;
    await endClient(client, true);
  }

  private onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    if (this.stopping || !this.handlers) return;
    if (topic === this.inTopic) return this.onForwarded(payload);
    if (topic === this.replyTopic(this.member)) return this.onReply(payload, packet);
    if (topic === this.rpcTopic(this.member)) void this.onRequest(payload, packet);
  }

  private onForwarded(payload: Buffer): void {
    let message: ForwardedMessage;
    try {
      message = decode(payload) as ForwardedMessage;
    } catch {
      return;
    }
    this.handlers?.message(message);
  }

  private onReply(payload: Buffer, packet: IPublishPacket): void {
    const id = packet.properties?.correlationData?.toString("utf8");
    const w = id === undefined ? undefined : this.waiting.get(id);
    if (!w || id === undefined) return;
    this.waiting.delete(id);
    clearTimeout(w.timer);
    let answer: Answer;
    try {
      answer = decode(payload) as Answer;
    } catch (err) {
      w.reject(new TethralError("UNAVAILABLE", `member "${w.member}" sent an answer that is not JSON: ${errorMessage(err)}`));
      return;
    }
    if ("error" in answer) w.reject(rebuilt(answer.error));
    else w.resolve(answer.value);
  }

  private async onRequest(payload: Buffer, packet: IPublishPacket): Promise<void> {
    const responseTopic = packet.properties?.responseTopic;
    const correlationData = packet.properties?.correlationData;
    let answer: Answer;
    try {
      const request = decode(payload) as { method?: unknown; args?: unknown; expires?: unknown };
      if (typeof request?.method !== "string") throw new TethralError("INVALID", "a cluster request without a method");
      // Its caller has given up on it (and may have asked again): left unanswered, undone.
      if (typeof request.expires === "number" && Date.now() > request.expires) return;
      answer = { value: await this.handlers!.call(request.method, request.args) };
    } catch (err) {
      answer = errorAnswer(err);
    }
    const client = this.client;
    if (!responseTopic || !client || this.stopping) return;
    let body: Buffer;
    try {
      body = encode(answer);
    } catch (err) {
      body = encode(errorAnswer(new TethralError("UNAVAILABLE", `the answer could not be encoded: ${errorMessage(err)}`)));
    }
    client.publish(responseTopic, body, { ...QOS, properties: correlationData ? { correlationData } : {} });
  }
}
