import { type IncomingMessage, type Server, STATUS_CODES, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { type RawData, WebSocket, WebSocketServer } from "ws";
import { type ErrorCode, TethralError, errorMessage } from "../core/errors";
import { presentedToken } from "../core/tokens";
import { encodeTwin } from "../core/twin";
import type { Device, DeviceTwin } from "../core/types";
import { busyHealth } from "./intake-hold";
import { closeServer, listen } from "./listen";
import { PendingWrites } from "./pending-writes";
import {
  type AdapterContext,
  type AdapterStatistics,
  type CommandFrame,
  type DeviceMessage,
  type DeviceMessageKind,
  type ProtocolAdapter,
  type ProtocolHealth,
  type SendOutcome,
  encodeCommand,
} from "./types";
import { FRAME_KINDS, type Frame, asBuffer, payloadOf } from "./websocket-frames";

export interface WebSocketAdapterOptions {
  /** The HTTP server to share (Node-RED's, `RED.server`). Without one the adapter serves its own. */
  server?: Server;
  /** Exact request path devices connect to, from the server's root. Default `/tethral/ws`. */
  path?: string;
  /** Own server only: port (default 0, any free port) and interface (default 127.0.0.1). */
  port?: number;
  host?: string;
  /** Largest frame accepted, in bytes. Default the hub's `maxPayloadBytes`. */
  maxPayload?: number;
  /** Keep-alive ping period; a peer that has not answered the previous ping is dropped. Default 30 s. */
  pingIntervalMs?: number;
  /** Bytes a connection may have queued unsent before commands to it are refused. Default 1 MiB. */
  sendBufferLimit?: number;
  /** How long stop() waits for clients to answer the close frame before cutting them. Default 1 s. */
  closeGraceMs?: number;
}

export const DEFAULT_WEBSOCKET_PATH = "/tethral/ws";
const DEFAULT_PING_INTERVAL_MS = 30_000;
const DEFAULT_SEND_BUFFER_LIMIT = 1024 * 1024;
const DEFAULT_CLOSE_GRACE_MS = 1000;

/** Close codes a device sees (4000-4999 are for applications, RFC 6455 §7.4.2). */
export const CLOSE_REPLACED = 4001;
/** The device's credentials stopped being valid (token replaced, device removed). */
export const CLOSE_POLICY_VIOLATION = 1008;
const CLOSE_GOING_AWAY = 1001;

interface Connection {
  readonly deviceId: string;
  readonly ws: WebSocket;
  /**
   * False for a device unknown at connect (self-registration on): its messages carry the
   * connect token for the hub to check each time, since the id may meanwhile be registered by
   * someone else with another token. It is also the token a `register` frame registers.
   */
  readonly known: boolean;
  readonly token: string | undefined;
  /** Cleared at each ping, set by the pong: still false at the next ping means the peer is gone. */
  alive: boolean;
}

/**
 * Devices over WebSocket (CONTRACT §2) on a path of Node-RED's own HTTP server. It takes only
 * upgrades for its exact path and leaves every other one alone: Node-RED's editor (`/comms`)
 * and its websocket nodes listen on the same server's 'upgrade' event, and none of them
 * destroys a socket it does not own. A device authenticates before the upgrade completes, and
 * holds at most one connection: a newer one replaces the older.
 */
export class WebSocketAdapter implements ProtocolAdapter {
  readonly name = "websocket";
  private context: AdapterContext | null = null;
  private wss: WebSocketServer | null = null;
  private server: Server | null = null;
  /** Whether this adapter holds its path on the shared server (see `pathsInUse`). */
  private claimedPath = false;
  private ownServer = false;
  private pingTimer: NodeJS.Timeout | null = null;
  private stopping: Promise<void> | null = null;
  private readonly connections = new Map<string, Connection>();
  private readonly pending = new PendingWrites(() => this.context?.counters ?? null);
  private readonly figures = { upgradesRefused: 0, replaced: 0, deadPeersDropped: 0, framesRejected: 0, sendsRefused: 0, twinsSent: 0, pauses: 0 };
  private offIntake: (() => void) | null = null;

  constructor(private readonly options: WebSocketAdapterOptions = {}) {}

  get path(): string {
    return this.options.path ?? DEFAULT_WEBSOCKET_PATH;
  }

  /** The own server's address (null when sharing a server or not started). */
  address(): AddressInfo | null {
    return this.ownServer && this.server ? (this.server.address() as AddressInfo | null) : null;
  }

  async start(context: AdapterContext): Promise<void> {
    if (this.context || this.stopping) throw new TethralError("UNAVAILABLE", "the websocket adapter starts once");
    if (!this.path.startsWith("/") || /[?#\s]/.test(this.path)) {
      throw new TethralError("INVALID", `websocket path must start with "/" and hold no query: "${this.path}"`);
    }
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: this.options.maxPayload ?? context.maxPayloadBytes,
      // Compression costs memory per connection and a decompression bomb risk; device frames are small.
      perMessageDeflate: false,
    });
    if (this.options.server) {
      // Two hubs on one server and path would each take the other's devices for unknown ones.
      const paths = pathsInUse.get(this.options.server) ?? new Set<string>();
      if (paths.has(this.path)) {
        this.wss.close();
        this.wss = null;
        throw new TethralError("CONFLICT", `another Tethral hub already serves WebSocket devices at ${this.path} on this server: give this hub another WebSocket path, or turn its WebSocket off`);
      }
      paths.add(this.path);
      pathsInUse.set(this.options.server, paths);
      this.claimedPath = true;
      this.server = this.options.server;
    } else {
      this.server = createServer((_req, res) => {
        res.writeHead(426, { "Content-Type": "text/plain", Connection: "close" }).end("Upgrade Required");
      });
      this.ownServer = true;
      try {
        await listen(this.server, this.options.port ?? 0, this.options.host ?? "127.0.0.1");
      } catch (err) {
        this.wss.close();
        this.wss = this.server = null;
        throw err;
      }
    }
    this.context = context;
    this.server.on("upgrade", this.onUpgrade);
    const interval = this.options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS;
    // After this turn's socket reads: in a loop held past the period (a suspended VM, say) a
    // pong that came in time is read before its connection is judged gone.
    this.pingTimer = setInterval(() => setImmediate(() => this.pingAll()), interval);
    this.offIntake = context.intake.onChange((busy) => {
      for (const conn of this.connections.values()) this.reading(conn, !busy);
    });
  }

  /**
   * While the intake is busy no device socket is read (ws pauses the socket under it): a frame
   * already read still reaches the hub, the rest wait in the socket and TCP slows the device.
   */
  private reading(conn: Connection, on: boolean): void {
    if (on === !conn.ws.isPaused) return;
    if (on) {
      // Its pongs were not read either: a full ping period from now before it counts as gone.
      conn.alive = true;
      conn.ws.resume();
    } else {
      conn.ws.pause();
      if (conn.ws.isPaused) this.figures.pauses++;
    }
  }

  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
    this.offIntake?.();
    this.offIntake = null;
    // Read again, or no client's answer to the close frame would be heard.
    for (const conn of this.connections.values()) this.reading(conn, true);
    // Only our own listener: the server and every other listener on it belong to Node-RED.
    this.server?.off("upgrade", this.onUpgrade);
    if (this.claimedPath && this.options.server) pathsInUse.get(this.options.server)?.delete(this.path);
    this.claimedPath = false;
    this.pending.rejectAll("the websocket adapter stopped");
    // Every client, replaced ones still closing included.
    const clients = [...(this.wss?.clients ?? [])];
    const closing = clients.map(closed);
    for (const ws of clients) ws.close(CLOSE_GOING_AWAY, "hub stopping");
    const grace = setTimeout(() => {
      for (const ws of clients) ws.terminate();
    }, this.options.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS);
    await Promise.all(closing);
    clearTimeout(grace);
    this.wss?.close();
    this.wss = null;
    if (this.ownServer && this.server) await closeServer(this.server);
    this.server = null;
    this.context = null;
  }

  send(device: Device, frame: CommandFrame, timeoutMs: number): Promise<SendOutcome> {
    const context = this.context;
    const conn = this.connections.get(device.id);
    // A connection made before its device was known never takes commands: reconnecting with the token makes it known.
    if (!context || this.stopping || !conn || !conn.known || conn.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new TethralError("UNAVAILABLE", `device "${device.id}" is not connected over websocket`));
    }
    const text = encodeCommand(frame, { type: "command" });
    const bytes = Buffer.byteLength(text);
    const limit = this.options.sendBufferLimit ?? DEFAULT_SEND_BUFFER_LIMIT;
    // A device that does not read must not make the hub hold an ever-growing queue for it.
    if (conn.ws.bufferedAmount + bytes > limit) {
      this.figures.sendsRefused++;
      context.counters.errors++;
      return Promise.reject(
        new TethralError("UNAVAILABLE", `device "${device.id}" is not reading: ${conn.ws.bufferedAmount} bytes already wait to be sent`),
      );
    }
    // The write callback waits for the kernel to take the bytes; a stuck peer must not hold the attempt for ever.
    return this.pending.write(
      bytes,
      timeoutMs,
      `command frame to "${device.id}" not flushed within ${timeoutMs} ms`,
      (err) => `command frame to "${device.id}" not sent: ${err.message}`,
      (done) => conn.ws.send(text, (err) => done(err)),
    );
  }

  isConnected(deviceId: string): boolean {
    const conn = this.connections.get(deviceId);
    return conn !== undefined && conn.known && conn.ws.readyState === WebSocket.OPEN;
  }

  /** A `{"type": "desired", ...}` frame to the device, if it is connected (CONTRACT §2). */
  twinChanged(deviceId: string, twin: DeviceTwin | null): void {
    const conn = this.connections.get(deviceId);
    // A removed device's connection is closed by disconnect(); one not known yet has no twin.
    if (twin && conn?.known) this.sendTwin(conn, twin);
  }

  private sendTwin(conn: Connection, twin: DeviceTwin): void {
    const ws = conn.ws;
    const text = encodeTwin(twin, { type: "desired" });
    const bytes = Buffer.byteLength(text);
    const context = this.context;
    if (!context || ws.readyState !== WebSocket.OPEN) return;
    // A device that does not read gets no growing queue; it hears the twin when it connects again.
    if (ws.bufferedAmount + bytes > (this.options.sendBufferLimit ?? DEFAULT_SEND_BUFFER_LIMIT)) {
      this.figures.sendsRefused++;
      context.counters.errors++;
      return;
    }
    this.figures.twinsSent++;
    context.counters.messagesOut++;
    context.counters.bytesOut += bytes;
    ws.send(text);
  }

  /** Closes the device's connection (its token was replaced, or it was removed). */
  disconnect(deviceId: string, reason: string): void {
    const conn = this.connections.get(deviceId);
    if (!conn) return;
    this.connections.delete(deviceId);
    conn.ws.close(CLOSE_POLICY_VIOLATION, reason.slice(0, 100));
    if (conn.known) this.context?.disconnected(deviceId);
  }

  health(): ProtocolHealth {
    if (!this.context || this.stopping) return { status: "stopped", path: this.path };
    if (this.ownServer && !this.server?.listening) return { status: "degraded", error: "own server not listening", path: this.path };
    return { status: "ok", path: this.path, connected: this.connections.size, ...busyHealth(this.context.intake) };
  }

  statistics(): AdapterStatistics {
    let paused = 0;
    for (const conn of this.connections.values()) if (conn.ws.isPaused) paused++;
    return { connected: this.connections.size, path: this.path, paused, ...this.figures };
  }

  // An arrow so `off` removes exactly the function `on` added.
  private readonly onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const url = req.url ?? "";
    const q = url.indexOf("?");
    if ((q < 0 ? url : url.slice(0, q)) !== this.path) {
      // Not ours. On a shared server another listener may own it; on our own nobody will.
      if (this.ownServer) refuse(socket, 404, "NOT_FOUND", "no websocket endpoint at this path");
      return;
    }
    // Until someone handles it, a client reset must not be an unhandled 'error' that kills the process.
    const early = () => socket.destroy();
    socket.on("error", early);
    // Decided on the next turn, after every synchronous 'upgrade' listener has run: if a
    // Node-RED websocket node was given this same path it answers first and we stand back.
    // Calling handleUpgrade on a socket already upgraded would throw inside the server's emit.
    setImmediate(() => {
      socket.off("error", early);
      try {
        this.accept(req, socket, head, q < 0 ? "" : url.slice(q + 1));
      } catch (err) {
        this.context?.warn(`websocket upgrade failed: ${errorMessage(err)}`);
        socket.destroy();
      }
    });
  };

  private accept(req: IncomingMessage, socket: Duplex, head: Buffer, query: string): void {
    const context = this.context;
    const wss = this.wss;
    if ((socket as { bytesWritten?: number }).bytesWritten || socket.destroyed) {
      this.context?.warn(`another handler answered a websocket upgrade on ${this.path}: give the Tethral websocket path its own value`);
      return;
    }
    if (!context || !wss || this.stopping) return refuse(socket, 503, "UNAVAILABLE", "the hub is stopping");
    const params = new URLSearchParams(query);
    const deviceId = params.get("device");
    if (!deviceId) {
      this.figures.upgradesRefused++;
      context.reject({ kind: "connect", reason: "no-device-id", message: 'the query must name the device: "?device=ID"' });
      return refuse(socket, 400, "INVALID", 'the query must name the device: "?device=ID"');
    }
    const token = presentedToken(req.headers.authorization, params.get("token") ?? undefined);
    const auth = context.authenticate(this.name, deviceId, token);
    if (!auth.ok) {
      // Counted and published by the hub.
      this.figures.upgradesRefused++;
      return refuse(socket, auth.error.status, auth.error.code, auth.error.message);
    }
    const { known } = auth;
    wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, auth.deviceId, known, token));
  }

  private onConnection(ws: WebSocket, deviceId: string, known: boolean, token: string | undefined): void {
    const context = this.context;
    if (!context || this.stopping) {
      ws.close(CLOSE_GOING_AWAY, "hub stopping");
      return;
    }
    const conn: Connection = { deviceId, ws, known, token, alive: true };
    const previous = this.connections.get(deviceId);
    this.connections.set(deviceId, conn);
    if (previous) {
      this.figures.replaced++;
      this.reading(previous, true);
      previous.ws.close(CLOSE_REPLACED, "replaced by a newer connection of this device");
    }
    ws.on("pong", () => (conn.alive = true));
    ws.on("message", (data, isBinary) => this.onFrame(conn, data, isBinary));
    ws.on("error", (err: Error & { code?: string }) => {
      // ws closes the connection itself after any of these (1009 too big, 1007 bad UTF-8, ...).
      if (err.code?.startsWith("WS_ERR_")) {
        this.figures.framesRejected++;
        context.reject({ deviceId, reason: err.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH" ? "too-large" : "invalid-frame", message: err.message });
      } else {
        context.counters.errors++;
      }
      context.warn(`websocket device "${deviceId}": ${err.message}`);
    });
    ws.on("close", () => {
      // A replaced connection closing is not the device going away: its successor is live.
      if (this.connections.get(deviceId) !== conn) return;
      this.connections.delete(deviceId);
      if (conn.known) context.disconnected(deviceId);
    });
    if (known) {
      // The twin first, then any commands waiting: a device learns what is desired of it as it
      // connects (CONTRACT §2), an empty one included: a device that kept a setpoint from before
      // hears that nothing is desired any more.
      const twin = context.twin(deviceId);
      if (twin) this.sendTwin(conn, twin);
      context.connected(deviceId);
    }
    if (context.intake.busy) this.reading(conn, false);
  }

  private onFrame(conn: Connection, data: RawData, isBinary: boolean): void {
    const context = this.context;
    if (!context) return;
    // The hub counts the bytes of raw payloads only; these arrive decoded, so they are counted here.
    const bytes = asBuffer(data);
    context.counters.bytesIn += bytes.length;
    try {
      if (isBinary) return this.rejectFrame(conn, "binary frames are not accepted: send JSON text");
      let frame: unknown;
      try {
        frame = JSON.parse(bytes.toString("utf8"));
      } catch {
        return this.rejectFrame(conn, "the frame is not JSON");
      }
      if (frame === null || typeof frame !== "object" || Array.isArray(frame)) return this.rejectFrame(conn, "the frame must be a JSON object");
      const type = (frame as Frame).type;
      if (typeof type !== "string" || !FRAME_KINDS.has(type)) {
        return this.rejectFrame(conn, `unknown frame type: expected one of ${[...FRAME_KINDS].join(", ")}`);
      }
      const kind = type as DeviceMessageKind;
      const message: DeviceMessage = { protocol: this.name, deviceId: conn.deviceId, kind, payload: payloadOf(kind, frame as Frame) };
      if (conn.known) message.authenticated = true;
      else message.token = conn.token;
      const result = context.receive(message);
      if (!result.ok) this.sendError(conn, result.error.code, result.error.message);
    } catch (err) {
      // The hub promises not to throw; a handler that did would otherwise kill the process.
      context.counters.errors++;
      context.warn(`websocket frame from "${conn.deviceId}": ${errorMessage(err)}`);
    }
  }

  private rejectFrame(conn: Connection, message: string): void {
    this.figures.framesRejected++;
    this.context!.reject({ deviceId: conn.deviceId, reason: "invalid-frame", message });
    this.sendError(conn, "INVALID", message);
  }

  private sendError(conn: Connection, code: ErrorCode, message: string): void {
    const ws = conn.ws;
    const limit = this.options.sendBufferLimit ?? DEFAULT_SEND_BUFFER_LIMIT;
    // A device flooding bad frames without reading gets no answers rather than a growing queue.
    if (ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > limit) return;
    const text = JSON.stringify({ type: "error", code, message });
    const counters = this.context!.counters;
    counters.messagesOut++;
    counters.bytesOut += Buffer.byteLength(text);
    ws.send(text);
  }

  private pingAll(): void {
    if (this.stopping) return;
    for (const conn of this.connections.values()) {
      if (!conn.alive && !conn.ws.isPaused) {
        this.figures.deadPeersDropped++;
        conn.ws.terminate();
        continue;
      }
      conn.alive = false;
      try {
        conn.ws.ping();
      } catch {
        // Not open any more: its close event does the bookkeeping.
      }
    }
  }
}

/** The device paths Tethral's WebSocket adapters serve on each shared server: one adapter a path. */
const pathsInUse = new WeakMap<Server, Set<string>>();

/** Answers an upgrade with a plain HTTP error on the raw socket, then drops it. */
function refuse(socket: Duplex, status: number, code: ErrorCode, message: string): void {
  // A client that resets meanwhile must not raise an unhandled 'error'.
  socket.on("error", () => socket.destroy());
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify({ error: { code, message, details: [] } });
  const head = [
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Error"}`,
    "Connection: close",
    "Content-Type: application/json",
    `Content-Length: ${Buffer.byteLength(body)}`,
    ...(status === 401 ? ['WWW-Authenticate: Bearer realm="tethral"'] : []),
  ];
  socket.once("finish", () => socket.destroy());
  socket.end(`${head.join("\r\n")}\r\n\r\n${body}`);
}

function closed(ws: WebSocket): Promise<void> {
  return ws.readyState === WebSocket.CLOSED ? Promise.resolve() : new Promise((resolve) => ws.once("close", () => resolve()));
}
