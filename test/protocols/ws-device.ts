import { WebSocket, type ClientOptions } from "ws";

/** A refused upgrade as the device sees it. */
export interface Refusal {
  status: number;
  body: string;
}

/**
 * A test device: a `ws` client whose frames queue up for `next()` and whose close is a promise.
 * The twin frames (`desired`, sent on every connect) are set aside in `twins` unless the device
 * is made with `{ twins: true }`: the tests of commands and reports read the frames after them.
 */
export class Device {
  private readonly frames: unknown[] = [];
  /** The `desired` frames received, when they are not read with `next()`. */
  readonly twins: Array<Record<string, unknown>> = [];
  private readonly waiting: Array<(frame: unknown) => void> = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  pings = 0;

  constructor(
    readonly ws: WebSocket,
    readTwins = false,
  ) {
    ws.on("message", (data) => {
      const frame = parse(String(data));
      if (!readTwins && (frame as { type?: unknown } | null)?.type === "desired") {
        this.twins.push(frame as Record<string, unknown>);
        return;
      }
      const w = this.waiting.shift();
      if (w) w(frame);
      else this.frames.push(frame);
    });
    ws.on("ping", () => this.pings++);
    ws.on("error", () => undefined);
    this.closed = new Promise((resolve) => ws.once("close", (code, reason) => resolve({ code, reason: String(reason) })));
  }

  /** Connects, or rejects with the HTTP refusal (or the network error). */
  static connect(url: string, options: ClientOptions & { twins?: boolean } = {}): Promise<Device> {
    const { twins = false, ...wsOptions } = options;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { handshakeTimeout: 5000, ...wsOptions });
      ws.once("open", () => resolve(new Device(ws, twins)));
      ws.once("unexpected-response", (_req, res) => {
        let body = "";
        res.on("data", (chunk: Buffer) => (body += chunk.toString()));
        res.on("end", () => {
          ws.terminate();
          reject(Object.assign(new Error(`refused ${res.statusCode}`), { status: res.statusCode ?? 0, body }));
        });
      });
      ws.once("error", reject);
    });
  }

  /** The HTTP refusal of an upgrade that must fail. */
  static async refusal(url: string, options: ClientOptions = {}): Promise<Refusal> {
    try {
      const d = await Device.connect(url, options);
      d.ws.terminate();
    } catch (err) {
      const { status, body } = err as Partial<Refusal>;
      if (status) return { status, body: body ?? "" };
      throw err;
    }
    throw new Error(`expected ${url} to be refused, but it connected`);
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  next(ms = 5000): Promise<Record<string, unknown>> {
    const queued = this.frames.shift();
    if (queued !== undefined) return Promise.resolve(queued as Record<string, unknown>);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiting.indexOf(take);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new Error("no frame came"));
      }, ms);
      const take = (frame: unknown) => {
        clearTimeout(timer);
        resolve(frame as Record<string, unknown>);
      };
      this.waiting.push(take);
    });
  }

  /** Frames received and not yet taken. */
  get queued(): number {
    return this.frames.length;
  }

  close(): Promise<{ code: number; reason: string }> {
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) this.ws.close();
    return this.closed;
  }

  terminate(): void {
    this.ws.terminate();
  }
}

function parse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
