import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { Hub } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { BUSY_NOTE } from "../../src/protocols/intake-hold";
import { WebSocketAdapter } from "../../src/protocols/websocket";
import { until } from "../helpers";
import { listeners } from "./intake-listeners";
import { Device } from "./ws-device";

/** Several ping periods: a paused device must not be taken for a dead one. */
const PING_MS = 100;
const SETTLE_MS = 450;

describe("WebSocket adapter while the hub's intake is busy", function () {
  let hub: Hub;
  let adapter: WebSocketAdapter;
  let received: Array<{ deviceId: string; n: unknown }>;
  let live: Set<unknown>;
  const tokens = new Map<string, string>();
  const devices: Device[] = [];

  const busy = (): void => hub.intake.backlog(hub.intake.highWater);
  const ready = (): void => hub.intake.backlog(0);
  const numbers = (deviceId: string): unknown[] => received.filter((r) => r.deviceId === deviceId).map((r) => r.n);
  const telemetry = (d: Device, n: number): void => d.ws.send(JSON.stringify({ type: "telemetry", data: { n } }));

  async function connect(id: string): Promise<Device> {
    const { port } = adapter.address()!;
    const d = await Device.connect(`ws://127.0.0.1:${port}/tethral/ws?device=${id}&token=${tokens.get(id)}`);
    devices.push(d);
    return d;
  }

  beforeEach(async function () {
    received = [];
    adapter = new WebSocketAdapter({ pingIntervalMs: PING_MS });
    hub = new Hub({ protocols: [adapter], onWarning: () => undefined });
    live = listeners(hub);
    await hub.start();
    hub.subscribe({ types: "message.received" }, (event: TethralEvent) => {
      const data = (event.data as { data?: { n?: unknown } }).data;
      if (data && "n" in data) received.push({ deviceId: event.deviceId!, n: data.n });
    });
    for (const id of ["boiler-1", "pump-2"]) tokens.set(id, (await hub.registerDevice({ id, protocol: "websocket" })).token!);
  });

  afterEach(async function () {
    for (const d of devices.splice(0)) d.ws.terminate();
    await hub.stop();
  });

  it("reads no device socket until ready, then takes every frame in order, and keeps the paused devices connected", async function () {
    const d = await connect("boiler-1");
    telemetry(d, 0);
    await until(() => numbers("boiler-1").length === 1, "the first frame");

    busy();
    for (const n of [1, 2, 3, 4, 5]) telemetry(d, n);
    // A device connecting during the spell is not read either.
    const late = await connect("pump-2");
    telemetry(late, 1);
    await sleep(SETTLE_MS);
    assert.deepEqual(numbers("boiler-1"), [0], "nothing read while busy");
    assert.deepEqual(numbers("pump-2"), []);
    assert.equal(hub.getState("boiler-1").properties.n, 0);
    assert.equal(adapter.statistics().paused, 2);
    assert.equal(adapter.statistics().deadPeersDropped, 0, "unread pongs are no sign of a dead peer");
    assert.equal(adapter.health().status, "ok");
    assert.equal(adapter.health().intake, BUSY_NOTE);
    assert.equal(adapter.statistics().connected, 2);

    ready();
    await until(() => numbers("boiler-1").length === 6 && numbers("pump-2").length === 1, "the held frames");
    assert.deepEqual(numbers("boiler-1"), [0, 1, 2, 3, 4, 5]);
    assert.equal(adapter.statistics().paused, 0);
    assert.equal(adapter.health().intake, undefined);
    telemetry(d, 6);
    await until(() => numbers("boiler-1").length === 7, "a frame after the spell");
    await sleep(3 * PING_MS);
    assert.equal(adapter.statistics().connected, 2, "still connected after the spell");
  });

  it("stops listening to the intake when it stops, and closes a paused device politely", async function () {
    const d = await connect("boiler-1");
    busy();
    await until(() => adapter.statistics().paused === 1, "the device paused");
    assert.equal(live.size, 1);
    const stopping = Date.now();
    await hub.stop();
    assert.equal(live.size, 0);
    assert.equal((await d.closed).code, 1001);
    // The device's answer to the close frame was read: not cut after the adapter's 1 s of grace.
    assert.ok(Date.now() - stopping < 500, `stopped in ${Date.now() - stopping} ms`);
  });
});
