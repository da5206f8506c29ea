import { STORED } from "./write-behind";
import { isUtf8 } from "node:buffer";
import { parseCommandAnswer } from "./command-input";
import type { CommandTracker } from "./commands";
import type { DeviceTraffic } from "./device-traffic";
import { TethralError, invalid, isTethralError, notFound, errorMessage } from "./errors";
import type { Refusals } from "./refusals";
import type { DeviceRegistry } from "./registry";
import type { DeviceTokens } from "./tokens";
import { hasDesired, twinOf } from "./twin";
import type { DeviceTwin } from "./types";
import { DEVICE_ID_PATTERN } from "./validation";
import {
  type AdapterContext,
  type AuthResult,
  DEVICE_MESSAGE_KINDS,
  type DeviceMessage,
  type DeviceMessageKind,
  type IntakeSignal,
  type ProtocolAdapter,
  type ProtocolCounters,
  type ReceiveResult,
} from "./ports/protocol";

export interface GatewayOptions {
  /** CONTRACT §4: devices present a token (on by default). */
  deviceTokens: boolean;
  /** Unknown devices may register themselves (off by default). */
  selfRegistration: boolean;
  /** Largest device payload accepted, in bytes. */
  maxPayloadBytes: number;
}

export const DEFAULT_GATEWAY_OPTIONS: GatewayOptions = {
  deviceTokens: true,
  selfRegistration: false,
  maxPayloadBytes: 256 * 1024,
};

const KINDS: ReadonlySet<DeviceMessageKind> = new Set(DEVICE_MESSAGE_KINDS);

/** Cluster mode: where messages of devices another member owns go (see `ClusterMember`). */
export interface GatewayRouter {
  owns(deviceId: string): boolean;
  /** A message every member sees: true when it is another member's (kept for a takeover). */
  heldElsewhere(message: DeviceMessage): boolean;
  /** A checked message of a device owned elsewhere, taken by a connection held here. */
  forward(message: DeviceMessage): void;
  /** A device connected here but owned elsewhere: true when its owner was told. */
  connectedHere(deviceId: string): boolean;
  /** A message of a device this member owns is being applied (its fingerprint is kept for a successor). */
  applying(deviceId: string, kind: string, payload: unknown): void;
}

/** Registers a device that introduced itself, keeping the token it presented. */
export type SelfRegister = (input: Record<string, unknown>, protocol: string, token: string | undefined) => Promise<unknown>;

/**
 * Where protocol adapters hand over what devices send: the payload is decoded once, the device
 * identified and its token checked (from memory), and the message goes to the hub's ingest or,
 * for an answer, to the command tracker. Nothing here throws at an adapter: a refusal is
 * counted, published as `message.rejected` and returned with the error to answer with.
 */
