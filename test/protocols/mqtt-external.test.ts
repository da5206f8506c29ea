import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { type AddressInfo, Socket, createServer } from "node:net";
import mqttPacket from "mqtt-packet";
import { Hub, type HubOptions } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { MqttAdapter, type MqttAdapterOptions } from "../../src/protocols/mqtt";
import { type Mosquitto, needs, startMosquitto } from "../mosquitto";
import { MqttDevice, PlainBroker, activeHandles, handlesAbove, portIsFree, until } from "./mqtt-device";

/**
 * A real broker to run against as well (Mosquitto), e.g. mqtt://127.0.0.1:1883. Unset, the tests
 * start a Mosquitto of their own where it is installed.
 */
const EXTERNAL_URL = process.env.TETHRAL_TEST_MQTT_URL;

/** A topic root of its own for each test: parallel runs on one shared broker must not meet. */
const uniqueRoot = (): string => `tethral-test-${randomBytes(5).toString("hex")}`;

/** What each test of the external mode needs: a hub whose MQTT adapter is a client of `url`. */
class Rig {
  hub!: Hub;
  adapter!: MqttAdapter;
  readonly events: TethralEvent[] = [];
  readonly devices: MqttDevice[] = [];
  /** Retained topics a test left on the broker, cleared afterwards. */
  readonly retained = new Set<string>();
  readonly root = uniqueRoot();

  constructor(readonly url: string) {}

  async startHub(ids: string[], options: MqttAdapterOptions = {}, hubOptions: HubOptions = {}, heartbeatTimeout?: number): Promise<void> {
    this.adapter = new MqttAdapter({ url: this.url, root: this.root, reconnectPeriod: 50, maxReconnectPeriod: 400, startTimeoutMs: 3000, ...options });
    this.hub = new Hub({ protocols: [this.adapter], onWarning: () => undefined, commands: { sweepIntervalMs: 50, retryBaseDelayMs: 20 }, ...hubOptions });
    for (const id of ids) await this.hub.registerDevice({ id, protocol: "mqtt", heartbeatTimeout });
    this.hub.subscribe({ types: "*" }, (event) => {
      this.events.push(event);
    });
    await this.hub.start();
  }

  async device(id: string, extra: Partial<Parameters<typeof MqttDevice.connect>[1]> = {}): Promise<MqttDevice> {
    const d = await MqttDevice.connect(this.url, { id, root: this.root, clientId: `${this.root}-${id}`, username: undefined, ...extra });
    this.devices.push(d);
    return d;
  }

  async online(d: MqttDevice): Promise<void> {
    this.retained.add(d.topic("status"));
    await d.publish("status", "online", { retain: true });
  }

  /** Publishes a retained message on a device topic, and clears it after the test. */
  async retain(d: MqttDevice, level: string, payload: string | object): Promise<void> {
    this.retained.add(d.topic(level));
    await d.publish(level, payload, { retain: true });
  }

  /**
   * Takes the hub's broker session over with a client of the same id, as a broker restart or a
   * network cut would end it: the hub reconnects and subscribes again, and the broker delivers
   * its retained messages once more.
   */
  async kickHub(clientId: string): Promise<void> {
    const connects = Number(this.adapter.statistics().connects);
    const usurper = await MqttDevice.connect(this.url, { id: clientId, username: undefined });
    await usurper.end();
    await until(() => Number(this.adapter.statistics().connects) > connects && this.adapter.health().status === "ok", "the hub back and subscribed");
  }

  rejected(): number {
    return this.hub.communicationStatistics().protocols.mqtt!.rejected;
  }

  async close(): Promise<void> {
    for (const d of this.devices.splice(0)) await d.end();
    await this.hub?.stop();
    if (this.retained.size > 0) {
      const cleaner = await MqttDevice.connect(this.url, { id: `${this.root}-cleaner`, username: undefined, reconnectPeriod: 0 }).catch(() => null);
      for (const topic of this.retained) cleaner?.client.publish(topic, "", { qos: 1, retain: true });
      await cleaner?.end();
    }
  }
}

