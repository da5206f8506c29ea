import { createSocket, type Socket, type SocketType } from "node:dgram";
import { type AddressInfo, isIPv6 } from "node:net";
import { Agent, Server, type IncomingMessage, type OutgoingMessage } from "coap";
import { type ErrorCode, TethralError } from "../core/errors";
import type { Device, JsonValue } from "../core/types";
import { type AdapterContext, type AdapterStatistics, type CommandFrame, type DeviceMessageKind, type ProtocolAdapter, type ProtocolHealth, type SendOutcome, KIND_OF_STEP, encodeCommand } from "./types";

export interface CoapAdapterOptions {
  /** UDP port of the hub's CoAP server (CONTRACT §6 `TETHRAL_COAP_PORT`); 0 picks a free one. */
  port?: number;
  /** Interface to bind; an IPv6 address makes the server udp6. */
  host?: string;
  /** False: `start()` binds nothing and `send()` refuses. */
  enabled?: boolean;
  /**
   * Block-wise uploads (RFC 7959 Block1) being reassembled at once. The coap library buffers each
   * one for up to EXCHANGE_LIFETIME (247 s), so memory is bounded by this × maxPayloadBytes.
   */
  maxBlockTransfers?: number;
}

export interface CoapStatistics extends AdapterStatistics {
  /** Commands sent and not yet answered, timed out or failed. */
  pendingCommands: number;
  commandsSent: number;
  commandsAnswered: number;
  commandTimeouts: number;
  /** Block-wise uploads being reassembled now. */
  blockTransfers: number;
  /** Block-wise uploads refused: too large, no token, or too many at once. */
  blockRefusals: number;
}

export const DEFAULT_COAP_PORT = 5683;

/** CONTRACT §1 codes as CoAP response codes (the HTTP status, dotted, as RFC 7252 §12.1.2 has them). */
const CODE_OF: Record<ErrorCode, string> = { INVALID: "4.00", UNAUTHORIZED: "4.01", NOT_FOUND: "4.04", CONFLICT: "4.09", DEVICE_ERROR: "5.02", UNAVAILABLE: "5.03", TIMEOUT: "5.04" };

/** Above this a command frame goes block-wise: one datagram carries at most 1024 payload bytes. */
const SINGLE_DATAGRAM_PAYLOAD = 1024;
/** An error answer must fit one datagram (the library refuses to build a message above 1152 bytes). */
const MAX_ERROR_MESSAGE = 200;
/** A device's error text kept as the command's error. */
const MAX_DEVICE_ERROR = 1024;

/** The parts of a parsed CoAP packet the adapter reads (the library's own type is not exported). */
interface RawPacket {
  code: string;
  messageId?: number;
  ack?: boolean;
  reset?: boolean;
  token?: Buffer;
  options?: { name: string | number; value: Buffer }[];
  payload?: Buffer;
}

/** A response code, the error for its body, and (RFC 7959 §2.9.3: a 4.13 names the largest body accepted) Size1. */
type Answer = { code: string; error?: TethralError; size1?: number };

type Target = { deviceId: string; kind: DeviceMessageKind; token: string | undefined };

/**
 * CoAP (RFC 7252) for devices: a UDP server where devices POST their reports to
 * `/devices/{id}/{kind}?token=...`, and a client that POSTs commands to `{address}/commands` and
 * takes the answer as the command's result. Request/response only: no observe, no connections.
 */
export class CoapAdapter implements ProtocolAdapter {
  readonly name = "coap";
  private readonly options: Required<CoapAdapterOptions>;
  private context: AdapterContext | null = null;
  private server: Server | null = null;
  private serverSocket: Socket | null = null;
  private boundPort: number | null = null;
  /** One client agent per address family, made on first use; the adapter owns their sockets. */
  private readonly agents = new Map<SocketType, { agent: Agent; socket: Socket }>();
  /** Commands awaiting their answer; stop() rejects them. */
  private readonly pending = new Set<{ cancel(reason: TethralError): void }>();
  /** Answers decided before the library saw a request (block-wise refusals), by packet. */
  private readonly refusals = new WeakMap<object, Answer>();
  private lastError: string | null = null;
  private readonly figures = { commands: 0, answered: 0, timeouts: 0, blockRefusals: 0 };

  constructor({ port, host, enabled, maxBlockTransfers }: CoapAdapterOptions = {}) {
    this.options = { port: port ?? DEFAULT_COAP_PORT, host: host ?? "127.0.0.1", enabled: enabled ?? true, maxBlockTransfers: maxBlockTransfers ?? 16 };
  }

