import assert from "node:assert/strict";
import { once } from "node:events";
import { connect as connectSocket } from "node:net";
import { Hub, type HubOptions } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { MqttAdapter, type MqttAdapterOptions } from "../../src/protocols/mqtt";
import { TopicScheme, filterMatches } from "../../src/protocols/mqtt-topics";
import { assertCode, assertNoPollution } from "../helpers";
import { MqttDevice, activeHandles, handlesAbove, portIsFree, until } from "./mqtt-device";

const CONNACK_BAD_USERNAME_OR_PASSWORD = 4;
const CONNACK_NOT_AUTHORIZED = 5;

describe("MQTT adapter, embedded broker, with a real hub", function () {
  let hub: Hub;
  let adapter: MqttAdapter;
  let url: string;
  let events: TethralEvent[];
  const devices: MqttDevice[] = [];
  const tokens = new Map<string, string>();

  async function startHub(hubOptions: HubOptions = {}, adapterOptions: MqttAdapterOptions = {}): Promise<void> {
    adapter = new MqttAdapter({ port: 0, ...adapterOptions });
    hub = new Hub({
      protocols: [adapter],
      onWarning: () => undefined,
      commands: { sweepIntervalMs: 50, retryBaseDelayMs: 20 },
      ...hubOptions,
    });
    await hub.start();
    hub.subscribe({ types: "*" }, (event) => {
      events.push(event);
    });
    url = `mqtt://127.0.0.1:${adapter.port}`;
  }

  async function register(id: string): Promise<string> {
    const device = await hub.registerDevice({ id, protocol: "mqtt" });
    tokens.set(id, device.token!);
    return device.token!;
  }

  async function connect(id: string, extra: Partial<Parameters<typeof MqttDevice.connect>[1]> = {}): Promise<MqttDevice> {
    const d = await MqttDevice.connect(url, { id, token: tokens.get(id), ...extra });
    devices.push(d);
    return d;
  }

  const rejected = (): number => hub.communicationStatistics().protocols.mqtt!.rejected;
  const ofType = (type: string, deviceId?: string): TethralEvent[] =>
    events.filter((e) => e.type === type && (deviceId === undefined || e.deviceId === deviceId));

  beforeEach(async function () {
    events = [];
    tokens.clear();
    await startHub();
    await register("boiler-1");
    await register("pump-2");
  });

  afterEach(async function () {
    for (const d of devices.splice(0)) await d.end();
    await hub.stop();
  });

  it("takes telemetry, heartbeat, state and status from a device with its token", async function () {
    const d = await connect("boiler-1");
    await d.publish("telemetry", { temperature: 21.5 });
    await d.publish("state", { properties: { valve: "open" } });
    await d.publish("heartbeat", "", { qos: 0 });
    await d.publish("status", "online", { retain: true });
    await until(() => ofType("message.received", "boiler-1").length === 4, "four messages in the hub");
    const state = hub.getState("boiler-1");
    assert.deepEqual(state.properties, { temperature: 21.5, valve: "open" });
    assert.equal(hub.getDevice("boiler-1").status, "online");
    assert.equal(ofType("device.online", "boiler-1").length, 1);
    const stats = hub.communicationStatistics().protocols.mqtt!;
    assert.equal(stats.messagesIn, 4);
    assert.equal(stats.rejected, 0);
    assert.equal(stats.connected, 1);
  });

  it("refuses a wrong token and an unknown device at CONNECT, and counts them", async function () {
    assert.equal(await MqttDevice.refused(url, { id: "boiler-1", token: "not-the-token" }), CONNACK_BAD_USERNAME_OR_PASSWORD);
    assert.equal(await MqttDevice.refused(url, { id: "boiler-1" }), CONNACK_BAD_USERNAME_OR_PASSWORD);
    assert.equal(await MqttDevice.refused(url, { id: "ghost-9", token: "whatever-token" }), CONNACK_NOT_AUTHORIZED);
    // Another device's token under this device's name is a wrong token.
    assert.equal(await MqttDevice.refused(url, { id: "boiler-1", token: tokens.get("pump-2"), clientId: "pump-2" }), CONNACK_BAD_USERNAME_OR_PASSWORD);
    assert.equal(rejected(), 4);
    await until(() => ofType("message.rejected").length === 4, "every refusal published");
    assert.deepEqual(ofType("message.rejected").map((e) => (e.data as { reason: string }).reason).sort(), ["bad-token", "bad-token", "bad-token", "unknown-device"]);
    // The refusals left the broker serving.
    const d = await connect("boiler-1");
    await d.publish("telemetry", { temperature: 20 });
    await until(() => hub.getState("boiler-1").properties.temperature === 20, "telemetry after the refusals");
  });

  it("closes a connection whose token was replaced, refuses the old token, and takes the new one", async function () {
    const d = await connect("boiler-1", { reconnectPeriod: 0 });
    await until(() => adapter.isConnected("boiler-1") || hub.communicationStatistics().protocols.mqtt!.connected === 1, "the connection");
    const { token } = await hub.rotateToken("boiler-1");
    await until(() => d.closed, "the old connection closed");
    assert.equal(await MqttDevice.refused(url, { id: "boiler-1", token: tokens.get("boiler-1") }), CONNACK_BAD_USERNAME_OR_PASSWORD);
    const again = await connect("boiler-1", { token });
    await again.publish("telemetry", { temperature: 23 });
    await until(() => hub.getState("boiler-1").properties.temperature === 23, "telemetry with the new token");
  });

  it("keeps a device to its own topics", async function () {
    const pump = await connect("pump-2");
    await pump.subscribe(pump.topic("commands"));
    const boiler = await connect("boiler-1");
    // Subscribing elsewhere is refused per filter (SUBACK 0x80); the connection stays.
    assert.deepEqual(await boiler.subscribe([boiler.topic("commands", "pump-2"), "tethral/#", "tethral/devices/+/commands", "#"]), [128, 128, 128, 128]);
    // Within its own subtree, only the subtree itself or a documented topic: the broker holds no pile of filters for it.
    assert.deepEqual(await boiler.subscribe(["tethral/devices/boiler-1/made-up/#", "tethral/devices/boiler-1x/#"]), [128, 128]);
    assert.deepEqual(await boiler.subscribe([boiler.topic("commands"), "tethral/devices/boiler-1/#", "tethral/devices/boiler-1/+"]), [1, 1, 1]);
    assert.equal(rejected(), 6);
    const before = hub.getState("pump-2").version;
    // Publishing as another device costs the connection: MQTT 3.1.1 has no other refusal.
    boiler.publishExpectingCut("telemetry", JSON.stringify({ temperature: 99 }), { id: "pump-2" });
    await until(() => boiler.closed, "the trespasser disconnected");
    assert.equal(hub.getState("pump-2").version, before);
    assert.equal(hub.getState("pump-2").properties.temperature, undefined);
    assert.equal(rejected(), 7);
    // A command to pump-2 reaches pump-2 and nobody else.
    const command = await hub.sendCommand("pump-2", { command: "ping", wait: false, timeout: 5 });
    await until(() => pump.commands().length === 1, "the command at pump-2");
    assert.equal(pump.commands()[0]!.id, command.id);
    assert.equal(boiler.commands().length, 0);
  });

  it("refuses bad payloads, counts them, and goes on serving", async function () {
    const d = await connect("boiler-1");
    const other = await connect("pump-2");
    await d.publish("telemetry", "{not json");
    await d.publish("telemetry", "[1, 2, 3]");
    await d.publish("telemetry", '"just text"');
    await d.publish("state", { status: "exploded" });
    await d.publish("telemetry", '{"__proto__": {"polluted": true}, "temperature": 5}');
    await d.publish("nonsense", { temperature: 1 });
    // Bytes that are no UTF-8 (as mosquitto_pub -s sends a file's), and a key that names no property.
    await d.publish("telemetry", Buffer.from('{"u":"\xff\xfe"}', "latin1"));
    await d.publish("telemetry", '{"": 5}');
    await until(() => rejected() === 8, "eight refusals");
    assert.equal(hub.getState("boiler-1").properties.u, undefined);
    assertNoPollution();
    assert.equal(hub.getState("boiler-1").properties.polluted, undefined);
    assert.ok(!d.closed, "a bad payload does not cost the connection");
    // 1 MB: cut at the packet header, long before the body is buffered.
    d.publishExpectingCut("telemetry", Buffer.alloc(1024 * 1024, 0x20));
    await until(() => d.closed, "the oversized publisher cut off");
    assert.equal(rejected(), 9);
    assert.equal(adapter.statistics().oversizedPackets, 1);
    await other.publish("telemetry", { pressure: 2.5 });
    await until(() => hub.getState("pump-2").properties.pressure === 2.5, "the other device still heard");
    assert.equal(hub.health().components["protocol:mqtt"]!.status, "ok");
  });

  it("refuses a payload over maxPayloadBytes that fits in a packet, and keeps serving", async function () {
    await hub.stop();
    await startHub({ maxPayloadBytes: 1024 });
    await register("boiler-1");
    const d = await connect("boiler-1");
    d.publishExpectingCut("telemetry", JSON.stringify({ blob: "x".repeat(2000) }));
    await until(() => d.closed, "the device cut off");
    assert.equal(rejected(), 1);
    assert.equal(adapter.statistics().publishesRefused, 1);
    const again = await connect("boiler-1");
    await again.publish("telemetry", { small: 1 });
    await until(() => hub.getState("boiler-1").properties.small === 1, "a small report");
  });

  it("round-trips commands over QoS 1: succeeded and failed", async function () {
    const d = await connect("boiler-1");
    d.answerCommands((c) => (c.command === "reboot" ? { ok: true, result: { after: (c.params as { delay: number }).delay } } : { ok: false, error: "busy" }));
    await d.subscribe(d.topic("commands"));
    await until(() => adapter.isConnected("boiler-1") === true, "the device ready for commands");
    const ok = await hub.sendCommand("boiler-1", { command: "reboot", params: { delay: 3 }, wait: true, timeout: 5 });
    assert.equal(ok.status, "succeeded");
    assert.deepEqual(ok.result, { after: 3 });
    const failed = await hub.sendCommand("boiler-1", { command: "selfdestruct", wait: true, timeout: 5 });
    assert.equal(failed.status, "failed");
    assert.equal(failed.error, "busy");
    assert.deepEqual(
      d.commands().map((c) => c.command),
      ["reboot", "selfdestruct"],
    );
    assert.deepEqual(d.commands()[0], { id: ok.id, command: "reboot", params: { delay: 3 } });
    const stats = hub.communicationStatistics().protocols.mqtt!;
    assert.equal(stats.messagesOut, 2);
    assert.ok(stats.bytesOut > 0);
  });

  it("holds a command until the device subscribes to its commands topic", async function () {
    const d = await connect("boiler-1");
    assert.equal(adapter.isConnected("boiler-1"), false, "connected but not subscribed: a QoS 1 publish would go nowhere");
    d.answerCommands(() => ({ ok: true, result: "done" }));
    const queued = await hub.sendCommand("boiler-1", { command: "reboot", wait: false, timeout: 5 });
    assert.equal(queued.status, "queued");
    await d.subscribe("tethral/devices/boiler-1/#");
    const done = await hub.waitForCommand(queued.id);
    assert.equal(done.status, "succeeded");
    await d.unsubscribe("tethral/devices/boiler-1/#");
    await until(() => adapter.isConnected("boiler-1") === false, "not ready once unsubscribed");
    await d.end();
    assert.equal(adapter.isConnected("boiler-1"), false);
  });

  it("refuses a retained message on a made-up topic, which the broker would otherwise keep", async function () {
    const d = await connect("boiler-1");
    await d.publish("made-up", "not kept", { retain: false });
    await until(() => rejected() === 1, "an unknown topic counted");
    assert.ok(!d.closed, "an unknown topic alone costs nothing");
    d.publishExpectingCut("made-up", "kept for ever?", { retain: true });
    await until(() => d.closed, "cut for retaining it");
    assert.equal(rejected(), 2);
  });

  it("lets a newer connection of a device replace the older", async function () {
    const first = await connect("boiler-1");
    await first.subscribe(first.topic("commands"));
    await until(() => adapter.isConnected("boiler-1") === true, "the first connection ready");
    const second = await connect("boiler-1");
    await until(() => first.closed, "the first connection closed by the broker");
    assert.equal(adapter.isConnected("boiler-1"), false, "the new one has not subscribed yet");
    second.answerCommands(() => ({ ok: true, result: "second" }));
    await second.subscribe(second.topic("commands"));
    const c = await hub.sendCommand("boiler-1", { command: "who", wait: true, timeout: 5 });
    assert.equal(c.result, "second");
    assert.equal(adapter.statistics().connected, 1);
  });

  it("takes commands over a persistent session's restored subscription", async function () {
    const first = await connect("boiler-1", { clean: false });
    await first.subscribe(first.topic("commands"));
    await first.end();
    assert.equal(adapter.isConnected("boiler-1"), false);
    const queued = await hub.sendCommand("boiler-1", { command: "reboot", wait: false, timeout: 5 });
    // Back without subscribing: the broker restores the session's subscription during CONNECT.
    const back = await connect("boiler-1", { clean: false });
    back.answerCommands(() => ({ ok: true, result: "restored" }));
    const done = await hub.waitForCommand(queued.id);
    assert.equal(done.status, "succeeded");
    assert.equal(done.result, "restored");
  });

  it("publishes the last will: a device that drops off goes offline", async function () {
    const d = await connect("boiler-1", { will: { topic: "tethral/devices/boiler-1/status", payload: Buffer.from("offline"), qos: 1, retain: true } });
    await d.publish("status", "online", { retain: true });
    await until(() => hub.getDevice("boiler-1").status === "online", "online");
    await d.cut();
    await until(() => hub.getDevice("boiler-1").status === "offline", "offline from the will");
    assert.equal(ofType("device.offline", "boiler-1").length, 1);
    assert.equal(adapter.statistics().connected, 0);
  });

  it("lets an unknown device register itself where self-registration is on, keeping its password as token", async function () {
    await hub.stop();
    await startHub({ selfRegistration: true });
    const token = "a-token-of-at-least-16-chars";
    const d = await connect("newcomer-7", { token });
    await d.subscribe(d.topic("commands"));
    assert.equal(adapter.isConnected("newcomer-7"), false, "not a known device yet");
    await d.publish("register", { name: "Newcomer", capabilities: ["temperature"] });
    await until(() => hub.listDevices().devices.some((x) => x.id === "newcomer-7"), "the device registered");
    assert.equal(hub.getDevice("newcomer-7").name, "Newcomer");
    // The session it registered from proved nothing the hub can trust later: it is closed, and
    // the device comes back with its token as a known device.
    await until(() => d.closed, "the registering session closed");
    assert.equal(adapter.isConnected("newcomer-7"), false);
    await d.end();
    // Its password is its token now.
    assert.equal(await MqttDevice.refused(url, { id: "newcomer-7", token: "a-different-token-16+" }), CONNACK_BAD_USERNAME_OR_PASSWORD);
    const back = await connect("newcomer-7", { token });
    await back.subscribe(back.topic("commands"));
    await until(() => adapter.isConnected("newcomer-7") === true, "ready for commands once known");
    await back.publish("telemetry", { temperature: 7 });
    await until(() => hub.getState("newcomer-7").properties.temperature === 7, "telemetry from the registered device");
  });

  it("closes sessions opened while an id was unknown when it is registered: they never report for it or take its commands", async function () {
    await hub.stop();
    await startHub({ selfRegistration: true });
    const intruder = await connect("victim-1", { token: "intruder-guess-0123456789", reconnectPeriod: 0 });
    await intruder.subscribe(intruder.topic("commands"));
    // A registration the hub refuses does not make the session known either.
    await intruder.publish("register", { heartbeatTimeout: -5 });
    await until(() => ofType("message.rejected", "victim-1").length === 1, "the refused registration");
    assert.equal(adapter.isConnected("victim-1"), false);
    await register("victim-1");
    await until(() => intruder.closed, "the unknown session closed");
    await hub.sendCommand("victim-1", { command: "unlock-door" });
    assert.equal(adapter.isConnected("victim-1"), false);
    assert.deepEqual(intruder.commands(), []);
    assert.deepEqual(hub.getState("victim-1").properties, {});
    assert.equal(hub.pendingCommands("victim-1")[0]!.status, "queued", "held for the real device");
  });

  it("gives the service account every topic, and only with its password", async function () {
    await hub.stop();
    await startHub({}, { serviceUsername: "node-red", servicePassword: "service-secret" });
    await register("boiler-1");
    assert.equal(await MqttDevice.refused(url, { id: "watcher", username: "node-red", password: "wrong" }), CONNACK_BAD_USERNAME_OR_PASSWORD);
    const watcher = await connect("watcher", { username: "node-red", password: "service-secret" });
    assert.deepEqual(await watcher.subscribe("tethral/#"), [1]);
    const d = await connect("boiler-1");
    await d.publish("telemetry", { temperature: 30 });
    await until(() => watcher.messages.some((m) => m.topic === "tethral/devices/boiler-1/telemetry"), "the watcher saw the telemetry");
    await until(() => hub.getState("boiler-1").properties.temperature === 30, "the hub took it too");
  });

  it("lets a registered device in without a password where device tokens are off", async function () {
    await hub.stop();
    await startHub({ deviceTokens: false });
    await hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    const d = await connect("boiler-1", { password: undefined });
    await d.publish("telemetry", { temperature: 12 });
    await until(() => hub.getState("boiler-1").properties.temperature === 12, "telemetry without a token");
    assert.equal(await MqttDevice.refused(url, { id: "ghost-9" }), CONNACK_NOT_AUTHORIZED);
  });

  it("counts a twin change as a message sent to the device, not the retained clear of a removed device", async function () {
    const sent = () => hub.communicationStatistics().protocols.mqtt!.messagesOut;
    const before = sent();
    await hub.setState("boiler-1", { desired: { setpoint: 21 } });
    assert.equal(sent(), before + 1, "the twin published for the device");
    await hub.removeDevice("pump-2");
    await hub.removeDevice("boiler-1");
    assert.equal(sent(), before + 1, "clears reach no device: not counted");
  });

  it("keeps a retained twin only while the device's protocol is MQTT: cleared when it moves away, retained again when it moves back", async function () {
    /** The retained twin a fresh subscription of the device finds (null: none). */
    const retained = async (): Promise<{ desired: unknown; version: number } | null> => {
      const d = await connect("boiler-1", { clientId: `probe-${Math.random()}` });
      try {
        await d.subscribe(d.topic("desired"));
        // A retained message comes before the SUBACK's callback runs; give a stray one a moment.
        await new Promise((resolve) => setTimeout(resolve, 100));
        const found = d.messages.filter((m) => m.topic === d.topic("desired") && m.retain && m.payload.length > 0);
        return found.length === 0 ? null : JSON.parse(found.at(-1)!.payload);
      } finally {
        await d.end();
      }
    };
    await hub.setState("boiler-1", { desired: { setpoint: 21 } });
    assert.deepEqual((await retained())?.desired, { setpoint: 21 });
    await hub.updateDevice("boiler-1", { protocol: "http" });
    assert.equal(await retained(), null, "an HTTP device's old twin is not kept on the broker");
    await hub.updateDevice("boiler-1", { protocol: "mqtt" });
    const back = await retained();
    assert.deepEqual(back?.desired, { setpoint: 21 }, "back on MQTT, its twin is retained again");
    assert.equal(back?.version, hub.getState("boiler-1").version);
  });

  it("reports a port in use clearly, and the hub runs without MQTT", async function () {
    const taken = adapter.port!;
    const second = new MqttAdapter({ port: taken });
    const other = new Hub({ protocols: [second], onWarning: () => undefined });
    await other.start();
    try {
      const health = other.health().components["protocol:mqtt"]!;
      assert.equal(health.status, "degraded");
      assert.match(String(health.error), /in use.*TETHRAL_MQTT_PORT/);
    } finally {
      await other.stop();
    }
  });
});

