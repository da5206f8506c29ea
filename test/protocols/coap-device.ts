import { createSocket, type Socket } from "node:dgram";
import { Agent, Server, type IncomingMessage, type OutgoingMessage } from "coap";
import { Hub, type HubOptions } from "../../src/core/hub";
import { Intake } from "../../src/core/intake";
import { CoapAdapter, type CoapAdapterOptions } from "../../src/protocols/coap";
import type { AdapterContext } from "../../src/protocols/types";

/** The device every CoAP test registers first. */
export const ID = "boiler-1";

/** A hub serving CoAP on an ephemeral port, one registered device (ID) with its token, and that device's client. */
export async function startCoapHub(options: HubOptions = {}, adapterOptions: CoapAdapterOptions = {}) {
  const adapter = new CoapAdapter({ port: 0, ...adapterOptions });
  const warnings: string[] = [];
  const hub = new Hub({ protocols: [adapter], onWarning: (m) => warnings.push(m), commands: { retryBaseDelayMs: 10, retryMaxDelayMs: 20 }, ...options });
  await hub.start();
  const { token } = await hub.registerDevice({ id: ID, protocol: "coap" });
  const device = new CoapDevice(adapter.port!);
  const coap = () => hub.communicationStatistics().protocols.coap!;
  return { hub, adapter, device, token: token!, warnings, coap };
}

export type CoapHub = Awaited<ReturnType<typeof startCoapHub>>;

/** What a CoAP exchange brought back: the code (`2.04`), the body as text, and the options by number. */
export interface CoapAnswer {
  code: string;
  body: string;
  options: Map<number, Buffer>;
  /** Message type and id, where the answer came as a raw datagram (RawClient). */
  type?: "CON" | "NON" | "ACK" | "RST";
  messageId?: number;
}

/**
 * A device speaking CoAP with the coap library's own client, on a socket of its own so tests
 * never share the library's global agent. `close()` in an after hook.
 */
export class CoapDevice {
  private readonly socket = createSocket("udp4");
  private readonly agent = new Agent({ socket: this.socket });

  constructor(private readonly port: number) {}

  /** `POST /devices/{id}/{kind}?token=` (or another method/path) and the answer. */
  request(path: string, payload: string | Buffer = "", options: { method?: "GET" | "POST" | "PUT" | "DELETE"; query?: string } = {}): Promise<CoapAnswer> {
    return new Promise((resolve, reject) => {
      const req = this.agent.request({
        hostname: "127.0.0.1",
        port: this.port,
        method: options.method ?? "POST",
        pathname: path,
        query: options.query,
      });
      // A body larger than one datagram goes block-wise, as a real device library would send it.
      if (Buffer.byteLength(payload) > 1024) req.setOption("Block1", Buffer.of(6));
      req.on("response", (res: IncomingMessage) => resolve(answerOf(res.code, res.payload, res._packet.options ?? [])));
      req.on("error", reject);
      req.end(payload);
    });
  }

  report(id: string, kind: string, token: string | undefined, payload: unknown): Promise<CoapAnswer> {
    const body = typeof payload === "string" || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload);
    return this.request(`/devices/${id}/${kind}`, body, { query: token === undefined ? undefined : `token=${token}` });
  }

  private closed = false;

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

function answerOf(code: string, payload: Buffer | undefined, options: { name: string | number; value: unknown }[]): CoapAnswer {
  const byNumber = new Map<number, Buffer>();
  for (const o of options) {
    const number = typeof o.name === "number" ? o.name : OPTION_NUMBERS[o.name];
    if (number !== undefined && Buffer.isBuffer(o.value)) byNumber.set(number, o.value);
    else if (number !== undefined && typeof o.value === "number") byNumber.set(number, uint(o.value));
  }
  return { code, body: (payload ?? Buffer.alloc(0)).toString("utf8"), options: byNumber };
}

const OPTION_NUMBERS: Record<string, number> = { "Uri-Path": 11, "Content-Format": 12, "Max-Age": 14, "Uri-Query": 15, Block1: 27, Size1: 60 };

// ── Raw datagrams: what no well-behaved client library would send ─────────────────────────

export interface RawRequest {
  code?: string;
  /** Non-confirmable (NON) instead of confirmable (CON). */
  nonConfirmable?: boolean;
  messageId: number;
  token: Buffer;
  /** [option number, value], in any order. */
  options: [number, Buffer][];
  payload?: Buffer;
}

