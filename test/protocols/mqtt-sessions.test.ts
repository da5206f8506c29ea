import assert from "node:assert/strict";
import { once } from "node:events";
import { type Socket, connect as connectSocket } from "node:net";
import { Hub } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { MqttAdapter } from "../../src/protocols/mqtt";
import mqttPacket from "mqtt-packet";
import { MqttDevice, rawPacket, until } from "./mqtt-device";

const CONNACK_SERVER_UNAVAILABLE = 3;

/**
 * The embedded broker's sessions: the device is its user name, the client id is its firmware's
 * business, and no client id lets one device reach another's connection, persistent session,
 * queued commands or will. Connections that end half-way through CONNECT leave nothing behind.
 */
describe("MQTT adapter, embedded broker: client ids and sessions", function () {
  let hub: Hub;
  let adapter: MqttAdapter;
  let url: string;
  let events: TethralEvent[];
  const devices: MqttDevice[] = [];
  const sockets: Socket[] = [];
  const tokens = new Map<string, string>();

  async function connect(id: string, extra: Partial<Parameters<typeof MqttDevice.connect>[1]> = {}): Promise<MqttDevice> {
    const d = await MqttDevice.connect(url, { id, token: tokens.get(id), ...extra });
    devices.push(d);
    return d;
  }

  const mqtt = () => hub.communicationStatistics().protocols.mqtt!;
  const ofType = (type: string, deviceId?: string): TethralEvent[] => events.filter((e) => e.type === type && (deviceId === undefined || e.deviceId === deviceId));
  const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

  beforeEach(async function () {
    events = [];
    adapter = new MqttAdapter({ port: 0 });
    hub = new Hub({ protocols: [adapter], onWarning: () => undefined, commands: { sweepIntervalMs: 50, retryBaseDelayMs: 20 } });
    await hub.start();
    hub.subscribe({ types: "*" }, (event) => {
      events.push(event);
    });
    url = `mqtt://127.0.0.1:${adapter.port}`;
    for (const id of ["boiler-1", "pump-2"]) tokens.set(id, (await hub.registerDevice({ id, protocol: "mqtt" })).token!);
  });

  afterEach(async function () {
    for (const s of sockets.splice(0)) s.destroy();
    for (const d of devices.splice(0)) await d.end();
    await hub.stop();
  });

  it("lets a device in with the client id its firmware chooses: mosquitto_pub's, Tasmota's, Node-RED's, an empty one, or its device id", async function () {
    const ids = ["mosq-Xq3pLk2v9TzR8bY1", "DVES_1A2B3C", "nodered_5f3c2a1b9e", "", "boiler-1", "pump-2"];
    for (const [n, clientId] of ids.entries()) {
      const d = await connect("boiler-1", { clientId });
      await d.publish("telemetry", { n });
      await until(() => hub.getState("boiler-1").properties.n === n, `telemetry over client id "${clientId}"`);
      await d.end();
    }
    assert.equal(mqtt().rejected, 0);
  });

  it("never lets a device take over another's connection, persistent session, queued commands or will, whatever client id it sends", async function () {
    // The victim: a live connection ready for commands, and a persistent session (Tasmota-style
    // id) left subscribed while it is away.
    const away = await connect("pump-2", { clientId: "DVES_PUMP", clean: false });
    await away.subscribe(away.topic("commands"));
    await away.end();
    const victim = await connect("pump-2", { clientId: "pump-2" });
    victim.answerCommands(() => ({ ok: true, result: "victim" }));
    await victim.subscribe(victim.topic("commands"));
    await until(() => adapter.isConnected("pump-2") === true, "the victim ready for commands");

    // boiler-1, with its own good token, sends the victim's device id and its other client id as its own.
    const will = { topic: "tethral/devices/pump-2/status", payload: Buffer.from("offline"), qos: 1 as const, retain: true };
    const asId = await connect("boiler-1", { clientId: "pump-2", clean: false, will, reconnectPeriod: 0 });
    const asSession = await connect("boiler-1", { clientId: "DVES_PUMP", clean: false, reconnectPeriod: 0 });
    assert.equal(asId.sessionPresent, false, "no session of pump-2's inherited");
    assert.equal(asSession.sessionPresent, false, "no persistent session of pump-2's inherited");
    await pause(100);
    assert.ok(!victim.closed, "the victim was not kicked off");
    assert.equal(adapter.isConnected("pump-2"), true);

    // Commands for pump-2 reach the victim only; none is queued where boiler-1 could collect it.
    const done = await hub.sendCommand("pump-2", { command: "open", wait: true, timeout: 5 });
    assert.equal(done.result, "victim");
    await pause(100);
    assert.deepEqual([...asId.messages, ...asSession.messages], []);

    // Its last will on pump-2's status topic is refused and counted when it drops.
    const before = mqtt().rejected;
    await asId.cut();
    await until(() => mqtt().rejected === before + 1, "the foreign will refused");
    assert.equal(hub.getDevice("pump-2").status, "online");

    // The victim's own persistent session is still its own.
    await victim.end();
    const back = await connect("pump-2", { clientId: "DVES_PUMP", clean: false });
    assert.equal(back.sessionPresent, true, "pump-2 finds its session");
    back.answerCommands(() => ({ ok: true, result: "restored" }));
    const again = await hub.sendCommand("pump-2", { command: "close", wait: true, timeout: 5 });
    assert.equal(again.result, "restored", "over the subscription the session kept");
    assert.deepEqual(asSession.messages, []);
  });

  it("keeps a device's connections with different client ids apart, and sends each command once, to the newest that subscribed", async function () {
    // A device made of mosquitto_sub (listening) and mosquitto_pub (answering), each with its own id.
    const listener = await connect("boiler-1", { clientId: "mosq-listener" });
    listener.answerCommands(() => ({ ok: true, result: "listener" }));
    await listener.subscribe(listener.topic("commands"));
    const publisher = await connect("boiler-1", { clientId: "mosq-publisher" });
    await publisher.publish("telemetry", { temperature: 20 });
    await until(() => hub.getState("boiler-1").properties.temperature === 20, "telemetry from the second connection");
    assert.ok(!listener.closed, "a second client id does not end the first connection");
    assert.equal((await hub.sendCommand("boiler-1", { command: "a", wait: true, timeout: 5 })).result, "listener");

    const newer = await connect("boiler-1", { clientId: "mosq-newer" });
    newer.answerCommands(() => ({ ok: true, result: "newer" }));
    await newer.subscribe(newer.topic("commands"));
    assert.equal((await hub.sendCommand("boiler-1", { command: "b", wait: true, timeout: 5 })).result, "newer");
    assert.deepEqual(listener.commands().map((c) => c.command), ["a"], "each command to one connection only");
    await newer.end();
    await until(() => adapter.statistics().deviceConnections === 2, "the newer one gone");
    assert.equal((await hub.sendCommand("boiler-1", { command: "c", wait: true, timeout: 5 })).result, "listener", "back to the one still subscribed");

    // The same client id again is the same session: the newer connection replaces the older.
    const replacement = await connect("boiler-1", { clientId: "mosq-listener" });
    await until(() => listener.closed, "the older connection with that id closed");
    assert.ok(!publisher.closed);
    assert.ok(!replacement.closed);
    assert.equal(adapter.statistics().connected, 1, "one device connected");
  });

  it("bounds a device's connections and persistent sessions", async function () {
    const open: MqttDevice[] = [];
    for (let n = 0; n < 8; n++) open.push(await connect("boiler-1", { clientId: `conn-${n}` }));
    assert.equal(await MqttDevice.refused(url, { id: "boiler-1", token: tokens.get("boiler-1"), clientId: "conn-8" }), CONNACK_SERVER_UNAVAILABLE);
    assert.equal(mqtt().rejected, 1);
    await until(() => ofType("message.rejected", "boiler-1").length === 1, "the refusal published");
    // Reconnecting under an id it holds is a takeover, not one more connection.
    await connect("boiler-1", { clientId: "conn-3" });
    await until(() => open[3]!.closed, "conn-3 replaced");
    for (const d of open) await d.end();

    // Persistent sessions under ever new client ids: the oldest beyond four are forgotten.
    for (let n = 0; n < 6; n++) {
      const d = await connect("pump-2", { clientId: `persist-${n}`, clean: false });
      await d.subscribe(d.topic("commands"));
      await d.end();
    }
    const oldest = await connect("pump-2", { clientId: "persist-0", clean: false });
    assert.equal(oldest.sessionPresent, false, "the oldest was forgotten");
    const recent = await connect("pump-2", { clientId: "persist-5", clean: false });
    assert.equal(recent.sessionPresent, true, "a recent one is kept");
  });

  it("counts a publish to a wildcard or $ topic as a refusal (message.rejected), as it cuts the connection", async function () {
    const raw = async (topic: string): Promise<void> => {
      const socket = await rawConnect("boiler-1");
      socket.write(rawPacket.publish(topic, "{}"));
      await once(socket, "close");
    };
    await raw("tethral/devices/boiler-1/+");
    await raw("tethral/devices/boiler-1/#");
    const d = await connect("boiler-1");
    d.publishExpectingCut("telemetry", "{}", { id: "x" }); // a foreign topic, as before
    await until(() => d.closed, "cut");
    const dollar = await connect("boiler-1");
    dollar.client.publish("$SYS/broker/load", "{}", { qos: 0 });
    await until(() => dollar.closed, "cut for a $ topic");
    await until(() => mqtt().rejected === 4, "four refusals");
    await until(() => ofType("message.rejected", "boiler-1").length === 4, "four message.rejected");
    assert.deepEqual(
      ofType("message.rejected", "boiler-1").map((e) => (e.data as { reason: string }).reason),
      ["publish-refused", "publish-refused", "publish-refused", "publish-refused"],
    );
    assert.equal(adapter.statistics().publishesRefused, 4);
  });

  it("refuses a device's publish on an undocumented topic of its own as unknown-topic, of kind publish, and keeps the connection", async function () {
    const d = await connect("boiler-1");
    d.client.publish(d.topic("bogus"), "{}", { qos: 1 });
    await until(() => ofType("message.rejected", "boiler-1").length === 1, "the refusal published");
    const refusal = ofType("message.rejected", "boiler-1")[0]!.data as { reason: string; kind?: string; protocol: string };
    assert.deepEqual([refusal.reason, refusal.kind, refusal.protocol], ["unknown-topic", "publish", "mqtt"]);
    assert.equal(adapter.statistics().topicsUnknown, 1);
    assert.equal(d.closed, false, "not cut: the topic is the device's own");
    await d.end();
  });

  it("keeps no retained copy of a report the hub refused and hands it to no subscriber; a report it took is retained and handed on", async function () {
    const watcher = await connect("boiler-1", { clientId: "watcher" });
    await watcher.subscribe(watcher.topic("state"));
    const sender = await connect("boiler-1", { clientId: "sender" });
    const good = JSON.stringify({ properties: { valve: "open" } });
    await sender.publish("state", good, { qos: 1, retain: true });
    await until(() => hub.getState("boiler-1").properties.valve === "open", "the good report taken");
    // Refused, retained: not JSON; a shape the hub refuses; QoS 0 and 1.
    await sender.publish("state", "{broken", { qos: 1, retain: true });
    await sender.publish("state", JSON.stringify({ status: "exploded" }), { qos: 0, retain: true });
    await until(() => mqtt().rejected === 2, "both refused");
    await pause(100);
    assert.deepEqual(watcher.messages.map((m) => m.payload), [good], "the live subscriber got the taken report only");
    assert.equal(sender.closed, false, "the connection stays");
    // A later subscriber (the device itself at its next boot, say) gets the report the hub took.
    const late = await connect("boiler-1", { clientId: "late" });
    await late.subscribe(late.topic("state"));
    await until(() => late.messages.length > 0, "the retained copy");
    await pause(100);
    assert.deepEqual(late.messages.map((m) => [m.payload, m.retain]), [[good, true]]);
    // An empty retained message clears the kept one (MQTT's way), and is no refused report.
    await sender.publish("state", "", { qos: 1, retain: true });
    await pause(100);
    const cleared = await connect("boiler-1", { clientId: "after-clear" });
    await cleared.subscribe(cleared.topic("state"));
    await pause(200);
    assert.deepEqual(cleared.messages, [], "nothing retained any more");
    assert.equal(mqtt().rejected, 2, "the clearing is not counted as a refusal");
  });

  it("takes a device's reports in the order it sent them, retained or not, however many come in one read", async function () {
    const socket = await rawConnect("boiler-1");
    const topic = "tethral/devices/boiler-1/state";
    const report = (v: number, retain: boolean, messageId: number, qos: 0 | 1 = 0) =>
      mqttPacket.generate({ cmd: "publish", topic, payload: JSON.stringify({ properties: { v } }), qos, messageId: qos === 0 ? undefined : messageId, retain, dup: false });
    // One write, QoS 0 and 1, retained or not: aedes stores a retained report, and writes a QoS 1
    // one's PUBACK, before handing it on, so until 2026-12-08 reports of one read overtook each
    // other (here the last taken was 5).
    socket.write(Buffer.concat([report(1, true, 1), report(2, false, 2), report(3, true, 3, 1), report(4, false, 4), report(5, false, 5, 1), report(6, true, 6)]));
    const taken = async () => (await hub.stateHistory("boiler-1", 20)).map((h) => h.to.properties?.v).filter((v) => v !== undefined);
    await until(async () => (await taken()).length === 6, "six reports taken");
    assert.equal(hub.getState("boiler-1").properties.v, 6, "the last sent is the last taken");
    assert.deepEqual(await taken(), [1, 2, 3, 4, 5, 6], "history, in the order sent");
  });

  it("cuts a device that publishes on its commands topic (the hub's), and hands the fake command to nobody", async function () {
    const listener = await connect("boiler-1", { clientId: "listener" });
    await listener.subscribe(listener.topic("commands"));
    const injector = await connect("boiler-1", { clientId: "injector" });
    injector.publishExpectingCut("commands", JSON.stringify({ id: "fake", command: "factory-reset" }));
    await until(() => injector.closed, "the injector cut");
    await until(() => ofType("message.rejected", "boiler-1").length === 1, "the refusal published");
    assert.equal((ofType("message.rejected", "boiler-1")[0]!.data as { reason: string }).reason, "publish-refused");
    // A real command still reaches the listener, and it is the only one it got.
    const real = await hub.sendCommand("boiler-1", { command: "ping" });
    await until(() => listener.commands().length > 0, "the hub's command at the listener");
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(listener.commands().map((c) => c.id), [real.id]);
    await listener.end();
  });

  it("leaves no session behind when a connection drops during CONNECT", async function () {
    // A persistent session subscribed to commands: a CONNECT that resumes it restores the subscription.
    const first = await connect("boiler-1", { clientId: "boiler-1", clean: false });
    await first.subscribe(first.topic("commands"));
    await first.end();
    await until(() => adapter.isConnected("boiler-1") === false, "away");
    for (let n = 0; n < 40; n++) {
      const socket = await rawConnect("boiler-1", { clientId: "boiler-1", clean: n % 2 === 1, wait: false });
      socket.write(rawPacket.subscribe("tethral/devices/boiler-1/commands"));
      // Cut at once, or a little later: somewhere between CONNECT and its CONNACK.
      if (n % 4 === 0) socket.destroy();
      else if (n % 4 === 1) setImmediate(() => socket.destroy());
      else setTimeout(() => socket.destroy(), n % 4);
      if (!socket.destroyed) await once(socket, "close");
    }
    await pause(200);
    assert.equal(adapter.isConnected("boiler-1"), false, "no connection is taken for ready");
    const stats = adapter.statistics();
    assert.equal(stats.connected, 0, "no device connected");
    assert.equal(stats.deviceConnections, 0);
    assert.equal(stats.clients, 0, "the broker holds no client");
    // A command waits for the device rather than going to a connection that is gone.
    const queued = await hub.sendCommand("boiler-1", { command: "reboot", wait: false, timeout: 5 });
    await pause(100);
    assert.equal((await hub.getCommand(queued.id)).status, "queued");
    // (The clean CONNECTs above ended the persistent session: the device subscribes again.)
    const back = await connect("boiler-1", { clientId: "boiler-1" });
    back.answerCommands(() => ({ ok: true, result: "back" }));
    await back.subscribe(back.topic("commands"));
    assert.equal((await hub.waitForCommand(queued.id)).result, "back");
  });

  /** A raw socket through CONNECT as `deviceId` with its token; `wait: false` does not wait for the CONNACK. */
  async function rawConnect(deviceId: string, o: { clientId?: string; clean?: boolean; wait?: boolean } = {}): Promise<Socket> {
    const socket = connectSocket(adapter.port!, "127.0.0.1");
    sockets.push(socket);
    socket.on("error", () => undefined);
    await once(socket, "connect");
    socket.write(rawPacket.connect({ clientId: o.clientId ?? deviceId, username: deviceId, password: tokens.get(deviceId), clean: o.clean }));
    if (o.wait !== false) {
      const [connack] = (await once(socket, "data")) as [Buffer];
      assert.equal(connack[3], 0, "CONNACK accepted");
    }
    return socket;
  }
});
