import assert from "node:assert/strict";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { Hub } from "../../src/core/hub";
import type { Device } from "../../src/core/types";
import { HttpAdapter } from "../../src/protocols/http";
import type { CommandFrame } from "../../src/protocols/types";
import { assertRejectsCode, closedPort } from "../helpers";
import { FakeContext } from "./ws-fake-context";

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
}

/** A device that answers commands by path, and remembers what it was sent. */
async function deviceServer(): Promise<{ base: string; seen: Seen[]; close(): Promise<void> }> {
  const seen: Seen[] = [];
  const sockets = new Set<Socket>();
  const routes: Record<string, (body: string, res: ServerResponse) => void> = {
    "/ok": (body, res) => json(res, 200, { echoed: JSON.parse(body) as unknown }),
    "/empty": (_b, res) => res.writeHead(204).end(),
    "/text": (_b, res) => res.writeHead(200, { "Content-Type": "text/plain" }).end("done"),
    "/broken-json": (_b, res) => res.writeHead(200, { "Content-Type": "application/json; charset=utf-8" }).end("{not json"),
    "/vendor-json": (_b, res) => res.writeHead(200, { "Content-Type": "application/vnd.acme+json" }).end('{"done":true}'),
    "/fail500": (_b, res) => res.writeHead(500, { "Content-Type": "text/plain" }).end(`boom ${"!".repeat(5000)}`),
    "/fail404": (_b, res) => json(res, 404, { error: "no such command" }),
    "/redirect": (_b, res) => res.writeHead(307, { Location: "/ok" }).end(),
    "/slow": () => undefined, // never answers
    "/300k": (_b, res) => json(res, 200, { blob: "y".repeat(300 * 1024) }),
    "/big": (_b, res) => {
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ blob: "x".repeat(2 * 1024 * 1024) }));
    },
  };
  const server: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      const route = routes[req.url!.split("?")[0]!];
      if (route) route(body, res);
      else res.writeHead(404).end();
    });
  });
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(body));
}


function device(address: string | undefined): Device {
  return { id: "valve-1", name: "valve-1", protocol: "http", address, capabilities: [], tags: [], metadata: {}, status: "online", lastSeen: null, createdAt: "", updatedAt: "" };
}

const frame: CommandFrame = { id: "c1", command: "open", params: { percent: 40 } };

