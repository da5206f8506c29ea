import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { type IncomingMessage, type Server, type ServerResponse, createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { hostname, tmpdir } from "node:os";
import path from "node:path";
import { type Json, type RuntimeChild, START_LIMIT_MS, assertErrorAnswer, call, spawnRuntime } from "./spawn-runtime";
import { until } from "../helpers";

/**
 * An HTTP device: the hub POSTs its commands to it. It answers as `behave` says: a result, a
 * failure, or nothing in time.
 */
class HttpDevice {
  readonly frames: Array<{ id: string; command: string; params: unknown }> = [];
  behave: "ok" | "fail" | "silent" = "ok";
  private readonly server: Server;

  private constructor() {
    this.server = createServer((req: IncomingMessage, res: ServerResponse) => {
      let text = "";
      req.on("data", (c: Buffer) => (text += c.toString()));
      req.on("end", () => {
        const frame = JSON.parse(text) as { id: string; command: string; params: unknown };
        this.frames.push(frame);
        if (this.behave === "silent") return; // the hub's attempt times out
        res.statusCode = this.behave === "ok" ? 200 : 500;
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify(this.behave === "ok" ? { echoed: frame.params } : { error: "valve jammed" }));
      });
    });
  }

  static async start(): Promise<HttpDevice> {
    const d = new HttpDevice();
    await new Promise<void>((r) => d.server.listen(0, "127.0.0.1", r));
    return d;
  }

  get address(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/device`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

/** POSTs `bytes` of a JSON string in chunks (Transfer-Encoding: chunked) and reads the answer. */
function chunkedPost(url: string, bytes: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: "POST", headers: { "content-type": "application/json" } }, (res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    // Once answered, the rest of the upload may meet a closed socket: the answer is what counts.
    req.on("error", (err) => (req.writableEnded ? undefined : reject(err)));
    const chunk = "x".repeat(64 * 1024);
    req.write('{"id":"chunked","protocol":"mqtt","metadata":{"blob":"');
    for (let sent = 0; sent < bytes; sent += chunk.length) req.write(chunk);
    req.end('"}}');
  });
}


const ERROR_SHAPE = (body: Json, code: string) => assertErrorAnswer({ body }, code);

describe("REST API (flows/flows.json in the runtime, over real HTTP)", function () {
  // Above the runtime's start limit, so a slow start fails with its own message and is cleaned up.
  this.timeout(START_LIMIT_MS + 30_000);
  let scratch: string;
  let rt: RuntimeChild;
  let device: HttpDevice;
  let api: RuntimeChild["api"];
  const get = (route: string) => call(api, "GET", route);

  before(async () => {
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-rest-"));
    rt = await spawnRuntime(path.join(scratch, "user"));
    api = rt.api;
    device = await HttpDevice.start();
  });

  afterEach(function () {
    // The runtime's own log says why a request went wrong.
    if (this.currentTest?.state === "failed" && rt) console.log(`--- the runtime's log ---\n${rt.output().slice(-6000)}`);
  });

  after(async () => {
    await rt?.stop();
    await device?.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  it("GET /api/health: 200 with the status and each component", async () => {
    const res = await get("/health");
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /application\/json/);
    assert.ok(["ok", "degraded"].includes(res.body.status));
    for (const c of ["registry", "heartbeat", "state", "events", "commands", "store", "protocol:mqtt", "protocol:coap", "protocol:websocket"]) {
      assert.ok(res.body.components[c], `component ${c}`);
    }
    assert.equal(res.body.components.store.kind, "sqlite");
  });

  it("GET /api/cluster: a single runtime answers as a cluster of one that owns every partition", async () => {
    const res = await get("/cluster");
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /application\/json/);
    // The member id defaults to this machine's host name and the runtime's port (CONTRACT §8).
    assert.equal(res.body.member, `${hostname()}:${new URL(rt.url).port}`);
    assert.equal(res.body.partitions, 64);
    assert.equal(res.body.members.length, 1);
    const [self] = res.body.members;
    assert.equal(self.id, res.body.member);
    assert.deepEqual(self.partitions, [...Array(64).keys()]);
    assert.ok(Date.parse(self.since) <= Date.parse(self.lastSeen));
  });

  it("POST /api/devices: 201 with the record and its token once; 400 for a bad record; 409 for a taken id", async () => {
    const created = await call(api, "POST", "/devices", {
      id: "boiler-1",
      name: "Boiler room sensor",
      protocol: "http",
      address: device.address,
      manufacturer: "Acme",
      capabilities: ["temperature", "humidity"],
      tags: ["floor-2"],
      heartbeatTimeout: 60,
    });
    assert.equal(created.status, 201);
    assert.equal(created.body.id, "boiler-1");
    assert.equal(created.body.status, "unknown");
    assert.equal(typeof created.body.token, "string");
    assert.equal(created.headers.get("location"), "/api/devices/boiler-1");
    // The token is answered nowhere else.
    assert.equal((await get("/devices/boiler-1")).body.token, undefined);
    assert.equal((await get("/devices")).body.devices[0].token, undefined);

    for (const body of [{ id: "x" }, { id: "bad id!", protocol: "mqtt" }, { id: "y", protocol: "mqtt", heartbeatTimeout: "soon" }, [1], "{not json", { id: "statistics", protocol: "mqtt" }, { id: "states", protocol: "mqtt" }]) {
      const res = await call(api, "POST", "/devices", body);
      assert.equal(res.status, 400, JSON.stringify(body));
      ERROR_SHAPE(res.body, "INVALID");
    }
    const proto = await call(api, "POST", "/devices", '{"id":"p1","protocol":"mqtt","metadata":{"__proto__":{"admin":true}}}');
    assert.equal(proto.status, 400);
    assert.equal((await get("/devices/p1")).status, 404, "a refused record changes nothing");

    const again = await call(api, "POST", "/devices", { id: "boiler-1", protocol: "mqtt" });
    assert.equal(again.status, 409);
    ERROR_SHAPE(again.body, "CONFLICT");
    assert.equal((await get("/devices/boiler-1")).body.protocol, "http", "the first registration stands");
  });

  it("GET /api/devices: 200 {devices, total}, filtered by the query; 400 for a bad filter", async () => {
    await call(api, "POST", "/devices", { id: "pump-1", protocol: "mqtt", manufacturer: "Flowco", tags: ["floor-1"], capabilities: ["flow"] });
    await call(api, "POST", "/devices", { id: "pump-2", protocol: "coap", address: "coap://127.0.0.1:5999", tags: ["floor-1"] });
    const all = await get("/devices");
    assert.equal(all.status, 200);
    assert.equal(all.body.total, 3);
    const ids = (r: { body: { devices: Array<{ id: string }> } }) => r.body.devices.map((d) => d.id).sort();
    assert.deepEqual(ids(await get("/devices?tag=floor-1")), ["pump-1", "pump-2"]);
    assert.deepEqual(ids(await get("/devices?protocol=coap")), ["pump-2"]);
    assert.deepEqual(ids(await get("/devices?manufacturer=Acme")), ["boiler-1"]);
    assert.deepEqual(ids(await get("/devices?capability=flow")), ["pump-1"]);
    assert.deepEqual(ids(await get("/devices?q=boiler")), ["boiler-1"]);
    // A status some devices have and others do not.
    assert.equal((await call(api, "PUT", "/devices/pump-1/state", { status: "maintenance" })).status, 200);
    assert.deepEqual(ids(await get("/devices?status=maintenance")), ["pump-1"]);
    assert.deepEqual(ids(await get("/devices?status=unknown&tag=floor-1")), ["pump-2"]);
    assert.equal((await call(api, "PUT", "/devices/pump-1/state", { status: "unknown" })).status, 200);
    const page = await get("/devices?limit=1&offset=1");
    assert.equal(page.body.devices.length, 1);
    assert.equal(page.body.total, 3);
    assert.equal(page.body.devices[0].id, all.body.devices[1].id, "offset skips the first of the same order");
    for (const q of ["limit=-1", "limit=abc", "status=sleeping", "colour=red"]) {
      const res = await get(`/devices?${q}`);
      assert.equal(res.status, 400, q);
      ERROR_SHAPE(res.body, "INVALID");
    }
  });

  it("GET /api/devices/statistics and /api/devices/states reach their own handlers, never the {id} one", async () => {
    const stats = await get("/devices/statistics");
    assert.equal(stats.status, 200);
    assert.equal(stats.body.total, 3);
    assert.deepEqual(stats.body.byProtocol, { http: 1, mqtt: 1, coap: 1 });
    assert.deepEqual(stats.body.byStatus, { unknown: 3 });
    assert.equal(stats.body.byManufacturer.Acme, 1);
    assert.equal(stats.body.byCapability.temperature, 1);

    const states = await get("/devices/states");
    assert.equal(states.status, 200);
    assert.equal(states.body.total, 3);
    assert.ok(states.body.states.every((s: { deviceId: string; version: number }) => typeof s.deviceId === "string" && typeof s.version === "number"));
    assert.equal((await get("/devices/states?status=online")).body.total, 0);
    assert.equal((await get("/devices/states?status=nonsense")).status, 400);

    const sstats = await get("/devices/states/statistics");
    assert.equal(sstats.status, 200);
    assert.equal(sstats.body.total, 3);
    assert.ok("transitions" in sstats.body && "anomalies" in sstats.body);
  });

  it("GET, PATCH and DELETE /api/devices/{id}: 200/204, 400 for a bad patch, 404 for an unknown id", async () => {
    const one = await get("/devices/pump-1");
    assert.equal(one.status, 200);
    assert.equal(one.body.manufacturer, "Flowco");
    const missing = await get("/devices/nobody");
    assert.equal(missing.status, 404);
    ERROR_SHAPE(missing.body, "NOT_FOUND");

    const patched = await call(api, "PATCH", "/devices/pump-1", { name: "Main pump", tags: ["floor-1", "critical"] });
    assert.equal(patched.status, 200);
    assert.equal(patched.body.name, "Main pump");
    assert.equal((await get("/devices/pump-1")).body.name, "Main pump");
    for (const body of [{ id: "renamed" }, { heartbeatTimeout: -5 }, "[1,2]", "{oops"]) {
      const res = await call(api, "PATCH", "/devices/pump-1", body);
      assert.equal(res.status, 400, JSON.stringify(body));
      ERROR_SHAPE(res.body, "INVALID");
    }
    assert.equal((await get("/devices/pump-1")).body.name, "Main pump", "a refused patch changes nothing");
    assert.equal((await call(api, "PATCH", "/devices/nobody", { name: "x" })).status, 404);

    const removed = await call(api, "DELETE", "/devices/pump-2");
    assert.equal(removed.status, 204);
    assert.equal(removed.body, null);
    assert.equal((await get("/devices/pump-2")).status, 404);
    const twice = await call(api, "DELETE", "/devices/pump-2");
    assert.equal(twice.status, 404);
    ERROR_SHAPE(twice.body, "NOT_FOUND");
  });

  it("POST /api/devices/{id}/telemetry: 204 with the device's Bearer token, 401 without, 400 for a bad report, 404 for an unknown id", async () => {
    const { body } = await call(api, "POST", "/devices", { id: "meter-1", protocol: "http" });
    const token = body.token as string;
    const report = (payload: unknown, headers: Record<string, string> = { authorization: `Bearer ${token}` }, id = "meter-1") =>
      call(api, "POST", `/devices/${id}/telemetry`, payload, headers);

    const ok = await report({ power: 1.5, voltage: 230 });
    assert.equal(ok.status, 204);
    assert.equal(ok.body, null);
    const state = await get("/devices/meter-1/state");
    assert.deepEqual(state.body.properties, { power: 1.5, voltage: 230 });
    assert.equal(state.body.status, "online", "a report is a heartbeat");

    for (const headers of [{}, { authorization: "Bearer wrong" }, { authorization: `Basic ${token}` }] as Array<Record<string, string>>) {
      const res = await report({ power: 9 }, headers);
      assert.equal(res.status, 401, JSON.stringify(headers));
      ERROR_SHAPE(res.body, "UNAUTHORIZED");
      assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
    }
    for (const payload of ["{broken", "[1,2]", '"text"']) {
      const res = await report(payload);
      assert.equal(res.status, 400, payload);
      ERROR_SHAPE(res.body, "INVALID");
    }
    // For devices that cannot set a header: ?token= (a query string ends up in logs: the header is better).
    const byQuery = await call(api, "POST", `/devices/meter-1/telemetry?token=${encodeURIComponent(token)}`, { voltage: 231 });
    assert.equal(byQuery.status, 204);
    assert.equal((await call(api, "POST", "/devices/meter-1/telemetry?token=wrong", { voltage: 1 })).status, 401);
    const unknown = await report({ power: 1 }, { authorization: `Bearer ${token}` }, "nobody");
    assert.equal(unknown.status, 404);
    ERROR_SHAPE(unknown.body, "NOT_FOUND");
    const after = (await get("/devices/meter-1/state")).body.properties;
    assert.deepEqual(after, { power: 1.5, voltage: 231 }, "refused reports change nothing");
  });

  it("GET and PUT /api/devices/{id}/state: desired, status, ?history=N, 409 on a stale expectedVersion", async () => {
    const before = await get("/devices/meter-1/state");
    assert.equal(before.status, 200);
    const put = await call(api, "PUT", "/devices/meter-1/state", { desired: { power: 2 }, expectedVersion: before.body.version });
    assert.equal(put.status, 200);
    assert.deepEqual(put.body.desired, { power: 2 });
    assert.deepEqual(put.body.delta, { power: 2 });
    assert.equal(put.body.version, before.body.version + 1);

    const stale = await call(api, "PUT", "/devices/meter-1/state", { desired: { power: 3 }, expectedVersion: before.body.version });
    assert.equal(stale.status, 409);
    ERROR_SHAPE(stale.body, "CONFLICT");
    for (const body of [{ status: "sleeping" }, { desired: "on" }, { colour: 1 }, "{nope"]) {
      const res = await call(api, "PUT", "/devices/meter-1/state", body);
      assert.equal(res.status, 400, JSON.stringify(body));
      ERROR_SHAPE(res.body, "INVALID");
    }
    assert.equal((await call(api, "PUT", "/devices/nobody/state", { desired: { a: 1 } })).status, 404);

    const maintenance = await call(api, "PUT", "/devices/meter-1/state", { status: "maintenance" });
    assert.equal(maintenance.body.status, "maintenance");
    assert.equal((await get("/devices/meter-1")).body.status, "maintenance");

    const withHistory = await get("/devices/meter-1/state?history=2");
    assert.equal(withHistory.status, 200);
    assert.equal(withHistory.body.deviceId, "meter-1");
    assert.equal(withHistory.body.history.length, 2);
    assert.deepEqual(withHistory.body.history[1].to.status, "maintenance");
    assert.equal((await get("/devices/meter-1/state")).body.history, undefined, "no history unless asked");
    for (const q of ["history=-1", "history=lots", "history=10001"]) assert.equal((await get(`/devices/meter-1/state?${q}`)).status, 400, q);
    assert.equal((await get("/devices/nobody/state")).status, 404);
    assert.equal((await get("/devices/nobody/state?history=3")).status, 404);
  });

  it("POST /api/devices/{id}/command: 200 when the device answers, 502 when it fails, 504 when it is silent, 202 without wait; GET /api/commands/{id}", async () => {
    device.behave = "ok";
    const ok = await call(api, "POST", "/devices/boiler-1/command", { command: "set-mode", params: { mode: "eco" }, wait: true, timeout: 5 });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal(ok.body.status, "succeeded");
    assert.deepEqual(ok.body.result, { echoed: { mode: "eco" } });
    assert.deepEqual(device.frames.at(-1), { id: ok.body.id, command: "set-mode", params: { mode: "eco" } });

    device.behave = "fail";
    const failed = await call(api, "POST", "/devices/boiler-1/command", { command: "open", wait: true, timeout: 5 });
    assert.equal(failed.status, 502);
    ERROR_SHAPE(failed.body, "DEVICE_ERROR");
    assert.equal(failed.body.command.status, "failed");

    device.behave = "silent";
    const silent = await call(api, "POST", "/devices/boiler-1/command", { command: "open", wait: true, timeout: 0.3, retries: 0 });
    assert.equal(silent.status, 504);
    ERROR_SHAPE(silent.body, "TIMEOUT");
    assert.equal(silent.body.command.status, "timed_out");

    device.behave = "ok";
    const queued = await call(api, "POST", "/devices/boiler-1/command", { command: "reboot", priority: "high", expiresIn: 3600 });
    assert.equal(queued.status, 202);
    assert.equal(queued.body.command, "reboot");
    // As acknowledged: queued, no attempt yet (the send starts right after).
    assert.equal(queued.body.status, "queued");
    assert.equal(queued.body.attempts, 0);
    assert.equal(queued.body.priority, "high");
    // Without wait the hub sends it on: the command's own route follows it to the end.
    const looked = await until(async () => {
      const c = await get(`/commands/${queued.body.id}`);
      return c.body.status === "succeeded" ? c : false;
    }, "the queued command to succeed");
    assert.equal(looked.status, 200);
    assert.equal(looked.body.status, "succeeded");
    const unknownCommand = await get("/commands/no-such-command");
    assert.equal(unknownCommand.status, 404);
    ERROR_SHAPE(unknownCommand.body, "NOT_FOUND");

    for (const body of [{}, { command: "" }, { command: "x", params: [1] }, { command: "x", wait: "yes" }, { command: "x", timeout: -1 }, { command: "x", priority: "urgent" }, { command: "x", colour: 1 }, { command: "x", retries: null }]) {
      const res = await call(api, "POST", "/devices/boiler-1/command", body);
      assert.equal(res.status, 400, JSON.stringify(body));
      ERROR_SHAPE(res.body, "INVALID");
    }
    const nobody = await call(api, "POST", "/devices/nobody/command", { command: "x" });
    assert.equal(nobody.status, 404);
    ERROR_SHAPE(nobody.body, "NOT_FOUND");
  });

  it("GET /api/communication/statistics: per protocol counts and commands by status with latency", async () => {
    const res = await get("/communication/statistics");
    assert.equal(res.status, 200);
    const http = res.body.protocols.http;
    assert.ok(http.messagesIn >= 1 && http.rejected >= 1, JSON.stringify(http));
    assert.ok(http.messagesOut >= 3, "commands the HTTP device answered");
    for (const p of ["mqtt", "coap", "websocket"]) assert.ok(res.body.protocols[p], p);
    assert.ok(res.body.commands.byStatus.succeeded >= 2, JSON.stringify(res.body.commands));
    assert.equal(typeof res.body.commands.latencyMs.p99, "number");
  });

  it("GET /api/events and /api/events/statistics: history filtered by type, priority, deviceId, since, limit", async () => {
    const all = await get("/events?limit=500");
    assert.equal(all.status, 200);
    const types = new Set(all.body.events.map((e: { type: string }) => e.type));
    for (const t of ["device.registered", "device.updated", "device.removed", "command.succeeded", "command.failed", "command.timed_out", "message.rejected"]) assert.ok(types.has(t), t);
    const stamps = all.body.events.map((e: { timestamp: string }) => Date.parse(e.timestamp));
    assert.deepEqual(stamps, [...stamps].sort((a: number, b: number) => b - a), "newest first");

    const commands = await get("/events?type=command.*&deviceId=boiler-1");
    assert.ok(commands.body.events.length >= 4);
    assert.ok(commands.body.events.every((e: { type: string; deviceId: string }) => e.type.startsWith("command.") && e.deviceId === "boiler-1"));
    const two = await get("/events?limit=2");
    assert.equal(two.body.events.length, 2);
    const future = await get(`/events?since=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`);
    assert.deepEqual(future.body.events, []);
    // Exactly the events of those priorities: the same as filtering the whole history here.
    const priority = await get("/events?priority=high,critical&limit=500");
    const expected = all.body.events.filter((e: { priority: string }) => e.priority === "high" || e.priority === "critical").map((e: { id: string }) => e.id);
    assert.ok(expected.length > 0, "the history holds events of those priorities");
    assert.deepEqual(priority.body.events.map((e: { id: string }) => e.id), expected);
    for (const q of ["limit=lots", "priority=urgent", "since=yesterday", "colour=red"]) {
      const res = await get(`/events?${q}`);
      assert.equal(res.status, 400, q);
      ERROR_SHAPE(res.body, "INVALID");
    }

    const stats = await get("/events/statistics");
    assert.equal(stats.status, 200);
    assert.ok(stats.body.published >= all.body.events.length);
    for (const k of ["delivered", "dropped", "byType", "byPriority"]) assert.ok(k in stats.body, k);
    assert.ok(stats.body.byType["device.registered"] >= 4);
  });

  it("refuses what is not a JSON request, before any flow sees it: a form post, nesting too deep, a bad %-escape", async () => {
    const queuedBefore = (await get("/events?type=command.queued&deviceId=boiler-1&limit=1000")).body.events.length;
    const form = await fetch(`${api}/devices/boiler-1/command`, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "command=reboot" });
    assert.equal(form.status, 415);
    ERROR_SHAPE((await form.json()) as never, "INVALID");
    const text = await fetch(`${api}/devices`, { method: "POST", headers: { "content-type": "text/plain" }, body: '{"id":"t1","protocol":"mqtt"}' });
    assert.equal(text.status, 415);
    assert.equal((await get("/devices/t1")).status, 404, "a form or text post registers nothing");
    // JSON is UTF-8: bytes that are not, or another declared character set, are refused, not stored changed.
    const latin1 = Buffer.concat([Buffer.from('{"id":"t2","protocol":"mqtt","name":"Stra'), Buffer.from([0xdf]), Buffer.from('e"}')]);
    const notUtf8 = await fetch(`${api}/devices`, { method: "POST", headers: { "content-type": "application/json" }, body: latin1 });
    assert.equal(notUtf8.status, 400);
    ERROR_SHAPE((await notUtf8.json()) as never, "INVALID");
    const declared = await fetch(`${api}/devices`, { method: "POST", headers: { "content-type": "application/json; charset=iso-8859-1" }, body: latin1 });
    assert.equal(declared.status, 415);
    assert.equal((await get("/devices/t2")).status, 404, "neither registered anything");
    const utf8 = await fetch(`${api}/devices`, { method: "POST", headers: { "content-type": "application/json; charset=UTF-8" }, body: '{"id":"t2","protocol":"mqtt","name":"Straße"}' });
    assert.equal(utf8.status, 201);
    assert.equal((await get("/devices/t2")).body.name, "Straße");
    assert.equal((await fetch(`${api}/devices/t2`, { method: "DELETE" })).status, 204);
    const ascii = await fetch(`${api}/devices`, { method: "POST", headers: { "content-type": "application/json; charset=us-ascii" }, body: '{"id":"t2","protocol":"mqtt"}' });
    assert.equal(ascii.status, 201, "ASCII is UTF-8");
    assert.equal((await fetch(`${api}/devices/t2`, { method: "DELETE" })).status, 204);
    const queuedAfter = (await get("/events?type=command.queued&deviceId=boiler-1&limit=1000")).body.events.length;
    assert.equal(queuedAfter, queuedBefore, "a form post queues no command");

    // A device must say its report is JSON.
    const plain = await fetch(`${api}/devices/boiler-1/telemetry`, { method: "POST", headers: { "content-type": "text/plain" }, body: '{"t":1}' });
    assert.equal(plain.status, 415);

    // Endpoints of the user's own flows under /api take what they like: a form here.
    const added = await fetch(`${rt.url}flow`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        label: "a form of the user's",
        nodes: [
          { id: "f1", type: "http in", url: "/my/form", method: "post", upload: false, swaggerDoc: "", x: 100, y: 40, wires: [["f2"]] },
          { id: "f2", type: "http response", statusCode: "200", headers: {}, x: 300, y: 40, wires: [] },
        ],
      }),
    });
    assert.equal(added.status, 200);
    await until(async () => {
      const res = await fetch(`${api}/my/form`, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "name=boiler&floor=2" });
      return res.status === 200 && JSON.stringify(await res.json()) === JSON.stringify({ name: "boiler", floor: "2" });
    }, "the user's form endpoint to get its form");

    const deep = "[".repeat(3000) + "]".repeat(3000);
    const nested = await call(api, "POST", "/devices", deep);
    assert.equal(nested.status, 400);
    ERROR_SHAPE(nested.body, "INVALID");
    const escaped = await get("/devices/%E0%A4%A");
    assert.equal(escaped.status, 400);
    ERROR_SHAPE(escaped.body, "INVALID");
    assert.equal((await get("/health")).status, 200, "the runtime is still up");
  });

  it("names each bad field in error.details, and refuses empty options and the ids . and ..", async () => {
    const bad = await call(api, "POST", "/devices", { id: "d-1", protocol: "mqtt", heartbeatTimeout: "soon" });
    assert.equal(bad.status, 400);
    assert.ok(Array.isArray(bad.body.error.details), JSON.stringify(bad.body));
    assert.equal(bad.body.error.details[0].field, "heartbeatTimeout");
    assert.doesNotMatch(bad.body.error.message, /msg\./, "the message speaks of the request, not of msg properties");
    // The flow's own refusals name their field too, as the hub's do.
    for (const id of [".", "..", "statistics", "states"]) {
      const res = await call(api, "POST", "/devices", { id, protocol: "mqtt" });
      assert.equal(res.status, 400, id);
      assert.equal(res.body.error.details?.[0]?.field, "id", JSON.stringify(res.body));
    }
    assert.equal((await call(api, "POST", "/devices", [1])).body.error.details?.[0]?.field, "(body)");
    for (const option of ["timeout", "retries", "priority", "expiresIn", "supersede", "expectResponse"]) {
      const res = await call(api, "POST", "/devices/boiler-1/command", { command: "x", [option]: "" });
      assert.equal(res.status, 400, option);
      assert.equal(res.body.error.details?.[0]?.field, option, JSON.stringify(res.body));
    }
    for (const [body, field] of [[{ command: "" }, "command"], [{ command: "x", wait: "yes" }, "wait"], [{ command: "x", colour: 1 }, "colour"], [[1], "(body)"], [{ command: "x", params: [1] }, "params"], [{ command: "x", params: "on" }, "params"]] as const) {
      const res = await call(api, "POST", "/devices/boiler-1/command", body);
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.equal(res.body.error.details?.[0]?.field, field, JSON.stringify(res.body));
    }
    assert.equal((await get("/devices/boiler-1/state?history=lots")).body.error.details?.[0]?.field, "history");
  });

  it("answers a path no route serves with 404 in the API's error shape, and a huge body with 413", async () => {
    for (const [method, route] of [["GET", "/nothing"], ["PUT", "/devices"], ["GET", "/devices/boiler-1/unknown"]] as const) {
      const res = await call(api, method, route, undefined, {}, { outsideApi: "no route of the API serves it" });
      assert.equal(res.status, 404, `${method} ${route}`);
      ERROR_SHAPE(res.body, "NOT_FOUND");
    }
    const huge = await call(api, "POST", "/devices", JSON.stringify({ id: "huge", protocol: "mqtt", metadata: { blob: "x".repeat(2 * 1024 * 1024) } }));
    assert.equal(huge.status, 413);
    ERROR_SHAPE(huge.body, "INVALID");
    // Sent in chunks with no declared length: cut off once the limit is passed, answered all the same.
    const chunked = await chunkedPost(`${api}/devices`, 2 * 1024 * 1024);
    assert.equal(chunked.status, 413);
    ERROR_SHAPE(JSON.parse(chunked.body) as never, "INVALID");
    assert.equal((await get("/devices/huge")).status, 404);
    // The editor is still where it was.
    assert.equal((await fetch(rt.url)).status, 200);
  });

  it("answers 503 to a request in flight when a full deploy restarts the flows, rather than leaving it hanging", async () => {
    device.behave = "silent";
    const waiting = call(api, "POST", "/devices/boiler-1/command", { command: "slow", wait: true, timeout: 20 });
    // The request is in flight once the device has the command.
    await until(() => device.frames.some((f) => f.command === "slow"), "the command to reach the device");
    const flows = await fetch(`${rt.url}flows`, { headers: { "Node-RED-API-Version": "v2" } });
    const config = (await flows.json()) as { flows: unknown[]; rev: string };
    const deployed = await fetch(`${rt.url}flows`, {
      method: "POST",
      headers: { "content-type": "application/json", "Node-RED-Deployment-Type": "full", "Node-RED-API-Version": "v2" },
      body: JSON.stringify({ flows: config.flows, rev: config.rev }),
    });
    assert.equal(deployed.status, 200);
    const answer = await waiting;
    assert.equal(answer.status, 503, JSON.stringify(answer.body));
    ERROR_SHAPE(answer.body, "UNAVAILABLE");
    // The redeployed flows answer again, with the fleet as it was.
    const health = () => call(api, "GET", "/health", undefined, {}, { outsideApi: "while the flows restart, the API's routes are briefly gone (503)" });
    await until(async () => (await health()).status === 200, "the redeployed API");
    assert.equal((await get("/devices/boiler-1")).status, 200);
    device.behave = "ok";
  });

  it("answers 503 UNAVAILABLE with Retry-After, not 404, while the flows are not running (a deploy with a missing node type stops them)", async () => {
    const headers = { "Node-RED-API-Version": "v2" };
    const config = (await (await fetch(`${rt.url}flows`, { headers })).json()) as { flows: Array<Record<string, unknown>>; rev: string };
    const deploy = (flows: unknown[], rev: string) =>
      fetch(`${rt.url}flows`, { method: "POST", headers: { "content-type": "application/json", "Node-RED-Deployment-Type": "full", ...headers }, body: JSON.stringify({ flows, rev }) });
    const tab = config.flows.find((n) => n.type === "tab")!;
    const broken = await deploy([...config.flows, { id: "no-such-type-1", type: "no-such-node-type", z: tab.id, wires: [] }], config.rev);
    assert.equal(broken.status, 200);
    const { rev } = (await broken.json()) as { rev: string };
    try {
      for (const [method, route] of [["GET", "/health"], ["GET", "/devices/boiler-1"], ["POST", "/devices/boiler-1/telemetry"]] as const) {
        const res = await call(api, method, route, method === "POST" ? { t: 1 } : undefined, {}, { outsideApi: "the flows are stopped" });
        assert.equal(res.status, 503, `${method} ${route}: ${JSON.stringify(res.body)}`);
        ERROR_SHAPE(res.body, "UNAVAILABLE");
        assert.equal(res.headers.get("retry-after"), "1");
      }
    } finally {
      assert.equal((await deploy(config.flows, rev)).status, 200);
    }
    await until(async () => (await call(api, "GET", "/health", undefined, {}, { outsideApi: "the flows restart" })).status === 200, "the redeployed API");
    assert.equal((await call(api, "GET", "/no-such-route", undefined, {}, { outsideApi: "no such route" })).status, 404, "a path no flow serves is still a 404 while they run");
  });
});