/** Encodes a confirmable CoAP request (RFC 7252 §3) with no size limit. */
export function encode(request: RawRequest): Buffer {
  const [cls, detail] = (request.code ?? "0.02").split(".").map(Number) as [number, number];
  const type = request.nonConfirmable ? 0x10 : 0x00;
  const parts: Buffer[] = [Buffer.of(0x40 | type | request.token.length, (cls << 5) | detail, request.messageId >> 8, request.messageId & 0xff), request.token];
  let previous = 0;
  for (const [number, value] of [...request.options].sort((a, b) => a[0] - b[0])) {
    const [deltaNibble, deltaExt] = nibble(number - previous);
    const [lengthNibble, lengthExt] = nibble(value.length);
    parts.push(Buffer.of((deltaNibble << 4) | lengthNibble), deltaExt, lengthExt, value);
    previous = number;
  }
  if (request.payload && request.payload.length > 0) parts.push(Buffer.of(0xff), request.payload);
  return Buffer.concat(parts);
}

function nibble(n: number): [number, Buffer] {
  if (n < 13) return [n, Buffer.alloc(0)];
  if (n < 269) return [13, Buffer.of(n - 13)];
  return [14, Buffer.of((n - 269) >> 8, (n - 269) & 0xff)];
}

export function uint(n: number): Buffer {
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  return Buffer.from(bytes);
}

/** A Block1 option value: block number, more flag and size exponent (RFC 7959 §2.2). */
export function block1(num: number, more: boolean, exponent: number): Buffer {
  const value = num * 16 + (more ? 8 : 0) + exponent;
  const out = uint(value);
  return out.length === 0 ? Buffer.of(0) : out;
}

/** The path and token options of a device report. */
export function reportOptions(id: string, kind: string, token?: string): [number, Buffer][] {
  const options: [number, Buffer][] = ["devices", id, kind].map((s) => [11, Buffer.from(s)] as [number, Buffer]);
  if (token !== undefined) options.push([15, Buffer.from(`token=${token}`)]);
  return options;
}

function decode(datagram: Buffer): CoapAnswer {
  const tokenLength = datagram[0]! & 0x0f;
  const code = `${datagram[1]! >> 5}.${String(datagram[1]! & 0x1f).padStart(2, "0")}`;
  const options = new Map<number, Buffer>();
  let at = 4 + tokenLength;
  let number = 0;
  while (at < datagram.length && datagram[at] !== 0xff) {
    let delta = datagram[at]! >> 4;
    let length = datagram[at]! & 0x0f;
    at++;
    [delta, at] = extended(datagram, delta, at);
    [length, at] = extended(datagram, length, at);
    number += delta;
    options.set(number, datagram.subarray(at, at + length));
    at += length;
  }
  const body = at < datagram.length ? datagram.subarray(at + 1).toString("utf8") : "";
  const type = (["CON", "NON", "ACK", "RST"] as const)[(datagram[0]! >> 4) & 3];
  return { code, body, options, type, messageId: datagram.readUInt16BE(2) };
}

/** An option delta or length nibble of 13 or 14 continues in the next one or two bytes. */
function extended(datagram: Buffer, nibble: number, at: number): [number, number] {
  if (nibble === 13) return [13 + datagram[at]!, at + 1];
  if (nibble === 14) return [269 + datagram.readUInt16BE(at), at + 2];
  return [nibble, at];
}

/** A bare UDP socket that sends hand-made datagrams and reads the answers in order. */
export class RawClient {
  private readonly socket: Socket = createSocket("udp4");
  private readonly answers: CoapAnswer[] = [];
  private waiting: ((answer: CoapAnswer) => void) | null = null;
  private nextId = 1;

  constructor(private readonly port: number) {
    this.socket.on("message", (datagram: Buffer) => {
      const answer = decode(datagram);
      if (answer.code === "0.00" && answer.type === "ACK") return; // an empty ACK ahead of a separate answer
      if (this.waiting) {
        const deliver = this.waiting;
        this.waiting = null;
        deliver(answer);
      } else this.answers.push(answer);
    });
  }

  /** Sends one request (a new message id unless one is given: a retransmission) and resolves with the next answer. */
  send(request: Omit<RawRequest, "messageId"> & { messageId?: number }): Promise<CoapAnswer> {
    const datagram = encode({ ...request, messageId: request.messageId ?? this.nextId++ });
    return new Promise((resolve, reject) => {
      const queued = this.answers.shift();
      if (queued) return resolve(queued);
      this.waiting = resolve;
      this.socket.send(datagram, this.port, "127.0.0.1", (err) => err && reject(err));
    });
  }

