import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import type { Hub } from "../../src/core";
import type { Device } from "../../src/core/types";
import tethralHub from "../../src/nodes/tethral-hub";
import tethralIn from "../../src/nodes/tethral-in";
import type { Node, NodeStatus, TethralHubNode } from "../../src/nodes/types";
import { QUIET_HUB, lastStatus, withCatalogue, collect, until } from "./harness";

helper.init(require.resolve("node-red"));

const tab = { id: "tab1", type: "tab", label: "Test" };
const hubConfig = QUIET_HUB;
const out = { id: "out", type: "helper", z: "tab1" };
const out2 = { id: "out2", type: "helper", z: "tab1" };

type Msg = Record<string, unknown>;
type FlowNode = { id: string; type: string } & Record<string, unknown>;
type HelperNode = Node & {
  on(event: "input", fn: (msg: Msg) => void): void;
  status: Node["status"] & { getCalls(): Array<{ thisValue: unknown; args: [NodeStatus] }> };
};

const inNode = withCatalogue(tethralIn, "tethral-in");

function tethralInNode(id: string, extra: Record<string, unknown> = {}, wires = "out") {
  return {
    id,
    type: "tethral-in",
    z: "tab1",
    hub: "hub1",
    deviceId: "",
    protocol: "",
    kindTelemetry: true,
    kindHeartbeat: false,
    kindState: true,
    kindStatus: true,
    wires: [[wires]],
    ...extra,
  };
}

function node(id: string): HelperNode {
  return helper.getNode(id) as HelperNode;
}

function hubNode(): TethralHubNode {
  return helper.getNode("hub1") as TethralHubNode;
}

async function start(nodes: FlowNode[]): Promise<Hub> {
  await helper.load([tethralHub, inNode], [tab, hubConfig, ...nodes, out, out2]);
  const hub = await hubNode().acquire();
  for (const id of ["pump-1", "pump-2", "valve-1"]) await hub.registerDevice({ id, name: `The ${id}`, protocol: "mqtt" });
  return hub;
}

/** A message every tethral-in of these tests passes on, so it marks the end of what came before. */
function marker(hub: Hub): void {
  hub.ingest("pump-1", { kind: "telemetry", data: { end: true }, protocol: "coap" });
}

