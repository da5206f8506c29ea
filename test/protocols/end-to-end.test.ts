import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Hub } from "../../src/core/hub";
import type { Command } from "../../src/core/types";
import { MqttAdapter } from "../../src/protocols/mqtt";
import { SqliteStore } from "../../src/store/sqlite";
import { assertNoPollution } from "../helpers";
import { MqttDevice, until } from "./mqtt-device";

/** A hub on a SQLite file with the embedded broker on a port of its own. */
async function hubOn(file: string, port = 0): Promise<{ hub: Hub; adapter: MqttAdapter }> {
  const adapter = new MqttAdapter({ port });
  const hub = new Hub({
    store: new SqliteStore({ path: file }),
    protocols: [adapter],
    onWarning: () => undefined,
    commands: { sweepIntervalMs: 50 },
  });
  await hub.start();
  return { hub, adapter };
}

describe("commands across a hub restart, over the embedded MQTT broker", function () {
  let dir: string;
  const devices: MqttDevice[] = [];
  const hubs: Hub[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "tethral-e2e-"));
  });

  afterEach(async () => {
    for (const d of devices.splice(0)) await d.end();
    for (const h of hubs.splice(0)) await h.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a command queued for an offline device survives the restart and reaches the device when it connects; the token still works", async function () {
    const file = join(dir, "hub.sqlite");
    const first = await hubOn(file);
    hubs.push(first.hub);
    const { token } = await first.hub.registerDevice({ id: "valve-1", protocol: "mqtt" });
    const queued = await first.hub.sendCommand("valve-1", { command: "close", params: { percent: 100 }, priority: "high", expiresIn: 3600 });
    assert.equal(queued.status, "queued");
    await first.hub.stop();
    hubs.pop();

    const second = await hubOn(file);
    hubs.push(second.hub);
    assert.deepEqual(second.hub.pendingCommands("valve-1").map((c) => c.id), [queued.id]);
    const device = await MqttDevice.connect(`mqtt://127.0.0.1:${second.adapter.port}`, { id: "valve-1", token: token! });
    devices.push(device);
    const received: Array<{ id: string; command: string; params: unknown }> = [];
    device.client.on("message", (topic, payload) => {
      if (!topic.endsWith("/commands")) return;
      const frame = JSON.parse(payload.toString()) as { id: string; command: string; params: unknown };
      received.push(frame);
      device.client.publish(device.topic("responses"), JSON.stringify({ id: frame.id, ok: true, result: { closed: true } }), { qos: 1 });
    });
    await device.subscribe(device.topic("commands"));
    const done: Command = await second.hub.waitForCommand(queued.id);
    assert.equal(done.status, "succeeded");
    assert.deepEqual(done.result, { closed: true });
    assert.deepEqual(received, [{ id: queued.id, command: "close", params: { percent: 100 } }]);
    assert.equal(second.hub.getDevice("valve-1").status, "online", "the answer was a sign of life");
  });

  it("a command sent but not answered before the restart still takes its answer after it", async function () {
    const file = join(dir, "hub.sqlite");
    const first = await hubOn(file);
    hubs.push(first.hub);
    const { token } = await first.hub.registerDevice({ id: "pump-1", protocol: "mqtt" });
    const url = `mqtt://127.0.0.1:${first.adapter.port}`;
    const device = await MqttDevice.connect(url, { id: "pump-1", token: token! });
    devices.push(device);
    let commandId = "";
    device.client.on("message", (_topic, payload) => {
      commandId = (JSON.parse(payload.toString()) as { id: string }).id;
    });
    await device.subscribe(device.topic("commands"));
    const sent = await first.hub.sendCommand("pump-1", { command: "flush", timeout: 60 });
    await until(() => commandId === sent.id, "the command at the device");
    await until(() => first.hub.pendingCommands("pump-1")[0]?.status === "sent", "status sent");
    await device.end();
    devices.pop();
    await first.hub.stop();
    hubs.pop();

    const second = await hubOn(file);
    hubs.push(second.hub);
    const again = await MqttDevice.connect(`mqtt://127.0.0.1:${second.adapter.port}`, { id: "pump-1", token: token! });
    devices.push(again);
    await again.publish("responses", { id: sent.id, ok: false, error: "pump dry" });
    const done = await second.hub.waitForCommand(sent.id);
    assert.equal(done.status, "failed");
    assert.equal(done.error, "pump dry");
  });
});

describe("HTTP device reports (hub.receive, as the REST flow calls it)", function () {
  it("takes a report with the Bearer token and refuses bad ones with the code the REST flow answers", async function () {
    const hub = new Hub({ onWarning: () => undefined });
    await hub.start();
    try {
      const { token } = await hub.registerDevice({ id: "meter-1", protocol: "http" });
      const report = (payload: unknown, t: string | null = token!, deviceId = "meter-1") =>
        hub.receive({ protocol: "http", deviceId, kind: "telemetry", payload, token: t ?? undefined });
      const ok = report({ kwh: 12.5 });
      assert.equal(ok.ok, true);
      assert.deepEqual(hub.getState("meter-1").properties, { kwh: 12.5 });
      const codes = [
        report({ kwh: 1 }, "wrong"),
        report({ kwh: 1 }, null),
        report({ kwh: 1 }, token, "nobody"),
        report("[1,2]"),
        report([1, 2]),
        report(JSON.parse('{"__proto__": {"polluted": 1}}')),
        report({ big: "x".repeat(300 * 1024) }),
      ].map((r) => (r.ok ? "ok" : `${r.error.code} ${r.error.status}`));
      assert.deepEqual(codes, ["UNAUTHORIZED 401", "UNAUTHORIZED 401", "NOT_FOUND 404", "INVALID 400", "INVALID 400", "INVALID 400", "INVALID 400"]);
      assertNoPollution();
      assert.deepEqual(hub.getState("meter-1").properties, { kwh: 12.5 });
      const http = hub.communicationStatistics().protocols.http!;
      assert.equal(http.messagesIn, 8);
      assert.equal(http.rejected, 7);
    } finally {
      await hub.stop();
    }
  });
});