  /** The UDP port the server is bound to (null before start, when disabled, and after stop). */
  get port(): number | null {
    return this.boundPort;
  }

  async start(context: AdapterContext): Promise<void> {
    if (this.context) return;
    if (!this.options.enabled) {
      this.context = context;
      return;
    }
    const type: SocketType = isIPv6(this.options.host) ? "udp6" : "udp4";
    const server = new Server({ type });
    this.installGuard(server); // throws, with nothing bound yet, for a coap library it does not know
    // Our own socket, bound without SO_REUSEADDR (the library's default): a port in use must be an error,
    // not two servers splitting the traffic.
    const socket = createSocket({ type, reuseAddr: false });
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once("error", reject);
        socket.bind(this.options.port, this.options.host, () => {
          socket.off("error", reject);
          resolve();
        });
      });
    } catch (err) {
      socket.close();
      const why = err instanceof Error ? err.message : String(err);
      throw new TethralError("UNAVAILABLE", `CoAP cannot listen on ${this.options.host} port ${this.options.port} (TETHRAL_COAP_PORT): ${why}`);
    }
    this.context = context;
    server.on("request", (req: IncomingMessage, res: OutgoingMessage) => this.onRequest(req, res));
    server.on("error", (err: Error) => this.fault("server socket", err));
    server.listen(socket);
    this.server = server;
    this.serverSocket = socket;
    this.boundPort = socket.address().port;
  }

  async stop(): Promise<void> {
    const context = this.context;
    if (!context) return;
    const stopped = new TethralError("UNAVAILABLE", "the CoAP adapter stopped before the device answered");
    for (const send of [...this.pending]) send.cancel(stopped);
    // server.close() clears the library's response cache (and its retransmission timers) and block caches.
    this.server?.close();
    this.server = null;
    const sockets = [this.serverSocket, ...[...this.agents.values()].map((a) => a.socket)];
    this.agents.clear();
    this.serverSocket = null;
    this.boundPort = null;
    await Promise.all(sockets.map((s) => (s ? closeSocket(s) : undefined)));
    this.context = null;
  }

  isConnected(): undefined {
    return undefined;
  }

  /**
   * Ok while serving. A socket error does not degrade it: the hub holds commands back from a
   * protocol that is not ok, and one bad datagram must not stop them; the error is a figure here.
   */
  health(): ProtocolHealth {
    if (!this.context || !this.server) return this.context ? { status: "stopped", error: "disabled" } : { status: "stopped" };
    return { status: "ok", host: this.options.host, port: this.boundPort, pendingCommands: this.pending.size, lastError: this.lastError };
  }

  statistics(): CoapStatistics {
    return {
      connected: 0,
      pendingCommands: this.pending.size,
      commandsSent: this.figures.commands,
      commandsAnswered: this.figures.answered,
      commandTimeouts: this.figures.timeouts,
      blockTransfers: this.server?._block1Cache._cache.size ?? 0,
      blockRefusals: this.figures.blockRefusals,
    };
  }

  // ── Device → hub ────────────────────────────────────────────────────────────────────────

  private onRequest(req: IncomingMessage, res: OutgoingMessage): void {
    // The library emits an answer it cannot encode as an 'error' event; unheard, that would crash the process.
    res.on("error", (err: Error) => this.fault("answer", err));
    let answer: Answer;
    try {
      answer = this.refusals.get(req._packet) ?? this.route(req);
    } catch (err) {
      this.fault("request", err);
      answer = { code: "5.00", error: new TethralError("UNAVAILABLE", "internal error") };
    }
    try {
      // An Observe GET gets an ObserveWriteStream, which reads statusCode; OutgoingMessage reads code.
      res.code = res.statusCode = answer.code;
      if (answer.size1 !== undefined) res.setOption("Size1", answer.size1);
      if (!answer.error) {
        res.end();
        return;
      }
      res.setOption("Content-Format", "application/json");
      res.end(Buffer.from(JSON.stringify({ error: { code: answer.error.code, message: truncate(answer.error.message) } })));
    } catch (err) {
      this.fault("answer", err);
    }
  }

  private route(req: IncomingMessage): Answer {
    const context = this.context!;
    const target = targetOf(req._packet.options);
    if (!target) {
      context.reject({ reason: "unknown-path", message: "no such resource" });
      return refusal("4.04", "NOT_FOUND", "no such resource: POST /devices/{id}/telemetry|heartbeat|state|status|register|responses");
    }
    if (req.code !== "0.02") {
      context.reject({ deviceId: target.deviceId, kind: target.kind, reason: "wrong-method", message: `${req.method ?? req.code} is not allowed: use POST` });
      return refusal("4.05", "INVALID", `${req.method ?? req.code} is not allowed: use POST`);
    }
    const payload = req.payload ?? Buffer.alloc(0);
    // The hub checks the size too (first, before decoding): it counts and publishes the refusal.
    const result = context.receive({ protocol: this.name, deviceId: target.deviceId, kind: target.kind, payload, token: target.token });
    if (result.ok) return { code: "2.04" };
    if (payload.length > context.maxPayloadBytes) return tooLarge(payload.length, context.maxPayloadBytes);
    return { code: CODE_OF[result.error.code] ?? "5.00", error: result.error };
  }

  /**
   * The coap library reassembles Block1 uploads by itself, with no bound on their size: a last block
   * numbered 2^20 would make it allocate a gigabyte. So every block is checked before the library
   * sees it: the sum must fit maxPayloadBytes, the sender must be a device with a good token (nobody
   * else gets memory held for them), and only `maxBlockTransfers` are buffered at once.
   */
  private installGuard(server: Server): void {
    const guard = (request: { packet?: RawPacket; rsinfo: AddressInfo }, next: (err: Error | null) => void): void => {
      try {
        const packet = request.packet;
        if (packet && packet.code.startsWith("0.") && packet.code !== "0.00" && !packet.ack && !packet.reset) {
          const answer = this.checkBlock(server, packet, request.rsinfo);
          if (answer) {
            // Without its Block1 option the library hands the request straight to onRequest, which answers.
            packet.options = packet.options?.filter((o) => o.name !== "Block1");
            this.refusals.set(packet, answer);
          }
        }
      } catch (err) {
        this.fault("block-wise check", err);
      }
      next(null);
    };
    // The middleware chain is [parseRequest, handleServerRequest] (proxying is off): check in between.
    const at = server._middlewares.findIndex((m) => m.name === "handleServerRequest");
    if (at < 0) throw new TethralError("UNAVAILABLE", "unsupported coap library version: no handleServerRequest middleware");
    server._middlewares.splice(at, 0, guard);
  }

  private checkBlock(server: Server, packet: RawPacket, rsinfo: AddressInfo): Answer | null {
    const option = packet.options?.find((o) => o.name === "Block1");
    if (!option) return null;
    const context = this.context!;
    const refuse = (answer: Answer, counted: boolean): Answer => {
      this.figures.blockRefusals++;
      if (!counted) context.reject({ reason: "block-refused", message: answer.error?.message ?? `block-wise upload refused (${answer.code})` });
      // Drop what the library buffered of this transfer so far (its key: token / client address).
      if (packet.token?.length) server._block1Cache.remove(`${packet.token.toString("hex")}/${rsinfo.address}:${rsinfo.port}`);
      return answer;
    };
    const token = packet.token?.toString("hex") ?? "";
    // A retransmission of a block already answered gets that answer again from the library's cache (keyed
    // as here); checked again, a finished transfer's last block would be counted as a refusal.
    if (server._lru.has(`${rsinfo.address}:${rsinfo.port}/${packet.messageId}${token}`)) return null;
    if (option.value.length > 3) return refuse(refusal("4.00", "INVALID", "a Block1 option has at most 3 bytes"), false);
    const value = option.value.reduce((n, byte) => n * 256 + byte, 0);
    const [num, more, exponent] = [Math.floor(value / 16), (value & 8) !== 0, value & 7];
    if (exponent === 7) return refuse(refusal("4.00", "INVALID", "block size exponent 7 is reserved"), false);
    const end = num * (16 << exponent) + (packet.payload?.length ?? 0);
    const size1 = packet.options?.find((o) => o.name === "Size1")?.value.reduce((n, byte) => n * 256 + byte, 0) ?? 0;
    if (Math.max(end, size1) > context.maxPayloadBytes) {
      return refuse(tooLarge(Math.max(end, size1), context.maxPayloadBytes), false);
    }
    const target = targetOf(packet.options);
    if (!target) return refuse(refusal("4.04", "NOT_FOUND", "no such resource"), false);
    const auth = context.authenticate(this.name, target.deviceId, target.token);
    if (!auth.ok) return refuse({ code: CODE_OF[auth.error.code] ?? "5.00", error: auth.error }, true);
    const key = token === "" ? null : `${token}/${rsinfo.address}:${rsinfo.port}`;
    const buffered = server._block1Cache._cache;
    if (num > 0) {
      // RFC 7959 §2.9.2: 4.08 for a block continuing nothing, or a last block that leaves a gap (which
      // the library would meet with an exception and a buffer kept for minutes).
      const parts = key === null ? undefined : (server._block1Cache.get(key) as Record<string, Buffer> | undefined);
      if (!parts || (!more && !contiguous(parts, end - (packet.payload?.length ?? 0)))) {
        return refuse(refusal("4.08", "INVALID", "request entity incomplete: send the blocks in order from block 0"), false);
      }
    } else if (key !== null && !buffered.has(key) && buffered.size >= this.options.maxBlockTransfers) {
      return refuse(refusal("5.03", "UNAVAILABLE", "too many block-wise transfers in progress: retry later"), false);
    }
    return null;
  }

  // ── Hub → device ────────────────────────────────────────────────────────────────────────

  send(device: Device, frame: CommandFrame, timeoutMs: number): Promise<SendOutcome> {
    const context = this.context;
    if (!context || !this.server) {
      return Promise.reject(new TethralError("UNAVAILABLE", "the CoAP adapter is not running"));
    }
    let target: CommandTarget;
    try {
      target = commandTarget(device);
    } catch (err) {
      return Promise.reject(err);
    }
    const payload = Buffer.from(encodeCommand(frame));
    const agent = this.agentFor(isIPv6(target.hostname) ? "udp6" : "udp4");
    return new Promise<SendOutcome>((resolve, reject) => {
      const req = agent.request({
        hostname: target.hostname,
        port: target.port,
        method: "POST",
        confirmable: true,
        options: { "Uri-Path": target.path, "Uri-Query": target.query },
        contentFormat: "application/json",
      });
      const entry = { cancel: (reason: TethralError) => finish(reason) };
      const timer = setTimeout(() => {
        this.figures.timeouts++;
        finish(new TethralError("TIMEOUT", `no answer from ${target.label} within ${timeoutMs} ms`));
      }, timeoutMs);
      const finish = (error: TethralError | null, outcome?: SendOutcome, abort = true): void => {
        if (!this.pending.delete(entry)) return;
        clearTimeout(timer);
        if (error) {
          // Stops the library's retransmissions and forgets the token: a late answer is refused with a reset.
          // Only once per request: a second abort would unbalance the agent's request count.
          if (abort) agent.abort(req);
          context.counters.errors++;
          reject(error);
        } else {
          this.figures.answered++;
          resolve(outcome!);
        }
      };
      this.pending.add(entry);
      req.on("response", (res: IncomingMessage) => {
        // A reset (RST) is the device's CoAP stack refusing the message, not an answer to the command;
        // the library has closed the exchange already.
        if (res.code === "0.00") finish(new TethralError("UNAVAILABLE", `${target.label} reset the exchange`), undefined, false);
        else finish(null, outcomeOf(res));
      });
      req.on("error", (err: Error) => {
        // The library's own exchange timeout comes as an error and then a timeout, after which it aborts.
        if (!("retransmitTimeout" in err)) finish(new TethralError("UNAVAILABLE", `cannot reach ${target.label}: ${err.message}`));
      });
      req.on("timeout", () => finish(new TethralError("TIMEOUT", `no answer from ${target.label}`), undefined, false));
      // A frame too big for one datagram goes block-wise (RFC 7959); the library segments it, 1024 bytes a block.
      if (payload.length > SINGLE_DATAGRAM_PAYLOAD) req.setOption("Block1", Buffer.of(6));
      try {
        req.end(payload);
        this.figures.commands++;
        context.counters.messagesOut++;
        context.counters.bytesOut += payload.length;
      } catch (err) {
        finish(new TethralError("UNAVAILABLE", `cannot send to ${target.label}: ${err instanceof Error ? err.message : String(err)}`));
      }
    });
  }

  private agentFor(type: SocketType): Agent {
    let entry = this.agents.get(type);
    if (!entry) {
      // Given its socket, the agent never closes it on its own (it does close its own when idle,
      // which races with the next request); stop() closes it.
      const socket = createSocket({ type });
      const agent = new Agent({ socket });
      agent.on("error", (err: Error) => this.fault("client socket", err));
      entry = { agent, socket };
      this.agents.set(type, entry);
    }
    return entry.agent;
  }

  private fault(where: string, err: unknown): void {
    const message = `coap ${where}: ${err instanceof Error ? err.message : String(err)}`;
    this.lastError = message;
    if (this.context) {
      this.context.counters.errors++;
      this.context.warn(message);
    }
  }
}