  /** Sends bytes as they are (a malformed datagram) and resolves with the answer, or null when none comes within `ms`. */
  sendRaw(datagram: Buffer, ms = 300): Promise<CoapAnswer | null> {
    const queued = this.answers.shift();
    if (queued) return Promise.resolve(queued);
    const answer = this.next(ms);
    return new Promise((resolve, reject) => {
      this.socket.send(datagram, this.port, "127.0.0.1", (err) => (err ? reject(err) : resolve(answer)));
    });
  }

  /** The next datagram the hub sends unasked (a notification), or null when none comes within `ms`. */
  next(ms = 2000): Promise<CoapAnswer | null> {
    const queued = this.answers.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        resolve(null);
      }, ms);
      this.waiting = (answer) => {
        clearTimeout(timer);
        resolve(answer);
      };
    });
  }

  /** An empty ACK or RST (RFC 7252 §4.2) for a confirmable message the hub sent. */
  settle(type: "ACK" | "RST", messageId: number): void {
    this.socket.send(Buffer.of(type === "ACK" ? 0x60 : 0x70, 0x00, messageId >> 8, messageId & 0xff), this.port, "127.0.0.1");
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

// ── A device that takes commands ───────────────────────────────────────────────────────────

export type CommandHandler = (frame: { id: string; command: string; params: unknown }, res: OutgoingMessage, req: IncomingMessage) => void;

/**
 * A device serving `POST /commands` with the coap library's server on its own port. `handler`
 * answers (or, by not ending `res`, stays silent). `close()` stops it; `listen()` brings it back
 * on the same port, as a device that went offline and returned.
 */
export class CoapCommandDevice {
  readonly received: { path: string; frame: { id: string; command: string; params: unknown } }[] = [];
  private server: Server | null = null;
  /** Answers the handler left open: the library would send their ACK on a closed socket (and throw). */
  private readonly open = new Set<OutgoingMessage>();
  port = 0;

  constructor(
    public handler: CommandHandler,
    private readonly host = "127.0.0.1",
  ) {}

  get address(): string {
    return `coap://${this.host}:${this.port}`;
  }

  async listen(port = this.port): Promise<void> {
    const server = new Server((req: IncomingMessage, res: OutgoingMessage) => {
      const frame = JSON.parse(req.payload.toString("utf8")) as { id: string; command: string; params: unknown };
      this.received.push({ path: req.url, frame });
      this.handler(frame, res, req);
      if (!res.writableEnded) this.open.add(res);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, this.host, () => resolve());
    });
    this.server = server;
    this.port = (server._sock as Socket).address().port;
  }

  close(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (!server) return Promise.resolve();
    for (const res of this.open) if (res._ackTimer) clearTimeout(res._ackTimer);
    this.open.clear();
    return new Promise((resolve) => server.close(() => resolve()));
  }
}


/** A device whose CoAP stack refuses every message with a reset (RST), as one without the resource might. */
export async function resettingDevice(): Promise<{ address: string; received: () => number; close: () => Promise<void> }> {
  const socket = createSocket("udp4");
  let received = 0;
  socket.on("message", (datagram: Buffer, from) => {
    received++;
    socket.send(Buffer.of(0x70, 0x00, datagram[2]!, datagram[3]!), from.port, from.address); // type RST, same message id
  });
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return {
    address: `coap://127.0.0.1:${socket.address().port}`,
    received: () => received,
    close: () => new Promise((resolve) => socket.close(() => resolve())),
  };
}

/** What the hub gives an adapter, standing in for it: `receive` as given, every device authenticated. */
export function standInContext(receive: AdapterContext["receive"], warnings: string[] = [], intake = new Intake(10, 0)): AdapterContext {
  const counters = { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0, rejected: 0, errors: 0 };
  return {
    receive,
    reject: () => {
      counters.rejected++;
    },
    authenticate: (_protocol, deviceId) => ({ ok: true, deviceId, known: true }),
    connected: () => undefined,
    disconnected: () => undefined,
    twin: () => null,
    twins: () => [],
    counters,
    maxPayloadBytes: 1024,
    warn: (m) => warnings.push(m),
    intake,
    stored: () => Promise.resolve(true),
  };
}
export { until } from "../helpers";
