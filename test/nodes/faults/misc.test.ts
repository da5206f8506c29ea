import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import { Hub } from "../../../src/core/hub";
import tethralHub from "../../../src/nodes/tethral-hub";
import tethralEventOut from "../../../src/nodes/tethral-event-out";
import tethralCommand from "../../../src/nodes/tethral-command";
import tethralDevice from "../../../src/nodes/tethral-device";
import type { TethralHubNode } from "../../../src/nodes/types";
import { FakeAdapter } from "../../core/fake-adapter";

helper.init(require.resolve("node-red"));

const tab = { id: "tab1", type: "tab", label: "Test" };
const hubConfig = { id: "hub1", type: "tethral-hub", storage: "memory", mqttBroker: "off", coap: false, websocket: false };
type Msg = Record<string, unknown>;
type H = { on(e: string, f: (m: Msg) => void): void; receive(m: Msg): void };
const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("misc", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("event-out: the event kept in history is not the flow's msg.payload object", async () => {
    await helper.load([tethralHub, tethralEventOut], [tab, hubConfig, { id: "eo", type: "tethral-event-out", z: "tab1", hub: "hub1", eventType: "x.y" }]);
    const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
    const payload = { level: 1 };
    (helper.getNode("eo") as unknown as H).receive({ payload });
    await wait(50);
    payload.level = 999; // the flow goes on using its object
    const [e] = await hub.eventHistory({ type: "x.y" } as never);
    assert.deepEqual(e!.data, { level: 1 }, "history changed after the fact");
  });

  it("command: msg.deviceId null is INVALID (or the configured device), not an uncoded error", async () => {
    await helper.load([tethralHub, tethralCommand], [
      tab, hubConfig,
      { id: "cmd", type: "tethral-command", z: "tab1", hub: "hub1", deviceId: "pump-1", command: "reboot", wait: false, wires: [["out"]] },
      { id: "out", type: "helper", z: "tab1" },
      { id: "c", type: "catch", z: "tab1", scope: null, wires: [["errs"]] },
      { id: "errs", type: "helper", z: "tab1" },
    ]);
    const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
    await hub.addProtocol(new FakeAdapter());
    await hub.registerDevice({ id: "pump-1", protocol: "fake" });
    const errs: Msg[] = [];
    const outs: Msg[] = [];
    (helper.getNode("errs") as unknown as H).on("input", (m) => errs.push(m));
    (helper.getNode("out") as unknown as H).on("input", (m) => outs.push(m));
    (helper.getNode("cmd") as unknown as H).receive({ deviceId: null });
    await wait(100);
    assert.ok(outs.length === 1 || (errs[0]?.error as { code?: string })?.code === "INVALID", JSON.stringify({ outs, errs: errs.map((e) => e.error) }));
  });

  it("device: an operation still in flight when the node is redeployed sends its output into the new flow", async () => {
    const flow = [
      tab, hubConfig,
      { id: "dev", type: "tethral-device", z: "tab1", hub: "hub1", operation: "register", wires: [["out"]] },
      { id: "out", type: "helper", z: "tab1" },
    ];
    await helper.load([tethralHub, tethralDevice], flow);
    const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
    const orig = hub.registerDevice.bind(hub);
    (hub as unknown as { registerDevice: unknown }).registerDevice = async (...a: Parameters<Hub["registerDevice"]>) => {
      await wait(200);
      return orig(...a);
    };
    const outs: Msg[] = [];
    (helper.getNode("out") as unknown as H).on("input", (m) => outs.push(m));
    (helper.getNode("dev") as unknown as H).receive({ payload: { id: "d1", protocol: "mqtt" } });
    await wait(20);
    // Redeploy only the modified device node (its wiring removed: it should send to nothing).
    const flow2 = flow.map((n) => (n.id === "dev" ? { ...n, operation: "get", wires: [[]] } : n));
    await (helper as unknown as { setFlows(f: unknown, t: string): Promise<void> }).setFlows(flow2, "nodes");
    await wait(400);
    assert.equal(outs.length, 0, "the closed node's late output arrived downstream");
  });

  it("admin: odd query params answer 400/200, never 500", async () => {
    await helper.load([tethralHub, tethralEventOut], [tab, { ...hubConfig, name: "P" }, { id: "eo", type: "tethral-event-out", z: "tab1", hub: "hub1", eventType: "x.y" }]);
    const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
    await hub.registerDevice({ id: "a", protocol: "mqtt" });
    for (const qs of ["status=bogus", "limit=2.5", "offset=1.5", "limit=-1", "q[a]=1", "status[]=online", "limit=1e400", "offset=99999999999999999999"]) {
      const r = await helper.request().get(`/tethral/hubs/hub1/devices?${qs}`);
      assert.ok(r.status < 500, `${qs}: ${r.status} ${JSON.stringify(r.body)}`);
      console.log(qs, r.status, JSON.stringify(r.body).slice(0, 120));
    }
  });
});