interface CommandTarget {
  /** For messages: the address without its query, which may carry a credential. */
  label: string;
  hostname: string;
  port: number;
  path: Buffer[];
  query: Buffer[];
}

/** Where a device's commands go: `{address}/commands`, the address a `coap://` URL (RFC 7252 §6.4). */
function commandTarget(device: Device): CommandTarget {
  const address = device.address;
  const refuse = (why: string) => new TethralError("INVALID", `device "${device.id}" ${why}; CoAP commands need an address coap://host[:port][/path]`);
  if (typeof address !== "string" || address.trim() === "") throw refuse("has no address");
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw refuse(`has an address that is not a URL (${address.slice(0, 200)})`);
  }
  if (url.protocol !== "coap:") throw refuse(`has a ${url.protocol.slice(0, -1).slice(0, 20)} address`);
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = url.port === "" ? DEFAULT_COAP_PORT : Number(url.port);
  if (hostname === "" || port === 0) throw refuse(`has no host or port in its address (${address.slice(0, 200)})`);
  // Percent-decoded into the Uri-Path and Uri-Query options, which carry text as is.
  const parts = (text: string, separator: string) => text.split(separator).filter((s) => s !== "").map((s) => Buffer.from(decodeQuery(s)));
  return { label: `coap://${url.host}${url.pathname}`, hostname, port, path: [...parts(url.pathname, "/"), Buffer.from("commands")], query: parts(url.search.slice(1), "&") };
}

