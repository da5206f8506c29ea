import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import { isIPv6 } from "node:net";
import { type ListenError, closeServer, listen } from "../../protocols/listen";
import type { SimulatedDevice } from "./device";
import { parseCommand } from "./frames";
import { SimulationError, readCapped } from "./support";

const MAX_COMMAND_BYTES = 256 * 1024;

/**
 * The HTTP command server shared by every HTTP device: one server on an ephemeral port, device
 * `{id}` at `POST /sim/{id}` (its registered address). 200 with the JSON result is success, 500
 * with the error text a failure; a device that is away cuts the connection, as an unreachable one would.
 */
export class HttpTransport {
  private server: Server | null = null;
  private port = 0;

  constructor(
    private readonly listenHost: string,
    private readonly lookup: (id: string) => SimulatedDevice | undefined,
  ) {}

  async start(): Promise<void> {
    const server = createServer((req, res) => this.command(req, res));
    try {
      this.port = await listen(server, 0, this.listenHost);
    } catch (err) {
      throw new SimulationError(`cannot open the HTTP command server on ${this.listenHost} (--listen): ${(err as ListenError).reason}`);
    }
    this.server = server;
  }

  addressOf(id: string): string {
    const host = isIPv6(this.listenHost) ? `[${this.listenHost}]` : this.listenHost;
    return `http://${host}:${this.port}/sim/${encodeURIComponent(id)}`;
  }

  stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    return server ? closeServer(server) : Promise.resolve();
  }

  private command(req: IncomingMessage, res: ServerResponse): void {
    const match = /^\/sim\/([^/?]+)\/?(?:\?|$)/.exec(req.url ?? "");
    const device = match ? this.lookup(decodeURIComponent(match[1]!)) : undefined;
    if (!device) return void reply(res, 404, "text/plain", "no such simulated device");
    if (req.method !== "POST") return void reply(res, 405, "text/plain", "commands are POSTed");
    readCapped(req, MAX_COMMAND_BYTES).then(({ text, over }) => {
      const frame = over ? null : parseCommand(text);
      if (!frame) return reply(res, 400, "text/plain", 'a command is {"id", "command", "params"} JSON');
      const answering = device.handleCommand(frame, (answer) => {
        if (answer.ok) reply(res, 200, "application/json", JSON.stringify(answer.result ?? null));
        else reply(res, 500, "text/plain", answer.error);
      });
      if (!answering) req.socket.destroy();
    }, () => req.socket.destroy());
  }
}

function reply(res: ServerResponse, status: number, type: string, body: string): void {
  if (res.writableEnded || res.destroyed) return;
  res.writeHead(status, { "Content-Type": `${type}; charset=utf-8` }).end(body);
}
