import { Socket } from "node:dgram";
import type { AddressInfo } from "node:net";
import type { Server } from "coap";
import { parse } from "coap-packet";
import { type ErrorCode, TethralError } from "../core/errors";
import { type BlockSlotLimits, Block1Slots } from "./coap-blocks";
import { type Datagram, optionRefusal, readDatagram, resetFor } from "./coap-wire";
import { type AdapterContext, type DeviceMessageKind, KIND_OF_STEP } from "./types";

/** CONTRACT §1 codes as CoAP response codes (the HTTP status, dotted, as RFC 7252 §12.1.2 has them). */
export const CODE_OF: Record<ErrorCode, string> = { INVALID: "4.00", UNAUTHORIZED: "4.01", NOT_FOUND: "4.04", CONFLICT: "4.09", DEVICE_ERROR: "5.02", UNAVAILABLE: "5.03", TIMEOUT: "5.04" };

/** The parts of a parsed CoAP packet the adapter reads (the library's own type is not exported). */
export interface RawPacket {
  code: string;
  messageId?: number;
  ack?: boolean;
  reset?: boolean;
  token?: Buffer;
  options?: { name: string | number; value: Buffer }[];
  payload?: Buffer;
}

/**
 * How the hub answers a request: a code, and an error or a body. Size1 names the largest body
 * accepted (a 4.13, RFC 7959 §2.9.3), Max-Age when to try again (a 5.03), Block1 echoes the block
 * answered (RFC 7959 §2.3).
 */
export type Answer = { code: string; error?: TethralError; body?: { format: number; payload: Buffer }; size1?: number; maxAge?: number; block1?: Buffer; observe?: number };

/** What the intake decided for a request before the library saw it: its answer, or the whole body of a block-wise upload. */
export type Decision = { answer: Answer } | { payload: Buffer; block1: Buffer };

/** RFC 7959 §2.3, RFC 9175 §3.3: the options naming what a block is part of (Request-Tag, 292, is unnamed in the library). */
const IDENTIFYING_OPTIONS = new Set(["Uri-Host", "Uri-Port", "Uri-Path", "Content-Format", "Uri-Query", "Accept", "292"]);

/** A resource the hub serves, as named by a request's path (see resourceOf). */
export type Resource =
  | { type: "discovery" }
  | { type: "desired"; deviceId: string; token: string | undefined }
  | { type: "report"; deviceId: string; kind: DeviceMessageKind; token: string | undefined };

const DISCOVERY: Resource = { type: "discovery" };

/**
 * The CoAP server's front door: every datagram passes here before the coap library sees it.
 * Broken datagrams are counted and rejected, critical options checked (RFC 7252 §5.4.1), and
 * Block1 uploads reassembled (RFC 7959); what is decided for a request is left for the adapter's
 * request handler, by packet (`decisionFor`).
 */
type Settle = (type: "ACK" | "RST", messageId: number, from: AddressInfo) => boolean;

/** The reports a busy intake answers 5.03 (CONTRACT §2's device reports). */
const HELD_KINDS: ReadonlySet<DeviceMessageKind> = new Set(["telemetry", "heartbeat", "state", "status"]);

export class CoapIntake {
  private context: AdapterContext | null = null;
  private server: Server | null = null;
  private readonly decisions = new WeakMap<object, Decision>();
  /** A request's Observe value (RFC 7641), taken off before the library sees it. */
  private readonly observeValues = new WeakMap<object, number>();
  /** Empty ACKs and RSTs go here first: true when they settled one of the hub's own notifications. */
  private settle: Settle | null = null;
  private readonly blocks: Block1Slots;
  /** busyRefused: reports answered 5.03 because the hub's intake was busy (see `busy`). */
  readonly figures = { blockRefusals: 0, malformed: 0, busyRefused: 0 };

  constructor(
    /** The adapter's name: the protocol devices authenticate for. */
    private readonly protocol: string,
    limits: BlockSlotLimits,
    private readonly fault: (where: string, err: unknown) => void,
  ) {
    this.blocks = new Block1Slots(limits);
  }

  /** Serving for this hub, from now until stop(); `settle` takes empty ACKs and RSTs first. */
  start(context: AdapterContext, settle: Settle): void {
    this.context = context;
    this.settle = settle;
  }

  stop(): void {
    this.context = null;
    this.settle = null;
    this.blocks.clear();
  }

  /** Block-wise uploads in progress. */
  get blockTransfers(): number {
    return this.blocks.size;
  }

  /** The request's Observe option: 0 registers, 1 deregisters; undefined when it had none. */
  observeOf(packet: object): number | undefined {
    return this.observeValues.get(packet);
  }

  /** What was decided for a request before the library saw it, if anything. */
  decisionFor(packet: object): Decision | undefined {
    return this.decisions.get(packet);
  }