describe("MQTT adapter, embedded broker, stop", function () {
  it("leaves no socket, server or timer behind, and the port free", async function () {
    // After a turn, so mocha's own timer for this test is in the baseline.
    await new Promise((resolve) => setImmediate(resolve));
    const before = activeHandles();
    // A long connect timeout: a silent socket is closed by stop(), not by the broker giving up on it.
    const adapter = new MqttAdapter({ port: 0, connectTimeoutMs: 60_000 });
    const hub = new Hub({ protocols: [adapter], onWarning: () => undefined });
    await hub.start();
    const port = adapter.port!;
    assert.ok(port > 0, "the port bound for port 0");
    assert.equal(adapter.health().port, port);
    const silent = connectSocket(port);
    await once(silent, "connect");
    const silentClosed = once(silent, "close");
    const { token } = await hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    const will = { topic: "tethral/devices/boiler-1/status", payload: Buffer.from("offline"), qos: 1 as const, retain: true };
    const d = await MqttDevice.connect(`mqtt://127.0.0.1:${port}`, { id: "boiler-1", token, keepalive: 1, will });
    await d.publish("status", "online");
    d.answerCommands(() => ({ ok: true }));
    await d.subscribe(d.topic("commands"));
    await until(() => adapter.isConnected("boiler-1") === true, "ready");
    assert.equal((await hub.sendCommand("boiler-1", { command: "x", wait: true, timeout: 5 })).status, "succeeded");
    // The hub stops with the device still connected: the broker must close it.
    await hub.stop();
    await until(() => d.closed, "the device disconnected by the stop");
    await silentClosed;
    // Closing the broker publishes the wills, but the device did not fail: the hub went away.
    assert.equal(hub.getDevice("boiler-1").status, "online");
    await d.end();
    assert.equal(adapter.health().status, "stopped");
    assert.equal(adapter.port, null, "no port once stopped");
    assert.ok(await portIsFree(port), "the port can be bound again");
    // Closing sockets finish on a later turn: wait for them, then name what is left, if anything.
    await until(() => Object.keys(handlesAbove(before)).length === 0, "the handles of before", 1000).catch(() => undefined);
    assert.deepEqual(handlesAbove(before), {});
    await adapter.stop(); // twice is fine
  });
});