export class DeviceGateway {
  private readonly counters = new Map<string, ProtocolCounters>();
  /** Cluster mode only. */
  router: GatewayRouter | null = null;
  /** See `AdapterContext.stored` (the hub sets it). */
  stored: () => Promise<boolean> = () => STORED;

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly traffic: DeviceTraffic,
    private readonly refusals: Refusals,
    private readonly tokens: DeviceTokens,
    private readonly commands: CommandTracker,
    private readonly selfRegister: SelfRegister,
    readonly options: GatewayOptions,
    private readonly warn: (message: string) => void,
    /** Whether the hub can take more now (see `AdapterContext.intake`). */
    private readonly intake: IntakeSignal,
  ) {}

  countersOf(protocol: string): ProtocolCounters {
    let c = this.counters.get(protocol);
    if (!c) this.counters.set(protocol, (c = { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0, rejected: 0, errors: 0 }));
    return c;
  }

  /** Every protocol's counters (a copy). */
  allCounters(): Record<string, ProtocolCounters> {
    const out: Record<string, ProtocolCounters> = {};
    for (const [name, c] of this.counters) out[name] = { ...c };
    return out;
  }

  /** The context handed to one adapter. */
  contextFor(adapter: ProtocolAdapter, onConnected: (id: string) => void): AdapterContext {
    const counters = this.countersOf(adapter.name);
    const max = this.options.maxPayloadBytes;
    return {
      receive: adapter.sharedIntake
        ? (message) => (this.router?.heldElsewhere(message) ? { ok: true, deviceId: message.deviceId, status: null, changed: false } : this.receive(message))
        : (message) => this.receive(message),
      authenticate: (protocol, deviceId, token) => this.authenticate(protocol, deviceId, token),
      // A shared intake (an external broker) gives every member the device's presence itself, the
      // owner included: nothing to route through the member that heard it (which would bypass the
      // owner's own view, an MQTT status not confirmed again after a reconnection, say).
      connected: (id) => {
        if (adapter.sharedIntake || !this.router?.connectedHere(id)) onConnected(id);
      },
      // Nothing to do: commands ask the adapter (isConnected) before each send, and the device's
      // status follows its messages, last will and heartbeat timeout, not its socket.
      disconnected: () => undefined,
      reject: (r) => this.rejectFor(adapter.name, r),
      twin: (id) => {
        const record = this.registry.record(id);
        return record ? twinOf(record) : null;
      },
      twins: () => this.twins(adapter.retainsTwins ? adapter.name : null),
      counters,
      maxPayloadBytes: max,
      warn: (message) => this.warn(`${adapter.name}: ${message}`),
      intake: this.intake,
      stored: () => this.stored(),
    };
  }

  /** The twins of every device with something desired of it; of one protocol's devices when named. */
  private *twins(protocol: string | null): Iterable<[string, DeviceTwin]> {
    for (const record of this.registry.allRecords()) {
      if (hasDesired(record) && (protocol === null || record.protocol === protocol)) yield [record.id, twinOf(record)];
    }
  }

  /**
   * A message a protocol's transport refused before it reached the hub (an adapter's, or the
   * runtime's HTTP server's): counted as rejected and published as `message.rejected`.
   */
  rejectFor(protocol: string, r: TransportRefusal | undefined): void {
    const reason = typeof r?.reason === "string" ? r.reason.slice(0, 64) : "refused";
    const message = typeof r?.message === "string" ? r.message.slice(0, 512) : "refused by the transport";
    this.refuse(this.countersOf(protocol), r?.deviceId ?? null, protocol, r?.kind, new TethralError("INVALID", message), reason);
  }

  authenticate(protocol: string, deviceId: string, token: string | undefined): AuthResult {
    const c = this.countersOf(protocol);
    const refusal = this.identify(deviceId, token);
    if (refusal === "unknown" && this.options.selfRegistration) return { ok: true, deviceId, known: false };
    if (refusal) {
      const { error, reason } = refusal === "unknown" ? unknownDevice(deviceId) : refusal;
      return { ok: false, error: this.refuse(c, deviceId, protocol, "connect", error, reason) };
    }
    return { ok: true, deviceId, known: true };
  }

  /**
   * Why a device id (and, when given, its token) is refused; "unknown" for a well-formed id of no
   * device, which self-registration may take; null when they pass.
   */
  private identify(deviceId: unknown, token: string | undefined, checkToken = true): Refusal | "unknown" | null {
    if (typeof deviceId !== "string" || !DEVICE_ID_PATTERN.test(deviceId)) {
      return { error: invalid("device", "must be a device id (1-128 characters of A-Z a-z 0-9 . _ : -)"), reason: "invalid-device-id" };
    }
    if (!this.registry.has(deviceId)) return "unknown";
    if (checkToken && this.options.deviceTokens && !this.tokens.verify(deviceId, token)) return { error: badToken(token), reason: "bad-token" };
    return null;
  }

  receive(message: DeviceMessage): ReceiveResult {
    const protocol = typeof message?.protocol === "string" ? message.protocol.slice(0, 32) : "unknown";
    const c = this.countersOf(protocol);
    c.messagesIn++;
    try {
      return this.handle(message, protocol, c);
    } catch (err) {
      // A fault of ours must not reach the adapter's socket handler.
      c.errors++;
      const error = isTethralError(err) ? err : new TethralError("UNAVAILABLE", `could not take the message in: ${errorMessage(err)}`);
      if (!isTethralError(err)) this.warn(error.message);
      return { ok: false, error };
    }
  }

  private handle(message: DeviceMessage, protocol: string, c: ProtocolCounters): ReceiveResult {
    const { deviceId, kind, payload } = message;
    const bytes = typeof message.size === "number" && message.size >= 0 ? message.size : sizeOf(payload);
    c.bytesIn += bytes;
    if (!KINDS.has(kind)) return this.refused(c, deviceId, protocol, kind, invalid("kind", `must be one of ${[...KINDS].join(", ")}`), "invalid-payload");
    if (bytes > this.options.maxPayloadBytes) {
      return this.refused(c, deviceId, protocol, kind, invalid("payload", `is ${bytes} bytes, more than the ${this.options.maxPayloadBytes} allowed`), "too-large");
    }
    const refusal = this.identify(deviceId, message.token, !message.authenticated);
    const elsewhere = this.router !== null && typeof deviceId === "string" && !this.router.owns(deviceId);
    if (refusal === "unknown" && kind === "register" && this.options.selfRegistration) {
      if (!elsewhere) return this.register(c, deviceId, protocol, message);
      this.router!.forward(message);
      return { ok: true, deviceId, status: null, changed: true };
    }
    if (refusal) {
      const { error, reason } = refusal === "unknown" ? unknownDevice(deviceId) : refusal;
      return this.refused(c, deviceId, protocol, kind, error, reason);
    }
    const retained = message.retained === true;
    if (elsewhere) return this.forward(c, message, protocol, kind, payload);
    this.router?.applying(deviceId, kind, payload);
    let data: unknown;
    if (kind === "status") {
      data = decodeText(payload);
      if (data instanceof TethralError) return this.refused(c, deviceId, protocol, kind, data, "invalid-payload");
    } else if (kind !== "heartbeat") {
      const decoded = decodeJson(payload);
      if (decoded instanceof TethralError) return this.refused(c, deviceId, protocol, kind, decoded, "invalid-json");
      data = decoded;
    }
    if (kind === "response") {
      let answer;
      try {
        answer = parseCommandAnswer(data);
      } catch (err) {
        return this.refused(c, deviceId, protocol, kind, err as TethralError, "invalid-payload");
      }
      const r = this.ingest(c, deviceId, protocol, "heartbeat", undefined, retained);
      if (r.ok) this.commands.answer(deviceId, answer);
      return r;
    }
    // Registering again (a device that announces itself at every boot) is a sign of life.
    return this.ingest(c, deviceId, protocol, kind === "register" ? "heartbeat" : kind, data, retained);
  }

  /** Cluster mode: checked here as far as a message can be without its owner, then carried to it. */
  private forward(c: ProtocolCounters, message: DeviceMessage, protocol: string, kind: DeviceMessageKind, payload: unknown): ReceiveResult {
    if (kind !== "status" && kind !== "heartbeat") {
      const decoded = decodeJson(payload);
      if (decoded instanceof TethralError) return this.refused(c, message.deviceId, protocol, kind, decoded, "invalid-json");
    }
    this.router!.forward(message);
    return { ok: true, deviceId: message.deviceId, status: null, changed: false };
  }

  private ingest(
    c: ProtocolCounters,
    deviceId: string,
    protocol: string,
    kind: "telemetry" | "heartbeat" | "state" | "status",
    data: unknown,
    retained: boolean,
  ): ReceiveResult {
    try {
      const r = this.traffic.ingest(deviceId, retained ? { kind, data, protocol, retained } : { kind, data, protocol }, c);
      return { ok: true, deviceId, status: r.status, changed: r.changed };
    } catch (err) {
      if (!isTethralError(err)) throw err;
      // Already counted and published where it was refused.
      return { ok: false, error: err };
    }
  }

  private register(c: ProtocolCounters, deviceId: string, protocol: string, message: DeviceMessage): ReceiveResult {
    const data = decodeJson(message.payload);
    if (data instanceof TethralError) return this.refused(c, deviceId, protocol, "register", data, "invalid-json");
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      return this.refused(c, deviceId, protocol, "register", invalid("payload", "must be a device record (a JSON object)"), "invalid-payload");
    }
    const input: Record<string, unknown> = { protocol, ...(data as Record<string, unknown>) };
    if (input.id !== undefined && input.id !== deviceId) {
      return this.refused(c, deviceId, protocol, "register", invalid("id", "must be the device id the message came from"), "invalid-payload");
    }
    input.id = deviceId;
    if (this.options.deviceTokens && (typeof message.token !== "string" || message.token.length < 16 || message.token.length > 1024)) {
      return this.refused(c, deviceId, protocol, "register", new TethralError("UNAUTHORIZED", "a self-registering device must present a token of at least 16 characters"), "bad-token");
    }
    this.selfRegister(input, protocol, message.token).catch((err: unknown) => {
      const error = isTethralError(err) ? err : new TethralError("UNAVAILABLE", errorMessage(err));
      this.refuse(c, deviceId, protocol, "register", error, "registration-failed");
    });
    return { ok: true, deviceId, status: null, changed: true };
  }

  private refused(c: ProtocolCounters, deviceId: unknown, protocol: string, kind: unknown, error: TethralError, reason: string): ReceiveResult {
    return { ok: false, error: this.refuse(c, deviceId, protocol, kind, error, reason) };
  }

  private refuse(c: ProtocolCounters, deviceId: unknown, protocol: string, kind: unknown, error: TethralError, reason: string): TethralError {
    // Not String(deviceId): a refusal that names no device (a malformed datagram) is filed under
    // none, not under a device called "null".
    return this.refusals.refuse(deviceId, protocol, kind, error, reason, c);
  }
}