  /**
   * Takes the place of the library's own middleware chain [parseRequest, handleServerRequest]: its
   * parser takes some broken messages as good and answers others with its exception text (sent to
   * the wrong address, at that), and its Block1 reassembly matches blocks by token and gives an
   * upload whatever memory its last block number asks for. Throws for a library it does not know.
   */
  install(server: Server): void {
    if (!Array.isArray(server._middlewares) || typeof server._handle !== "function") {
      throw new TethralError("UNAVAILABLE", "unsupported coap library version: no middleware chain to take over");
    }
    this.server = server;
    const intake = (request: { raw: Buffer; rsinfo: AddressInfo }, next: (err: Error | null) => void): void => {
      try {
        const packet = this.context ? this.admit(server, request.raw, request.rsinfo) : null;
        if (packet) server._handle(packet as Parameters<Server["_handle"]>[0], request.rsinfo);
      } catch (err) {
        this.fault("request", err);
      }
      // Never an error: the library would answer it with the error's text.
      next(null);
    };
    server._middlewares = [intake];
  }

  /** The packet for the library to handle, with whatever was decided for it recorded; null when nothing more is to be done. */
  private admit(server: Server, raw: Buffer, rsinfo: AddressInfo): RawPacket | null {
    const datagram = readDatagram(raw);
    if (!datagram.ok) return this.malformed(datagram, rsinfo);
    let packet: RawPacket;
    try {
      packet = parse(raw) as RawPacket;
    } catch {
      return this.malformed({ ok: false, why: "unreadable", reset: datagram.type === "CON" || datagram.type === "NON", messageId: datagram.messageId }, rsinfo);
    }
    if (datagram.code === "0.00") {
      // A CoAP ping (an empty CON) is answered with a reset (RFC 7252 §4.3); an empty ACK or RST settles one of the library's exchanges.
      if ((datagram.type === "ACK" || datagram.type === "RST") && this.settle?.(datagram.type, datagram.messageId, rsinfo)) return null;
      if (datagram.type !== "CON") return packet;
      this.sendTo(rsinfo, resetFor(datagram.messageId));
      return null;
    }
    // Responses and acknowledgements: the library's; it drops what it did not ask for.
    if (!datagram.code.startsWith("0.") || datagram.type === "ACK" || datagram.type === "RST") return packet;
    // A retransmission of a request already answered: the library answers it again from its cache (keyed so).
    if (server._lru.has(`${rsinfo.address}:${rsinfo.port}/${packet.messageId}${packet.token?.toString("hex") ?? ""}`)) return packet;
    const options = packet.options ?? [];
    // Block1 is the adapter's to reassemble, Observe the adapter's to keep (see coap-observe): the library
    // would turn the answer into a notification stream of its own.
    packet.options = options.filter((o) => o.name !== "Block1" && o.name !== "Observe");
    const observe = options.find((o) => o.name === "Observe");
    if (observe) this.observeValues.set(packet, uintOf(observe.value));
    // The library answers a FETCH without a Content-Format itself, with its own text; the hub serves no FETCH (4.05) anyway.
    if (packet.code === "0.05" && !options.some((o) => o.name === "Content-Format")) packet.options.push({ name: "Content-Format", value: Buffer.of(0) });
    const bad = optionRefusal(datagram.options);
    if (bad) {
      this.context!.reject({ reason: "bad-option", message: bad.message });
      this.decisions.set(packet, { answer: refusal(bad.code, "INVALID", bad.message) });
      return packet;
    }
    const block1 = options.find((o) => o.name === "Block1");
    const decision = block1 ? this.takeBlock(block1.value, packet, rsinfo) : null;
    if (decision) this.decisions.set(packet, decision);
    return packet;
  }

  /** Counts a datagram that is not CoAP, and rejects it with a reset where it can be matched (RFC 7252 §4.2, §4.3). */
  private malformed(datagram: Extract<Datagram, { ok: false }>, rsinfo: AddressInfo): null {
    this.figures.malformed++;
    this.context!.reject({ reason: "malformed", message: `malformed CoAP datagram: ${datagram.why}` });
    if (datagram.reset && datagram.messageId !== undefined) this.sendTo(rsinfo, resetFor(datagram.messageId));
    return null;
  }

  /**
   * While the hub's intake is busy a report is not taken: 5.03 with Max-Age (RFC 7252 §5.9.3.4),
   * the seconds the device should wait before it sends it again. Not a refusal of the device or
   * of its message, so no `message.rejected`: the store that is behind would have to write it.
   * Null when the intake is ready, or for what is not a report (a command's answer, a register).
   */
  busy(kind: DeviceMessageKind): Answer | null {
    const intake = this.context?.intake;
    if (!intake?.busy || !HELD_KINDS.has(kind)) return null;
    this.figures.busyRefused++;
    const seconds = intake.retryAfterSeconds;
    return { ...refusal("5.03", "UNAVAILABLE", `the hub is busy: send again in ${seconds} s`), maxAge: seconds };
  }

  private sendTo(rsinfo: AddressInfo, datagram: Buffer): void {
    const socket = this.server?._sock;
    if (socket instanceof Socket) socket.send(datagram, rsinfo.port, rsinfo.address, (err) => err && this.fault("server socket", err));
  }

