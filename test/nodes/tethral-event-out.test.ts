import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import tethralEventOut from "../../src/nodes/tethral-event-out";
import tethralHub from "../../src/nodes/tethral-hub";
import type { Node, TethralHubNode } from "../../src/nodes/types";
import type { Hub } from "../../src/core";
import { until } from "../helpers";

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

type Seen = { type: string; priority: string; deviceId: string | null; data: unknown };

/** The events of `types` the hub delivers from now on, in order. */
function record(hub: Hub, types: string[]): Seen[] {
  const seen: Seen[] = [];
  hub.subscribe({ types }, (e) => void seen.push({ type: e.type, priority: e.priority, deviceId: e.deviceId, data: e.data }));
  return seen;
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

  it("without a hub, gives the Catch node UNAVAILABLE with the original message", async () => {
    const out = { id: "out1", type: "tethral-event-out", z: "tab1", hub: "", eventType: "alarm.raised", priority: "normal" };
    await helper.load([tethralHub, tethralEventOut], [tab, out, catcher, errors]);
    const c = next(helper.getNode("errors") as HelperNode);
    (helper.getNode("out1") as HelperNode).receive({ keep: "me" });
    const m = await c;
    assert.equal((m.error as { code?: string }).code, "UNAVAILABLE");
    assert.equal(m.keep, "me");
  });

  it("publishes msg.payload with the configured type, msg.priority and msg.deviceId", async () => {
    const t = await load();
    await t.hub.registerDevice({ id: "pump-1", protocol: "mqtt" });
    const seen = record(t.hub, ["alarm.*"]);
    t.out.receive({ payload: { level: 3 } });
    t.out.receive({ payload: "checked", priority: "high", deviceId: "pump-1" });
    await until(() => seen.length === 2, "two events");
    assert.deepEqual(seen, [
      { type: "alarm.raised", priority: "normal", deviceId: null, data: { level: 3 } },
      { type: "alarm.raised", priority: "high", deviceId: "pump-1", data: "checked" },
    ]);
  });

  it("keeps its configured type when msg.topic says something else (a state watch's device id, an MQTT topic)", async () => {
    const t = await load({ eventType: "alarm.overheat", priority: "high" });
    await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    const seen = record(t.hub, ["*"]);
    // What tethral-state-watch sends: msg.topic is the device id.
    t.out.receive({ payload: { temperature: 85 }, topic: "boiler-1", deviceId: "boiler-1" });
    t.out.receive({ payload: 1, topic: "sensors/boiler-1/temperature" });
    await until(() => seen.filter((e) => e.type.startsWith("alarm.")).length === 2, "two alarms");
    assert.deepEqual(
      seen.filter((e) => e.type.startsWith("alarm.")).map((e) => [e.type, e.priority, e.deviceId]),
      [
        ["alarm.overheat", "high", "boiler-1"],
        ["alarm.overheat", "high", null],
      ],
    );
    assert.equal(seen.filter((e) => e.type === "boiler-1" || e.type.startsWith("sensors/")).length, 0, "msg.topic never became the type");
  });

  it("takes the type from msg.topic when the node's Type is blank", async () => {
    const t = await load({ eventType: "" });
    const seen = record(t.hub, ["audit.*"]);
    t.out.receive({ payload: "checked", topic: "audit.note" });
    t.out.receive({ payload: "again", topic: "audit.other" });
    await until(() => seen.length === 2, "two events");
    assert.deepEqual(seen.map((e) => e.type), ["audit.note", "audit.other"]);
  });

  it("with neither a Type nor msg.topic, refuses the message to a Catch node with INVALID and publishes nothing", async () => {
    const t = await load({ eventType: "  " });
    const seen = record(t.hub, ["*"]);
    const caught = next(t.errors);
    t.out.receive({ payload: 1, keep: "me" });
    const m = await caught;
    assert.equal((m.error as { code: string }).code, "INVALID");
    assert.equal(m.keep, "me");
    assert.deepEqual(seen, [], "nothing published");
  });

  it("gives the event msg.ttl seconds to live: it expires from the history after that", async () => {
    const t = await load();
    t.out.receive({ payload: 1, ttl: 60 });
    t.out.receive({ payload: 2, ttl: "0.05" });
    t.out.receive({ payload: 3 });
    const events = await until(async () => {
      const all = await t.hub.eventHistory({ type: "alarm.raised" });
      return all.length === 3 && all;
    }, "three events");
    const byData = new Map(events.map((e) => [e.data, e]));
    const inAMinute = Date.parse(byData.get(1)!.expiresAt!) - Date.parse(byData.get(1)!.timestamp);
    assert.ok(Math.abs(inAMinute - 60_000) < 1000, `expires 60 s after it was published, not ${inAMinute} ms`);
    assert.equal(byData.get(3)!.expiresAt, null, "no msg.ttl: no expiry");
    await until(async () => !(await t.hub.eventHistory({ type: "alarm.raised" })).some((e) => e.data === 2), "the 50 ms event to expire");
  });

  it("takes the node's Time to live when msg.ttl gives none, and sends the msg on with msg.event", async () => {
    const out = { id: "out1", type: "tethral-event-out", z: "tab1", hub: "hub1", eventType: "alarm.raised", priority: "normal", ttl: "30", wires: [["after"]] };
    await helper.load([tethralHub, tethralEventOut], [tab, hub, out, catcher, errors, { id: "after", type: "helper", z: "tab1" }]);
    const node = helper.getNode("out1") as HelperNode;
    const after = helper.getNode("after") as HelperNode;
    const lives = (e: { expiresAt: string | null; timestamp: string }) => Date.parse(e.expiresAt!) - Date.parse(e.timestamp);
    let sent = next(after);
    node.receive({ payload: { level: 1 }, keep: "me" });
    let m = await sent;
    const event = m.event as { id: string; type: string; data: unknown; expiresAt: string | null; timestamp: string };
    assert.equal(event.type, "alarm.raised");
    assert.deepEqual(event.data, { level: 1 });
    assert.ok(Math.abs(lives(event) - 30_000) < 1000, "the node's 30 s");
    assert.deepEqual(m.payload, { level: 1 }, "the payload goes on unchanged");
    assert.equal(m.keep, "me");
    sent = next(after);
    node.receive({ payload: 2, ttl: 90 });
    m = await sent;
    assert.ok(Math.abs(lives(m.event as never) - 90_000) < 1000, "msg.ttl overrides the node's");
  });

  it("takes a Time to live written as a number in the flow file", async () => {
    const out = { id: "out1", type: "tethral-event-out", z: "tab1", hub: "hub1", eventType: "alarm.raised", priority: "normal", ttl: 45, wires: [["after"]] };
    await helper.load([tethralHub, tethralEventOut], [tab, hub, out, catcher, errors, { id: "after", type: "helper", z: "tab1" }]);
    const sent = next(helper.getNode("after") as HelperNode);
    (helper.getNode("out1") as HelperNode).receive({ payload: 1 });
    const event = (await sent).event as { expiresAt: string | null; timestamp: string };
    assert.ok(event.expiresAt !== null && Math.abs(Date.parse(event.expiresAt) - Date.parse(event.timestamp) - 45_000) < 1000, "the node's 45 s");
  });

  it("sends a refused event to a Catch node with the original msg and the error code", async () => {
    const typeFromTopic = await load({ eventType: "" });
    for (const topic of ["device.fake", "has space"]) {
      const caught = next(typeFromTopic.errors);
      typeFromTopic.out.receive({ payload: 1, topic, keep: "me" });
      const m = await caught;
      assert.equal((m.error as { code: string }).code, "INVALID", topic);
      assert.equal(m.keep, "me", "the Catch node gets the original message");
    }
    await helper.unload();
    const t = await load();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ payload: 1, priority: "urgent" }, "INVALID"],
      [{ payload: 1, deviceId: "ghost" }, "NOT_FOUND"],
      [{ payload: 1, ttl: -5 }, "INVALID"],
      [{ payload: 1, ttl: "soon" }, "INVALID"],
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
