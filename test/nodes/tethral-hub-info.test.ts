import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import type { TethralEvent } from "../../src/core/types";
import tethralHub from "../../src/nodes/tethral-hub";
import tethralHubInfo from "../../src/nodes/tethral-hub-info";
import type { TethralHubNode } from "../../src/nodes/types";
import { FakeAdapter } from "../core/fake-adapter";
import { FIXTURES, type FlowEntry, type HelperNode, type Loaded, type Msg, lastStatus, loadWithCatch, withCatalogue } from "./harness";

helper.init(require.resolve("node-red"));

const info = (extra: Msg = {}): FlowEntry => ({ id: "info1", type: "tethral-hub-info", z: "tab1", hub: "hub1", operation: "health", wires: [["out"]], ...extra });
const module = withCatalogue(tethralHubInfo, "tethral-hub-info");

function load(nodes: FlowEntry[]): Promise<Loaded> {
  return loadWithCatch([tethralHub, module], nodes);
}

const errorCode = (msg: Msg) => (msg.error as { code?: string } | undefined)?.code;

describe("tethral-hub-info node", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("answers the hub's health with each component, keeping the msg's other properties", async () => {
    const t = await load([info()]);
    const m = await t.ok("info1", { keep: 1 });
    const health = m.payload as { status: string; components: Record<string, { status: string }> };
    assert.equal(health.status, "ok");
    for (const c of ["registry", "heartbeat", "state", "events", "commands"]) assert.equal(health.components[c]?.status, "ok", c);
    assert.equal(m.keep, 1);
    assert.deepEqual(lastStatus(t.node("info1")), { fill: "green", shape: "dot", text: "ok" });
  });

  it("shows a degraded health with a yellow dot, not a green one", async () => {
    const t = await load([info()]);
    const adapter = new FakeAdapter();
    adapter.status = "degraded";
    await (await (helper.getNode("hub1") as TethralHubNode).acquire()).addProtocol(adapter);
    const m = await t.ok("info1", {});
    assert.equal((m.payload as { status: string }).status, "degraded");
    assert.deepEqual(lastStatus(t.node("info1")), { fill: "yellow", shape: "dot", text: "degraded" });
  });

  it("answers the health of a hub that cannot start: degraded, with the reason", async () => {
    const { tab, catcher, errors, out } = FIXTURES;
    const broken = { ...FIXTURES.hub, storage: "postgres", postgresUrl: "" };
    await helper.load([tethralHub, module] as never, [tab, broken, info(), catcher, errors, out]);
    await assert.rejects((helper.getNode("hub1") as TethralHubNode).acquire());
    const answer = new Promise<Msg>((resolve) => (helper.getNode("out") as HelperNode).on("input", resolve));
    (helper.getNode("info1") as HelperNode).receive({});
    const health = (await answer).payload as { status: string; components: { hub: { status: string; error: string } } };
    assert.equal(health.status, "degraded");
    assert.equal(health.components.hub.status, "failed");
    assert.match(health.components.hub.error, /INVALID|postgres/i);
  });

  it("answers the OpenAPI document while the hub cannot start: it describes the API, not the hub", async () => {
    const { tab, catcher, errors, out } = FIXTURES;
    const broken = { ...FIXTURES.hub, storage: "postgres", postgresUrl: "" };
    await helper.load([tethralHub, module] as never, [tab, broken, info({ operation: "openapi" }), catcher, errors, out]);
    await assert.rejects((helper.getNode("hub1") as TethralHubNode).acquire());
    const answer = new Promise<Msg>((resolve) => (helper.getNode("out") as HelperNode).on("input", resolve));
    (helper.getNode("info1") as HelperNode).receive({});
    const doc = (await answer).payload as { openapi: string; paths: Record<string, unknown> };
    assert.match(doc.openapi, /^3\./);
    assert.ok(doc.paths["/devices"], "the routes are described");
  });

  it("answers the hub's statistics and the communication statistics", async () => {
    const t = await load([info({ operation: "statistics" })]);
    await t.hub.registerDevice({ id: "a", protocol: "http" });
    const stats = (await t.ok("info1", {})).payload as { devices: { total: number } };
    assert.equal(stats.devices.total, 1);
    assert.deepEqual(lastStatus(t.node("info1")), { fill: "green", shape: "dot", text: "1 devices" });

    t.hub.receive({ protocol: "http", deviceId: "a", kind: "telemetry", payload: { x: 1 }, token: "wrong" });
    const comm = (await t.ok("info1", { operation: "communication" })).payload as {
      protocols: Record<string, { messagesIn: number; rejected: number }>;
      commands: unknown;
    };
    assert.equal(comm.protocols.http?.messagesIn, 1);
    assert.equal(comm.protocols.http?.rejected, 1);
    assert.equal((comm.commands as { byStatus: Record<string, number> }).byStatus.queued, 0, "commands by status");
    assert.deepEqual(Object.keys((comm.commands as { latencyMs: object }).latencyMs).sort(), ["p50", "p95", "p99", "samples"]);
  });

  it("answers the event history, newest first, filtered from msg.payload (query-string text too)", async () => {
    const t = await load([info({ operation: "events" })]);
    await t.hub.registerDevice({ id: "a", protocol: "http" });
    await t.hub.registerDevice({ id: "b", protocol: "http" });
    t.hub.publish("alarm.raised", { n: 1 }, { priority: "critical", deviceId: "a" });
    t.hub.publish("alarm.raised", { n: 2 }, { priority: "low", deviceId: "b" });
    t.hub.publish("note.added", { n: 3 }, { priority: "high" });

    const all = ((await t.ok("info1", {})).payload as { events: TethralEvent[] }).events;
    assert.deepEqual(all.slice(0, 3).map((e) => e.type), ["note.added", "alarm.raised", "alarm.raised"]);
    const byType = ((await t.ok("info1", { payload: { type: "alarm.*,device.*", limit: "10" } })).payload as { events: TethralEvent[] }).events;
    assert.deepEqual(new Set(byType.map((e) => e.type)), new Set(["alarm.raised", "device.registered"]));
    const urgent = ((await t.ok("info1", { payload: { minPriority: "high" } })).payload as { events: TethralEvent[] }).events;
    assert.deepEqual(urgent.map((e) => (e.data as { n: number }).n), [3, 1]);
    const exact = ((await t.ok("info1", { payload: { priority: "low", type: "alarm.raised" } })).payload as { events: TethralEvent[] }).events;
    assert.deepEqual(exact.map((e) => e.deviceId), ["b"]);
    const ofA = ((await t.ok("info1", { payload: { deviceId: "a", limit: 1 } })).payload as { events: TethralEvent[] }).events;
    assert.equal(ofA.length, 1);
    assert.equal(ofA[0]!.type, "alarm.raised");
    const future = ((await t.ok("info1", { payload: { since: new Date(Date.now() + 60_000).toISOString() } })).payload as { events: TethralEvent[] }).events;
    assert.deepEqual(future, []);

    for (const payload of [{ colour: "red" }, { priority: "urgent" }, { limit: "many" }, { limit: 10_001 }, { type: 5 }, { since: {} }, { __proto__: null, constructor: 1 }]) {
      const m = await t.caught("info1", { payload, keep: 2 });
      assert.equal(errorCode(m), "INVALID", JSON.stringify(payload));
      assert.equal(m.keep, 2);
    }
  });

  it("answers the cluster: a single runtime is a cluster of one that owns every partition, and msg.leader is true", async () => {
    const t = await loadWithCatch([tethralHub, module], [info({ operation: "cluster" })], { memberId: "edge-1" });
    const m = await t.ok("info1", { keep: 3 });
    const cluster = m.payload as { member: string; partitions: number; members: { id: string; since: string; lastSeen: string; partitions: number[] }[] };
    assert.equal(cluster.member, "edge-1");
    assert.equal(cluster.partitions, 64);
    assert.equal(cluster.members.length, 1);
    assert.equal(cluster.members[0]!.id, "edge-1");
    assert.deepEqual(cluster.members[0]!.partitions, [...Array(64).keys()]);
    assert.ok(!Number.isNaN(Date.parse(cluster.members[0]!.lastSeen)));
    assert.equal(m.leader, true);
    assert.equal(m.keep, 3);
    assert.deepEqual(lastStatus(t.node("info1")), { fill: "green", shape: "dot", text: "1 members, leader" });
  });

  it("answers the event statistics, and refuses an unknown operation", async () => {
    const t = await load([info({ operation: "event-statistics" })]);
    const before = ((await t.ok("info1", {})).payload as { published: number }).published;
    t.hub.publish("alarm.raised", {}, { priority: "high" });
    const stats = (await t.ok("info1", {})).payload as { published: number; byType: Record<string, number>; byPriority: Record<string, number> };
    assert.equal(stats.published, before + 1);
    assert.equal(stats.byType["alarm.raised"], 1);
    assert.ok(stats.byPriority.high! >= 1);
    assert.equal(errorCode(await t.caught("info1", { operation: "everything" })), "INVALID");
    assert.deepEqual(lastStatus(t.node("info1")), { fill: "red", shape: "ring", text: "INVALID" });
  });
});
