// A real Node-RED (editor comms, a websocket-in/out echo flow) sharing its HTTP server with the
// Tethral websocket adapter. Run in a child process by websocket.test.ts: Node-RED keeps its
// state in module singletons and starts once per process. Speaks JSON lines: it prints
// events on stdout and takes commands on stdin.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { WebSocketAdapter } from "../../src/protocols/websocket";
import { FakeContext } from "./ws-fake-context";

type Handler = (req: unknown, res: unknown, next?: unknown) => void;
interface Red {
  init(server: unknown, settings: Record<string, unknown>): void;
  start(): Promise<void>;
  stop(): Promise<void>;
  httpAdmin: Handler;
  httpNode: Handler;
}

/** websocket-in on /echo wired to websocket-out on the same listener: it echoes to the sender. */
const FLOWS = [
  { id: "t1", type: "tab", label: "echo" },
  { id: "l1", type: "websocket-listener", path: "/echo", wholemsg: "false" },
  { id: "i1", type: "websocket in", z: "t1", server: "l1", client: "", wires: [["o1"]] },
  { id: "o1", type: "websocket out", z: "t1", server: "l1", client: "", wires: [] },
];

const emit = (event: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(event)}\n`);

async function main(): Promise<void> {
  const userDir = mkdtempSync(path.join(tmpdir(), "tethral-ws-nr-"));
  const flowFile = path.join(userDir, "flows.json");
  writeFileSync(flowFile, JSON.stringify(FLOWS));
  const requireHere = createRequire(__filename);
  const redPath = requireHere.resolve("node-red");
  const RED = requireHere(redPath) as Red;
  const express = createRequire(redPath)("express") as () => Handler & { use(p: string, h: Handler): void };
  const app = express();
  const server = createServer(app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));

  RED.init(server, {
    userDir,
    flowFile,
    httpAdminRoot: "/",
    httpNodeRoot: "/api",
    // Short, so the test can wait past the moment Node-RED cuts upgrades nobody answered.
    inboundWebSocketTimeout: 300,
    logging: { console: { level: "off" } },
    telemetry: { enabled: false, updateNotification: false },
    editorTheme: { tours: false },
  });
  app.use("/", RED.httpAdmin);
  app.use("/api", RED.httpNode);

  const ctx = new FakeContext();
  // The one device the parent connects as: id and token on the command line.
  ctx.devices.set(process.argv[2] ?? "boiler-1", process.argv[3]);
  const origReceive = ctx.receive.bind(ctx);
  ctx.receive = (m) => {
    const r = origReceive(m);
    emit({ event: "received", kind: m.kind, deviceId: m.deviceId, ok: r.ok });
    return r;
  };
  // Attached before Node-RED starts: its comms and websocket-node listeners come after ours.
  const adapter = new WebSocketAdapter({ server, pingIntervalMs: 60_000 });
  await adapter.start(ctx);
  await RED.start();
  const listeners = () => server.listeners("upgrade").map((f) => f.name || "anonymous");
  emit({ event: "ready", port: (server.address() as AddressInfo).port });
  let rival: WebSocketAdapter | null = null;

  for await (const line of createInterface({ input: process.stdin })) {
    const command = line.trim();
    if (command === "listeners") {
      emit({ event: "listeners", listeners: listeners() });
    } else if (command === "stop-adapter") {
      await adapter.stop();
      emit({ event: "adapter-stopped", listeners: listeners(), listening: server.listening, warnings: ctx.warnings });
    } else if (command === "rival-start") {
      // A Tethral path that a websocket node (/echo under httpNodeRoot /api) already has, with
      // our listener moved first: whatever the order, the node keeps it and nothing throws.
      rival = new WebSocketAdapter({ server, path: "/api/echo" });
      await rival.start(ctx);
      const all = server.listeners("upgrade") as Array<(...args: unknown[]) => void>;
      server.removeAllListeners("upgrade");
      for (const f of [all[all.length - 1]!, ...all.slice(0, -1)]) server.on("upgrade", f);
      emit({ event: "rival-started", listeners: listeners() });
    } else if (command === "rival-stop") {
      await rival?.stop();
      emit({ event: "rival-stopped", warnings: ctx.warnings });
    } else if (command === "exit") {
      break;
    }
  }
  await adapter.stop();
  await rival?.stop();
  await RED.stop();
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
  rmSync(userDir, { recursive: true, force: true });
  process.exit(0);
}

main().catch((err: unknown) => {
  emit({ event: "failed", error: String((err as Error)?.stack ?? err) });
  process.exit(1);
});
