import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { Hub } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { BUSY_NOTE } from "../../src/protocols/intake-hold";
import { MqttAdapter } from "../../src/protocols/mqtt";
import { type Mosquitto, needs, program, startMosquitto } from "../mosquitto";
import { until } from "../helpers";
import { listeners } from "./intake-listeners";

const run = promisify(execFile);
const SETTLE_MS = 300;

describe("MQTT external broker (Mosquitto) while the hub's intake is busy", function () {
  let mosquitto: Mosquitto | null = null;
  let hub: Hub;
  let adapter: MqttAdapter;
  let received: unknown[];
  let live: Set<unknown>;

  /** A device's QoS 1 report through mosquitto_pub: resolves once the broker has it (its PUBACK), not the hub. */
  const pub = (n: number) =>
    run(program("mosquitto_pub")!, ["-h", "127.0.0.1", "-p", String(mosquitto!.port), "-q", "1", "-t", "tethral/devices/ext-1/telemetry", "-m", JSON.stringify({ n })]);

  before(async function () {
    if (!needs(this, ["mosquitto", "mosquitto_pub"], "apt-get install mosquitto mosquitto-clients")) return;
    mosquitto = await startMosquitto();
  });

  after(async function () {
    await mosquitto?.stop();
  });

  beforeEach(async function () {
    received = [];
    adapter = new MqttAdapter({ url: mosquitto!.url, reconnectPeriod: 50 });
    hub = new Hub({ protocols: [adapter], onWarning: () => undefined });
    live = listeners(hub);
    await hub.start();
    hub.subscribe({ types: "message.received", deviceId: "ext-1" }, (event: TethralEvent) => {
      received.push((event.data as { data: { n: unknown } }).data.n);
    });
    await hub.registerDevice({ id: "ext-1", protocol: "mqtt" });
    await until(() => adapter.health().status === "ok", "the hub subscribed");
  });

  afterEach(async function () {
    await hub.stop();
  });

  it("stops reading the hub's connection after the message it took, then takes the rest in order when ready", async function () {
    await pub(0);
    await until(() => received.length === 1, "the first message");

    hub.intake.backlog(hub.intake.highWater);
    for (const n of [1, 2, 3, 4, 5]) await pub(n);
    await until(() => adapter.statistics().paused === 1, "the connection paused");
    await sleep(SETTLE_MS);
    // The message read when the intake turned busy is taken; the broker holds the rest.
    assert.deepEqual(received, [0, 1]);
    assert.equal(adapter.health().status, "ok");
    assert.equal(adapter.health().intake, BUSY_NOTE);

    hub.intake.backlog(0);
    await until(() => received.length === 6, "the held messages");
    assert.deepEqual(received, [0, 1, 2, 3, 4, 5]);
    assert.equal(adapter.statistics().paused, 0);
    assert.equal(adapter.statistics().pauses, 1);
    assert.equal(adapter.health().intake, undefined);
    await pub(6);
    await until(() => received.length === 7, "a message after the spell");
  });

  it("stops listening to the intake when it stops", async function () {
    assert.equal(live.size, 1);
    await hub.stop();
    assert.equal(live.size, 0);
  });
});
