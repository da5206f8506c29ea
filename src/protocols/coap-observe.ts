import { generate } from "coap-packet";
import { JSON_FORMAT } from "./coap-wire";

/**
 * Observers of devices' `desired` resources (RFC 7641), kept by the hub itself rather than by the
 * coap library: the library's notification streams never notice a client that went away without
 * a reset (a NON stream runs for ever), let a re-registration with the same token run beside the
 * old one, and ignore a deregistration (Observe = 1). Here an observer is a client endpoint and
 * token; every notification is confirmable, so a client that stops acknowledging is dropped after
 * RFC 7252's retransmissions, and a reset ends the observation at once.
 */

export interface ObserveLimits {
  /** Observations held at once, all devices together. */
  max: number;
  /** Of those, how many one device may hold. */
  perDevice: number;
  /** First retransmission timeout of a notification (RFC 7252 ACK_TIMEOUT, 2 s); doubled each time. */
  ackTimeoutMs: number;
  /** Retransmissions before the client is taken as gone (RFC 7252 MAX_RETRANSMIT, 4). */
  maxRetransmit: number;
}

export const DEFAULT_OBSERVE_LIMITS: ObserveLimits = { max: 10_000, perDevice: 4, ackTimeoutMs: 2000, maxRetransmit: 4 };

export interface Endpoint {
  address: string;
  port: number;
}

/** The most one notification carries; a larger representation goes as its first Block2 block (RFC 7959 §2.6). */
const BLOCK_SIZE = 1024;
/** Block2: number 0, more to follow, size exponent 6 (1024 bytes). */
const FIRST_OF_MORE_BLOCKS = Buffer.of(0x0e);
/** RFC 7252 ACK_RANDOM_FACTOR. */
const ACK_RANDOM_FACTOR = 1.5;

interface Exchange {
  messageId: number;
  attempts: number;
  timeoutMs: number;
  timer: NodeJS.Timeout;
  datagram: Buffer;
}

interface Observer {
  readonly key: string;
  readonly deviceId: string;
  readonly endpoint: Endpoint;
  readonly token: Buffer;
  /** The confirmable notification awaiting its acknowledgement, if any. */
  exchange: Exchange | null;
}

export type Send = (datagram: Buffer, to: Endpoint) => void;

export class CoapObservers {
  private readonly byKey = new Map<string, Observer>();
  private readonly byDevice = new Map<string, Set<Observer>>();
  /** Notifications awaiting an acknowledgement, by the endpoint and message id an ACK or RST names. */
  private readonly inFlight = new Map<string, Observer>();
  private messageId = Math.floor(Math.random() * 0x10000);
  /**
   * One Observe sequence for every observation, started from the clock: it only grows, so a
   * client that registers again after a restart of the hub does not take fresh notifications
   * for old ones (RFC 7641 §4.4 compares within 2^23).
   */
  private sequence = Math.floor(Date.now() / 10) % 0x1000000;
  private send: Send | null = null;
  readonly figures = { notifications: 0, retransmissions: 0, clientsGone: 0, resets: 0, refusedOverLimit: 0 };

  constructor(private readonly limits: ObserveLimits = DEFAULT_OBSERVE_LIMITS) {}

  start(send: Send): void {
    this.send = send;
  }

  get size(): number {
    return this.byKey.size;
  }

  /** Whether anyone observes the device: a change nobody observes is not worth encoding. */
  has(deviceId: string): boolean {
    return this.byDevice.has(deviceId);
  }

  /**
   * Adds (or, same endpoint and token, renews) an observation and returns the Observe value for
   * the first answer; null when the limits leave no room (the answer then carries no Observe: the
   * client is not on the list, RFC 7641 §4.1).
   */
  register(deviceId: string, endpoint: Endpoint, token: Buffer): number | null {
    const key = keyOf(endpoint, token);
    const existing = this.byKey.get(key);
    if (existing && existing.deviceId === deviceId) return this.nextSequence();
    if (existing) this.remove(existing);
    const held = this.byDevice.get(deviceId);
    if (this.byKey.size >= this.limits.max || (held?.size ?? 0) >= this.limits.perDevice) {
      this.figures.refusedOverLimit++;
      return null;
    }
    const observer: Observer = { key, deviceId, endpoint: { address: endpoint.address, port: endpoint.port }, token: Buffer.from(token), exchange: null };
    this.byKey.set(key, observer);
    if (held) held.add(observer);
    else this.byDevice.set(deviceId, new Set([observer]));
    return this.nextSequence();
  }

  /** A GET with Observe = 1 (RFC 7641 §3.6). */
  deregister(endpoint: Endpoint, token: Buffer): void {
    const observer = this.byKey.get(keyOf(endpoint, token));
    if (observer) this.remove(observer);
  }

  /** Sends every observer of the device the new representation; returns how many were sent. */
  notify(deviceId: string, payload: Buffer): number {
    const observers = this.byDevice.get(deviceId);
    if (!observers) return 0;
    for (const observer of observers) this.notifyOne(observer, payload);
    return observers.size;
  }

  /**
   * Ends every observation of the device with a final non-2.xx notification (RFC 7641 §3.2):
   * 4.04 for a device removed, 4.01 for credentials no longer valid, 5.03 for a hub stopping.
   */
  end(deviceId: string, code: string, message: string): void {
    const observers = this.byDevice.get(deviceId);
    if (!observers) return;
    for (const observer of [...observers]) {
      this.sendFinal(observer, code, message);
      this.remove(observer);
    }
  }

