import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import tethralDevice from "../../src/nodes/tethral-device";
import tethralHub from "../../src/nodes/tethral-hub";
import tethralState from "../../src/nodes/tethral-state";
import { until } from "../helpers";
import { FIXTURES, type FlowEntry, type HelperNode, type Loaded, type Msg, lastStatus, loadWithCatch, withCatalogue } from "./harness";

helper.init(require.resolve("node-red"));

const { tab, hub, catcher, errors, out } = FIXTURES;

const device = (extra: Msg = {}): FlowEntry => ({ id: "dev1", type: "tethral-device", z: "tab1", hub: "hub1", operation: "get", wires: [["out"]], ...extra });

function load(nodes: FlowEntry[]): Promise<Loaded> {
  return loadWithCatch([tethralHub, withCatalogue(tethralDevice, "tethral-device"), withCatalogue(tethralState, "tethral-state")], nodes);
}

const errorCode = (msg: Msg) => (msg.error as { code?: string } | undefined)?.code;
const green = (text: string) => ({ fill: "green", shape: "dot", text });

describe("tethral-device node", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("registers a device from msg.payload and answers it with its one-time token", async () => {
    const t = await load([device({ operation: "register" })]);
    const m = await t.ok("dev1", { payload: { id: "boiler-1", protocol: "mqtt", tags: ["floor-2"] }, keep: "me" });
    const payload = m.payload as { id: string; protocol: string; tags: string[]; token?: string; status: string };
    assert.equal(payload.id, "boiler-1");
    assert.equal(payload.protocol, "mqtt");
    assert.deepEqual(payload.tags, ["floor-2"]);
    assert.equal(typeof payload.token, "string", "the token is answered once, at registration");
    assert.ok(payload.token!.length >= 16);
    assert.equal(m.deviceId, "boiler-1");
    assert.equal(m.keep, "me", "the msg's other properties pass through");
    assert.equal(t.hub.getDevice("boiler-1").protocol, "mqtt");
    assert.equal((t.hub.getDevice("boiler-1") as { token?: string }).token, undefined, "never shown again");
    assert.deepEqual(lastStatus(t.node("dev1")), green("registered boiler-1"));
  });

  it("registers with the id from msg.deviceId, and refuses a different payload.id", async () => {
    const t = await load([device({ operation: "register" })]);
    const record = { protocol: "coap", address: "coap://10.0.0.5" };
    const m = await t.ok("dev1", { deviceId: "pump-1", payload: record });
    assert.equal((m.payload as { id: string }).id, "pump-1");
    assert.deepEqual(record, { protocol: "coap", address: "coap://10.0.0.5" }, "the caller's payload object is not changed");
    const same = await t.ok("dev1", { deviceId: "pump-2", payload: { id: "pump-2", protocol: "http" } });
    assert.equal((same.payload as { id: string }).id, "pump-2");

    const bad = await t.caught("dev1", { deviceId: "pump-3", payload: { id: "other", protocol: "mqtt" }, keep: 1 });
    assert.equal(errorCode(bad), "INVALID");
    assert.equal(bad.keep, 1);
    assert.equal(bad.deviceId, "pump-3");
    assert.throws(() => t.hub.getDevice("pump-3"), /not found/);
    assert.throws(() => t.hub.getDevice("other"), /not found/);
    assert.deepEqual(lastStatus(t.node("dev1")), { fill: "red", shape: "ring", text: "INVALID" });
  });

  it("gets, updates and removes a device named by msg.deviceId or the node's device", async () => {
    const t = await load([device({ operation: "get" }), device({ id: "dev2", operation: "get", deviceId: "boiler-1" })]);
    await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt", name: "Boiler" });
    await t.hub.registerDevice({ id: "boiler-2", protocol: "mqtt" });

    const got = await t.ok("dev1", { deviceId: "boiler-2", topic: "t" });
    assert.equal((got.payload as { id: string }).id, "boiler-2");
    assert.equal(got.topic, "t");
    assert.deepEqual(lastStatus(t.node("dev1")), green("boiler-2: unknown"));
    assert.equal(((await t.ok("dev2", {})).payload as { name: string }).name, "Boiler", "the node's device");
    assert.equal(((await t.ok("dev2", { deviceId: "boiler-2" })).payload as { id: string }).id, "boiler-2", "msg.deviceId overrides it");

    const updated = await t.ok("dev1", { operation: "update", deviceId: "boiler-1", payload: { name: "Boiler room", tags: ["b"] } });
    assert.equal((updated.payload as { name: string }).name, "Boiler room");
    assert.equal(t.hub.getDevice("boiler-1").name, "Boiler room");
    assert.deepEqual(t.hub.getDevice("boiler-1").tags, ["b"]);
    assert.deepEqual(lastStatus(t.node("dev1")), green("updated boiler-1"));

    const removed = await t.ok("dev2", { operation: "remove", keep: true });
    assert.equal((removed.payload as { id: string }).id, "boiler-1");
    assert.equal(removed.keep, true);
    assert.throws(() => t.hub.getDevice("boiler-1"), /not found/);
    assert.deepEqual(lastStatus(t.node("dev2")), green("removed boiler-1"));
  });

  it("lists with a filter from msg.payload, and counts in the status", async () => {
    const t = await load([device({ operation: "list" })]);
    for (let i = 1; i <= 12; i++) {
      await t.hub.registerDevice({ id: `d-${String(i).padStart(2, "0")}`, protocol: i <= 4 ? "coap" : "mqtt", manufacturer: i % 2 ? "Acme" : "Other", address: "coap://x" });
    }
    const all = await t.ok("dev1", { payload: Date.now() });
    assert.equal((all.payload as { total: number }).total, 12, "a payload that is no filter lists everything");
    assert.equal((all.payload as { devices: unknown[] }).devices.length, 12);
    assert.deepEqual(lastStatus(t.node("dev1")), green("12 devices"));

    const coap = await t.ok("dev1", { payload: { protocol: "coap", sort: "id", order: "desc" } });
    const ids = (coap.payload as { devices: Array<{ id: string }> }).devices.map((d) => d.id);
    assert.deepEqual(ids, ["d-04", "d-03", "d-02", "d-01"]);
    assert.equal((coap.payload as { total: number }).total, 4);

    const page = await t.ok("dev1", { payload: { manufacturer: "Acme", limit: 2, offset: 1, sort: "id" } });
    assert.deepEqual(
      (page.payload as { devices: Array<{ id: string }> }).devices.map((d) => d.id),
      ["d-03", "d-05"],
    );
    // Reads show at most twice a second: the status comes round to the latest within half a second.
    const shown = await until(() => JSON.stringify(lastStatus(t.node("dev1"))) === JSON.stringify(green("2 of 6 devices")), "the latest list in the status", 2000);
    assert.ok(shown);

    const q = await t.ok("dev1", { payload: { q: "D-1" } });
    assert.equal((q.payload as { total: number }).total, 3, "d-10, d-11, d-12");

    const bad = await t.caught("dev1", { payload: { colour: "red" }, keep: "x" });
    assert.equal(errorCode(bad), "INVALID", "an unknown filter key");
    assert.equal(bad.keep, "x");
  });

  it("answers statistics", async () => {
    const t = await load([device({ operation: "statistics" })]);
    await t.hub.registerDevice({ id: "a", protocol: "mqtt", capabilities: ["temperature"] });
    await t.hub.registerDevice({ id: "b", protocol: "mqtt" });
    const m = await t.ok("dev1", { payload: "go" });
    const stats = m.payload as { total: number; byProtocol: Record<string, number>; byCapability: Record<string, number> };
    assert.equal(stats.total, 2);
    assert.equal(stats.byProtocol.mqtt, 2);
    assert.equal(stats.byCapability.temperature, 1);
    assert.deepEqual(lastStatus(t.node("dev1")), green("2 devices"));
    // msg.operation overrides the node's choice in the other direction too.
    const listed = await t.ok("dev1", { operation: "list" });
    assert.equal((listed.payload as { total: number }).total, 2);
  });

  it("sends refusals to a Catch node with the original msg and the error's code", async () => {
    const t = await load([device({ operation: "get" })]);
    await t.hub.registerDevice({ id: "taken", protocol: "mqtt" });
    const cases: Array<[Msg, string]> = [
      [{}, "INVALID"], // get without a device
      [{ operation: "update", payload: { name: "x" } }, "INVALID"],
      [{ operation: "remove" }, "INVALID"],
      [{ operation: "explode", deviceId: "taken" }, "INVALID"],
      [{ deviceId: 42 }, "INVALID"],
      [{ operation: "update", deviceId: "taken", payload: "name" }, "INVALID"],
      [{ operation: "update", deviceId: "taken", payload: { protocol: 7 } }, "INVALID"],
      [{ operation: "register", payload: { id: "bad id", protocol: "mqtt" } }, "INVALID"],
      [{ operation: "register", payload: { id: "no-protocol" } }, "INVALID"],
      [{ operation: "register", payload: [1, 2] }, "INVALID"],
      [{ deviceId: "ghost" }, "NOT_FOUND"],
      [{ operation: "update", deviceId: "ghost", payload: { name: "x" } }, "NOT_FOUND"],
      [{ operation: "remove", deviceId: "ghost" }, "NOT_FOUND"],
      [{ operation: "register", payload: { id: "taken", protocol: "mqtt" } }, "CONFLICT"],
    ];
    for (const [msg, code] of cases) {
      const m = await t.caught("dev1", { ...msg, keep: "me" });
      assert.equal(errorCode(m), code, JSON.stringify(msg));
      assert.equal(m.keep, "me", "the Catch node gets the original message");
      assert.equal((m.error as { source: { id: string } }).source.id, "dev1");
      assert.deepEqual(lastStatus(t.node("dev1")), { fill: "red", shape: "ring", text: code });
    }
    assert.equal(t.hub.getDevice("taken").name, "taken", "nothing changed");
    assert.equal(t.hub.listDevices().total, 1);
  });

  it("shares one hub with other nodes, and releases it on close", async () => {
    const t = await load([
      device({ operation: "register", wires: [["state1"]] }),
      { id: "state1", type: "tethral-state", z: "tab1", hub: "hub1", operation: "get", wires: [["out"]] },
    ]);
    assert.equal(t.hubNode.userCount(), 2);
    // register → state get: the registered id travels on as msg.deviceId.
    const m = await t.ok("dev1", { payload: { id: "shared-1", protocol: "mqtt" } });
    assert.equal((m.payload as { deviceId: string; version: number }).deviceId, "shared-1");
    assert.equal(m.deviceId, "shared-1");

    // A "nodes" deploy that removes the device node closes it alone: it lets go of the hub,
    // which keeps running for the state node.
    const dev1 = t.node("dev1");
    await helper.setFlows(
      [tab, hub, { id: "state1", type: "tethral-state", z: "tab1", hub: "hub1", operation: "get", wires: [["out"]] }, catcher, errors, out],
      "nodes",
    );
    assert.equal(t.hubNode.userCount(), 1);
    assert.deepEqual(lastStatus(dev1), {}, "the removed node's status is cleared");
    assert.equal(t.hubNode.hubStatus().state, "running");
    assert.equal(await t.hubNode.acquire(), t.hub, "the same hub");
  });

  it("report takes in an HTTP device's report with its token, checked and counted like any protocol's", async () => {
    const t = await load([device({ operation: "report" })]);
    const { token } = await t.hub.registerDevice({ id: "meter-1", protocol: "http" });
    const m = await t.ok("dev1", { deviceId: "meter-1", token, payload: { power: 1.5 }, keep: 1 });
    assert.deepEqual(m.payload, { deviceId: "meter-1", status: "online", changed: true });
    assert.equal(m.keep, 1);
    assert.deepEqual(t.hub.getState("meter-1").properties, { power: 1.5 });
    assert.deepEqual(lastStatus(t.node("dev1")), green("meter-1 reported telemetry"));
    // A state report, as text (the raw body of a request) decoded by the hub.
    await t.ok("dev1", { deviceId: "meter-1", token, kind: "state", payload: '{"properties":{"power":2}}' });
    assert.equal(t.hub.getState("meter-1").properties.power, 2);

    const refusals: Array<[Msg, string]> = [
      [{ deviceId: "meter-1", token: "wrong", payload: { power: 9 } }, "UNAUTHORIZED"],
      [{ deviceId: "meter-1", payload: { power: 9 } }, "UNAUTHORIZED"],
      [{ deviceId: "nobody", token, payload: { power: 9 } }, "NOT_FOUND"],
      [{ deviceId: "meter-1", token, payload: "{not json" }, "INVALID"],
      [{ deviceId: "meter-1", token, payload: [1, 2] }, "INVALID"],
      [{ deviceId: "meter-1", token, kind: "register", payload: {} }, "INVALID"],
      [{ deviceId: "meter-1", token: 42, payload: {} }, "INVALID"],
      [{ token, payload: {} }, "INVALID"],
    ];
    for (const [msg, code] of refusals) assert.equal(errorCode(await t.caught("dev1", msg)), code, JSON.stringify(msg));
    // A token or protocol that is no text is refused in the node's own words, naming the field.
    for (const [msg, field, words] of [
      [{ deviceId: "meter-1", token: 42, payload: {} }, "token", "msg.token must be a string"],
      [{ deviceId: "meter-1", token, protocol: 7, payload: {} }, "protocol", "msg.protocol must be a string"],
    ] as const) {
      const error = (await t.caught("dev1", msg)).error as { message: string; cause?: { details?: { field: string }[] } };
      assert.match(error.message, new RegExp(words.replace(".", "\\.")), JSON.stringify(msg));
      assert.equal(error.cause?.details?.[0]?.field, field);
    }
    assert.equal(t.hub.getState("meter-1").properties.power, 2, "a refused report changes nothing");
    const http = t.hub.communicationStatistics().protocols.http!;
    assert.equal(http.messagesIn, 2 + 5, "reports that reached the hub are counted");
    assert.equal(http.rejected, 5);

    // A report a flow built is weighed as JSON: counted in bytes in, and held to the payload limit (256 KiB).
    const before = t.hub.communicationStatistics().protocols.http!.bytesIn;
    await t.ok("dev1", { deviceId: "meter-1", token, payload: { power: 3 } });
    assert.equal(t.hub.communicationStatistics().protocols.http!.bytesIn - before, Buffer.byteLength('{"power":3}'));
    assert.equal(errorCode(await t.caught("dev1", { deviceId: "meter-1", token, payload: { blob: "x".repeat(300 * 1024) } })), "INVALID");
    assert.equal(t.hub.getState("meter-1").properties.blob, undefined);
  });


  it("reads an http in request's device id, kind and token itself, unless the msg gives them", async () => {
    const t = await load([device({ operation: "report" }), device({ id: "get1", operation: "get" })]);
    const { token } = await t.hub.registerDevice({ id: "meter-2", protocol: "http" });
    const { token: other } = await t.hub.registerDevice({ id: "meter-3", protocol: "http" });
    const req = (kind: string, headers: Record<string, string>, query: Record<string, string> = {}) => ({
      params: { id: "meter-2" },
      headers,
      query,
      route: { path: `/devices/:id/${kind}` },
      method: "POST",
    });
    await t.ok("dev1", { req: req("telemetry", { authorization: `Bearer ${token}` }), payload: { power: 3 } });
    assert.deepEqual(t.hub.getState("meter-2").properties, { power: 3 }, "the :id of the path, a Bearer token, the route's kind");
    await t.ok("dev1", { req: req("status", {}, { token: token! }), payload: "  offline \n" });
    assert.equal(t.hub.getDevice("meter-2").status, "offline", "a status as text, trimmed; the token from ?token=");
    // Under httpNodeAuth the Authorization header carries Basic credentials: ?token= still works.
    await t.ok("dev1", { req: req("heartbeat", { authorization: "Basic dXNlcjpwYXNz" }, { token: token! }), payload: "" });
    assert.equal(t.hub.getDevice("meter-2").status, "online");
    assert.equal(errorCode(await t.caught("dev1", { req: req("telemetry", { authorization: "Bearer wrong" }), payload: { power: 9 } })), "UNAUTHORIZED");
    assert.equal(errorCode(await t.caught("dev1", { req: req("telemetry", {}), payload: { power: 9 } })), "UNAUTHORIZED", "no token at all");
    // What the msg says wins over the request.
    await t.ok("dev1", { req: req("telemetry", { authorization: `Bearer ${token}` }), deviceId: "meter-3", token: other, payload: { power: 4 } });
    assert.deepEqual(t.hub.getState("meter-3").properties, { power: 4 });
    assert.deepEqual(t.hub.getState("meter-2").properties, { power: 3 });
    await t.ok("dev1", { req: req("telemetry", { authorization: `Bearer ${token}` }), kind: "state", payload: { properties: { power: 5 } } });
    assert.equal(t.hub.getState("meter-2").properties.power, 5, "msg.kind over the route's");
    // A get from a GET /devices/:id route.
    const got = await t.ok("get1", { req: { params: { id: "meter-3" }, headers: {}, query: {}, route: { path: "/devices/:id" }, method: "GET" } });
    assert.equal((got.payload as { id: string }).id, "meter-3");
  });

  it("never takes a REST path's statistics or states for a device: a get answers the fleet's statistics or states (CONTRACT §3)", async () => {
    const t = await load([device({ id: "get1", operation: "get" }), device({ id: "get2", operation: "get", deviceId: "states" })]);
    await t.hub.registerDevice({ id: "meter-4", protocol: "http" });
    await t.hub.registerDevice({ id: "meter-5", protocol: "coap" });
    const request = (id: string, query: Record<string, string> = {}) => ({ params: { id }, headers: {}, query, route: { path: "/devices/:id" }, method: "GET" });
    const stats = await t.ok("get1", { req: request("statistics"), payload: {} });
    assert.deepEqual(stats.payload, t.hub.deviceStatistics());
    assert.equal((stats.payload as { total: number }).total, 2);
    // An http in node's msg.payload for a GET is the query.
    const states = await t.ok("get1", { req: request("states", { protocol: "coap" }), payload: { protocol: "coap" } });
    assert.deepEqual(states.payload, t.hub.listStates({ protocol: ["coap"] }));
    assert.deepEqual(
      (states.payload as { states: { deviceId: string }[] }).states.map((s) => s.deviceId),
      ["meter-5"],
    );
    await until(() => JSON.stringify(lastStatus(t.node("get1"))) === JSON.stringify(green("1 states")), "the state list in the status, in the device node's words", 2000);
    const refused = await t.caught("get1", { req: request("states", { colour: "red" }), payload: { colour: "red" } });
    assert.equal(errorCode(refused), "INVALID", "the state list's own filter check");
    assert.equal((refused.error as { message: string }).message, "msg.payload.colour is no state filter (use status, protocol, limit, offset)", "in the device node's own words");
    const one = await t.ok("get1", { req: request("meter-4"), payload: {} });
    assert.equal((one.payload as { id: string }).id, "meter-4", "any other :id is a device");
    // Only the path's :id is read that way: a device named by the msg or the node is a device.
    assert.equal(errorCode(await t.caught("get1", { req: request("meter-4"), deviceId: "statistics" })), "NOT_FOUND");
    assert.equal(errorCode(await t.caught("get1", { deviceId: "states" })), "NOT_FOUND");
    assert.equal(errorCode(await t.caught("get2", { req: request("states"), payload: {} })), "NOT_FOUND");
    // A flow's own route reads any id as a device's: devices of these ids (registered by a node or
    // self-registration, which the REST flow's check does not see) stay readable there.
    await t.hub.registerDevice({ id: "states", protocol: "mqtt" });
    await t.hub.registerDevice({ id: "statistics", protocol: "mqtt" });
    const site = (id: string) => ({ params: { id }, headers: {}, query: { verbose: "1" }, route: { path: "/sites/:id" }, method: "GET" });
    for (const id of ["states", "statistics"]) {
      const own = await t.ok("get1", { req: site(id), payload: { verbose: "1" } });
      assert.equal((own.payload as { id: string }).id, id, `${id} on /sites/:id is the device`);
    }
  });

  it("takes no id from a request for a register, update, remove or token further on in a flow", async () => {
    const t = await load([device({ operation: "register" })]);
    const req = { params: { id: "site-7" }, headers: {}, query: {}, route: { path: "/sites/:id/devices" }, method: "POST" };
    const m = await t.ok("dev1", { req, payload: { id: "pump-1", protocol: "mqtt" } });
    assert.equal((m.payload as { id: string }).id, "pump-1", "registered under its own id, not the route's");
    assert.equal(t.hub.registry.has("site-7"), false);
    assert.equal(errorCode(await t.caught("dev1", { req, operation: "update", payload: { name: "x" } })), "INVALID", "an update names its device");
    assert.equal(errorCode(await t.caught("dev1", { req, operation: "remove" })), "INVALID");
    assert.equal(errorCode(await t.caught("dev1", { req, operation: "token" })), "INVALID");
  });
  it("stops with the hub on a full stop, and a redeploy gets a fresh hub", async () => {
    const t = await load([device({ operation: "register" })]);
    await t.ok("dev1", { payload: { id: "old-1", protocol: "mqtt" } });
    assert.equal(t.hubNode.userCount(), 1);
    await helper.unload();
    assert.equal(t.hubNode.hubStatus().state, "stopped");

    const again = await load([device({ operation: "list" })]);
    assert.notEqual(again.hub, t.hub);
    assert.equal(again.hubNode.userCount(), 1);
    const m = await again.ok("dev1", {});
    assert.equal((m.payload as { total: number }).total, 0, "a memory hub starts empty");
  });

  it("without a hub, says so on its status and refuses input", async () => {
    await helper.load([tethralHub, withCatalogue(tethralDevice, "tethral-device")], [tab, device({ hub: "", wires: [] }), catcher, errors]);
    const node = helper.getNode("dev1") as HelperNode;
    assert.deepEqual(lastStatus(node), { fill: "red", shape: "ring", text: "No Tethral hub configured" });
    // The node also logs "no hub" when it starts (a Catch node may see that): wait for this msg.
    const caught = new Promise<Msg>((resolve) =>
      (helper.getNode("errors") as HelperNode).on("input", (m) => {
        if (m.keep === 1) resolve(m);
      }),
    );
    node.receive({ keep: 1 });
    const m = await caught;
    assert.equal(m.keep, 1);
    assert.equal((m.error as { message: string }).message, "No Tethral hub configured");
    assert.equal((m.error as { code?: string }).code, "UNAVAILABLE", "a code, as every other failure has");
  });
});