for (const target of ["aedes", "mosquitto"] as const) {
  describe(`MQTT adapter, external broker (${target}), with a real hub`, function () {
    let broker: PlainBroker | null = null;
    let mosquitto: Mosquitto | null = null;
    let url: string;
    let rig: Rig;

    before(async function () {
      if (target === "mosquitto") {
        if (EXTERNAL_URL) url = EXTERNAL_URL;
        else if (needs(this, ["mosquitto"], "apt-get install mosquitto, or set TETHRAL_TEST_MQTT_URL")) {
          mosquitto = await startMosquitto();
          url = mosquitto.url;
        }
      } else {
        broker = await new PlainBroker().start();
        url = broker.url;
      }
    });

    after(async function () {
      await broker?.stop();
      await mosquitto?.stop();
    });

    beforeEach(function () {
      rig = new Rig(url);
    });

    afterEach(async function () {
      await rig.close();
    });

    it("brings device messages to the hub; a retained online is old news but says the device is there", async function () {
      const d = await rig.device("boiler-1");
      await rig.online(d);
      await rig.startHub(["boiler-1"]);
      assert.equal(rig.adapter.health().status, "ok");
      await until(() => rig.adapter.isConnected("boiler-1") === true, "presence from the retained status");
      assert.equal(rig.hub.getDevice("boiler-1").status, "unknown", "a retained online is no heartbeat");
      await d.publish("telemetry", { temperature: 21.5 });
      await d.publish("state", { properties: { valve: "open" } });
      await d.publish("heartbeat", "");
      const live = (): TethralEvent[] => rig.events.filter((e) => e.type === "message.received" && !(e.data as { retained: boolean }).retained);
      await until(() => live().length === 3, "three live messages");
      assert.deepEqual(rig.hub.getState("boiler-1").properties, { temperature: 21.5, valve: "open" });
      assert.equal(rig.hub.getDevice("boiler-1").status, "online");
    });

    it("takes retained messages replayed on each (re)subscribe as old news: they update state and say so, but are no sign of life", async function () {
      // A device long gone left its last reports retained on the broker.
      const gone = await rig.device("boiler-1");
      await rig.retain(gone, "telemetry", { temperature: 5 });
      await rig.retain(gone, "state", { status: "error", properties: { valve: "shut" } });
      await rig.retain(gone, "heartbeat", "beat"); // an empty retained payload would clear the topic
      await rig.retain(gone, "status", "online");
      await gone.end();
      const hubId = `${rig.root}-hub`;
      // A short heartbeat timeout and a low flapping threshold: replays taken for signs of life
      // would bring the device online at each resubscribe, offline in between, and flap.
      await rig.startHub(["boiler-1"], { clientId: hubId }, { anomaly: { flapping: { threshold: 3, windowSec: 60 } } }, 0.3);
      const replays = (): TethralEvent[] => rig.events.filter((e) => e.type === "message.received" && e.deviceId === "boiler-1");
      for (let round = 1; round <= 3; round++) {
        if (round > 1) await rig.kickHub(hubId);
        await until(() => replays().length === 4 * round, `the retained messages, delivery ${round}`);
        // Longer than the heartbeat timeout: a device the replay took online would go offline meanwhile.
        await new Promise((resolve) => setTimeout(resolve, 600));
      }
      assert.deepEqual(
        replays().slice(0, 4).map((e) => [(e.data as { kind: string }).kind, (e.data as { retained: boolean }).retained]).sort(),
        [["heartbeat", true], ["state", true], ["status", true], ["telemetry", true]],
      );
      const device = rig.hub.getDevice("boiler-1");
      assert.equal(device.status, "unknown", "never taken online, nor to the retained error");
      assert.equal(device.lastSeen, null, "no sign of life");
      assert.deepEqual(rig.events.filter((e) => ["device.online", "device.offline", "state.anomaly"].includes(e.type)).map((e) => e.type), []);
      const state = rig.hub.getState("boiler-1");
      assert.deepEqual(state.properties, { temperature: 5, valve: "shut" }, "the old values are the best known");
      assert.equal(state.reportedAt, null, "a replay is not a report");
      const reasons = (await rig.hub.stateHistory("boiler-1")).map((h) => h.reason);
      assert.deepEqual(reasons.sort(), ["retained-state", "retained-telemetry"], "the history says where the values came from");
      // The device itself, live, is news again.
      const back = await rig.device("boiler-1");
      await back.publish("telemetry", { temperature: 6 });
      await until(() => rig.hub.getDevice("boiler-1").status === "online", "online from a live message");
      const live = replays().at(-1)!;
      assert.equal((live.data as { retained: boolean }).retained, false);
    });

    it("takes a retained offline as the broker's record of a last will, saying so, and counts no flap for its replays", async function () {
      // A firmware that sets a last will but never says `online` leaves `offline` retained while it runs.
      const d = await rig.device("boiler-1");
      await rig.retain(d, "status", "offline");
      const hubId = `${rig.root}-hub`;
      await rig.startHub(["boiler-1"], { clientId: hubId }, { anomaly: { flapping: { threshold: 3, windowSec: 60 } } }, 30);
      const offline = (): TethralEvent[] => rig.events.filter((e) => e.type === "device.offline");
      for (let round = 1; round <= 4; round++) {
        if (round > 1) {
          await rig.kickHub(hubId);
          await until(() => offline().length === round - 1, `the replayed offline, round ${round}`);
        }
        await d.publish("telemetry", { round });
        await until(() => rig.hub.getDevice("boiler-1").status === "online" && rig.hub.getState("boiler-1").properties.round === round, `report ${round}`);
      }
      assert.deepEqual(offline().map((e) => (e.data as { reason: string }).reason), ["retained", "retained", "retained"]);
      assert.ok((await rig.hub.stateHistory("boiler-1")).some((h) => h.reason === "retained" && h.to.status === "offline"), "the history says so");
      assert.deepEqual(rig.events.filter((e) => e.type === "state.anomaly"), [], "six transitions, none a flap of the device's own");
      assert.equal(rig.adapter.isConnected("boiler-1"), false, "its status topic says it cannot take commands");
    });

    it("round-trips commands over QoS 1: succeeded and failed", async function () {
      await rig.startHub(["boiler-1"]);
      const d = await rig.device("boiler-1");
      d.answerCommands((c) => (c.command === "reboot" ? { ok: true, result: { rebooted: true } } : { ok: false, error: "busy" }));
      await d.subscribe(d.topic("commands"));
      await rig.online(d);
      await until(() => rig.adapter.isConnected("boiler-1") === true, "online");
      const ok = await rig.hub.sendCommand("boiler-1", { command: "reboot", params: { force: true }, wait: true, timeout: 5 });
      assert.equal(ok.status, "succeeded");
      assert.deepEqual(ok.result, { rebooted: true });
      const failed = await rig.hub.sendCommand("boiler-1", { command: "explode", wait: true, timeout: 5 });
      assert.equal(failed.status, "failed");
      assert.equal(failed.error, "busy");
      assert.deepEqual(d.commands()[0], { id: ok.id, command: "reboot", params: { force: true } });
      assert.equal(rig.hub.communicationStatistics().protocols.mqtt!.messagesOut, 2);
    });

    it("after losing its own connection, sends to a device again once its retained status is replayed, and forgets a removed device's", async function () {
      const clientId = `${rig.root}-hub`;
      await rig.startHub(["boiler-1", "boiler-2"], { clientId });
      const d = await rig.device("boiler-1");
      d.answerCommands(() => ({ ok: true }));
      await d.subscribe(d.topic("commands"));
      await rig.online(d);
      // boiler-2 says online without retaining it: no copy of it comes back after the hub reconnects.
      const gone = await rig.device("boiler-2");
      await gone.publish("status", "online", { retain: false });
      await until(() => rig.adapter.isConnected("boiler-1") === true && rig.adapter.isConnected("boiler-2") === true, "both online");
      await rig.hub.removeDevice("boiler-2");
      // The broker goes on; only the hub's session is taken over: boiler-1's retained online is
      // replayed when the hub subscribes again, and that is enough to send to it.
      await rig.kickHub(clientId);
      await until(() => rig.adapter.isConnected("boiler-1") === true, "boiler-1's presence from its replayed status");
      assert.equal((await rig.hub.sendCommand("boiler-1", { command: "ping", wait: true, timeout: 5 })).status, "succeeded");
      // boiler-2 was removed: nothing is left waiting for its status.
      assert.equal(rig.adapter.statistics().devicesUnconfirmed, 0);
      assert.equal(rig.adapter.isConnected("boiler-2"), undefined);
    });

    it("takes the last will: the device goes offline, and isConnected follows its status", async function () {
      await rig.startHub(["boiler-1"]);
      const d = await rig.device("boiler-1", { will: { topic: `${rig.root}/devices/boiler-1/status`, payload: Buffer.from("offline"), qos: 1, retain: true } });
      await rig.online(d);
      await d.publish("heartbeat", "");
      await until(() => rig.hub.getDevice("boiler-1").status === "online" && rig.adapter.isConnected("boiler-1") === true, "online");
      await d.cut();
      await until(() => rig.hub.getDevice("boiler-1").status === "offline", "offline from the will");
      assert.equal(rig.adapter.isConnected("boiler-1"), false);
      assert.equal(rig.adapter.isConnected("never-heard-of"), undefined);
    });

    it("speaks MQTT 5 when asked (Mosquitto only: aedes has no MQTT 5)", async function () {
      if (target !== "mosquitto") this.skip();
      await rig.startHub(["boiler-1"], { protocolVersion: 5 });
      const d = await rig.device("boiler-1", { protocolVersion: 5 });
      d.answerCommands(() => ({ ok: true, result: 5 }));
      await d.subscribe(d.topic("commands"));
      await rig.online(d);
      await until(() => rig.adapter.isConnected("boiler-1") === true, "online");
      assert.equal((await rig.hub.sendCommand("boiler-1", { command: "v", wait: true, timeout: 5 })).result, 5);
    });

    it("refuses bad payloads and unknown devices, counts them, and keeps serving", async function () {
      await rig.startHub(["boiler-1"]);
      const d = await rig.device("boiler-1");
      const stranger = await rig.device("stranger-5");
      await d.publish("telemetry", "{broken");
      await d.publish("telemetry", '{"__proto__": {"polluted": true}}');
      await stranger.publish("telemetry", { temperature: 1 });
      await until(() => rig.rejected() === 3, "three refusals");
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
      await d.publish("telemetry", { temperature: 4 });
      await until(() => rig.hub.getState("boiler-1").properties.temperature === 4, "the next good report");
    });
  });
}

