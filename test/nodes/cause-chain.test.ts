import assert from "node:assert/strict";
import { createRequire } from "node:module";
import helper from "node-red-node-test-helper";
import { type HubEvent, isHubOwnEvent } from "../../src/core/types";
import tethralEventIn from "../../src/nodes/tethral-event-in";
import tethralEventOut from "../../src/nodes/tethral-event-out";
import tethralHub from "../../src/nodes/tethral-hub";
import tethralIn from "../../src/nodes/tethral-in";
import tethralState from "../../src/nodes/tethral-state";
import tethralStateWatch from "../../src/nodes/tethral-state-watch";
import type { NodeAPI, TethralHubNode } from "../../src/nodes/types";
import { until } from "../helpers";
import { FIXTURES, type FlowEntry, type HelperNode, type Msg } from "./harness";

helper.init(require.resolve("node-red"));

// Node-RED's own change node: the flow is one a user would wire.
const changeNode = createRequire(require.resolve("node-red"))("@node-red/nodes/core/function/15-change.js") as (RED: NodeAPI) => void;

const { tab, hub: hubDef, out } = FIXTURES;
const on = (extra: FlowEntry): FlowEntry => ({ z: "tab1", hub: "hub1", ...extra });

/**
 * Three reactions to one device message: tethral-in → tethral-event-out, a state watch → change
 * → tethral-state set, tethral-event-in → tethral-event-out. Each output msg leaves on to `out`.
 */
const FLOW: FlowEntry[] = [
  on({ id: "in1", type: "tethral-in", deviceId: "boiler-1", wires: [["seen"]] }),
  on({ id: "seen", type: "tethral-event-out", eventType: "boiler.seen", wires: [["out"]] }),
  on({ id: "watch", type: "tethral-state-watch", deviceIds: "boiler-1", properties: "temperature", wires: [["fan"]] }),
  {
    id: "fan",
    type: "change",
    z: "tab1",
    rules: [
      { t: "set", p: "operation", pt: "msg", to: "set", tot: "str" },
      { t: "set", p: "payload", pt: "msg", to: '{"desired":{"fan":"on"}}', tot: "json" },
    ],
    wires: [["setFan"]],
  },
  on({ id: "setFan", type: "tethral-state", deviceId: "boiler-1", operation: "get", wires: [["out"]] }),
  on({ id: "online", type: "tethral-event-in", types: "device.online", wires: [["back"]] }),
  on({ id: "back", type: "tethral-event-out", eventType: "boiler.back", wires: [["out"]] }),
];

describe("a cause and its parent, through a flow", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("what a flow does about a device message names the message's cause as its parent", async () => {
    const modules = [tethralHub, tethralIn, tethralEventOut, tethralStateWatch, tethralState, tethralEventIn, changeNode];
    await helper.load(modules as never, [tab, hubDef, ...FLOW, out]);
    const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
    await hub.registerDevice({ id: "boiler-1", protocol: "mqtt" });
    await new Promise((resolve) => setImmediate(resolve));
    const outputs: Msg[] = [];
    (helper.getNode("out") as HelperNode).on("input", (msg) => outputs.push(msg));
    const events: HubEvent[] = [];
    hub.subscribe({ types: ["boiler.*", "state.changed"] }, (e) => void events.push(e));

    hub.ingest("boiler-1", { kind: "telemetry", data: { temperature: 80 }, protocol: "mqtt", causeId: "dev-msg-1" });
    await until(() => outputs.length === 3, "the three reactions");

    const caused = events.filter((e) => e.causeId === "dev-msg-1");
    assert.deepEqual(caused.map((e) => e.type), ["state.changed", "state.changed"], "the message's own changes: online, temperature");
    assert.ok(caused.every((e) => e.parentCauseId === null), "a device message has no parent");

    const reactions = events.filter((e) => e.causeId !== "dev-msg-1");
    assert.deepEqual(reactions.map((e) => e.type).sort(), ["boiler.back", "boiler.seen", "state.changed"]);
    for (const e of reactions) {
      assert.equal(e.parentCauseId, "dev-msg-1", `${e.type}: the device message is the parent`);
      const msg = outputs.find((m) => m._msgid === e.causeId);
      assert.ok(msg, `${e.type}: caused by a msg of the flow`);
      assert.equal(msg.causeId, "dev-msg-1", "the msg carried the event's cause");
    }
    const set = reactions.find((e) => e.type === "state.changed");
    assert.ok(set && isHubOwnEvent(set) && set.type === "state.changed", "the hub's own event, its data typed");
    assert.deepEqual(set.data.to, { desired: { fan: "on" } });
    assert.equal(set.source, "flow");

    // The history keeps the parent as it keeps the cause.
    const kept = await hub.eventHistory({ type: "boiler.*" });
    assert.deepEqual(kept.map((e) => e.parentCauseId), ["dev-msg-1", "dev-msg-1"]);
  });

  it("a msg.causeId that is no cause id (a flow's own use of the name) is left out, not refused", async () => {
    await helper.load([tethralHub, tethralEventOut] as never, [tab, hubDef, on({ id: "back", type: "tethral-event-out", eventType: "x.y", wires: [["out"]] }), out]);
    const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
    const outputs: Msg[] = [];
    (helper.getNode("out") as HelperNode).on("input", (msg) => outputs.push(msg));
    const back = helper.getNode("back") as HelperNode;
    back.receive({ payload: 1, causeId: "c".repeat(129) });
    back.receive({ payload: 2, causeId: { id: 7 } });
    back.receive({ payload: 3, causeId: "c-3" });
    await until(() => outputs.length === 3, "three events");
    assert.deepEqual(hub.events.query({ type: "x.y" }).map((e) => [e.data, e.parentCauseId]), [[3, "c-3"], [2, null], [1, null]]);
  });
});