describe("MQTT topics and options", function () {
  const topics = new TopicScheme("acme/tethral");

  it("parses exactly {root}/devices/{id}/{level}", function () {
    assert.deepEqual(topics.parse("acme/tethral/devices/boiler-1/responses"), { deviceId: "boiler-1", level: "responses", kind: "response" });
    assert.deepEqual(topics.parse("acme/tethral/devices/boiler-1/commands"), { deviceId: "boiler-1", level: "commands", kind: null });
    for (const bad of ["acme/tethral/devices/boiler-1", "acme/tethral/devices//telemetry", "acme/tethral/devices/boiler-1/", "acme/tethral/devices/a/b/telemetry", "tethral/devices/boiler-1/telemetry"]) {
      assert.equal(topics.parse(bad), null, bad);
    }
  });

  it("tells a device's own topics from a neighbour's whose id starts the same", function () {
    assert.ok(topics.isOwn("acme/tethral/devices/boiler-1/telemetry", "boiler-1"));
    assert.ok(!topics.isOwn("acme/tethral/devices/boiler-12/telemetry", "boiler-1"));
    assert.ok(!topics.isOwn("acme/tethral/devices/boiler-1", "boiler-1"));
    assert.ok(topics.deviceMaySubscribe("acme/tethral/devices/boiler-1/#", "boiler-1"));
    assert.ok(!topics.deviceMaySubscribe("acme/tethral/devices/boiler-1/x/#", "boiler-1"));
  });

  it("matches filters as MQTT does", function () {
    assert.ok(filterMatches("a/+/c", "a/b/c"));
    assert.ok(filterMatches("a/#", "a"));
    assert.ok(filterMatches("a/#", "a/b/c"));
    assert.ok(!filterMatches("a/+", "a/b/c"));
    assert.ok(!filterMatches("a/b/c", "a/b"));
  });

  it("shares the device streams of a group, never status or responses", function () {
    assert.deepEqual(new TopicScheme().hubFilters("g1"), [
      "$share/g1/tethral/devices/+/telemetry",
      "$share/g1/tethral/devices/+/heartbeat",
      "$share/g1/tethral/devices/+/state",
      "tethral/devices/+/status",
      "$share/g1/tethral/devices/+/register",
      "tethral/devices/+/responses",
    ]);
  });

  it("refuses bad settings at construction (INVALID)", function () {
    assertCode(() => new MqttAdapter({ root: "a/+/b" }), "INVALID");
    assertCode(() => new MqttAdapter({ root: "/tethral" }), "INVALID");
    assertCode(() => new MqttAdapter({ root: "$SYS" }), "INVALID");
    assertCode(() => new MqttAdapter({ port: 70000 }), "INVALID");
    assertCode(() => new MqttAdapter({ serviceUsername: "node-red" }), "INVALID");
    assertCode(() => new MqttAdapter({ url: "http://broker" }), "INVALID");
    assertCode(() => new MqttAdapter({ url: "mqtt://broker", sharedGroup: "a/b" }), "INVALID");
    assertCode(() => new MqttAdapter({ url: "mqtt://broker", protocolVersion: 3 as 4 }), "INVALID");
  });
});
