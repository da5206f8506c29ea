import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { Hub } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { MqttAdapter } from "../../src/protocols/mqtt";
import { BUSY_NOTE } from "../../src/protocols/intake-hold";
import { listeners } from "./intake-listeners";
import { MqttDevice, until } from "./mqtt-device";

/** Long enough for a message the broker read to reach the hub many times over on loopback. */
const SETTLE_MS = 300;

describe("MQTT embedded broker while the hub's intake is busy", function () {
  let hub: Hub;
  let adapter: MqttAdapter;
  let url: string;
  let received: Array<{ deviceId: string; n: unknown }>;
  const devices: MqttDevice[] = [];
  const tokens = new Map<string, string>();

  /** The store's backlog past the hub's high-water mark, then down to nothing: no store needed. */
  const busy = (): void => hub.intake.backlog(hub.intake.highWater);
  const ready = (): void => hub.intake.backlog(0);
  const numbers = (deviceId: string): unknown[] => received.filter((r) => r.deviceId === deviceId).map((r) => r.n);

  async function connect(id: string): Promise<MqttDevice> {
    const d = await MqttDevice.connect(url, { id, token: tokens.get(id) });
    devices.push(d);
    return d;
  }

  /** Publishes QoS 1 telemetry `{n}` for each n; resolves the PUBACKs as they come, in `acked`. */
  function publishAll(d: MqttDevice, ns: number[], acked: number[]): Promise<void[]> {
    return Promise.all(ns.map((n) => d.publish("telemetry", { n }).then(() => void acked.push(n))));
  }

  beforeEach(async function () {
    received = [];
    adapter = new MqttAdapter({ port: 0 });
    hub = new Hub({ protocols: [adapter], onWarning: () => undefined });
    await hub.start();
    hub.subscribe({ types: "message.received" }, (event: TethralEvent) => {
      const data = (event.data as { data?: { n?: unknown } }).data;
      if (data && "n" in data) received.push({ deviceId: event.deviceId!, n: data.n });
    });
    url = `mqtt://127.0.0.1:${adapter.port}`;
    for (const id of ["boiler-1", "pump-2", "watcher-3"]) tokens.set(id, (await hub.registerDevice({ id, protocol: "mqtt" })).token!);
  });

  afterEach(async function () {
    for (const d of devices.splice(0)) await d.end();
    await hub.stop();
  });

  it("stops reading a publishing device until ready, then takes every message in order and acknowledges them", async function () {
    const d = await connect("boiler-1");
    await d.publish("telemetry", { n: 0 });
    await until(() => numbers("boiler-1").length === 1, "the first message");

    busy();
    const acked: number[] = [];
    const all = publishAll(d, [1, 2, 3, 4, 5], acked);
    await sleep(SETTLE_MS);
    assert.deepEqual(numbers("boiler-1"), [0], "nothing read while busy");
    assert.deepEqual(acked, [], "no PUBACK while the hub does not read");
    assert.equal(hub.getState("boiler-1").properties.n, 0);
    const stats = adapter.statistics();
    assert.equal(stats.paused, 1);
    assert.equal(stats.pauses, 1);
    const health = adapter.health();
    assert.equal(health.status, "ok");
    assert.equal(health.intake, BUSY_NOTE);

    ready();
    await all;
    await until(() => numbers("boiler-1").length === 6, "the held messages");
    assert.deepEqual(numbers("boiler-1"), [0, 1, 2, 3, 4, 5]);
    assert.deepEqual(acked, [1, 2, 3, 4, 5]);
    assert.equal(hub.getState("boiler-1").properties.n, 5);
    assert.equal(adapter.statistics().paused, 0);
    assert.equal(adapter.health().intake, undefined);

    // Normal again: the next message goes straight through.
    await d.publish("telemetry", { n: 6 });
    await until(() => numbers("boiler-1").length === 7, "a message after the spell");
  });

  it("takes the message a device sends first while busy, then holds its connection; others stay read", async function () {
    busy();
    const quiet = await connect("watcher-3");
    const d = await connect("pump-2");
    await d.publish("telemetry", { n: 1 });
    await until(() => numbers("pump-2").length === 1, "the message read before the hold");
    const acked: number[] = [];
    const rest = publishAll(d, [2, 3], acked);
    await sleep(SETTLE_MS);
    assert.deepEqual(numbers("pump-2"), [1]);
    assert.equal(adapter.statistics().paused, 1, "only the connection that published");
    // A connection that only subscribes is still read: its SUBACK comes.
    assert.deepEqual(await quiet.subscribe(quiet.topic("desired")), [1]);

    ready();
    await rest;
    await until(() => numbers("pump-2").length === 3, "the held messages");
    assert.deepEqual(numbers("pump-2"), [1, 2, 3]);
    assert.deepEqual(acked, [2, 3]);
  });

  it("stops listening to the intake when it stops", async function () {
    const other = new MqttAdapter({ port: 0 });
    const own = new Hub({ protocols: [other], onWarning: () => undefined });
    const listening = listeners(own);
    await own.start();
    assert.equal(listening.size, 1);
    await own.stop();
    assert.equal(listening.size, 0);
  });
});
