import type { TethralError } from "../errors";
import type { Device, DeviceStatus, DeviceTwin, JsonObject, JsonValue } from "../types";

/**
 * The contract between the hub and a protocol adapter (MQTT, CoAP, WebSocket, HTTP, or one a
 * plugin adds). An adapter moves bytes: everything a device sends goes to the hub through its
 * `AdapterContext` (which decodes, authenticates and ingests), and commands come to it through
 * `send`. An adapter never touches the registry, the store or Node-RED.
 */
export interface ProtocolAdapter {
  /** The `protocol` of the devices it serves (`mqtt`, `coap`, ...): lower case, 1-32 characters. */
  readonly name: string;
  /** Binds, connects and listens. Called once; the context stays valid until `stop()` resolves. */
  start(context: AdapterContext): Promise<void>;
  /** Closes every socket, timer and listener the adapter made. Safe to call twice. */
  stop(): Promise<void>;
  /**
   * Hands one command to a device. Resolves with how far it got (see SendOutcome); rejects when
   * it could not be handed over at all (no connection, refused, no answer in `timeoutMs` for a
   * request/response protocol). A rejection counts as a failed attempt and may be retried.
   * A request/response protocol calls `handedOver` once the request has left for the device,
   * before its answer: the command is `sent` from then on, and one that then gets no answer in
   * time was sent all the same (its `sentAt` set, `command.sent` published).
   */
  send(device: Device, frame: CommandFrame, timeoutMs: number, handedOver?: () => void): Promise<SendOutcome>;
  /**
   * Why `address` cannot be where commands reach a device of this protocol (the message of
   * `error.details` for the field `address`, such as "must be an http: or https: URL"), or null.
   * Asked when a device of this protocol is registered, or its address or protocol changes, so
   * a bad address is refused then, changing nothing, rather than at its first command.
   */
  checkAddress?(address: string): string | null;
  /**
   * True while the device holds a live connection to this adapter, false while it does not;
   * undefined when the protocol cannot tell (request/response protocols such as CoAP and HTTP),
   * in which case the hub goes by the device's status.
   */
  isConnected(deviceId: string): boolean | undefined;
  health(): ProtocolHealth;
  /** The adapter's own figures; the hub adds the message counts it keeps for every protocol. */
  statistics(): AdapterStatistics;
  /**
   * Drops the device's live connection, if it has one: its token was replaced or the device was
   * removed, so a connection authenticated earlier must not stay trusted.
   */
  disconnect?(deviceId: string, reason: string): void;
  /**
   * The device's twin changed (CONTRACT §2: desired set, or a report moved the delta): deliver it
   * to the device if it listens here. Null: the device was removed, so drop what is kept for it
   * (a retained copy, observers). Called in the change itself, for every device whatever its
   * protocol (a device may read its twin over another; see `retainsTwins` for the exception): it
   * must not throw or block.
   */
  twinChanged?(deviceId: string, twin: DeviceTwin | null): void;
  /**
   * The adapter keeps every twin it is given (a broker's retained message) rather than handing
   * it to a listener that is there: it is given the twins of the devices registered with its
   * protocol only (and every removal), so a fleet of WebSocket devices costs the broker nothing.
   */
  readonly retainsTwins?: boolean;
  /**
   * Every cluster member's adapter receives the same device messages (a subscription to an
   * external broker): a member hands over only its own devices' messages and keeps the rest for a
   * takeover, instead of forwarding them (CONTRACT §8).
   */
  readonly sharedIntake?: boolean;
  /**
   * Cluster mode, an adapter with a shared intake that can do better than every member seeing
   * every message: it takes each partition's messages on a durable session of its own, held by the
   * partition's owner (see `PartitionedIntake`). Called once, before `start`; null when the
   * adapter cannot (an embedded broker).
   */
  partitioned?(host: PartitionHost): PartitionedIntake | null;
  /** A device was registered here: resolves once the adapter listens for it (a partition session's subscription). */
  deviceAdded?(deviceId: string): Promise<void> | null;
  /** A device was removed here. */
  deviceRemoved?(deviceId: string): void;
}