describe("MQTT adapter, external broker: the PUBACKs of one read", function () {
  /**
   * A broker written by hand (mqtt-packet on a plain socket): it hands the hub 50 QoS 1 reports in
   * one write, as a broker does when they queued up, and counts the writes the hub's socket makes
   * until every PUBACK is back.
   */
  it("go back to the broker in one write, every one of them", async function () {
    const root = uniqueRoot();
    let hubPort = 0;
    let writes = 0;
    const acked = new Set<number>();
    let subscribed!: () => void;
    const ready = new Promise<void>((resolve) => (subscribed = resolve));
    let sendToHub: (packets: Buffer[]) => void = () => undefined;
    const server = createServer((socket) => {
      hubPort = socket.remotePort!;
      const parser = mqttPacket.parser();
      parser.on("packet", (packet) => {
        if (packet.cmd === "connect") socket.write(mqttPacket.generate({ cmd: "connack", returnCode: 0, sessionPresent: false }));
        else if (packet.cmd === "subscribe") {
          socket.write(mqttPacket.generate({ cmd: "suback", messageId: packet.messageId, granted: packet.subscriptions.map(() => 1) }));
          subscribed();
        } else if (packet.cmd === "puback") acked.add(packet.messageId!);
        else if (packet.cmd === "pingreq") socket.write(mqttPacket.generate({ cmd: "pingresp" }));
      });
      socket.on("data", (chunk) => parser.parse(chunk));
      socket.on("error", () => undefined);
      sendToHub = (packets) => socket.write(Buffer.concat(packets));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
    const url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`;
    // Every write a socket of the hub's makes (each is a system call): counted for the hub's own socket.
    const proto = Socket.prototype as unknown as Record<"_write" | "_writev", (this: Socket, ...args: unknown[]) => void>;
    const original = { _write: proto._write, _writev: proto._writev };
    for (const name of ["_write", "_writev"] as const) {
      proto[name] = function (this: Socket, ...args: unknown[]) {
        if (hubPort !== 0 && this.localPort === hubPort) writes++;
        return original[name].apply(this, args);
      };
    }
    const adapter = new MqttAdapter({ url, root, startTimeoutMs: 3000 });
    const hub = new Hub({ protocols: [adapter], onWarning: () => undefined });
    try {
      await hub.registerDevice({ id: "meter-1", protocol: "mqtt" });
      await hub.start();
      await ready;
      const before = writes;
      const reports = Array.from({ length: 50 }, (_, i) =>
        mqttPacket.generate({ cmd: "publish", topic: `${root}/devices/meter-1/telemetry`, payload: JSON.stringify({ n: i + 1 }), qos: 1, messageId: i + 1, dup: false, retain: false }),
      );
      sendToHub(reports);
      await until(() => acked.size === 50, "a PUBACK for each of the 50 reports");
      await until(() => hub.getState("meter-1").properties.n === 50, "the last report in the state");
      assert.equal(writes - before, 1, `the hub wrote ${writes - before} times for the 50 PUBACKs`);
    } finally {
      Object.assign(proto, original);
      await hub.stop();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe("MQTT adapter, external broker, faults (aedes restarted by the test)", function () {
  let broker: PlainBroker;
  let rig: Rig;
  /**
   * A client whose SUBSCRIBE the broker takes late, as a loaded broker or machine does: not
   * before `until()` holds, then `ms` later.
   */
  let slowSubscriber: { clientId: string; until: () => boolean; ms: number } | null = null;

  beforeEach(async function () {
    slowSubscriber = null;
    broker = await new PlainBroker({
      authorizeSubscribe: (client, subscription, done) => {
        const slow = client?.id === slowSubscriber?.clientId ? slowSubscriber : null;
        if (!slow) return done(null, subscription);
        until(slow.until, "the slow subscriber's moment", 10_000).then(
          () => setTimeout(() => done(null, subscription), slow.ms),
          (err: Error) => done(err, null),
        );
      },
    }).start();
    rig = new Rig(broker.url);
  });

  afterEach(async function () {
    await rig.close();
    await broker.stop();
  });

  it("start() does not wait for ever on a broker that is down, and connects once it is up", async function () {
    const port = broker.port;
    await broker.stop();
    await rig.startHub(["boiler-1"], { startTimeoutMs: 100 });
    const health = rig.adapter.health();
    assert.equal(health.status, "degraded");
    assert.match(String(health.error), /ECONNREFUSED|connect/i);
    await assert.rejects(rig.adapter.send(rig.hub.getDevice("boiler-1"), { id: "c", command: "x", params: {} }, 1000), /not connected/);
    await broker.start(port);
    await until(() => rig.adapter.health().status === "ok", "connected and subscribed");
    const d = await rig.device("boiler-1");
    await d.publish("telemetry", { temperature: 3 });
    await until(() => rig.hub.getState("boiler-1").properties.temperature === 3, "telemetry after the late start");
  });

  it("survives a broker restart: reconnects, subscribes again, and loses no QoS 1 command", async function () {
    await rig.startHub(["boiler-1"]);
    // The device reconnects by itself too, and on each connection subscribes to its commands and
    // announces itself once the broker granted that (its SUBACK), as the README asks of devices.
    // (mqtt.js's own resubscribe is off: it gives no SUBACK to wait for.)
    const d = await rig.device("boiler-1", { reconnectPeriod: 50, resubscribe: false });
    d.answerCommands((c) => ({ ok: true, result: c.params }));
    d.client.on("connect", () =>
      d.client.subscribe(d.topic("commands"), { qos: 1 }, (err) => {
        if (!err) d.client.publish(d.topic("status"), "online", { qos: 1, retain: true });
      }),
    );
    await d.subscribe(d.topic("commands"));
    await rig.online(d);
    const first = await rig.hub.sendCommand("boiler-1", { command: "n", params: { n: 0 }, wait: true, timeout: 5 });
    assert.equal(first.status, "succeeded");

    const port = broker.port;
    await broker.stop();
    await until(() => rig.adapter.health().status === "degraded", "the loss noticed");
    // The restarted broker takes the device's subscription late: the hub is back and subscribed
    // first, and must not send to the device until it announces itself again (the broker would
    // acknowledge the command and drop it, for want of a subscriber).
    // Held until the hub is back and subscribed, then 300 ms more: more than the command queue's
    // sweep (50 ms here), so a hub that did not wait would have sent the command by then.
    slowSubscriber = { clientId: d.client.options.clientId!, until: () => rig.adapter.health().status === "ok", ms: 300 };
    // Sent while the broker is away: the hub keeps it queued rather than fail it.
    const during = await rig.hub.sendCommand("boiler-1", { command: "n", params: { n: 1 }, wait: false, timeout: 5 });
    assert.equal(during.status, "queued");
    // Down for longer than the clients' reconnect period: their reconnections are refused meanwhile.
    await new Promise((resolve) => setTimeout(resolve, 300));
    await broker.start(port);
    await until(() => rig.adapter.health().status === "ok", "reconnected and subscribed");
    assert.equal((await rig.hub.waitForCommand(during.id)).status, "succeeded");

    const after = await Promise.all(
      [2, 3, 4, 5, 6].map((n) => rig.hub.sendCommand("boiler-1", { command: "n", params: { n }, wait: true, timeout: 5, retries: 2 })),
    );
    assert.deepEqual(after.map((c) => c.status), ["succeeded", "succeeded", "succeeded", "succeeded", "succeeded"]);
    const seen = new Set(d.commands().map((c) => (c.params as { n: number }).n));
    assert.deepEqual([...seen].sort(), [0, 1, 2, 3, 4, 5, 6]);
    await d.publish("telemetry", { after: "restart" });
    await until(() => rig.hub.getState("boiler-1").properties.after === "restart", "telemetry after the restart");
    const stats = rig.adapter.statistics();
    assert.equal(stats.connects, 2);
    assert.equal(stats.connectionsLost, 1);
  });

  it("gives up on a command the broker never acknowledges, and still stops", async function () {
    const hub = "hub-that-publishes";
    // This broker takes the hub's PUBLISH and never answers it (no PUBACK), as a wedged one would.
    const stalling = await new PlainBroker({ authorizePublish: (client, _packet, done) => (client?.id === hub ? undefined : done(null)) }).start();
    const stallRig = new Rig(stalling.url);
    try {
      await stallRig.startHub(["boiler-1"], { clientId: hub });
      const device = stallRig.hub.getDevice("boiler-1");
      await assert.rejects(stallRig.adapter.send(device, { id: "c1", command: "x", params: {} }, 200), /did not acknowledge/);
      assert.equal(stallRig.hub.communicationStatistics().protocols.mqtt!.errors, 1);
      await stallRig.close();
      assert.equal(stallRig.adapter.health().status, "stopped");
    } finally {
      await stallRig.close();
      await stalling.stop();
    }
  });

  it("stop() leaves nothing behind, even while it is reconnecting", async function () {
    const port = broker.port;
    await broker.stop();
    // The baseline without the broker's own timers, so they cannot hide one of ours.
    await new Promise((resolve) => setImmediate(resolve));
    const before = activeHandles();
    // A long reconnect delay: a timer stop() forgot would outlive the wait below.
    await rig.startHub(["boiler-1"], { reconnectPeriod: 10_000, maxReconnectPeriod: 10_000, startTimeoutMs: 100 });
    await until(() => Number(rig.adapter.statistics().reconnectsScheduled) > 0, "a reconnection pending");
    await rig.hub.stop();
    assert.equal(rig.adapter.health().status, "stopped");
    await until(() => Object.keys(handlesAbove(before)).length === 0, "the handles of before", 1000).catch(() => undefined);
    assert.deepEqual(handlesAbove(before), {});
    assert.ok(await portIsFree(port));
    await broker.start(port);
  });
});

describe("MQTT adapter, shared subscriptions (Mosquitto: a broker with $share)", function () {
  const rigs: Rig[] = [];
  let mosquitto: Mosquitto | null = null;
  let url = EXTERNAL_URL ?? "";

  before(async function () {
    if (url || !needs(this, ["mosquitto"], "apt-get install mosquitto, or set TETHRAL_TEST_MQTT_URL")) return;
    mosquitto = await startMosquitto();
    url = mosquitto.url;
  });

  afterEach(async function () {
    for (const r of rigs.splice(0)) await r.close();
  });

  after(async function () {
    await mosquitto?.stop();
  });

  it("splits one fleet's messages between two hubs of a group; both see every status", async function () {
    const a = new Rig(url);
    const b = Object.assign(new Rig(url), { root: a.root });
    rigs.push(a, b);
    await a.startHub(["boiler-1"], { sharedGroup: "hubs", clientId: `${a.root}-hub-a` });
    await b.startHub(["boiler-1"], { sharedGroup: "hubs", clientId: `${a.root}-hub-b` });
    const d = await a.device("boiler-1");
    await a.online(d);
    await until(() => a.adapter.isConnected("boiler-1") === true && b.adapter.isConnected("boiler-1") === true, "status at both hubs");
    for (let n = 0; n < 20; n++) await d.publish("telemetry", { n });
    const count = (r: Rig): number => r.events.filter((e) => e.type === "message.received" && (e.data as { kind: string }).kind === "telemetry").length;
    await until(() => count(a) + count(b) === 20, "every report taken once");
    assert.ok(count(a) > 0 && count(b) > 0, `both hubs took a share (${count(a)} / ${count(b)})`);
  });
});