describe("tethral-in node", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("refuses settings that can never match with a red ring and a log line, not a green \"listening\"", async () => {
    const bad = [
      tethralInNode("in-id", { deviceId: "boiler-1, bad$id" }),
      tethralInNode("in-protocol", { protocol: "MQTT" }),
      tethralInNode("in-kinds", { kindTelemetry: false, kindState: false, kindStatus: false }),
    ];
    await helper.load([tethralHub, inNode], [tab, hubConfig, ...bad, tethralInNode("in-ok"), out]);
    await (helper.getNode("hub1") as TethralHubNode).acquire();
    for (const id of ["in-id", "in-protocol", "in-kinds"]) assert.deepEqual(lastStatus(node(id)), { fill: "red", shape: "ring", text: "invalid configuration" }, id);
    assert.equal((lastStatus(node("in-ok")) as NodeStatus).fill, "green");
    const logged = helper.log().args.map(([e]) => e).filter((e) => e.level === helper.log().ERROR && e.type === "tethral-in").map((e) => String(e.msg));
    assert.deepEqual(logged.map((m) => m.replace(/:.*/, "")), ["Invalid settings", "Invalid settings", "Invalid settings"]);
    assert.match(logged.join("\n"), /device ids .*\n.*protocol names .*\n.*at least one kind/);
  });

  it("passes on a device's message: payload, topic, deviceId, device, kind and protocol", async () => {
    const hub = await start([tethralInNode("in1")]);
    const seen = collect(node("out"));
    hub.ingest("pump-1", { kind: "telemetry", data: { temperature: 21.5 }, protocol: "mqtt" });
    await until(() => seen.length === 1, "the message");
    const m = seen[0]!;
    assert.deepEqual(m.payload, { temperature: 21.5 });
    assert.equal(m.topic, "pump-1/telemetry");
    assert.equal(m.deviceId, "pump-1");
    assert.equal(m.kind, "telemetry");
    assert.equal(m.protocol, "mqtt");
    const device = m.device as Device;
    assert.equal(device.id, "pump-1");
    assert.equal(device.name, "The pump-1");
    assert.equal(device.status, "online", "the record as it is after the message");
    // The flow's copy is its own: changing it changes nothing in the hub.
    (m.payload as Record<string, unknown>).temperature = 99;
    assert.equal(hub.getState("pump-1").properties.temperature, 21.5);
    assert.deepEqual(lastStatus(node("in1")), { fill: "green", shape: "dot", text: "1 received (pump-1/telemetry)" });
  });

  it("says whether a message was a broker's retained copy (msg.retained), which updates values but brings no device online", async () => {
    const hub = await start([tethralInNode("in1")]);
    const seen = collect(node("out"));
    hub.ingest("pump-1", { kind: "telemetry", data: { temperature: 9 }, protocol: "mqtt", retained: true });
    hub.ingest("pump-2", { kind: "telemetry", data: { temperature: 10 }, protocol: "mqtt" });
    await until(() => seen.length === 2, "both messages");
    assert.deepEqual(seen.map((m) => [m.deviceId, m.retained]), [["pump-1", true], ["pump-2", false]]);
    assert.equal(hub.getState("pump-1").properties.temperature, 9);
    assert.equal(hub.getDevice("pump-1").status, "unknown");
    assert.equal(hub.getDevice("pump-2").status, "online");
  });

  it("filters by device, protocol and kind (heartbeats only when ticked)", async () => {
    const hub = await start([
      tethralInNode("all"),
      tethralInNode("some", { deviceId: "pump-1, valve-1", protocol: "coap", kindState: false, kindStatus: false, kindHeartbeat: true }, "out2"),
    ]);
    const all = collect(node("out"));
    const some = collect(node("out2"));
    hub.ingest("pump-1", { kind: "telemetry", data: { a: 1 }, protocol: "mqtt" });
    hub.ingest("pump-2", { kind: "telemetry", data: { a: 2 }, protocol: "coap" });
    hub.ingest("valve-1", { kind: "heartbeat", protocol: "coap" });
    hub.ingest("pump-1", { kind: "state", data: { properties: { b: 1 } }, protocol: "coap" });
    hub.ingest("valve-1", { kind: "status", data: "offline", protocol: "coap" });
    hub.ingest("valve-1", { kind: "telemetry", data: { a: 3 }, protocol: "coap" });
    marker(hub);
    await until(() => all.at(-1)?.payload !== undefined && (all.at(-1)!.payload as { end?: boolean }).end === true, "the marker on all");
    await until(() => some.at(-1)?.payload !== undefined && (some.at(-1)!.payload as { end?: boolean }).end === true, "the marker on some");
    assert.deepEqual(
      all.map((m) => `${m.topic} ${m.protocol}`),
      [
        "pump-1/telemetry mqtt",
        "pump-2/telemetry coap",
        "pump-1/state coap",
        "valve-1/status coap",
        "valve-1/telemetry coap",
        "pump-1/telemetry coap",
      ],
    );
    assert.deepEqual(
      some.map((m) => m.topic),
      ["valve-1/heartbeat", "valve-1/telemetry", "pump-1/telemetry"],
    );
    assert.equal(some[0]!.payload, null, "a heartbeat carries no data");
  });

  it("two nodes on one hub each get every message", async () => {
    const hub = await start([tethralInNode("in1"), tethralInNode("in2", {}, "out2")]);
    const a = collect(node("out"));
    const b = collect(node("out2"));
    hub.ingest("pump-2", { kind: "telemetry", data: { x: 1 } });
    await until(() => a.length === 1 && b.length === 1, "both messages");
    assert.notEqual(a[0]!.payload, b[0]!.payload, "each its own copy");
    assert.deepEqual(a[0]!.payload, b[0]!.payload);
    assert.equal(a[0]!.protocol, null, "a message that named no protocol");
    assert.equal(hubNode().userCount(), 2);
  });

  it("a redeploy leaves no subscription behind, and the hub stops announcing messages", async () => {
    const hub = await start([]);
    const base = hub.events.subscriberCount;
    await helper.setFlows([tab, hubConfig, tethralInNode("in1"), tethralInNode("in2", { deviceId: "pump-1" }, "out2"), out, out2], "nodes");
    await until(() => hub.events.subscriberCount === base + 2, "two subscriptions");
    // A changed node is closed and made again: still one subscription each.
    const old = node("in1");
    await helper.setFlows([tab, hubConfig, tethralInNode("in1", { protocol: "mqtt" }), tethralInNode("in2", { deviceId: "pump-1" }, "out2"), out, out2], "nodes");
    await until(() => node("in1") !== old && lastStatus(node("in1"))?.text === "listening", "the new node's subscription");
    assert.equal(hub.events.subscriberCount, base + 2);
    await helper.setFlows([tab, hubConfig, out, out2], "nodes");
    assert.equal(hub.events.subscriberCount, base);
    assert.equal(hub.isRunning, true, "the hub runs on for its other users");
    assert.equal(hub.events.hasSubscribers("message.received", "pump-1"), false);
  });
});