  /**
   * One Block1 block of a device's report, checked before anything is held for it: the sum must
   * fit maxPayloadBytes, and the sender must be a device with a good token (nobody else gets
   * memory held for them). Null leaves the request to route(): a block of anything but a report
   * is refused there from its first block, and nothing is held for it.
   */
  private takeBlock(value: Buffer, packet: RawPacket, rsinfo: AddressInfo): Decision | null {
    const context = this.context!;
    const target = resourceOf(packet.options);
    if (target?.type !== "report" || packet.code !== "0.02") return null;
    const key = blockKey(rsinfo, packet);
    const refuse = (answer: Answer, counted = false): Decision => {
      this.figures.blockRefusals++;
      this.blocks.drop(key);
      if (!counted) context.reject({ deviceId: target.deviceId, kind: target.kind, reason: "block-refused", message: answer.error?.message ?? `block-wise upload refused (${answer.code})` });
      return { answer };
    };
    const number = uintOf(value);
    const [num, more, exponent] = [Math.floor(number / 16), (number & 8) !== 0, number & 7];
    if (exponent === 7) return refuse(refusal("4.00", "INVALID", "block size exponent 7 is reserved"));
    const size = 16 << exponent;
    const payload = packet.payload ?? Buffer.alloc(0);
    const end = num * size + payload.length;
    const size1 = uintOf(packet.options?.find((o) => o.name === "Size1")?.value);
    if (Math.max(end, size1) > context.maxPayloadBytes) return refuse(tooLarge(Math.max(end, size1), context.maxPayloadBytes));
    if (more && payload.length !== size) return refuse(refusal("4.00", "INVALID", `a block with more to follow carries exactly its block size (${size} bytes), not ${payload.length}`));
    const busy = this.busy(target.kind);
    if (busy) {
      // The device sends the whole upload again later: what it sent so far is not kept meanwhile.
      this.blocks.drop(key);
      return { answer: busy };
    }
    const auth = context.authenticate(this.protocol, target.deviceId, target.token);
    if (!auth.ok) return refuse({ code: CODE_OF[auth.error.code] ?? "5.00", error: auth.error }, true);
    const outcome = this.blocks.take(key, target.deviceId, { num, more, size }, payload);
    if (outcome.status === "continue") return { answer: { code: "2.31", block1: value } };
    if (outcome.status === "complete") return { payload: outcome.payload, block1: value };
    const answer = refusal(outcome.code, outcome.code === "5.03" ? "UNAVAILABLE" : "INVALID", outcome.message);
    return refuse({ ...answer, maxAge: outcome.retryAfterSec });
  }
}

/** A CoAP uint option's value (RFC 7252 §3.2: big-endian, leading zero bytes left out); 0 when absent. */
function uintOf(value: Buffer | undefined): number {
  return value ? value.reduce((n, byte) => n * 256 + byte, 0) : 0;
}

/** Which upload a block is part of: the client's endpoint and the request's identifying options, not its token. */
function blockKey(rsinfo: AddressInfo, packet: RawPacket): string {
  const parts = [`${rsinfo.address}:${rsinfo.port}`, packet.code];
  for (const o of packet.options ?? []) if (IDENTIFYING_OPTIONS.has(String(o.name))) parts.push(`${o.name}=${o.value.toString("hex")}`);
  return parts.join("|");
}

/**
 * What a request's Uri-Path and `?token=` name, read once per request: `/.well-known/core`
 * (RFC 6690 §4), a device's twin `/devices/{id}/desired` (CONTRACT §2), a device's report
 * `/devices/{id}/{kind}`; null for any other path.
 */
export function resourceOf(options: RawPacket["options"]): Resource | null {
  const { path, token } = pathOf(options);
  if (path.length === 2) return path[0] === ".well-known" && path[1] === "core" ? DISCOVERY : null;
  if (path.length !== 3 || path[0] !== "devices" || path[1] === "") return null;
  const deviceId = path[1]!;
  if (path[2] === "desired") return { type: "desired", deviceId, token };
  const kind = KIND_OF_STEP.get(path[2]!);
  return kind ? { type: "report", deviceId, kind, token } : null;
}

function pathOf(options: RawPacket["options"]): { path: string[]; token: string | undefined } {
  const path: string[] = [];
  let token: string | undefined;
  let tokens = 0;
  for (const option of options ?? []) {
    if (option.name === "Uri-Path") path.push(option.value.toString("utf8"));
    else if (option.name === "Uri-Query") {
      const q = option.value.toString("utf8");
      if (q.startsWith("token=") && ++tokens === 1) token = decodeQuery(q.slice(6));
    }
  }
  // Two tokens name no one token: none is taken (4.01), as HTTP's ?token=a&token=b is refused.
  // Until 2026-12-08 the first was taken.
  return { path, token: tokens > 1 ? undefined : token };
}

/** Options carry text as is, but a client built on a URL may have percent-encoded it. */
export function decodeQuery(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

export function refusal(code: string, errorCode: ErrorCode, message: string): Answer {
  return { code, error: new TethralError(errorCode, message) };
}

export function tooLarge(size: number, max: number): Answer {
  return { ...refusal("4.13", "INVALID", `payload of ${size} bytes is larger than the ${max} allowed`), size1: max };
}
