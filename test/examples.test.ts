import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import helper from "node-red-node-test-helper";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { TethralHubNode } from "../src/nodes/types";
import type { Json } from "./runtime/spawn-runtime";

helper.init(require.resolve("node-red"));

const ROOT = path.join(__dirname, "..");
const EXAMPLES = path.join(ROOT, "examples");
// Node modules by path: the core nodes the examples use, and ours from their TypeScript sources.
const load = createRequire(__filename);
const core = (file: string) => load(path.join(path.dirname(require.resolve("@node-red/nodes/package.json")), "core", file));
const CORE_NODES = ["common/20-inject.js", "common/21-debug.js", "common/25-catch.js", "common/90-comment.js", "function/10-switch.js", "function/15-change.js", "network/21-httpin.js"].map(core);
const tethral = (type: string) => load(path.join(ROOT, "src", "nodes", `${type}.ts`));

const packageJson = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as { "node-red": { nodes: Record<string, string> } };
const OUR_TYPES = Object.keys(packageJson["node-red"].nodes);
const shipped = JSON.parse(readFileSync(path.join(ROOT, "flows", "flows.json"), "utf8")) as Array<{ id: string; type: string }>;
const HUB_ID = shipped.find((n) => n.type === "tethral-hub")!.id;

type FlowNode = { id: string; type: string; z?: string; wires?: string[][]; hub?: string };
const files = readdirSync(EXAMPLES).filter((f) => f.endsWith(".json")).sort();

describe("examples (Import > Examples)", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("together use every Tethral node but the config node", () => {
    const used = new Set(files.flatMap((f) => (JSON.parse(readFileSync(path.join(EXAMPLES, f), "utf8")) as FlowNode[]).map((n) => n.type)));
    const missing = OUR_TYPES.filter((t) => t !== "tethral-hub" && !used.has(t));
    assert.deepEqual(missing, []);
  });

  for (const file of files) {
    it(`${file} is a JSON array that loads into Node-RED with no unknown type and no error, using the shipped hub`, async () => {
      const nodes = JSON.parse(readFileSync(path.join(EXAMPLES, file), "utf8")) as FlowNode[];
      assert.ok(Array.isArray(nodes) && nodes.length > 0);
      const ids = new Set(nodes.map((n) => n.id));
      for (const n of nodes) {
        for (const out of n.wires ?? []) for (const target of out) assert.ok(ids.has(target), `${n.id} is wired to a node of the example`);
        if (n.hub !== undefined) assert.equal(n.hub, HUB_ID, "uses the hub of flows/flows.json");
      }
      const types = [...new Set(nodes.map((n) => n.type))].filter((t) => t.startsWith("tethral-"));
      const flow = [
        { id: "tab1", type: "tab", label: file },
        { id: HUB_ID, type: "tethral-hub", storage: "memory", mqttBroker: "off", coap: false, websocket: false },
        ...nodes.map((n) => ({ ...n, z: "tab1" })),
      ];
      await helper.load([...CORE_NODES, tethral("tethral-hub"), ...types.map(tethral)], flow);
      for (const n of nodes) assert.ok(helper.getNode(n.id), `${n.type} ${n.id} started`);
      const errors = helper.log().args.map(([e]) => e).filter((e) => e.level === helper.log().ERROR);
      assert.deepEqual(errors.map((e) => String(e.msg)), []);
    });
  }

  it("07 answers its own endpoints: a device's temperature, 404 in the API's shape for an unknown one, the hub's health", async () => {
    const file = files.find((f) => f.startsWith("07"))!;
    const nodes = JSON.parse(readFileSync(path.join(EXAMPLES, file), "utf8")) as FlowNode[];
    // The http in nodes serve on RED.httpNode, which the helper keeps to itself: catch it on the way in.
    let httpNode: unknown = null;
    const hubModule = tethral("tethral-hub") as (RED: { httpNode: unknown }) => void;
    const catching = (RED: { httpNode: unknown }) => {
      httpNode = RED.httpNode;
      hubModule(RED);
    };
    await helper.load(
      [...CORE_NODES, catching, tethral("tethral-state"), tethral("tethral-hub-info")],
      [{ id: "tab1", type: "tab" }, { id: HUB_ID, type: "tethral-hub", storage: "memory", mqttBroker: "off", coap: false, websocket: false }, ...nodes.map((n) => ({ ...n, z: "tab1" }))],
    );
    const server = createServer(httpNode as Parameters<typeof createServer>[0]);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const get = async (route: string) => {
        const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}${route}`);
        return { status: res.status, body: (await res.json()) as Json };
      };
      const hub = await (helper.getNode(HUB_ID) as TethralHubNode).acquire();
      await hub.registerDevice({ id: "boiler-1", protocol: "http" });
      hub.ingest("boiler-1", { kind: "telemetry", data: { temperature: 21.5 } });
      const ok = await get("/my/temperature/boiler-1");
      assert.equal(ok.status, 200);
      assert.equal(ok.body.deviceId, "boiler-1");
      assert.equal(ok.body.temperature, 21.5);
      const missing = await get("/my/temperature/nobody");
      assert.equal(missing.status, 404);
      assert.equal(missing.body.error.code, "NOT_FOUND");
      const health = await get("/my/health");
      assert.equal(health.status, 200);
      assert.equal(health.body.status, "ok");
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it("01 registers the devices it shows when its inject nodes are clicked", async () => {
    const file = files.find((f) => f.startsWith("01"))!;
    const nodes = JSON.parse(readFileSync(path.join(EXAMPLES, file), "utf8")) as Array<FlowNode & { name?: string }>;
    await helper.load(
      [...CORE_NODES, tethral("tethral-hub"), tethral("tethral-device")],
      [{ id: "tab1", type: "tab" }, { id: HUB_ID, type: "tethral-hub", storage: "memory", mqttBroker: "off", coap: false, websocket: false }, ...nodes.map((n) => ({ ...n, z: "tab1" }))],
    );
    const hub = await (helper.getNode(HUB_ID) as TethralHubNode).acquire();
    for (const n of nodes.filter((x) => x.type === "inject" && x.name !== "list floor-2")) (helper.getNode(n.id) as { receive(m: object): void }).receive({});
    const deadline = Date.now() + 5000;
    while (hub.listDevices().total < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(hub.listDevices().devices.map((d) => d.id).sort(), ["boiler-1", "valve-7"]);
  });
});
