import { WebSocket } from "ws";
import type { DeviceSpec } from "./options";
import { type DeviceHost, SimulatedDevice, type Telemetry } from "./device";
import { parseCommand } from "./frames";

const HANDSHAKE_TIMEOUT_MS = 10_000;
/** How long a stopping device waits for the hub to answer its close frame. */
const CLOSE_GRACE_MS = 1000;

/**
 * A WebSocket device (CONTRACT §2): connects to `{endpoint}?device={id}&token=...`, sends
 * `{"type": "telemetry", "data"}` frames and answers `{"type": "command"}` frames with
 * `{"type": "response", "id", "ok", "result"|"error"}`.
 */
export class WebSocketDevice extends SimulatedDevice {
  private ws: WebSocket | null = null;

  constructor(
    spec: DeviceSpec,
    token: string | undefined,
    host: DeviceHost,
    private readonly endpoint: string,
  ) {
    super(spec, token, host);
  }

  get connected(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  protected override canReport(): boolean {
    return this.connected;
  }

  protected open(): void {
    const url = new URL(this.endpoint);
    url.searchParams.set("device", this.id);
    if (this.token !== undefined) url.searchParams.set("token", this.token);
    const ws = new WebSocket(url, { handshakeTimeout: HANDSHAKE_TIMEOUT_MS, perMessageDeflate: false });
    this.ws = ws;
    ws.on("open", () => this.up());
    ws.on("message", (data) => this.frame(ws, String(data)));
    ws.on("error", (err) => {
      if (this.ws === ws) this.host.emit("problem", { deviceId: this.id, category: "websocket-connection", message: `${this.id}: WebSocket ${err.message}` });
    });
    ws.on("close", (code, reason) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.lost(`closed (${code}${reason.length ? ` ${String(reason)}` : ""})`);
    });
  }

  private frame(ws: WebSocket, text: string): void {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      value = null;
    }
    if ((value as { type?: unknown } | null)?.type !== "command") return;
    const frame = parseCommand(value);
    if (!frame) return;
    this.handleCommand(frame, (answer) => {
      const current = this.ws ?? ws;
      if (current.readyState === WebSocket.OPEN) current.send(JSON.stringify({ type: "response", id: frame.id, ...answer }));
    });
  }

  protected report(data: Telemetry): Promise<void> {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error("not connected"));
    return new Promise((resolve, reject) => ws.send(JSON.stringify({ type: "telemetry", data }), (err) => (err ? reject(err) : resolve())));
  }

  protected close(how: "drop" | "stop"): Promise<void> {
    const ws = this.ws;
    this.ws = null;
    if (!ws || ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => ws.terminate(), CLOSE_GRACE_MS);
      ws.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
      // A dropped device just vanishes; a stopping one says goodbye (1001 going away).
      if (how === "drop" || ws.readyState === WebSocket.CONNECTING) ws.terminate();
      else ws.close(1001, "simulator stopping");
    });
  }
}