describe("HttpAdapter", function () {
  let dev: Awaited<ReturnType<typeof deviceServer>>;
  let ctx: FakeContext;
  let adapter: HttpAdapter;

  beforeEach(async function () {
    dev = await deviceServer();
    ctx = new FakeContext();
    adapter = new HttpAdapter();
    await adapter.start(ctx);
  });

  afterEach(async function () {
    await adapter.stop();
    await dev.close();
  });

  it("posts the command as JSON and takes a 2xx JSON answer as success", async function () {
    const outcome = await adapter.send(device(`${dev.base}/ok?key=1`), frame, 5000);
    assert.deepEqual(outcome, { status: "answered", ok: true, result: { echoed: { id: "c1", command: "open", params: { percent: 40 } } } });
    const [req] = dev.seen;
    assert.equal(req!.method, "POST");
    assert.equal(req!.url, "/ok?key=1");
    assert.equal(req!.headers["content-type"], "application/json");
    assert.equal(req!.headers.connection, "close", "no pooled socket is left behind");
    assert.equal(ctx.counters.messagesOut, 1);
    assert.equal(ctx.counters.bytesOut, Buffer.byteLength(JSON.stringify(frame)));
    assert.equal(adapter.isConnected(), undefined);
  });

  it("takes an empty 2xx answer as success with a null result, and a text one as its text", async function () {
    assert.deepEqual(await adapter.send(device(`${dev.base}/empty`), frame, 5000), { status: "answered", ok: true, result: null });
    assert.deepEqual(await adapter.send(device(`${dev.base}/text`), frame, 5000), { status: "answered", ok: true, result: "done" });
    assert.deepEqual(await adapter.send(device(`${dev.base}/vendor-json`), frame, 5000), { status: "answered", ok: true, result: { done: true } });
  });

  it("takes a 2xx answer labelled JSON whose body is not JSON as a failure, not a text result", async function () {
    assert.deepEqual(await adapter.send(device(`${dev.base}/broken-json`), frame, 5000), {
      status: "answered",
      ok: false,
      error: "HTTP 200: the answer is labelled JSON but is not JSON: {not json",
    });
  });

  it("takes a non-2xx answer as the device's refusal, with the status and a short part of the body", async function () {
    const e500 = await adapter.send(device(`${dev.base}/fail500`), frame, 5000);
    assert.equal(e500.status, "answered");
    assert.ok(e500.status === "answered" && !e500.ok);
    assert.match(e500.error, /^HTTP 500: boom !+$/);
    assert.ok(e500.error.length <= 220, `short: ${e500.error.length}`);
    const e404 = await adapter.send(device(`${dev.base}/fail404`), frame, 5000);
    assert.deepEqual(e404, { status: "answered", ok: false, error: 'HTTP 404: {"error":"no such command"}' });
    // A redirect is an answer, not an invitation to post the command elsewhere.
    const moved = await adapter.send(device(`${dev.base}/redirect`), frame, 5000);
    assert.deepEqual(moved, { status: "answered", ok: false, error: "HTTP 307" });
    assert.deepEqual(dev.seen.map((s) => s.url), ["/fail500", "/fail404", "/redirect"]);
    assert.equal(adapter.statistics().refusedByDevice, 3);
  });

  it("reads at most maxResponseBytes of an answer", async function () {
    await adapter.stop();
    adapter = new HttpAdapter({ maxResponseBytes: 64 * 1024 });
    await adapter.start(ctx);
    const outcome = await adapter.send(device(`${dev.base}/big`), frame, 5000);
    assert.deepEqual(outcome, { status: "answered", ok: false, error: "HTTP 200: the answer is larger than 65536 bytes" });
  });

  it("rejects with TIMEOUT when the device does not answer in time, and counts it: the request had left all the same (handed over, counted out)", async function () {
    let handed = 0;
    const err = await assertRejectsCode(() => adapter.send(device(`${dev.base}/slow`), frame, 200, () => handed++), "TIMEOUT");
    assert.match(err.message, /valve-1.*200 ms/);
    assert.equal(dev.seen.length, 1, "the device got it");
    assert.equal(handed, 1, "said to have left, once");
    assert.equal(ctx.counters.messagesOut, 1);
    assert.equal(ctx.counters.errors, 0, "a device that does not answer is no fault of the hub's");
    assert.equal(adapter.statistics().timedOut, 1);
    assert.equal(adapter.statistics().inFlight, 0);
  });

  it("rejects with UNAVAILABLE when nothing listens at the address", async function () {
    const port = await closedPort();
    let handed = 0;
    const err = await assertRejectsCode(() => adapter.send(device(`http://127.0.0.1:${port}/cmd`), frame, 5000, () => handed++), "UNAVAILABLE");
    assert.match(err.message, /unreachable.*ECONNREFUSED/);
    assert.equal(handed, 0, "nothing left");
    assert.equal(ctx.counters.errors, 0, "nor one that cannot be reached");
    assert.equal(adapter.statistics().failed, 1, "counted as the adapter's failed request");
    assert.equal(ctx.counters.messagesOut, 0);
  });

  it("counts in the protocol's errors a request the hub itself could not make (a header it cannot send), not a device's failures", async function () {
    await adapter.stop();
    adapter = new HttpAdapter({ headers: { "X-Key": "line\nbreak" } });
    await adapter.start(ctx);
    const err = await assertRejectsCode(() => adapter.send(device(`${dev.base}/ok`), frame, 5000), "UNAVAILABLE");
    assert.match(err.message, /could not post/);
    assert.equal(ctx.counters.errors, 1);
    assert.equal(dev.seen.length, 0);
  });

  it("rejects a missing or unusable address with INVALID, sending nothing", async function () {
    for (const address of [undefined, "", "not a url", "coap://10.0.0.5/cmd", "ftp://host/x", "file:///etc/passwd", `http://user:pw@127.0.0.1/ok`]) {
      await assertRejectsCode(() => adapter.send(device(address), frame, 5000), "INVALID", "address");
    }
    assert.equal(dev.seen.length, 0);
    assert.equal(ctx.counters.messagesOut, 0);
  });

  it("stop() aborts the requests in flight, and refuses new ones", async function () {
    const pending = adapter.send(device(`${dev.base}/slow`), frame, 60_000);
    await new Promise<void>((resolve) => {
      const check = () => (dev.seen.length ? resolve() : setTimeout(check, 5));
      check();
    });
    assert.equal(adapter.statistics().inFlight, 1);
    await adapter.stop();
    const err = await assertRejectsCode(() => pending, "UNAVAILABLE");
    assert.match(err.message, /stopped/);
    assert.equal(adapter.health().status, "stopped");
    await assertRejectsCode(() => adapter.send(device(`${dev.base}/ok`), frame, 5000), "UNAVAILABLE");
  });
});

