import assert from "node:assert/strict";
import mqtt from "mqtt";
import { Hub } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { MqttAdapter } from "../../src/protocols/mqtt";
import { holdLoopAfter } from "../helpers";
import { MqttDevice, until } from "./mqtt-device";

const SERVICE = { username: "dashboard", password: "dashboard-password-1234" };

// The embedded broker hands a device's publish to its other subscribers (a turn each) before the
// hub sees it: a decision one turn after the held loop's reads would still come too early.
for (const watcher of [false, true]) {
  describe(`embedded MQTT broker, the hub's loop held past a deadline${watcher ? ", another client subscribed to the devices' topics" : ""}`, function () {
    let hub: Hub;
    let adapter: MqttAdapter;
    let url: string;
    const closers: (() => Promise<unknown>)[] = [];

    beforeEach(async function () {
      adapter = new MqttAdapter({ port: 0, serviceUsername: SERVICE.username, servicePassword: SERVICE.password });
      hub = new Hub({ protocols: [adapter], onWarning: () => undefined, heartbeat: { resolutionMs: 10 } });
      await hub.start();
      url = `mqtt://127.0.0.1:${adapter.port}`;
      if (watcher) {
        const w = mqtt.connect(url, { ...SERVICE, reconnectPeriod: 0 });
        await new Promise((resolve) => w.once("connect", resolve));
        await new Promise((resolve) => w.subscribe("tethral/#", resolve));
        closers.push(() => w.endAsync(true));
      }
    });

    afterEach(async function () {
      for (const close of closers.splice(0)) await close();
      await hub.stop();
    });

    async function device(heartbeatTimeout: number): Promise<MqttDevice> {
      const token = (await hub.registerDevice({ id: "boiler-1", protocol: "mqtt", heartbeatTimeout })).token!;
      const d = await MqttDevice.connect(url, { id: "boiler-1", token });
      closers.push(() => d.end());
      return d;
    }

    it("does not take a device offline and back whose heartbeat came in time", async function () {
      const d = await device(1);
      const offline: TethralEvent[] = [];
      hub.subscribe({ types: "device.offline" }, (e) => {
        offline.push(e);
      });
      await d.publish("heartbeat", "", { qos: 0 });
      await until(() => hub.getDevice("boiler-1").status === "online", "online");
      const deadline = Date.parse(hub.getDevice("boiler-1").lastSeen!) + 1000;
      await new Promise((resolve) => setTimeout(resolve, 500));
      await holdLoopAfter(() => d.client.publish(d.topic("heartbeat"), "", { qos: 0 }), deadline + 300);
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.deepEqual(offline, []);
      // Silent from here, it goes offline on time.
      await until(() => hub.getDevice("boiler-1").status === "offline", "offline once silent", 4000);
    });

    it("takes a command's answer that came within its timeout", async function () {
      const d = await device(60);
      let answer: (() => void) | null = null;
      d.client.on("message", (topic, payload) => {
        if (topic !== d.topic("commands")) return;
        const { id } = JSON.parse(payload.toString()) as { id: string };
        answer = () => d.client.publish(d.topic("responses"), JSON.stringify({ id, ok: true, result: "rebooted" }), { qos: 1 });
      });
      await d.subscribe(d.topic("commands"));
      await until(() => adapter.isConnected("boiler-1") === true, "the device ready for commands");
      const sent = Date.now();
      const command = hub.sendCommand("boiler-1", { command: "reboot", wait: true, timeout: 1, retries: 0 });
      await until(() => answer !== null, "the command at the device");
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, sent + 500 - Date.now())));
      await holdLoopAfter(() => answer!(), sent + 1400);
      const done = await command;
      assert.equal(done.status, "succeeded");
      assert.equal(done.result, "rebooted");
    });
  });
}
