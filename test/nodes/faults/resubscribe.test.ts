import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import { Hub } from "../../../src/core/hub";
import tethralHub from "../../../src/nodes/tethral-hub";
import tethralIn from "../../../src/nodes/tethral-in";
import tethralEventIn from "../../../src/nodes/tethral-event-in";
import tethralStateWatch from "../../../src/nodes/tethral-state-watch";
import type { TethralHubNode } from "../../../src/nodes/types";

helper.init(require.resolve("node-red"));

const tab = { id: "tab1", type: "tab", label: "Test" };
const hubConfig = { id: "hub1", type: "tethral-hub", storage: "memory", mqttBroker: "off", coap: false, websocket: false };
type Msg = Record<string, unknown>;
const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("subscribers after a failed first hub start", function () {
  let orig: typeof Hub.prototype.start;
  beforeEach(async () => {
    orig = Hub.prototype.start;
    let failOnce = true;
    Hub.prototype.start = async function (this: Hub) {
      if (failOnce) {
        failOnce = false;
        throw new Error("database unreachable");
      }
      return orig.call(this);
    };
    await helper.startServer();
  });
  afterEach(async () => {
    Hub.prototype.start = orig;
    await helper.unload();
    await helper.stopServer();
  });

  for (const [label, module, def] of [
    ["tethral-in", tethralIn, { type: "tethral-in", kindTelemetry: true }],
    ["tethral-event-in", tethralEventIn, { type: "tethral-event-in", types: "state.changed" }],
    ["tethral-state-watch (control)", tethralStateWatch, { type: "tethral-state-watch", changes: true }],
  ] as const) {
    it(`${label} receives once the hub runs after its first start failed`, async () => {
      await helper.load([tethralHub, module as never], [
        tab,
        hubConfig,
        { id: "n1", z: "tab1", hub: "hub1", wires: [["out"]], ...def },
        { id: "out", type: "helper", z: "tab1" },
      ]);
      const got: Msg[] = [];
      (helper.getNode("out") as unknown as { on(e: string, f: (m: Msg) => void): void }).on("input", (m) => got.push(m));
      await wait(50); // first start fails
      // Something else (a tethral-device input, the next deploy's user) starts the hub again.
      const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
      await wait(20);
      await hub.registerDevice({ id: "pump-1", protocol: "mqtt" });
      hub.ingest("pump-1", { kind: "telemetry", data: { rpm: 1 } });
      await wait(100);
      assert.ok(got.length > 0, `${label} sent nothing although the hub now runs`);
    });
  }
});