/** What a transport says of a message it refused. */
export type TransportRefusal = Parameters<AdapterContext["reject"]>[0];

/** A refusal and the reason `message.rejected` gives for it. */
interface Refusal {
  error: TethralError;
  reason: string;
}

function unknownDevice(deviceId: string): Refusal {
  return { error: notFound("device", deviceId), reason: "unknown-device" };
}

function badToken(token: string | undefined): TethralError {
  return new TethralError("UNAUTHORIZED", token ? "the device token is wrong" : "the device must present its token");
}

function sizeOf(payload: unknown): number {
  if (typeof payload === "string") return Buffer.byteLength(payload);
  if (payload instanceof Uint8Array) return payload.byteLength;
  return 0;
}

function decodeText(payload: unknown): string | TethralError {
  if (typeof payload === "string") return payload;
  // Bytes that are no UTF-8 are refused, not read with U+FFFD in place of what they held: text is
  // never stored changed (the HTTP body reader and the WebSocket adapter refuse them too).
  // A Buffer (what MQTT and CoAP hand over) is read as it is: a view made of it is 100 bytes a message.
  if (Buffer.isBuffer(payload)) return isUtf8(payload) ? payload.toString("utf8") : notUtf8();
  if (payload instanceof Uint8Array) {
    const bytes = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    return isUtf8(bytes) ? bytes.toString("utf8") : notUtf8();
  }
  return typeof payload === "object" && payload !== null && typeof (payload as { status?: unknown }).status === "string"
    ? (payload as { status: string }).status
    : String(payload);
}

/** The refusal of a payload whose bytes are not UTF-8. */
const notUtf8 = (): TethralError => invalid("payload", "is not valid UTF-8");

/** Raw bytes or text are parsed once; anything else was decoded by the adapter already. */
function decodeJson(payload: unknown): unknown {
  if (typeof payload !== "string" && !(payload instanceof Uint8Array)) return payload;
  const text = decodeText(payload);
  if (text instanceof TethralError) return text;
  // Nothing at all (an empty MQTT payload, an HTTP report without a body) is said as such.
  if (text.trim() === "") return invalid("payload", "is empty: a report is JSON");
  try {
    return JSON.parse(text);
  } catch {
    return invalid("payload", "is not valid JSON");
  }
}
