import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import tethralEventOut from "../../src/nodes/tethral-event-out";
import tethralHub from "../../src/nodes/tethral-hub";
import type { Node, TethralHubNode } from "../../src/nodes/types";

helper.init(require.resolve("node-red"));

const tab = { id: "tab1", type: "tab", label: "Test" };
const hub = { id: "hub1", type: "tethral-hub", storage: "memory", mqttBroker: "off", coap: false, websocket: false };
const catcher = { id: "catch1", type: "catch", z: "tab1", scope: null, wires: [["errors"]] };
const errors = { id: "errors", type: "helper", z: "tab1" };

type HelperNode = Node & { on(event: "input", fn: (msg: Record<string, unknown>) => void): void; receive(msg: Record<string, unknown>): void };

async function load(extra: Record<string, unknown> = {}) {
  const out = { id: "out1", type: "tethral-event-out", z: "tab1", hub: "hub1", eventType: "alarm.raised", priority: "normal", ...extra };
  await helper.load([tethralHub, tethralEventOut], [tab, hub, out, catcher, errors]);
  const hubNode = helper.getNode("hub1") as TethralHubNode;
  return { out: helper.getNode("out1") as HelperNode, errors: helper.getNode("errors") as HelperNode, hub: await hubNode.acquire() };
}

function next(node: HelperNode): Promise<Record<string, unknown>> {
  return new Promise((resolve) => node.on("input", resolve));
}

describe("tethral-event-out node", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("publishes msg.payload with the configured type, or msg.topic, msg.priority and msg.deviceId", async () => {
    const t = await load();
    await t.hub.registerDevice({ id: "pump-1", protocol: "mqtt" });
    const seen: Array<{ type: string; priority: string; deviceId: string | null; data: unknown }> = [];
    t.hub.subscribe({ types: ["alarm.*", "audit.note"] }, (e) => {
      seen.push({ type: e.type, priority: e.priority, deviceId: e.deviceId, data: e.data });
    });
    t.out.receive({ payload: { level: 3 } });
    t.out.receive({ payload: "checked", topic: "audit.note", priority: "high", deviceId: "pump-1" });
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(seen, [
      { type: "alarm.raised", priority: "normal", deviceId: null, data: { level: 3 } },
      { type: "audit.note", priority: "high", deviceId: "pump-1", data: "checked" },
    ]);
  });

  it("sends a refused event to a Catch node with the original msg and the error code", async () => {
    const t = await load();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ payload: 1, topic: "device.fake" }, "INVALID"],
      [{ payload: 1, topic: "has space" }, "INVALID"],
      [{ payload: 1, priority: "urgent" }, "INVALID"],
      [{ payload: 1, deviceId: "ghost" }, "NOT_FOUND"],
    ];
    for (const [msg, code] of cases) {
      const caught = next(t.errors);
      t.out.receive({ ...msg, keep: "me" });
      const m = await caught;
      assert.equal((m.error as { code: string }).code, code, JSON.stringify(msg));
      assert.equal(m.keep, "me", "the Catch node gets the original message");
    }
  });
});