  /**
   * An empty ACK or RST from a client. True when it settled one of the notifications (and is
   * consumed), false to leave it to the coap library.
   */
  settle(type: "ACK" | "RST", messageId: number, from: Endpoint): boolean {
    const observer = this.inFlight.get(flightKey(from, messageId));
    if (!observer) return false;
    if (type === "RST") {
      // The client no longer knows the token: it has forgotten the observation (RFC 7641 §3.6).
      this.figures.resets++;
      this.remove(observer);
    } else {
      this.settleExchange(observer);
    }
    return true;
  }

  /** Ends every observation with 5.03 and forgets them all, timers included. */
  stop(): void {
    for (const deviceId of [...this.byDevice.keys()]) this.end(deviceId, "5.03", "the hub is stopping");
    this.send = null;
  }

  private notifyOne(observer: Observer, payload: Buffer): void {
    const messageId = this.nextMessageId();
    const datagram = this.datagram(observer, messageId, "2.05", payload, true);
    this.figures.notifications++;
    const previous = observer.exchange;
    if (previous) {
      // RFC 7641 §4.5.2: the newer notification takes the place of the one in flight and goes on
      // with its retransmission count and timeout, so a client that is gone is noticed as soon.
      clearTimeout(previous.timer);
      this.inFlight.delete(flightKey(observer.endpoint, previous.messageId));
    }
    const attempts = previous?.attempts ?? 0;
    const timeoutMs = previous?.timeoutMs ?? this.limits.ackTimeoutMs * (1 + Math.random() * (ACK_RANDOM_FACTOR - 1));
    observer.exchange = { messageId, attempts, timeoutMs, datagram, timer: this.retransmitAfter(observer, timeoutMs) };
    this.inFlight.set(flightKey(observer.endpoint, messageId), observer);
    this.send?.(datagram, observer.endpoint);
  }

  private retransmitAfter(observer: Observer, ms: number): NodeJS.Timeout {
    const timer = setTimeout(() => {
      const exchange = observer.exchange;
      if (!exchange || !this.byKey.has(observer.key)) return;
      if (exchange.attempts >= this.limits.maxRetransmit) {
        this.figures.clientsGone++;
        this.remove(observer);
        return;
      }
      exchange.attempts++;
      exchange.timeoutMs *= 2;
      this.figures.retransmissions++;
      exchange.timer = this.retransmitAfter(observer, exchange.timeoutMs);
      this.send?.(exchange.datagram, observer.endpoint);
    }, ms);
    return timer;
  }

  private settleExchange(observer: Observer): void {
    const exchange = observer.exchange;
    if (!exchange) return;
    clearTimeout(exchange.timer);
    this.inFlight.delete(flightKey(observer.endpoint, exchange.messageId));
    observer.exchange = null;
  }

  private sendFinal(observer: Observer, code: string, message: string): void {
    const body = Buffer.from(JSON.stringify({ error: { code: ERROR_CODE_OF[code] ?? "UNAVAILABLE", message } }));
    // Non-confirmable: nothing is kept for an observation that is over.
    this.send?.(this.datagram(observer, this.nextMessageId(), code, body, false), observer.endpoint);
  }

  private remove(observer: Observer): void {
    this.settleExchange(observer);
    this.byKey.delete(observer.key);
    const held = this.byDevice.get(observer.deviceId);
    held?.delete(observer);
    if (held?.size === 0) this.byDevice.delete(observer.deviceId);
  }

  private datagram(observer: Observer, messageId: number, code: string, payload: Buffer, observe: boolean): Buffer {
    const options: { name: string; value: Buffer }[] = [{ name: "Content-Format", value: Buffer.of(JSON_FORMAT) }];
    if (observe) options.push({ name: "Observe", value: uint(this.nextSequence()) });
    let body = payload;
    if (payload.length > BLOCK_SIZE) {
      // The client fetches the rest with GETs for the following blocks (RFC 7959 §2.6).
      options.push({ name: "Block2", value: FIRST_OF_MORE_BLOCKS });
      body = payload.subarray(0, BLOCK_SIZE);
    }
    return generate({ messageId, token: observer.token, code, confirmable: observe, options, payload: body });
  }

  private nextSequence(): number {
    this.sequence = (this.sequence + 1) % 0x1000000;
    return this.sequence;
  }

  private nextMessageId(): number {
    this.messageId = (this.messageId + 1) % 0x10000;
    return this.messageId;
  }
}

/** The final notifications' codes as CONTRACT §1 codes, for their JSON body. */
const ERROR_CODE_OF: Record<string, string> = { "4.01": "UNAUTHORIZED", "4.04": "NOT_FOUND", "5.03": "UNAVAILABLE" };

/** A notification in flight, as the client's ACK or RST names it. */
function flightKey(endpoint: Endpoint, messageId: number): string {
  return `${endpoint.address}:${endpoint.port}#${messageId}`;
}

function keyOf(endpoint: Endpoint, token: Buffer): string {
  return `${endpoint.address}:${endpoint.port}/${token.toString("hex")}`;
}

/** A CoAP uint option value: big-endian, no leading zero bytes (RFC 7252 §3.2). */
function uint(n: number): Buffer {
  if (n === 0) return Buffer.alloc(0);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  return Buffer.from(bytes);
}
