import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import type { Hub } from "../../src/core";
import tethralHub from "../../src/nodes/tethral-hub";
import type { HubStatusReport, Node, NodeAPI, NodeDef, TethralHubNode } from "../../src/nodes/types";

helper.init(require.resolve("node-red"));

type HubUserNode = Node & { hub: Promise<Hub> };

/** The status a node shows last (the helper spies on Node.prototype.status, shared by all nodes). */
function lastStatus(node: Node): unknown {
  const spy = node.status as unknown as { getCalls(): { thisValue: unknown; args: unknown[] }[] };
  return spy.getCalls().filter((call) => call.thisValue === node).at(-1)?.args[0];
}

/** A minimal node that uses the hub the way the Tethral nodes do. */
function hubUser(RED: NodeAPI): void {
  RED.nodes.registerType("test-hub-user", function (this: Node, def: NodeDef & { hub: string }) {
    RED.nodes.createNode(this, def);
    const hubNode = RED.nodes.getNode(def.hub) as TethralHubNode;
    hubNode.register(this);
    const hub = hubNode.acquire();
    hub.catch(() => undefined); // a test that expects the start to fail awaits it itself
    Object.assign(this, { hub });
    this.on("close", (_removed: boolean, done: () => void) => {
      hubNode.deregister(this);
      done();
    });
  });
}

const hubConfig = (extra: Record<string, unknown> = {}) => ({ id: "hub1", type: "tethral-hub", name: "Test hub", ...extra });
const user = (id: string) => ({ id, type: "test-hub-user", hub: "hub1", z: "tab1" });
const tab = { id: "tab1", type: "tab", label: "Test" };

function hubNode(): TethralHubNode {
  const node = helper.getNode("hub1") as TethralHubNode | null;
  assert.ok(node, "the tethral-hub node was created");
  return node;
}

/** Error-level log entries written by tethral-hub nodes. */
function hubErrors(): string[] {
  const log = helper.log();
  return log.args
    .map(([entry]) => entry)
    .filter((entry) => entry.level === log.ERROR && entry.type === "tethral-hub")
    .map((entry) => String(entry.msg));
}

/**
 * Active handles and requests, by kind, as Node.js reports them; without Immediates, which
 * run on the next turn of the loop whatever happens (Node-RED queues some of its own).
 */
function resources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) {
    if (kind !== "Immediate") counts[kind] = (counts[kind] ?? 0) + 1;
  }
  return counts;
}

function nextTick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

