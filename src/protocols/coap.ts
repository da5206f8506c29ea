import { createSocket, type Socket, type SocketType } from "node:dgram";
import { isIPv6 } from "node:net";
import { Agent, Server, type IncomingMessage, type OutgoingMessage } from "coap";
import { TethralError, errorMessage } from "../core/errors";
import type { Device, DeviceTwin, JsonValue } from "../core/types";
import { type Answer, CODE_OF, CoapIntake, decodeQuery, refusal, resourceOf, tooLarge } from "./coap-intake";
import { DEFAULT_OBSERVE_LIMITS } from "./coap-observe";
import { CoapTwinResource } from "./coap-twin";
import { LINK_FORMAT, coreLinks } from "./coap-wire";
import { busyHealth } from "./intake-hold";
import { isDeviceSide } from "./network-errors";
import { type AdapterContext, type AdapterStatistics, type CommandFrame, type ProtocolAdapter, type ProtocolHealth, type SendOutcome, encodeCommand } from "./types";

export interface CoapAdapterOptions {
  /** UDP port of the hub's CoAP server (CONTRACT §6 `TETHRAL_COAP_PORT`); 0 picks a free one. */
  port?: number;
  /** Interface to bind; an IPv6 address makes the server udp6. */
  host?: string;
  /** False: `start()` binds nothing and `send()` refuses. */
  enabled?: boolean;
  /**
   * Block-wise uploads (RFC 7959 Block1) being reassembled at once: memory is bounded by this ×
   * maxPayloadBytes. Default 16.
   */
  maxBlockTransfers?: number;
  /** Of those, how many one device may hold at once, so it cannot starve the others. Default 2. */
  maxBlockTransfersPerDevice?: number;
  /**
   * An upload no block has reached for this long is forgotten. Default 93 s: MAX_TRANSMIT_WAIT
   * (RFC 7252 §4.8.2), the longest a client keeps trying to get one block across.
   */
  blockTransferIdleMs?: number;
  /** Observations of devices' desired resources (RFC 7641) held at once. Default 10 000. */
  maxObservers?: number;
  /** Of those, how many one device may hold. Default 4. */
  maxObserversPerDevice?: number;
  /** First retransmission timeout of a notification; RFC 7252's 2 s by default (tests shorten it). */
  observeAckTimeoutMs?: number;
}

export interface CoapStatistics extends AdapterStatistics {
  /** Commands sent and not yet answered, timed out or failed. */
  pendingCommands: number;
  commandsSent: number;
  commandsAnswered: number;
  commandTimeouts: number;
  /** Block-wise uploads being reassembled now. */
  blockTransfers: number;
  /** Block-wise uploads refused: too large, no token, out of order, or too many at once. */
  blockRefusals: number;
  /** Datagrams that were not well-formed CoAP (also counted as rejected). */
  malformed: number;
  /** Clients observing a device's desired resource now. */
  observers: number;
  /** Notifications sent, and observers dropped for not acknowledging them. */
  notifications: number;
  observersGone: number;
  /** Reports answered 5.03 (Max-Age) while the hub's intake was busy. */
  busyRefused: number;
}

export const DEFAULT_COAP_PORT = 5683;

/** Above this a command frame goes block-wise: one datagram carries at most 1024 payload bytes. */
const SINGLE_DATAGRAM_PAYLOAD = 1024;
/** An error answer must fit one datagram (the library refuses to build a message above 1152 bytes). */
const MAX_ERROR_MESSAGE = 200;
/** A device's error text kept as the command's error. */
const MAX_DEVICE_ERROR = 1024;

/**
 * CoAP (RFC 7252) for devices: a UDP server where devices POST their reports to
 * `/devices/{id}/{kind}?token=...` (listed at `/.well-known/core`), and a client that POSTs
 * commands to `{address}/commands` and takes the answer as the command's result.
 * A device reads its twin at `/devices/{id}/desired`, and may observe it (RFC 7641). No connections.
 */