/** A device's answer to a command: 2.xx is success with its body as the result, anything else a failure. */
function outcomeOf(res: IncomingMessage): SendOutcome {
  const text = (res.payload ?? Buffer.alloc(0)).toString("utf8");
  if (!res.code.startsWith("2.")) return { status: "answered", ok: false, error: `${res.code} ${text.slice(0, MAX_DEVICE_ERROR)}`.trim() };
  if (text.trim() === "") return { status: "answered", ok: true, result: null };
  try {
    return { status: "answered", ok: true, result: JSON.parse(text) as JsonValue };
  } catch {
    return { status: "answered", ok: true, result: text };
  }
}

/** `/devices/{id}/{kind}` and `?token=` from the raw Uri-Path and Uri-Query options; null for any other path. */
function targetOf(options: RawPacket["options"]): Target | null {
  const path: string[] = [];
  let token: string | undefined;
  for (const option of options ?? []) {
    if (option.name === "Uri-Path") path.push(option.value.toString("utf8"));
    else if (option.name === "Uri-Query" && token === undefined) {
      const q = option.value.toString("utf8");
      if (q.startsWith("token=")) token = decodeQuery(q.slice(6));
    }
  }
  if (path.length !== 3 || path[0] !== "devices" || path[1] === "") return null;
  const kind = KIND_OF_STEP.get(path[2]!);
  return kind ? { deviceId: path[1]!, kind, token } : null;
}

/** Options carry text as is, but a client built on a URL may have percent-encoded it. */
function decodeQuery(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** True when the buffered blocks cover bytes 0 to `upTo` without a gap or an overlap. */
function contiguous(parts: Record<string, Buffer>, upTo: number): boolean {
  let next = 0;
  for (const offset of Object.keys(parts).map(Number).sort((a, b) => a - b)) {
    if (offset !== next) return false;
    next += parts[offset]!.length;
  }
  return next === upTo;
}

function refusal(code: string, errorCode: ErrorCode, message: string): Answer {
  return { code, error: new TethralError(errorCode, message) };
}

function tooLarge(size: number, max: number): Answer {
  return { ...refusal("4.13", "INVALID", `payload of ${size} bytes is larger than the ${max} allowed`), size1: max };
}

function truncate(message: string): string {
  return message.length <= MAX_ERROR_MESSAGE ? message : `${message.slice(0, MAX_ERROR_MESSAGE - 1)}…`;
}

function closeSocket(socket: Socket): Promise<void> {
  return new Promise((resolve) => socket.close(() => resolve()));
}