/** What a partitioned intake asks of the cluster member (see `ProtocolAdapter.partitioned`). */
export interface PartitionHost {
  readonly partitions: number;
  partitionOf(deviceId: string): number;
  /** Whether this member applies the partition's messages now. */
  ownsPartition(partition: number): boolean;
  /** Asks the database (a beat now) whether the partition is still this member's: before a lost session is taken again. */
  confirmOwnership(partition: number): Promise<boolean>;
  /** The registered devices of a partition. */
  devicesOf(partition: number): string[];
  /**
   * Applies a message of a device owned here; `packetId` goes into its fingerprint (0: none). Null
   * when the device's partition is not this member's this instant (a lease running out, a
   * hand-over): nothing was done with it, and the session keeps it, unacknowledged, for when the
   * partition is this member's again or for its next holder.
   */
  receive(message: DeviceMessage, packetId: number): ReceiveResult | null;
  /** The fingerprint of the last message applied to the device (here, or as its previous owner stored it). */
  lastMessageOf(deviceId: string): number | undefined;
  /** A mark of what was applied so far: stored once `onWritten` hears an index above it; null when it already is. */
  writtenMark(): number | null;
  /** Hears the index of each write that stored everything marked before it. */
  onWritten(listener: (index: number) => void): () => void;
  warn(message: string): void;
}

/**
 * A partition's device messages, taken on a durable session that moves with the partition's
 * lease: the broker keeps what the owner has not acknowledged, and the owner acknowledges a
 * message only once what it changed is stored, so a successor (or the same member, reconnected)
 * is given what was not, and skips, by fingerprint, what was stored but not acknowledged.
 */
export interface PartitionedIntake {
  /** The partition is this member's now (loaded): take its messages. */
  open(partition: number): Promise<void>;
  /** A clean hand-over: stop applying, acknowledge what is stored, let the session go. */
  close(partition: number): Promise<void>;
  /** The lease is lost: let the session go now, acknowledging nothing more. */
  cut(partition: number): void;
}

/** What the hub sends a device: `{"id", "command", "params"}` (CONTRACT §2). */
export interface CommandFrame {
  id: string;
  command: string;
  params: JsonObject;
}


/**
 * How far a send got. `sent`: handed to the transport (an MQTT PUBACK from the broker, a
 * WebSocket write flushed); the answer, if one is expected, arrives later through
 * `context.receive({kind: "response"})`. `delivered`: the device itself acknowledged it.
 * `answered`: a request/response protocol (CoAP, HTTP) brought the device's answer back.
 */
export type SendOutcome =
  | { status: "sent" }
  | { status: "delivered" }
  | { status: "answered"; ok: true; result: JsonValue }
  | { status: "answered"; ok: false; error: string };

export interface ProtocolHealth {
  status: "ok" | "degraded" | "stopped";
  /** What is wrong, when not ok. */
  error?: string;
  [figure: string]: unknown;
}

export interface AdapterStatistics {
  /** Devices with a live connection now (0 for request/response protocols). */
  connected: number;
  [figure: string]: number | string | boolean;
}

/** Message kinds a device sends (CONTRACT §2). `register` only counts where self-registration is on. */
export const DEVICE_MESSAGE_KINDS = ["telemetry", "heartbeat", "state", "status", "register", "response"] as const;
export type DeviceMessageKind = (typeof DEVICE_MESSAGE_KINDS)[number];


export interface DeviceMessage {
  /** The adapter's name. */
  protocol: string;
  /** As the device named itself (topic, path, connect query); checked by the hub. */
  deviceId: string;
  kind: DeviceMessageKind;
  /**
   * Raw bytes or text are decoded as UTF-8 JSON exactly once, by the hub. A value that is not a
   * Buffer, Uint8Array or string is taken as already decoded (a WebSocket frame's field).
   * A heartbeat's payload is ignored; a status payload is the text `online` or `offline`.
   */
  payload: unknown;
  /** A per-message credential (CoAP `?token=`, HTTP Bearer). */
  token?: string;
  /**
   * Set when the connection carrying the message was authenticated for this device id at
   * connect time (`context.authenticate`), so the token need not be checked again.
   */
  authenticated?: boolean;
  /**
   * A broker's stored copy (MQTT retained), delivered because the hub (re)subscribed: old news.
   * Its values still update state (the history says `retained-…`), but it is no sign of life:
   * no heartbeat, no online or offline, nothing for anomaly detection.
   */
  retained?: boolean;
  /**
   * The payload's size in bytes as it came over the wire, where the transport hands it over
   * decoded (the REST flow's parsed JSON body): counted in the protocol's bytes in, and held to
   * the payload limit, as raw bytes are.
   */
  size?: number;
}

export type ReceiveResult =
  | { ok: true; deviceId: string; status: DeviceStatus | null; changed: boolean }
  | { ok: false; error: TethralError };

export type AuthResult =
  | { ok: true; deviceId: string; known: true }
  /** Self-registration is on and the device is new: it may send `register` and nothing else yet. */
  | { ok: true; deviceId: string; known: false }
  | { ok: false; error: TethralError };

