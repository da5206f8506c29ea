import { type Server, createServer } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { WebSocketServer } from "ws";

/**
 * A shared HTTP server as Node-RED has one: plain requests answered, and another websocket
 * endpoint (`/other`, echoing) on the same 'upgrade' event, leaving other paths alone as
 * Node-RED's listeners do.
 */
export interface SharedServer {
  server: Server;
  other: WebSocketServer;
  base: string;
  close(): Promise<void>;
}

export async function sharedServer(): Promise<SharedServer> {
  const server = createServer((_req, res) => res.end("plain"));
  // Upgraded and unanswered sockets are not the server's to close any more: tracked here so
  // close() can cut them, as an unhandled upgrade nobody reads would hold server.close() open.
  const sockets = new Set<Socket>();
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  const other = new WebSocketServer({ noServer: true });
  other.on("connection", (ws) => ws.on("message", (data) => ws.send(`echo:${String(data)}`)));
  server.on("upgrade", (req, socket, head) => {
    if (req.url === "/other") other.handleUpgrade(req, socket, head, (ws) => other.emit("connection", ws, req));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    server,
    other,
    base: `ws://127.0.0.1:${port}`,
    close: async () => {
      for (const ws of other.clients) ws.terminate();
      other.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        for (const s of sockets) s.destroy();
      });
    },
  };
}

/** The plain HTTP answer of the shared server: it must keep serving while the adapter runs and after. */
export async function plainGet(base: string): Promise<string> {
  const res = await fetch(`${base.replace("ws:", "http:")}/`, { headers: { Connection: "close" } });
  return res.text();
}