describe("tethral-hub config node", function () {
  beforeEach(async () => helper.startServer());

  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
    delete process.env.TETHRAL_TEST_TIMEOUT;
  });

  it("loads, with its name and no hub before first use", async () => {
    await helper.load(tethralHub, [hubConfig()]);
    const node = hubNode();
    assert.equal(node.name, "Test hub");
    assert.equal(node.hubStatus().state, "idle");
    assert.equal(node.userCount(), 0);
    assert.deepEqual(hubErrors(), []);
  });

  it("acquire() starts the hub once, even when called concurrently", async () => {
    await helper.load(tethralHub, [hubConfig()]);
    const node = hubNode();
    const [a, b] = await Promise.all([node.acquire(), node.getHub()]);
    assert.equal(a, b);
    assert.equal(a.isRunning, true);
    assert.equal(a.health().status, "ok");
    assert.equal(await node.acquire(), a);
    assert.equal(node.hubStatus().state, "running");
  });

  it("shares one hub between its users and shows its state on them", async () => {
    await helper.load([tethralHub, hubUser], [tab, hubConfig(), user("u1"), user("u2")]);
    assert.equal(hubNode().userCount(), 2);
    const u1 = helper.getNode("u1") as HubUserNode;
    const u2 = helper.getNode("u2") as HubUserNode;
    const hub = await u1.hub;
    assert.equal(hub.isRunning, true);
    assert.equal(await u2.hub, hub);
    assert.equal(await hubNode().acquire(), hub);
    await nextTick();
    for (const u of [u1, u2]) {
      assert.deepEqual(lastStatus(u), { fill: "green", shape: "dot", text: "tethral-hub.status.running" });
    }
  });

  it("keeps the hub running when a user node is removed by a modified-nodes deploy", async () => {
    await helper.load([tethralHub, hubUser], [tab, hubConfig(), user("u1"), user("u2")]);
    const u2 = helper.getNode("u2") as HubUserNode;
    const hub = await u2.hub;
    await helper.setFlows([tab, hubConfig(), user("u1")], "nodes");
    assert.equal(hubNode().userCount(), 1);
    assert.deepEqual(lastStatus(u2), {}, "the removed user's status was cleared");
    assert.equal(hub.isRunning, true);
    assert.equal(await hubNode().acquire(), hub);
  });

  it("tells status listeners the state now and on every change", async () => {
    await helper.load(tethralHub, [hubConfig()]);
    const node = hubNode();
    const seen: string[] = [];
    const unsubscribe = node.onStatus((s: HubStatusReport) => seen.push(s.state));
    await node.acquire();
    unsubscribe();
    await helper.unload();
    assert.deepEqual(seen, ["idle", "starting", "running"]);
  });

  it("uses ${ENV} values for its settings", async () => {
    process.env.TETHRAL_TEST_TIMEOUT = "7";
    await helper.load(tethralHub, [hubConfig({ defaultHeartbeatTimeout: "${TETHRAL_TEST_TIMEOUT}" })]);
    const hub = await hubNode().acquire();
    await hub.registerDevice({ id: "probe-1", protocol: "mqtt" });
    assert.equal(hub.heartbeat.effectiveTimeoutSec("probe-1"), 7);
    assert.deepEqual(hubErrors(), []);
  });

  it("applies the settings of the edit dialog, which arrive as strings", async () => {
    await helper.load(tethralHub, [
      hubConfig({ defaultHeartbeatTimeout: "15", adaptiveTimeout: true, adaptiveFactor: "4", stateHistorySize: "2" }),
    ]);
    const hub = await hubNode().acquire();
    await hub.registerDevice({ id: "probe-1", protocol: "mqtt" });
    assert.equal(hub.heartbeat.effectiveTimeoutSec("probe-1"), 15);
    for (let t = 1; t <= 4; t++) hub.ingest("probe-1", { kind: "telemetry", data: { t } });
    assert.equal((await hub.stateHistory("probe-1")).length, 2);
  });

  it("reports invalid settings and refuses to start", async () => {
    await helper.load([tethralHub, hubUser], [tab, hubConfig({ defaultHeartbeatTimeout: -5, eventHistorySize: "lots" }), user("u1")]);
    const node = hubNode();
    const errors = hubErrors();
    assert.equal(errors.length, 1, `one error logged, got ${JSON.stringify(errors)}`);
    assert.match(errors[0]!, /defaultHeartbeatTimeout must be more than 0/);
    assert.match(errors[0]!, /eventHistorySize must be a number/);
    await assert.rejects(node.acquire(), { code: "INVALID", message: /defaultHeartbeatTimeout/ });
    assert.equal(node.hubStatus().state, "error");
    assert.equal(node.hubStatus().display.fill, "red");
  });

  it("names an ${ENV} setting whose variable is not set", async () => {
    await helper.load(tethralHub, [hubConfig({ defaultHeartbeatTimeout: "${TETHRAL_TEST_TIMEOUT}" })]);
    await assert.rejects(hubNode().acquire(), {
      code: "INVALID",
      message: /environment variable TETHRAL_TEST_TIMEOUT, which is not set/,
    });
  });

  it("stops the hub on redeploy and leaves no timer or handle behind", async () => {
    // startServer() arms the editor comms heartbeat a moment later: let it, before counting.
    await nextTick();
    const before = resources();
    await helper.load([tethralHub, hubUser], [tab, hubConfig({ defaultHeartbeatTimeout: 30 }), user("u1")]);
    const node = hubNode();
    const hub: Hub = await node.acquire();
    await hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    hub.ingest("boiler-1", { kind: "heartbeat" });
    // The heartbeat monitor now waits for boiler-1's deadline on a timer of its own.
    assert.equal(hub.health().components.heartbeat?.timerArmed, true);
    assert.ok((resources().Timeout ?? 0) > (before.Timeout ?? 0), "the hub armed a timer");

    await helper.unload();
    await nextTick();
    assert.equal(hub.isRunning, false);
    assert.equal(node.hubStatus().state, "stopped");
    assert.equal(node.userCount(), 0);
    assert.deepEqual(resources(), before);
    await assert.rejects(node.acquire(), { code: "UNAVAILABLE" });
  });
});