/** Counters every protocol has; the hub keeps them, adapters add to the outbound ones. */
export interface ProtocolCounters {
  messagesIn: number;
  messagesOut: number;
  bytesIn: number;
  bytesOut: number;
  rejected: number;
  errors: number;
}

/** What the hub gives an adapter. Every method is cheap and never throws. */
export interface AdapterContext {
  /**
   * Decodes, authenticates and ingests one device message (heartbeat, state, events), or
   * matches a command response. A refused message is counted, published as `message.rejected`
   * and returned as `{ok: false}` with a TethralError whose code maps to the protocol's answer
   * (INVALID → 4.00 / 400, UNAUTHORIZED → 4.01 / 401, NOT_FOUND → 4.04 / 404).
   */
  receive(message: DeviceMessage): ReceiveResult;
  /**
   * Checks a device id and token at connect (MQTT CONNECT, WebSocket upgrade). A refusal is
   * counted and published as `message.rejected`. Tokens live in memory: no database round trip.
   */
  authenticate(protocol: string, deviceId: string, token: string | undefined): AuthResult;
  /** A live connection for the device came up: commands waiting for it may go now. */
  connected(deviceId: string): void;
  /** The device's live connection went away (its status follows its messages and heartbeat). */
  disconnected(deviceId: string): void;
  /**
   * Something the adapter refused before it could hand it over (a frame that is not JSON, a
   * topic or path naming no device, an oversized packet): counted as rejected and published as
   * `message.rejected`, like the hub's own refusals. Do not also add to `counters.rejected`.
   */
  reject(refusal: { deviceId?: string | null; kind?: string; reason: string; message: string }): void;
  /** The device's twin now (CONTRACT §2); null for a device the hub does not know. */
  twin(deviceId: string): DeviceTwin | null;
  /** The twins of every device with something desired of it: what a broker that lost its retained copies must be given again. */
  twins(): Iterable<[deviceId: string, twin: DeviceTwin]>;
  /** Outbound and error counters of this protocol: the adapter adds to them as it sends. */
  readonly counters: ProtocolCounters;
  /** Largest payload accepted from a device, in bytes (default 256 KiB); larger is refused. */
  readonly maxPayloadBytes: number;
  /** Problems nobody awaits: a broker connection lost, a socket error. */
  warn(message: string): void;
  /**
   * Whether the hub can take more device messages now. While the store is behind past its bound
   * the intake is `busy`: nothing is dropped, the adapter slows the devices instead. Connection
   * protocols stop reading (MQTT stops reading the connections that send, WebSocket pauses its
   * sockets) until the intake is ready again; request/response protocols answer "busy" (CoAP
   * 5.03 with Max-Age, HTTP 503 with Retry-After, both `retryAfterSeconds`). A message the
   * adapter has already read is still handed to `receive`: the hub takes it.
   */
  readonly intake: IntakeSignal;
  /**
   * Resolves true once what the hub has taken in so far is in its database (at once when it is,
   * or without one); false when the hub stops first. Acknowledge a device's report (a PUBACK, a
   * 2.04, a 204) only then: a crash then loses nothing the device was told was taken. Command
   * responses need not wait (a command's end is written behind its answer: at least once).
   */
  stored(): Promise<boolean>;
}

/** See `AdapterContext.intake`. */
export interface IntakeSignal {
  readonly busy: boolean;
  /** What a busy answer tells a device to wait before it sends again, in whole seconds (at least 1). */
  readonly retryAfterSeconds: number;
  /** Called with `true` when the intake becomes busy and `false` when it is ready again; returns the unsubscribe. */
  onChange(listener: (busy: boolean) => void): () => void;
}

/** What a protocol plugin is given to make its adapter for one hub. */
export interface ProtocolCreateOptions {
  /** This protocol's settings from the hub config node (empty when it has none). */
  settings: Record<string, unknown>;
  /** This protocol's secrets (Node-RED credentials of the config node): passwords, keys. */
  credentials: Record<string, string>;
  /** The interface servers bind to (CONTRACT §6 `HOST`). */
  host: string;
  /** Node-RED's own HTTP server, for protocols that share it (WebSocket). */
  httpServer?: import("node:http").Server;
}

/**
 * A Node-RED plugin of type `tethral-protocol` (package.json `node-red.plugins`): another package
 * adds a protocol by registering one with `RED.plugins.registerPlugin(id, plugin)`.
 */
export interface ProtocolPlugin {
  type: "tethral-protocol";
  /** The protocol name devices use (`mqtt`, ...); the adapter's `name`. */
  protocol: string;
  /** Makes the adapter for one hub, or null when the settings turn the protocol off. */
  create(options: ProtocolCreateOptions): ProtocolAdapter | null;
}