describe("HttpAdapter in a Hub", function () {
  let dev: Awaited<ReturnType<typeof deviceServer>>;
  let hub: Hub;

  beforeEach(async function () {
    dev = await deviceServer();
    hub = new Hub({ protocols: [new HttpAdapter()], commands: { retryBaseDelayMs: 10 }, onWarning: () => undefined });
    await hub.start();
  });

  afterEach(async function () {
    await hub.stop();
    await dev.close();
  });

  async function command(path: string, input: Record<string, unknown> = {}) {
    const id = `dev${path.replace(/\W/g, "-")}`;
    await hub.registerDevice({ id, protocol: "http", address: `${dev.base}${path}` });
    return hub.sendCommand(id, { command: "open", params: { percent: 40 }, wait: true, timeout: 5, ...input });
  }

  it("a command succeeds with the device's JSON answer as its result", async function () {
    const done = await command("/ok");
    assert.equal(done.status, "succeeded");
    assert.deepEqual(done.result, { echoed: { id: done.id, command: "open", params: { percent: 40 } } });
    const stats = hub.communicationStatistics().protocols.http!;
    assert.equal(stats.messagesOut, 1);
    assert.equal(stats.status, "ok");
  });

  it("a command whose answer's result is over 256 KiB of JSON fails, as on MQTT and WebSocket, and keeps none of it", async function () {
    const done = await command("/300k");
    assert.equal(done.status, "failed");
    assert.equal(done.result, null);
    assert.match(String(done.error), /the device's answer was refused: result .*262144/);
  });

  it("a command fails with the device's refusal", async function () {
    const done = await command("/fail404");
    assert.equal(done.status, "failed");
    assert.equal(done.error, 'HTTP 404: {"error":"no such command"}');
  });

  it("a command the device received and did not answer is sent while it waits (sentAt, command.sent), and timed out after", async function () {
    await hub.registerDevice({ id: "dev-slow-sent", protocol: "http", address: `${dev.base}/slow` });
    const events: string[] = [];
    hub.subscribe({ types: "command.*" }, (e) => void events.push(e.type));
    const queued = await hub.sendCommand("dev-slow-sent", { command: "open", timeout: 2 });
    const start = Date.now();
    while (dev.seen.length === 0 && Date.now() - start < 5000) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50));
    const waiting = await hub.getCommand(queued.id);
    assert.equal(waiting.status, "sent", "the device has it");
    assert.ok(waiting.sentAt, "with the time it left");
    assert.equal(hub.communicationStatistics().protocols.http!.messagesOut, 1);
    const start2 = Date.now();
    while ((await hub.getCommand(queued.id)).status === "sent" && Date.now() - start2 < 5000) await new Promise((r) => setTimeout(r, 20));
    const ended = await hub.getCommand(queued.id);
    assert.equal(ended.status, "timed_out");
    assert.ok(ended.sentAt);
    assert.deepEqual(events, ["command.queued", "command.sent", "command.timed_out"]);
  });

  it("a one-way command (expectResponse false) ends sent once the request has left, whatever the device answers, or if it never does", async function () {
    for (const path of ["/slow", "/fail500", "/ok"]) {
      const started = Date.now();
      const done = await command(path, { expectResponse: false, timeout: 2 });
      assert.equal(done.status, "sent", `${path}: ${done.status} ${done.error ?? ""}`);
      assert.equal(done.result, null);
      assert.ok(Date.now() - started < 1500, `${path}: not held until the device answers`);
    }
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(dev.seen.length, 3, "each sent once");
  });

  it("opens one-way commands' requests to a device one at a time, each once the one before it is done", async function () {
    await hub.registerDevice({ id: "dev-oneway", protocol: "http", address: `${dev.base}/slow` });
    const sent = await Promise.all([1, 2, 3].map((n) => hub.sendCommand("dev-oneway", { command: `c${n}`, expectResponse: false, timeout: 0.4 })));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(dev.seen.length, 1, "the first request is still open: the others wait");
    const start = Date.now();
    while (dev.seen.length < 3 && Date.now() - start < 5000) await new Promise((r) => setTimeout(r, 20));
    assert.equal(dev.seen.length, 3);
    for (const c of sent) assert.equal((await hub.waitForCommand(c.id)).status, "sent");
  });

  it("a device that does not answer in time ends the command after its retries", async function () {
    const done = await command("/slow", { timeout: 0.2, retries: 1 });
    // The tracker decides how a request/response timeout ends (failed today; timed_out would also fit).
    assert.ok(["failed", "timed_out"].includes(done.status), done.status);
    assert.equal(done.attempts, 2);
    assert.match(String(done.error), /200 ms|0.2 s/);
    assert.equal(dev.seen.length, 2);
  });
});
