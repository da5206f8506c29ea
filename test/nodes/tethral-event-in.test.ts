import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import type { Hub } from "../../src/core";
import type { TethralEvent } from "../../src/core/types";
import tethralEventIn from "../../src/nodes/tethral-event-in";
import tethralHub from "../../src/nodes/tethral-hub";
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

const eventInNode = withCatalogue(tethralEventIn, "tethral-event-in");

function eventIn(id: string, extra: Record<string, unknown> = {}, wires = "out") {
  return { id, type: "tethral-event-in", z: "tab1", hub: "hub1", types: "*", minPriority: "low", deviceId: "", wires: [[wires]], ...extra };
}

function node(id: string): HelperNode {
  return helper.getNode(id) as HelperNode;
}

function hubNode(): TethralHubNode {
  return helper.getNode("hub1") as TethralHubNode;
}

async function start(nodes: FlowNode[]): Promise<Hub> {
  await helper.load([tethralHub, eventInNode], [tab, hubConfig, ...nodes, out, out2]);
  const hub = await hubNode().acquire();
  // The device the marker is about.
  await hub.registerDevice({ id: "pump-1", protocol: "mqtt" });
  return hub;
}

/** Publishes `end.marker` (critical, about pump-1) and waits until `seen` ends with it. */
async function marked(hub: Hub, seen: Msg[]): Promise<string[]> {
  hub.publish("end.marker", null, { priority: "critical", deviceId: "pump-1" });
  await until(() => seen.at(-1)?.topic === "end.marker", "the marker");
  return seen.slice(0, -1).map((m) => m.topic as string);
}

describe("tethral-event-in node", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("refuses types or device ids that can never match with a red ring and a log line, not a green \"listening\"", async () => {
    await helper.load([tethralHub, eventInNode], [tab, hubConfig, eventIn("ev-type", { types: "alarm raised!" }), eventIn("ev-id", { deviceId: "boiler 1$" }), eventIn("ev-ok", { types: "alarm.*" }), out]);
    await hubNode().acquire();
    for (const id of ["ev-type", "ev-id"]) assert.deepEqual(lastStatus(node(id)), { fill: "red", shape: "ring", text: "invalid configuration" }, id);
    assert.equal((lastStatus(node("ev-ok")) as NodeStatus).fill, "green");
  });

  it("passes on matching events: msg.payload the event, msg.topic its type", async () => {
    const hub = await start([eventIn("ev1", { types: "device.*, alarm.raised, end.marker" })]);
    const seen = collect(node("out"));
    await hub.registerDevice({ id: "pump-2", protocol: "mqtt" });
    const published = hub.publish("alarm.raised", { level: 3 }, { priority: "high", deviceId: "pump-2", causeId: "c-1" });
    hub.publish("alarm.cleared", { level: 0 });
    hub.ingest("pump-2", { kind: "telemetry", data: { t: 1 } });
    // pump-1 was registered by start(), once the node listened.
    assert.deepEqual(await marked(hub, seen), ["device.registered", "device.registered", "alarm.raised", "device.online"]);
    assert.deepEqual(
      seen.map((m) => (m.payload as TethralEvent).deviceId),
      ["pump-1", "pump-2", "pump-2", "pump-2", "pump-1"],
    );
    const m = seen[2]!;
    assert.equal(m.topic, "alarm.raised");
    assert.deepEqual(m.payload, published, "the event as the hub published it");
    assert.deepEqual(Object.keys(m.payload as object).sort(), [
      "causeId",
      "data",
      "deviceId",
      "expiresAt",
      "id",
      "parentCauseId",
      "priority",
      "source",
      "timestamp",
      "type",
    ]);
    assert.equal(m.causeId, "c-1", "the msg carries the event's cause, for what the flow does next");
    // The flow's copy is its own: the history keeps what was published.
    ((m.payload as TethralEvent).data as Record<string, unknown>).level = 99;
    assert.deepEqual(hub.events.query({ type: "alarm.raised" })[0]!.data, { level: 3 });
    // The status follows at most twice a second; the last count always shows.
    await until(() => lastStatus(node("ev1"))?.text === "5 received (end.marker)", "the status");
    assert.deepEqual(lastStatus(node("ev1")), { fill: "green", shape: "dot", text: "5 received (end.marker)" });
  });

  it("filters by minimum priority and by device", async () => {
    // (Node ids that equal a property value, such as "high", are taken by Node-RED for references.)
    const hub = await start([eventIn("ev-high", { minPriority: "high" }), eventIn("ev-pump", { types: "user.*, end.marker", deviceId: "pump-1 pump-2" }, "out2")]);
    await hub.registerDevice({ id: "pump-2", protocol: "mqtt" });
    await hub.registerDevice({ id: "valve-1", protocol: "mqtt" });
    const high = collect(node("out"));
    const pump = collect(node("out2"));
    for (const priority of ["low", "normal", "high", "critical"] as const) hub.publish(`user.${priority}`, null, { priority });
    hub.publish("user.a", null, { deviceId: "pump-1" });
    hub.publish("user.b", null, { deviceId: "valve-1" });
    hub.publish("user.c", null, { deviceId: "pump-2", priority: "low" });
    assert.deepEqual(await marked(hub, high), ["user.high", "user.critical"]);
    assert.deepEqual(await marked(hub, pump), ["user.a", "user.c"], "only events about the named devices");
  });

  it("shows a subscription the hub refuses on its status and in the log", async () => {
    await start([eventIn("bad", { minPriority: "urgent" })]);
    await until(() => lastStatus(node("bad"))?.fill === "red", "the red status");
    assert.deepEqual(lastStatus(node("bad")), { fill: "red", shape: "ring", text: "INVALID" });
    const logged = helper
      .log()
      .args.map((a: unknown[]) => a[0] as { level: number; id?: string; msg?: unknown })
      .filter((e: { level: number; id?: string }) => e.id === "bad" && e.level === helper.log().ERROR);
    assert.equal(logged.length, 1);
  });

  it("two nodes share one hub; a redeploy leaves no subscription behind", async () => {
    const hub = await start([]);
    const base = hub.events.subscriberCount;
    await helper.setFlows([tab, hubConfig, eventIn("ev1", { types: "end.marker" }), eventIn("ev2", { types: "*" }, "out2"), out, out2], "nodes");
    await until(() => hub.events.subscriberCount === base + 2, "two subscriptions");
    assert.equal(hubNode().userCount(), 2);
    const a = collect(node("out"));
    const b = collect(node("out2"));
    await marked(hub, a);
    await marked(hub, b);
    const old = node("ev1");
    await helper.setFlows([tab, hubConfig, eventIn("ev1", { types: "other.*" }), eventIn("ev2", { types: "*" }, "out2"), out, out2], "nodes");
    await until(() => node("ev1") !== old && lastStatus(node("ev1"))?.text === "listening", "the changed node's subscription");
    assert.equal(hub.events.subscriberCount, base + 2);
    await helper.setFlows([tab, hubConfig, out, out2], "nodes");
    assert.equal(hub.events.subscriberCount, base);
    assert.equal(hubNode().userCount(), 0);
    assert.equal(hub.isRunning, true);
  });
});
