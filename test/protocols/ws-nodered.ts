import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { WebSocket } from "ws";
import { Device } from "./ws-device";

export type ChildEvent = { event: string } & Record<string, unknown>;

/**
 * The Node-RED of ws-nodered-child.ts, in its own process, seen from the test: the events it
 * prints, and the commands it takes.
 */
export class NodeRedChild {
  readonly events: ChildEvent[] = [];
  private readonly waiters: Array<{ match: (e: ChildEvent) => boolean; resolve: (e: ChildEvent) => void }> = [];
  private readonly exited: Promise<number | null>;
  private stderr = "";

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    createInterface({ input: child.stdout }).on("line", (line) => {
      let event: ChildEvent;
      try {
        event = JSON.parse(line) as ChildEvent;
      } catch {
        return; // Node-RED's own output
      }
      this.events.push(event);
      for (const w of [...this.waiters]) {
        if (!w.match(event)) continue;
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(event);
      }
    });
    child.stderr.on("data", (chunk: Buffer) => (this.stderr = (this.stderr + chunk.toString()).slice(-4000)));
    this.exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  }

  static async start(deviceId: string, token: string): Promise<{ child: NodeRedChild; port: number }> {
    const script = path.join(__dirname, "ws-nodered-child.ts");
    const proc = spawn(process.execPath, ["--require", "tsx/cjs", script, deviceId, token], { cwd: path.resolve(__dirname, "..", "..") });
    const child = new NodeRedChild(proc);
    const ready = await child.next((e) => e.event === "ready" || e.event === "failed", 30_000);
    if (ready.event !== "ready") throw new Error(`Node-RED did not start: ${String(ready.error)}`);
    return { child, port: ready.port as number };
  }

  /** The first event, already printed or to come, that matches. */
  next(match: (e: ChildEvent) => boolean, ms = 10_000): Promise<ChildEvent> {
    const seen = this.events.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no such event from Node-RED; stderr: ${this.stderr}`)), ms);
      this.waiters.push({
        match,
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
      });
    });
  }

  command(line: string): void {
    this.child.stdin.write(`${line}\n`);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    this.command("exit");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

/**
 * The adapter on a real Node-RED's HTTP server, beside the editor's comms and a websocket node.
 * Called from websocket.test.ts.
 */
export function nodeRedSuite(): void {
  describe("WebSocketAdapter on a real Node-RED's server", nodeRedSpecs);
}

const TOKEN = "s3cret-token-of-boiler-1";

function nodeRedSpecs(this: Mocha.Suite): void {
  // Node-RED starts in a few seconds; everything after is quick.
  this.timeout(60_000);
  let nodeRed: NodeRedChild;
  let base: string;
  const devices: Device[] = [];

  before(async function () {
    const started = await NodeRedChild.start("boiler-1", TOKEN);
    nodeRed = started.child;
    base = `ws://127.0.0.1:${started.port}`;
  });

  after(async function () {
    for (const d of devices.splice(0)) d.terminate();
    await nodeRed?.stop();
  });

  async function open(url: string): Promise<Device> {
    const d = await Device.connect(url);
    devices.push(d);
    return d;
  }

  /** The editor's comms: subscribing brings the retained runtime notifications. */
  async function editorWorks(): Promise<void> {
    const comms = await open(`${base}/comms`);
    comms.send({ subscribe: "notification/#" });
    const batch = await comms.next();
    assert.ok(Array.isArray(batch) && batch.length > 0, `the editor's comms answered: ${JSON.stringify(batch)}`);
    comms.terminate();
  }

  /** A websocket-in node on /echo (under httpNodeRoot /api) wired to a websocket-out. */
  async function websocketNodeWorks(): Promise<void> {
    const echo = await open(`${base}/api/echo`);
    echo.send("ping-from-test");
    assert.equal(await echo.next(), "ping-from-test");
    echo.terminate();
  }

  it("serves devices while the editor's comms and a websocket node work on the same server", async function () {
    await editorWorks();
    await websocketNodeWorks();
    const d = await open(`${base}/tethral/ws?device=boiler-1&token=${TOKEN}`);
    assert.equal((await Device.refusal(`${base}/tethral/ws?device=boiler-1&token=wrong`)).status, 401);
    // Node-RED cuts upgrades nobody answered after inboundWebSocketTimeout (300 ms here): ours were answered.
    await new Promise((r) => setTimeout(r, 600));
    d.send({ type: "telemetry", data: { temperature: 20 } });
    const received = await nodeRed.next((e) => e.event === "received" && e.kind === "telemetry");
    assert.equal(received.ok, true);
    assert.equal(d.ws.readyState, WebSocket.OPEN);
    await editorWorks();
    await websocketNodeWorks();
  });

  it("stands back when a websocket node has its path, whatever the listeners' order, and nothing throws", async function () {
    nodeRed.command("rival-start");
    const started = await nodeRed.next((e) => e.event === "rival-started");
    assert.equal((started.listeners as string[])[0], "onUpgrade", "the rival's listener runs first");
    const d = await open(`${base}/api/echo?device=boiler-1&token=${TOKEN}`);
    d.send("still-the-node");
    assert.equal(await d.next(), "still-the-node");
    nodeRed.command("rival-stop");
    const stopped = await nodeRed.next((e) => e.event === "rival-stopped");
    assert.match(String(stopped.warnings), /another handler answered a websocket upgrade on \/api\/echo/);
    await editorWorks();
  });

  it("stops without touching Node-RED: its listeners stay, the server keeps listening, the editor and nodes keep working", async function () {
    nodeRed.command("listeners");
    const before = await nodeRed.next((e) => e.event === "listeners");
    assert.ok((before.listeners as string[]).includes("onUpgrade"));
    nodeRed.command("stop-adapter");
    const stopped = await nodeRed.next((e) => e.event === "adapter-stopped");
    assert.equal(stopped.listening, true);
    const after = stopped.listeners as string[];
    assert.ok(!after.includes("onUpgrade"), `ours is gone: ${after.join(", ")}`);
    // The editor's comms ("upgrade"), the websocket nodes' and the runtime's unanswered-upgrade timeout stay.
    assert.deepEqual(after, (before.listeners as string[]).filter((n) => n !== "onUpgrade"));
    assert.ok(after.includes("upgrade") && after.includes("handleServerUpgrade"), after.join(", "));
    await editorWorks();
    await websocketNodeWorks();
    // Nobody answers our path now: Node-RED's own timeout cuts it.
    await assert.rejects(Device.connect(`${base}/tethral/ws?device=boiler-1&token=${TOKEN}`));
  });
}