/** A report taken, but the hub stopped before it was stored: not acknowledged. */
const STOPPED: Answer = { code: "5.03", error: new TethralError("UNAVAILABLE", "the hub stopped before the report was stored") };

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
  /** Reads every datagram before the library does; decides some answers, reassembles Block1 uploads. */
  private readonly intake: CoapIntake;
  private readonly twin: CoapTwinResource;
  private lastError: string | null = null;
  private readonly figures = { commands: 0, answered: 0, timeouts: 0 };

  constructor(options: CoapAdapterOptions = {}) {
    this.options = {
      port: options.port ?? DEFAULT_COAP_PORT,
      host: options.host ?? "127.0.0.1",
      enabled: options.enabled ?? true,
      maxBlockTransfers: options.maxBlockTransfers ?? 16,
      maxBlockTransfersPerDevice: options.maxBlockTransfersPerDevice ?? 2,
      blockTransferIdleMs: options.blockTransferIdleMs ?? 93_000,
      maxObservers: options.maxObservers ?? DEFAULT_OBSERVE_LIMITS.max,
      maxObserversPerDevice: options.maxObserversPerDevice ?? DEFAULT_OBSERVE_LIMITS.perDevice,
      observeAckTimeoutMs: options.observeAckTimeoutMs ?? DEFAULT_OBSERVE_LIMITS.ackTimeoutMs,
    };
    const { maxBlockTransfers: max, maxBlockTransfersPerDevice: perDevice, blockTransferIdleMs: idleMs } = this.options;
    this.intake = new CoapIntake(this.name, { max, perDevice, idleMs }, (where, err) => this.fault(where, err));
    const { maxObservers, maxObserversPerDevice, observeAckTimeoutMs } = this.options;
    this.twin = new CoapTwinResource(this.name, { ...DEFAULT_OBSERVE_LIMITS, max: maxObservers, perDevice: maxObserversPerDevice, ackTimeoutMs: observeAckTimeoutMs });
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
    this.intake.install(server); // throws, with nothing bound yet, for a coap library it does not know
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
      const why = errorMessage(err);
      throw new TethralError("UNAVAILABLE", `CoAP cannot listen on ${this.options.host} port ${this.options.port} (TETHRAL_COAP_PORT): ${why}`);
    }
    this.context = context;
    this.intake.start(context, (type, messageId, from) => this.twin.observers.settle(type, messageId, from));
    this.twin.start(context, (datagram, to) => socket.send(datagram, to.port, to.address, (err) => err && this.fault("notification", err)));
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
    // Observers hear the hub is going (5.03) while the socket is still open; their timers go too.
    this.twin.stop();
    // dgram sends after an address lookup on the next tick: closing now would drop those 5.03s.
    await new Promise((resolve) => setImmediate(resolve));
    // server.close() clears the library's response cache (and its retransmission timers).
    this.server?.close();
    this.server = null;
    this.intake.stop();
    const sockets = [this.serverSocket, ...[...this.agents.values()].map((a) => a.socket)];
    this.agents.clear();
    this.serverSocket = null;
    this.boundPort = null;
    await Promise.all(sockets.map((s) => (s ? closeSocket(s) : undefined)));
    this.context = null;
  }

  checkAddress(address: string): string | null {
    return targetOf(address) === null ? COAP_ADDRESS : null;
  }

  isConnected(): undefined {
    return undefined;
  }

  /** Observers of the device's desired resource are notified (or, the device removed, told 4.04). */
  twinChanged(deviceId: string, twin: DeviceTwin | null): void {
    this.twin.changed(deviceId, twin);
  }

  /** The device's token was replaced (or it was removed): its observations end. */
  disconnect(deviceId: string, reason: string): void {
    this.twin.revoke(deviceId, reason);
  }

  /**
   * Ok while serving. A socket error does not degrade it: the hub holds commands back from a
   * protocol that is not ok, and one bad datagram must not stop them; the error is a figure here.
   */
  health(): ProtocolHealth {
    if (!this.context || !this.server) return this.context ? { status: "stopped", error: "disabled" } : { status: "stopped" };
    return { status: "ok", host: this.options.host, port: this.boundPort, pendingCommands: this.pending.size, lastError: this.lastError, ...busyHealth(this.context.intake) };
  }

  statistics(): CoapStatistics {
    return {
      connected: 0,
      pendingCommands: this.pending.size,
      commandsSent: this.figures.commands,
      commandsAnswered: this.figures.answered,
      commandTimeouts: this.figures.timeouts,
      blockTransfers: this.intake.blockTransfers,
      blockRefusals: this.intake.figures.blockRefusals,
      malformed: this.intake.figures.malformed,
      observers: this.twin.observers.size,
      notifications: this.twin.observers.figures.notifications,
      observersGone: this.twin.observers.figures.clientsGone,
      busyRefused: this.intake.figures.busyRefused,
    };
  }

  // ── Device → hub ────────────────────────────────────────────────────────────────────────

  private onRequest(req: IncomingMessage, res: OutgoingMessage): void {
    // The library emits an answer it cannot encode as an 'error' event; unheard, that would crash the process.
    res.on("error", (err: Error) => this.fault("answer", err));
    const decision = this.intake.decisionFor(req._packet);
    let answer: Answer | Promise<Answer>;
    try {
      if (decision && "answer" in decision) answer = decision.answer;
      // The last block of an upload: the whole body is the request, and the answer echoes the block.
      else if (decision) {
        const block1 = decision.block1;
        const routed = this.route(req, decision.payload);
        answer = routed instanceof Promise ? routed.then((a) => ({ ...a, block1 })) : { ...routed, block1 };
      } else answer = this.route(req);
    } catch (err) {
      this.fault("request", err);
      answer = { code: "5.00", error: new TethralError("UNAVAILABLE", "internal error") };
    }
    if (answer instanceof Promise) {
      answer.then(
        (a) => this.respond(res, a),
        (err: unknown) => {
          this.fault("request", err);
          this.respond(res, { code: "5.00", error: new TethralError("UNAVAILABLE", "internal error") });
        },
      );
    } else this.respond(res, answer);
  }

  private respond(res: OutgoingMessage, answer: Answer): void {
    try {
      // statusCode, not code: the library's own 4.02 for a Block2 request out of range must win over it.
      res.statusCode = answer.code;
      if (answer.size1 !== undefined) res.setOption("Size1", answer.size1);
      if (answer.maxAge !== undefined) res.setOption("Max-Age", answer.maxAge);
      if (answer.block1) res.setOption("Block1", answer.block1);
      if (answer.observe !== undefined) res.setOption("Observe", answer.observe);
      if (answer.body) {
        res.setOption("Content-Format", answer.body.format);
        res.end(answer.body.payload);
      } else if (answer.error) {
        res.setOption("Content-Format", "application/json");
        res.end(Buffer.from(JSON.stringify({ error: { code: answer.error.code, message: truncate(answer.error.message) } })));
      } else res.end();
    } catch (err) {
      this.fault("answer", err);
    }
  }

  private route(req: IncomingMessage, body?: Buffer): Answer | Promise<Answer> {
    const context = this.context!;
    const target = resourceOf(req._packet.options);
    if (target?.type === "discovery") return this.discovery(req);
    if (target?.type === "desired") return this.twin.answer(req, target, this.intake.observeOf(req._packet));
    if (!target) {
      context.reject({ reason: "unknown-path", message: "no such resource" });
      return refusal("4.04", "NOT_FOUND", "no such resource: POST /devices/{id}/telemetry|heartbeat|state|status|register|responses, GET /devices/{id}/desired");
    }
    if (req.code !== "0.02") {
      context.reject({ deviceId: target.deviceId, kind: target.kind, reason: "wrong-method", message: `${req.method ?? req.code} is not allowed: use POST` });
      return refusal("4.05", "INVALID", `${req.method ?? req.code} is not allowed: use POST`);
    }
    const busy = this.intake.busy(target.kind);
    if (busy) return busy;
    const payload = body ?? req.payload ?? Buffer.alloc(0);
    // The hub checks the size too (first, before decoding): it counts and publishes the refusal.
    const result = context.receive({ protocol: this.name, deviceId: target.deviceId, kind: target.kind, payload, token: target.token });
    // A report is answered 2.04 once what it changed is stored, so a crash loses nothing
    // acknowledged; a command's answer at once (a command's end is written behind it).
    if (result.ok && target.kind === "response") return { code: "2.04" };
    if (result.ok) return context.stored().then((stored) => (stored ? { code: "2.04" } : STOPPED));
    if (payload.length > context.maxPayloadBytes) return tooLarge(payload.length, context.maxPayloadBytes);
    return { code: CODE_OF[result.error.code] ?? "5.00", error: result.error };
  }

  /** `GET /.well-known/core` (RFC 6690): the hub's resources in CoRE link format. */
  private discovery(req: IncomingMessage): Answer {
    const context = this.context!;
    if (req.code !== "0.01") {
      context.reject({ reason: "wrong-method", message: `${req.method ?? req.code} /.well-known/core is not allowed: use GET` });
      return refusal("4.05", "INVALID", `${req.method ?? req.code} is not allowed: use GET`);
    }
    // The library has turned Accept into a media type name (or its number, when it knows none).
    const accept = req.headers.Accept;
    if (accept !== undefined && accept !== "application/link-format") {
      context.reject({ reason: "not-acceptable", message: `/.well-known/core is application/link-format, not ${String(accept)}` });
      return refusal("4.06", "INVALID", "/.well-known/core is application/link-format (40) only");
    }
    const queries = (req._packet.options ?? []).filter((o) => o.name === "Uri-Query").map((o) => o.value.toString("utf8"));
    return { code: "2.05", body: { format: LINK_FORMAT, payload: Buffer.from(coreLinks(queries)) } };
  }

  // ── Hub → device ────────────────────────────────────────────────────────────────────────

  send(device: Device, frame: CommandFrame, timeoutMs: number, handedOver?: () => void): Promise<SendOutcome> {
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
      /** `hubFault`: the hub's own (its socket), counted in the protocol's errors; a device's silence or refusal is not. */
      const finish = (error: TethralError | null, outcome?: SendOutcome, abort = true, hubFault = false): void => {
        if (!this.pending.delete(entry)) return;
        clearTimeout(timer);
        if (error) {
          // Stops the library's retransmissions and forgets the token: a late answer is refused with a reset.
          // Only once per request: a second abort would unbalance the agent's request count.
          if (abort) agent.abort(req);
          if (hubFault) context.counters.errors++;
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
        if (!("retransmitTimeout" in err)) finish(new TethralError("UNAVAILABLE", `cannot reach ${target.label}: ${err.message}`), undefined, true, !isDeviceSide(err));
      });
      req.on("timeout", () => finish(new TethralError("TIMEOUT", `no answer from ${target.label}`), undefined, false));
      // A frame too big for one datagram goes block-wise (RFC 7959); the library segments it, 1024 bytes a block.
      if (payload.length > SINGLE_DATAGRAM_PAYLOAD) req.setOption("Block1", Buffer.of(6));
      // The command has left once its datagram is out (the socket took it), as an HTTP command once
      // its request is written: a device that takes it and answers late, or never, has it `sent`.
      // A block-wise one has left only with its last block, which goes once the device asked for
      // it: it is `sent` with the answer. (The device's empty acknowledgement would say more, but
      // the library takes it without a word.)
      else if (handedOver) req.sender.once("sent", (err: Error | null) => err || handedOver());
      try {
        req.end(payload);
        this.figures.commands++;
        context.counters.messagesOut++;
        context.counters.bytesOut += payload.length;
      } catch (err) {
        finish(new TethralError("UNAVAILABLE", `cannot send to ${target.label}: ${errorMessage(err)}`), undefined, true, true);
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
    const message = `coap ${where}: ${errorMessage(err)}`;
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

/** What a CoAP address that is none must be: the message of `error.details` for `address`. */
const COAP_ADDRESS = "must be a coap:// URL: coap://host[:port][/path]";

/**
 * Where a device's commands go: `{address}/commands`, the address a `coap://` URL (RFC 7252
 * §6.4); null for an address that is none. Read for each command and when an address is set.
 */
function targetOf(address: string): CommandTarget | null {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    return null;
  }
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = url.port === "" ? DEFAULT_COAP_PORT : Number(url.port);
  if (url.protocol !== "coap:" || hostname === "" || port === 0) return null;
  // Percent-decoded into the Uri-Path and Uri-Query options, which carry text as is.
  const parts = (text: string, separator: string) => text.split(separator).filter((s) => s !== "").map((s) => Buffer.from(decodeQuery(s)));
  return { label: `coap://${url.host}${url.pathname}`, hostname, port, path: [...parts(url.pathname, "/"), Buffer.from("commands")], query: parts(url.search.slice(1), "&") };
}

/** The device's command target, or INVALID naming `address`: nothing is sent. */
function commandTarget(device: Device): CommandTarget {
  const address = device.address;
  const refuse = (why: string) => new TethralError("INVALID", `device "${device.id}" ${why}`, [{ field: "address", message: COAP_ADDRESS }]);
  if (typeof address !== "string" || address.trim() === "") throw refuse(`has no address; CoAP commands need one, ${COAP_ADDRESS.slice(8)}`);
  const target = targetOf(address);
  if (target === null) throw refuse(`address ${COAP_ADDRESS} (not ${address.slice(0, 200)})`);
  return target;
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

function truncate(message: string): string {
  return message.length <= MAX_ERROR_MESSAGE ? message : `${message.slice(0, MAX_ERROR_MESSAGE - 1)}…`;
}

function closeSocket(socket: Socket): Promise<void> {
  return new Promise((resolve) => socket.close(() => resolve()));
}
