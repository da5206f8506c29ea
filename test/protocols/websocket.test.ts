import assert from "node:assert/strict";
import { WebSocket } from "ws";
import { isTethralError } from "../../src/core/errors";
import { Hub, type HubOptions } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { CLOSE_REPLACED, WebSocketAdapter, type WebSocketAdapterOptions } from "../../src/protocols/websocket";
import { assertNoPollution, assertRejectsCode, holdLoopAfter } from "../helpers";
import { Device } from "./ws-device";
import { until } from "./ws-fake-context";
import { nodeRedSuite } from "./ws-nodered";
import { type SharedServer, plainGet, sharedServer } from "./ws-server";

/** Timers and sockets this process holds, by kind. */
function resources(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) if (r === "Timeout" || r.startsWith("TCP")) out[r] = (out[r] ?? 0) + 1;
  return out;
}

describe("WebSocketAdapter in a Hub", function () {
  let shared: SharedServer;
  let hub: Hub;
  let adapter: WebSocketAdapter;
  let upgradeListenersBefore: number;
  let rejected: TethralEvent[];
  let warnings: string[];
  /** Device id → token. */
  const tokens = new Map<string, string>();
  const devices: Device[] = [];

  async function connect(id: string, options: { token?: string; query?: string; autoPong?: boolean; headers?: Record<string, string> } = {}): Promise<Device> {
    const query = options.query ?? `?device=${id}&token=${options.token ?? tokens.get(id)}`;
    const d = await Device.connect(`${shared.base}/tethral/ws${query}`, { headers: options.headers, autoPong: options.autoPong ?? true });
    devices.push(d);
    return d;
  }

  /** A hub with the adapter on the shared server, and two registered devices. */
  async function start(adapterOptions: WebSocketAdapterOptions = {}, hubOptions: HubOptions = {}): Promise<void> {
    adapter = new WebSocketAdapter({ server: shared.server, ...adapterOptions });
    warnings = [];
    hub = new Hub({ protocols: [adapter], commands: { retryBaseDelayMs: 10, sweepIntervalMs: 20 }, onWarning: (m) => warnings.push(m), ...hubOptions });
    await hub.start();
    rejected = [];
    hub.subscribe({ types: "message.rejected" }, (e) => {
      rejected.push(e);
    });
    for (const id of ["boiler-1", "pump-2"]) {
      const device = await hub.registerDevice({ id, protocol: "websocket", heartbeatTimeout: 60 });
      tokens.set(id, device.token!);
    }
  }

  const counters = () => hub.communicationStatistics().protocols.websocket!;

  beforeEach(async function () {
    shared = await sharedServer();
    upgradeListenersBefore = shared.server.listenerCount("upgrade");
    await start();
  });

  afterEach(async function () {
    for (const d of devices.splice(0)) d.terminate();
    await hub.stop();
    await shared.close();
  });

  it("takes a device with its token in the query: telemetry, state and heartbeats reach the hub", async function () {
    const d = await connect("boiler-1");
    await until(() => adapter.isConnected("boiler-1"), "the connection");
    d.send({ type: "telemetry", data: { temperature: 21.5 } });
    d.send({ type: "state", properties: { valve: "open" } });
    d.send({ type: "heartbeat" });
    await until(() => counters().messagesIn === 3, "three messages");
    const state = hub.getState("boiler-1");
    assert.deepEqual(state.properties, { temperature: 21.5, valve: "open" });
    assert.equal(hub.getDevice("boiler-1").status, "online");
    d.send({ type: "state", status: "error" });
    await until(() => hub.getDevice("boiler-1").status === "error", "the reported status");
    assert.equal(d.queued, 0, "good frames get no answer");
    assert.equal(counters().connected, 1);
    assert.equal(counters().rejected, 0);
    assert.ok(counters().bytesIn > 0);
  });

  it("does not take a device offline whose heartbeat came in time, when the hub's loop was held past its deadline", async function () {
    await hub.stop();
    await start({}, { heartbeat: { resolutionMs: 10 } });
    await hub.updateDevice("boiler-1", { heartbeatTimeout: 1 });
    const offline: TethralEvent[] = [];
    hub.subscribe({ types: "device.offline" }, (e) => {
      offline.push(e);
    });
    const d = await connect("boiler-1");
    d.send({ type: "heartbeat" });
    await until(() => hub.getDevice("boiler-1").status === "online", "online");
    const deadline = Date.parse(hub.getDevice("boiler-1").lastSeen!) + 1000;
    await new Promise((resolve) => setTimeout(resolve, 500));
    // The device's heartbeat is in the hub's socket before its deadline; the hub's loop is held
    // (a long task) until after it, so the heartbeat timer is due before the socket is read.
    await holdLoopAfter(() => d.send({ type: "heartbeat" }), deadline + 300);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(offline, []);
    assert.equal(hub.getDevice("boiler-1").status, "online");
    // A device that falls silent still goes offline on time.
    await until(() => hub.getDevice("boiler-1").status === "offline", "offline, once silent for its timeout", 3000);
    assert.equal(offline.length, 1);
  });

  it("drops a connection whose token was replaced (1008), takes the new token, and drops a removed device", async function () {
    const d = await connect("boiler-1");
    await until(() => adapter.isConnected("boiler-1"), "the connection");
    const { token } = await hub.rotateToken("boiler-1");
    assert.deepEqual(await d.closed, { code: 1008, reason: "token replaced" });
    assert.equal(adapter.isConnected("boiler-1"), false);
    assert.equal((await Device.refusal(`${shared.base}/tethral/ws?device=boiler-1&token=${tokens.get("boiler-1")}`)).status, 401);
    const again = await connect("boiler-1", { token });
    again.send({ type: "telemetry", data: { t: 7 } });
    await until(() => hub.getState("boiler-1").properties.t === 7, "the telemetry with the new token");
    await hub.removeDevice("boiler-1");
    assert.deepEqual(await again.closed, { code: 1008, reason: "device removed" });
  });

  it("takes the token as a Bearer header", async function () {
    const d = await connect("boiler-1", { query: "?device=boiler-1", headers: { Authorization: `Bearer ${tokens.get("boiler-1")}` } });
    d.send({ type: "telemetry", data: { t: 1 } });
    await until(() => hub.getState("boiler-1").properties.t === 1, "the telemetry");
  });

  it("refuses an upgrade before it completes: 401 wrong or missing token, 404 unknown device, 400 no or bad id", async function () {
    const base = `${shared.base}/tethral/ws`;
    const good = tokens.get("boiler-1")!;
    const wrong = await Device.refusal(`${base}?device=boiler-1&token=nope`);
    assert.equal(wrong.status, 401);
    assert.equal((JSON.parse(wrong.body) as { error: { code: string } }).error.code, "UNAUTHORIZED");
    assert.equal((await Device.refusal(`${base}?device=boiler-1`)).status, 401);
    // The header wins over the query: a right query token does not rescue a wrong header.
    assert.equal((await Device.refusal(`${base}?device=boiler-1&token=${good}`, { headers: { Authorization: "Bearer nope" } })).status, 401);
    assert.equal((await Device.refusal(`${base}?device=ghost&token=${good}`)).status, 404);
    assert.equal((await Device.refusal(`${base}?device=has%20space&token=${good}`)).status, 400);
    assert.equal((await Device.refusal(`${base}?token=${good}`)).status, 400);
    assert.equal((await Device.refusal(`${base}?device=&token=${good}`)).status, 400);
    assert.equal(rejected.length, 7, "every refusal is published, the two without an id by the adapter");
    assert.deepEqual(
      rejected.slice(5).map((e) => (e.data as { reason: string }).reason),
      ["no-device-id", "no-device-id"],
    );
    assert.equal(counters().rejected, 7, "each counted once");
    assert.equal(counters().upgradesRefused, 7);
    assert.equal(counters().connected, 0);
    assert.equal(hub.getDevice("boiler-1").status, "unknown", "a refused connect is no sign of life");
  });

  it("leaves other paths to their owners: another websocket endpoint and plain HTTP on the same server keep working", async function () {
    const other = await Device.connect(`${shared.base}/other`);
    devices.push(other);
    other.send("hi");
    assert.equal(await other.next(), "echo:hi");
    assert.equal(await plainGet(shared.base), "plain");
    // A longer path is not ours either: nobody here owns it, so the client gives up on its own.
    await assert.rejects(Device.connect(`${shared.base}/tethral/ws/more?device=boiler-1&token=${tokens.get("boiler-1")}`, { handshakeTimeout: 300 }));
    assert.equal(counters().rejected, 0);
    assert.equal(counters().connected, 0);
  });

  it("answers bad frames with an error frame, counts them, and keeps the connection", async function () {
    const d = await connect("boiler-1");
    const bad: Array<[unknown, string]> = [
      ["{not json", "INVALID"],
      ["[1,2]", "INVALID"],
      ['"telemetry"', "INVALID"],
      [{ type: "reboot" }, "INVALID"],
      [{ kind: "telemetry", data: {} }, "INVALID"],
      [{ type: "telemetry", data: [1, 2] }, "INVALID"],
      [{ type: "state", status: "sleepy" }, "INVALID"],
      ['{"type":"telemetry","data":{"__proto__":{"polluted":true}}}', "INVALID"],
      ['{"type":"state","properties":{"a":{"__proto__":{"polluted":true}}}}', "INVALID"],
    ];
    for (const [f, code] of bad) {
      d.send(f);
      const answer = await d.next();
      assert.equal(answer.type, "error", JSON.stringify(f));
      assert.equal(answer.code, code, JSON.stringify(answer));
      assert.equal(typeof answer.message, "string");
    }
    d.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    assert.match(String((await d.next()).message), /binary/);
    assert.equal(counters().rejected, bad.length + 1);
    assertNoPollution();
    d.send({ type: "telemetry", data: { ok: 1 } });
    await until(() => hub.getState("boiler-1").properties.ok === 1, "the good frame after the bad ones");
    assert.equal(d.ws.readyState, WebSocket.OPEN);
    assert.equal(counters().errors, 0);
    assert.deepEqual(warnings, []);
  });

  it("closes a connection that sends a frame beyond maxPayload (1009), counts it, and serves the others", async function () {
    const pump = await connect("pump-2");
    const d = await connect("boiler-1");
    d.send({ type: "telemetry", data: { blob: "x".repeat(1024 * 1024) } });
    assert.equal((await d.closed).code, 1009);
    await until(() => counters().connected === 1, "the drop");
    assert.equal(counters().rejected, 1);
    assert.deepEqual(hub.getState("boiler-1").properties, {});
    pump.send({ type: "telemetry", data: { flow: 3 } });
    const again = await connect("boiler-1");
    again.send({ type: "telemetry", data: { temperature: 19 } });
    await until(() => hub.getState("boiler-1").properties.temperature === 19 && hub.getState("pump-2").properties.flow === 3, "both reports");
  });

  it("keeps one connection per device: a newer one replaces the older, which is told why", async function () {
    const first = await connect("boiler-1");
    const second = await connect("boiler-1");
    const { code, reason } = await first.closed;
    assert.equal(code, CLOSE_REPLACED);
    assert.match(reason, /replaced/);
    await until(() => adapter["wss"]!.clients.size === 1, "the old connection closed on the hub's side too");
    assert.equal(adapter.isConnected("boiler-1"), true, "the old one closing does not disconnect the device");
    assert.equal(counters().connected, 1);
    const command = hub.sendCommand("boiler-1", { command: "reboot", wait: true, timeout: 5 });
    const frame = await second.next();
    assert.deepEqual(frame, { type: "command", id: frame.id, command: "reboot", params: {} });
    second.send({ type: "response", id: frame.id, ok: true });
    assert.equal((await command).status, "succeeded");
    assert.equal(counters().replaced, 1);
  });

  it("carries commands both ways: an answer with a result succeeds, one with an error fails", async function () {
    const d = await connect("boiler-1");
    const ok = hub.sendCommand("boiler-1", { command: "set-point", params: { value: 22 }, wait: true, timeout: 5 });
    const f1 = await d.next();
    assert.deepEqual(f1, { type: "command", id: f1.id, command: "set-point", params: { value: 22 } });
    d.send({ type: "response", id: f1.id, ok: true, result: { applied: 22 } });
    const done = await ok;
    assert.equal(done.status, "succeeded");
    assert.deepEqual(done.result, { applied: 22 });
    const bad = hub.sendCommand("boiler-1", { command: "open-valve", wait: true, timeout: 5 });
    const f2 = await d.next();
    d.send({ type: "response", id: f2.id, ok: false, error: "valve jammed" });
    const failed = await bad;
    assert.equal(failed.status, "failed");
    assert.equal(failed.error, "valve jammed");
    // The two commands, and the twin frame every connection starts with.
    assert.equal(counters().messagesOut, 3);
    assert.equal(d.twins.length, 1);
    assert.ok(counters().bytesOut > 80);
  });

  it("takes an answer that came within the command's timeout, though the hub's loop was held past it", async function () {
    const d = await connect("boiler-1");
    const sent = Date.now();
    const command = hub.sendCommand("boiler-1", { command: "reboot", wait: true, timeout: 1, retries: 0 });
    const frame = await d.next();
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, sent + 500 - Date.now())));
    // The answer is in the hub's socket in time; the loop is held until after the timeout.
    await holdLoopAfter(() => d.send({ type: "response", id: frame.id, ok: true, result: "rebooted" }), sent + 1400);
    const done = await command;
    assert.equal(done.status, "succeeded");
    assert.equal(done.result, "rebooted");
  });

  it("holds a command for a device not connected and sends it when the device connects", async function () {
    const queued = await hub.sendCommand("boiler-1", { command: "reboot", timeout: 5 });
    assert.equal(queued.status, "queued");
    await assertRejectsCode(() => adapter.send(hub.getDevice("boiler-1"), { id: "x", command: "reboot", params: {} }, 1000), "UNAVAILABLE");
    const d = await connect("boiler-1");
    const frame = await d.next();
    assert.equal(frame.id, queued.id);
    d.send({ type: "response", id: frame.id, ok: true, result: null });
    assert.equal((await hub.waitForCommand(queued.id)).status, "succeeded");
  });

  it("a device that drops mid-command: without retries the command times out", async function () {
    const d = await connect("boiler-1");
    const command = hub.sendCommand("boiler-1", { command: "reboot", wait: true, timeout: 0.3, retries: 0 });
    await d.next();
    d.terminate();
    const done = await command;
    assert.equal(done.status, "timed_out");
    assert.equal(done.attempts, 1);
    await until(() => !adapter.isConnected("boiler-1") && counters().connected === 0, "the drop");
  });

  it("a device that drops mid-command: with a retry it gets the command again once back, and answers", async function () {
    const d = await connect("boiler-1");
    const command = hub.sendCommand("boiler-1", { command: "reboot", wait: true, timeout: 0.3, retries: 1 });
    const first = await d.next();
    d.terminate();
    await until(() => counters().connected === 0, "the drop");
    const back = await connect("boiler-1");
    const again = await back.next();
    assert.equal(again.id, first.id);
    back.send({ type: "response", id: again.id, ok: true, result: "rebooted" });
    const done = await command;
    assert.equal(done.status, "succeeded");
    assert.equal(done.attempts, 2);
  });

  it("refuses commands to a device that does not read, once its send buffer is full; stopping fails the ones still pending", async function () {
    await hub.stop();
    const limit = 256 * 1024;
    await start({ sendBufferLimit: limit, closeGraceMs: 50 });
    const d = await connect("boiler-1");
    d.ws.pause(); // the device stops reading: the kernel buffers fill, then ours would
    const device = hub.getDevice("boiler-1");
    const big = { blob: "x".repeat(64 * 1024) };
    const sends: Array<Promise<unknown>> = [];
    let refused: unknown;
    const serverSide = [...adapter["wss"]!.clients][0]!;
    let highest = 0;
    for (let i = 0; i < 2000 && !refused; i++) {
      const p = adapter.send(device, { id: `c${i}`, command: "load", params: big }, 60_000);
      p.catch((err: unknown) => (refused ??= err));
      sends.push(p);
      highest = Math.max(highest, serverSide.bufferedAmount);
      await new Promise((r) => setImmediate(r));
    }
    assert.ok(isTethralError(refused) && refused.code === "UNAVAILABLE", `expected a refusal, got ${String(refused)}`);
    assert.match((refused as Error).message, /not reading/);
    assert.ok(highest <= limit, `at most the limit waits in memory: ${highest}`);
    assert.equal(counters().sendsRefused, 1);
    await hub.stop();
    const results = await Promise.allSettled(sends);
    assert.ok(results.some((r) => r.status === "rejected" && /stopped/.test(String(r.reason))), "frames still queued when the adapter stopped fail");
  });

  it("drops a peer that stops answering pings, and keeps one that answers", async function () {
    await hub.stop();
    await start({ pingIntervalMs: 20 });
    const mute = await connect("pump-2", { autoPong: false });
    const live = await connect("boiler-1");
    await mute.closed;
    await until(() => !adapter.isConnected("pump-2"), "the dead peer's drop");
    await until(() => live.pings >= 5, "five pings to the live device");
    assert.equal(live.ws.readyState, WebSocket.OPEN);
    assert.equal(adapter.isConnected("boiler-1"), true);
    assert.equal(counters().deadPeersDropped, 1);
    assert.equal(counters().connected, 1);
  });

  it("keeps a peer whose pong came in time, though the hub's loop was held past the next ping", async function () {
    await hub.stop();
    await start({ pingIntervalMs: 300 });
    const live = await connect("boiler-1");
    // Right after the device answers a ping, the loop is held longer than the ping period: the
    // pong waits in the hub's socket while the next ping round comes due.
    live.ws.once("ping", () =>
      setImmediate(() => {
        const t = Date.now();
        while (Date.now() - t < 450);
      }),
    );
    const pings = live.pings;
    await until(() => live.pings >= pings + 3, "three more pings");
    assert.equal(live.ws.readyState, WebSocket.OPEN);
    assert.equal(counters().deadPeersDropped, 0);
  });

  it("lets an unknown device register itself with a token it chose, where self-registration is on", async function () {
    await hub.stop();
    await start({}, { selfRegistration: true });
    const token = "a-token-the-device-chose-1234";
    const d = await connect("sensor-9", { token });
    d.send({ type: "telemetry", data: { t: 1 } });
    assert.equal((await d.next()).code, "NOT_FOUND", "nothing but register before it is known");
    d.send({ type: "register", name: "Sensor nine", capabilities: ["temperature"] });
    await until(() => hub.listDevices().devices.some((x) => x.id === "sensor-9"), "the registration");
    assert.equal(hub.getDevice("sensor-9").name, "Sensor nine");
    assert.equal(adapter.isConnected("sensor-9"), false, "a connection made while unknown never takes commands");
    // Closed once registered: it comes back with its token as a known device.
    assert.equal((await d.closed).code, 1008);
    // It keeps the token it chose: a connect with another is refused.
    assert.equal((await Device.refusal(`${shared.base}/tethral/ws?device=sensor-9&token=another-token-of-16-chars`)).status, 401);
    const back = await connect("sensor-9", { token });
    back.send({ type: "telemetry", data: { t: 2 } });
    await until(() => hub.getState("sensor-9").properties.t === 2, "its telemetry once registered");
    assert.equal(adapter.isConnected("sensor-9"), true);
  });

  it("a connection made before its device was known never takes its commands: registered meanwhile, it is closed", async function () {
    await hub.stop();
    await start({}, { selfRegistration: true });
    const d = await connect("sensor-7", { token: "a-token-the-device-chose-1234" });
    assert.equal(adapter.isConnected("sensor-7"), false);
    await hub.registerDevice({ id: "sensor-7", protocol: "websocket" });
    assert.equal((await d.closed).code, 1008);
    const c = await hub.sendCommand("sensor-7", { command: "unlock" });
    assert.equal((await hub.getCommand(c.id)).status, "queued", "held for the real device");
    assert.deepEqual(hub.getState("sensor-7").properties, {});
  });

  it("hub.stop() closes its clients and its listener, and leaves the shared server serving", async function () {
    const d = await connect("boiler-1");
    const other = await Device.connect(`${shared.base}/other`);
    devices.push(other);
    assert.equal(shared.server.listenerCount("upgrade"), upgradeListenersBefore + 1);
    await hub.stop();
    await adapter.stop(); // twice is fine
    assert.equal((await d.closed).code, 1001);
    assert.equal(shared.server.listenerCount("upgrade"), upgradeListenersBefore);
    assert.equal(shared.server.listening, true);
    assert.equal(other.ws.readyState, WebSocket.OPEN, "another endpoint's clients are not ours to close");
    assert.equal(await plainGet(shared.base), "plain");
    assert.equal(adapter.health().status, "stopped");
    assert.equal(adapter.isConnected("boiler-1"), false);
  });

  it("serves on its own server when given none to share, and closes it on stop, leaving no timer or socket", async function () {
    await hub.stop();
    for (const d of devices.splice(0)) d.terminate();
    await new Promise((r) => setTimeout(r, 20));
    const before = resources();
    adapter = new WebSocketAdapter({ port: 0, host: "127.0.0.1" });
    hub = new Hub({ protocols: [adapter], onWarning: () => undefined });
    await hub.start();
    const { token } = await hub.registerDevice({ id: "boiler-1", protocol: "websocket" });
    const { port } = adapter.address()!;
    const d = await Device.connect(`ws://127.0.0.1:${port}/tethral/ws?device=boiler-1&token=${token}`);
    devices.push(d);
    assert.equal((await Device.refusal(`ws://127.0.0.1:${port}/elsewhere`)).status, 404);
    assert.equal(adapter.health().status, "ok");
    await hub.stop();
    await d.closed;
    assert.equal(adapter.address(), null);
    await assert.rejects(Device.connect(`ws://127.0.0.1:${port}/tethral/ws?device=boiler-1&token=${token}`));
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(resources(), before);
  });
});

nodeRedSuite();
