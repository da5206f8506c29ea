import { type Socket, createSocket } from "node:dgram";
import { isIPv6 } from "node:net";
import { Agent, Server, type IncomingMessage, type OutgoingMessage } from "coap";
import { errorMessage } from "../../core/errors";
import type { SimulatedDevice } from "./device";
import { parseCommand } from "./frames";
import { SimulationError } from "./support";

/** How long a report waits for the hub's answer (the library would retransmit for ~90 s). */
const REPORT_TIMEOUT_MS = 5000;

interface PendingReport {
  cancel(reason: Error): void;
}

/**
 * The simulator's one CoAP endpoint, shared by every CoAP device: a client socket for reports
 * (`POST coap://HUB/devices/{id}/telemetry?token=`) and one server on an ephemeral UDP port for
 * commands, where device `{id}` lives at `/sim/{id}` (its registered address) and the hub POSTs
 * `{address}/commands`. One socket pair for a whole fleet instead of two per device.
 */
export class CoapTransport {
  private server: Server | null = null;
  private socket: Socket | null = null;
  private agent: Agent | null = null;
  private port = 0;
  private readonly pending = new Set<PendingReport>();
  /** Commands not answered yet (a slow device's): their ACK timers must not outlive stop(). */
  private readonly open = new Set<OutgoingMessage>();
  private readonly hub: { hostname: string; port: number };

  constructor(
    hubUrl: string,
    private readonly listenHost: string,
    private readonly lookup: (id: string) => SimulatedDevice | undefined,
    private readonly onProblem: (message: string) => void,
  ) {
    const url = new URL(hubUrl);
    this.hub = { hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"), port: url.port === "" ? 5683 : Number(url.port) };
  }

  async start(): Promise<void> {
    const server = new Server({ type: isIPv6(this.listenHost) ? "udp6" : "udp4" }, (req: IncomingMessage, res: OutgoingMessage) => this.command(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, this.listenHost, (err?: Error) => (err ? reject(err) : resolve()));
    }).catch((err: unknown) => {
      throw new SimulationError(`cannot open the CoAP command server on ${this.listenHost} (--listen): ${errorMessage(err)}`);
    });
    server.on("error", (err: Error) => this.onProblem(`CoAP command server: ${err.message}`));
    this.server = server;
    this.port = (server._sock as Socket).address().port;
    this.socket = createSocket(isIPv6(this.hub.hostname) ? "udp6" : "udp4");
    this.agent = new Agent({ socket: this.socket });
    this.agent.on("error", (err: Error) => this.onProblem(`CoAP client: ${err.message}`));
  }

  /** The address a device registers: where the hub sends its commands. */
  addressOf(id: string): string {
    const host = isIPv6(this.listenHost) ? `[${this.listenHost}]` : this.listenHost;
    return `coap://${host}:${this.port}/sim/${encodeURIComponent(id)}`;
  }

  /** One report; resolves on 2.xx, rejects with the hub's code and message otherwise. */
  report(id: string, token: string | undefined, kind: string, data: object): Promise<void> {
    const agent = this.agent;
    if (!agent) return Promise.reject(new Error("the CoAP transport is not running"));
    const req = agent.request({
      hostname: this.hub.hostname,
      port: this.hub.port,
      method: "POST",
      confirmable: true,
      pathname: `/devices/${id}/${kind}`,
      ...(token === undefined ? {} : { query: `token=${encodeURIComponent(token)}` }),
      contentFormat: "application/json",
    });
    return new Promise<void>((resolve, reject) => {
      const entry: PendingReport = { cancel: (reason) => finish(reason, true) };
      const timer = setTimeout(() => finish(new Error(`no answer within ${REPORT_TIMEOUT_MS / 1000} s`), true), REPORT_TIMEOUT_MS);
      const finish = (error: Error | null, abort: boolean): void => {
        if (!this.pending.delete(entry)) return;
        clearTimeout(timer);
        // Stops the library's retransmissions; once per request, or the agent's count goes wrong.
        if (abort) agent.abort(req);
        if (error) reject(error);
        else resolve();
      };
      this.pending.add(entry);
      req.on("response", (res: IncomingMessage) => {
        if (res.code.startsWith("2.")) return finish(null, false);
        finish(new Error(`${res.code} ${answerText(res)}`.trim()), false);
      });
      req.on("error", (err: Error) => {
        if (!("retransmitTimeout" in err)) finish(err, true);
      });
      req.on("timeout", () => finish(new Error("no answer"), false));
      req.end(Buffer.from(JSON.stringify(data)));
    });
  }

  async stop(): Promise<void> {
    const stopped = new Error("the simulation stopped");
    for (const entry of [...this.pending]) entry.cancel(stopped);
    for (const res of this.open) if (res._ackTimer) clearTimeout(res._ackTimer);
    this.open.clear();
    const { server, socket } = this;
    this.server = this.socket = this.agent = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    if (socket) await new Promise<void>((resolve) => socket.close(() => resolve()));
  }

  /** `POST /sim/{id}/commands`: 2.05 with the JSON result, 5.00 with the error text, silence while the device is away. */
  private command(req: IncomingMessage, res: OutgoingMessage): void {
    const match = /^\/sim\/([^/?]+)\/commands(?:\?|$)/.exec(req.url);
    const device = match ? this.lookup(decodeURIComponent(match[1]!)) : undefined;
    if (!device || req.method !== "POST") return answer(res, "4.04", "no such simulated device");
    const frame = parseCommand(req.payload.toString("utf8"));
    if (!frame) return answer(res, "4.00", 'a command is {"id", "command", "params"} JSON');
    this.open.add(res);
    const answering = device.handleCommand(frame, (reply) => {
      if (!this.open.delete(res)) return;
      if (reply.ok) answer(res, "2.05", JSON.stringify(reply.result ?? null), true);
      else answer(res, "5.00", reply.error);
    });
    if (!answering) {
      // Away: not even an ACK, as from a device that is switched off. The hub retransmits, then gives up.
      this.open.delete(res);
      if (res._ackTimer) clearTimeout(res._ackTimer);
      res._ackTimer = null;
    }
  }
}

function answer(res: OutgoingMessage, code: string, body: string, json = false): void {
  res.code = code;
  if (json) res.setOption("Content-Format", "application/json");
  res.end(body);
}

/** The hub's error message from its JSON error body, else the body as text. */
function answerText(res: IncomingMessage): string {
  const text = (res.payload ?? Buffer.alloc(0)).toString("utf8");
  try {
    const message = (JSON.parse(text) as { error?: { message?: unknown } }).error?.message;
    if (typeof message === "string") return message;
  } catch {
    // not JSON: the text itself
  }
  return text.slice(0, 200);
}
