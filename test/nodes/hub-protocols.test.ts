import assert from "node:assert/strict";
import { createServer, type AddressInfo, type Server } from "node:net";
import { promisify } from "node:util";
import { Aedes } from "aedes";
import { request as coapRequest } from "coap";
import mqtt from "mqtt";
import helper from "node-red-node-test-helper";
import { WebSocket } from "ws";
import type { Hub } from "../../src/core";
import { adaptersFor, protocolPlugins } from "../../src/nodes/hub-protocols";
import { parseCommunicationConfig, protocolSettingsFor } from "../../src/nodes/protocol-config";
import tethralHub from "../../src/nodes/tethral-hub";
import type { Node, NodeAPI, NodeDef, TethralHubNode } from "../../src/nodes/types";
import tethralProtocols from "../../src/plugins/tethral-protocols";
import type { ProtocolAdapter, ProtocolPlugin } from "../../src/protocols/types";
import { FakeAdapter } from "../core/fake-adapter";
import { until, portIsFree } from "../helpers";

helper.init(require.resolve("node-red"));

type HubUserNode = Node & { hub: Promise<Hub> };

function hubUser(RED: NodeAPI): void {
  RED.nodes.registerType("test-hub-user", function (this: Node, def: NodeDef & { hub: string }) {
    RED.nodes.createNode(this, def);
    const hubNode = RED.nodes.getNode(def.hub) as TethralHubNode;
    hubNode.register(this);
    const hub = hubNode.acquire();
    hub.catch(() => undefined);
    Object.assign(this, { hub });
    this.on("close", (_removed: boolean, done: () => void) => {
      hubNode.deregister(this);
      done();
    });
  });
}

const tab = { id: "tab1", type: "tab", label: "Test" };
const hubConfig = (extra: Record<string, unknown> = {}) => ({ id: "hub1", type: "tethral-hub", storage: "memory", ...extra });
const user = { id: "u1", type: "test-hub-user", hub: "hub1", z: "tab1" };

async function load(extra: Record<string, unknown> = {}, credentials?: Record<string, string>): Promise<Hub> {
  await helper.load([tethralHub, hubUser], [tab, hubConfig(extra), user], credentials ? { hub1: credentials } : undefined);
  return (helper.getNode("u1") as HubUserNode).hub;
}


function coapPost(port: number, pathname: string, query: string, body: unknown): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = coapRequest({ hostname: "127.0.0.1", port, pathname, query, method: "POST", confirmable: true });
    req.on("response", (res: { code: string }) => resolve(res.code));
    req.on("error", reject);
    req.end(Buffer.from(JSON.stringify(body)));
  });
}


describe("tethral-hub protocols", function () {
  beforeEach(async () => {
    await helper.startServer();
  });

  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("opens the embedded broker, CoAP and the WebSocket path on Node-RED's server; devices reach the hub over each; a redeploy closes them", async () => {
    const hub = await load();
    assert.deepEqual(hub.protocols.sort(), ["coap", "http", "mqtt", "websocket"]);
    const health = hub.health();
    for (const p of ["mqtt", "coap", "websocket", "http"]) assert.equal(health.components[`protocol:${p}`]!.status, "ok", p);
    const mqttPort = health.components["protocol:mqtt"]!.port as number;
    const coapPort = health.components["protocol:coap"]!.port as number;
    assert.ok(mqttPort > 0 && coapPort > 0, "ephemeral ports (TETHRAL_MQTT_PORT / TETHRAL_COAP_PORT = 0 in tests)");

    const m = await hub.registerDevice({ id: "m1", protocol: "mqtt" });
    const c = await hub.registerDevice({ id: "c1", protocol: "coap" });
    const w = await hub.registerDevice({ id: "w1", protocol: "websocket" });

    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { clientId: "m1", username: "m1", password: m.token, reconnectPeriod: 0 });
    await device.publishAsync("tethral/devices/m1/telemetry", JSON.stringify({ t: 1 }), { qos: 1 });
    await until(() => hub.getState("m1").properties.t === 1, "MQTT telemetry");
    await device.endAsync();

    assert.equal(await coapPost(coapPort, "/devices/c1/telemetry", `token=${c.token}`, { t: 2 }), "2.04");
    assert.equal(hub.getState("c1").properties.t, 2);
    assert.equal(await coapPost(coapPort, "/devices/c1/telemetry", "token=wrong", { t: 3 }), "4.01");

    const ws = new WebSocket(`${helper.url().replace("http", "ws")}/tethral/ws?device=w1&token=${w.token}`);
    await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
    ws.send(JSON.stringify({ type: "telemetry", data: { t: 4 } }));
    await until(() => hub.getState("w1").properties.t === 4, "WebSocket telemetry");

    const closed = new Promise((resolve) => ws.once("close", resolve));
    await helper.unload();
    await closed;
    assert.equal(hub.isRunning, false);
    assert.equal(await portIsFree(mqttPort), true, "the broker's port is free again");
    const refused = await mqtt
      .connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { reconnectPeriod: 0, connectTimeout: 1000 })
      .then((client) => client.endAsync().then(() => false), () => true);
    assert.equal(refused, true);
  });

  it("turns protocols off: HTTP stays for commands to devices with an address", async () => {
    const hub = await load({ mqttBroker: "off", coap: false, websocket: false });
    assert.deepEqual(hub.protocols, ["http"]);
  });

  it("a taken broker port leaves the hub running without MQTT, saying why", async () => {
    const blocker: Server = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const port = (blocker.address() as AddressInfo).port;
    try {
      const hub = await load({ mqttPort: port });
      assert.equal(hub.isRunning, true);
      const mqttHealth = hub.health().components["protocol:mqtt"]!;
      assert.equal(mqttHealth.status, "degraded");
      assert.match(String(mqttHealth.error), new RegExp(String(port)));
      assert.equal(hub.health().components["protocol:coap"]!.status, "ok");
    } finally {
      await promisify(blocker.close.bind(blocker))();
    }
  });

  it("connects to an external broker with the user name and the password credential", async () => {
    const broker = await Aedes.createBroker();
    let seen: { username?: string; password?: string } = {};
    broker.authenticate = (_client, username, password, done) => {
      seen = { username, password: password?.toString() };
      done(null, username === "hub" && password?.toString() === "s3cret");
    };
    const server = createServer(broker.handle as never);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const hub = await load({ mqttBroker: "external", mqttUrl: `mqtt://127.0.0.1:${port}`, mqttUsername: "hub" }, { mqttPassword: "s3cret" });
      await until(() => hub.health().components["protocol:mqtt"]!.status === "ok", "the broker connection");
      assert.deepEqual(seen, { username: "hub", password: "s3cret" });
      assert.equal(JSON.stringify([hub.health(), hub.communicationStatistics()]).includes("s3cret"), false, "health and statistics never show it");
    } finally {
      await helper.unload();
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      await promisify(server.close.bind(server))();
    }
  });
});

describe("tethral-protocol plugins", function () {
  const settings = protocolSettingsFor(parseCommunicationConfig({ mqttBroker: "off", coap: false }), {});

  it("the plugin module registers the four built-in protocols with Node-RED", () => {
    const registered: Array<[string, ProtocolPlugin]> = [];
    tethralProtocols({ plugins: { registerPlugin: (id: string, p: object) => registered.push([id, p as ProtocolPlugin]) } } as unknown as NodeAPI);
    assert.deepEqual(
      registered.map(([id, p]) => [id, p.type, p.protocol]),
      [
        ["tethral-protocol-mqtt", "tethral-protocol", "mqtt"],
        ["tethral-protocol-coap", "tethral-protocol", "coap"],
        ["tethral-protocol-websocket", "tethral-protocol", "websocket"],
        ["tethral-protocol-http", "tethral-protocol", "http"],
      ],
    );
  });

  it("a hub takes every installed tethral-protocol plugin, built-ins first, and skips malformed ones", () => {
    const made: ProtocolAdapter[] = [];
    const zigbee: ProtocolPlugin = {
      type: "tethral-protocol",
      protocol: "zigbee",
      create: (options) => {
        assert.equal(options.host, "127.0.0.1");
        const a = new FakeAdapter("zigbee");
        made.push(a);
        return a;
      },
    };
    const warnings: string[] = [];
    const RED = { plugins: { registerPlugin: () => undefined, getByType: (type: string) => (type === "tethral-protocol" ? [zigbee, { type: "tethral-protocol", protocol: "Bad Name", create: () => null }] : []) } };
    const plugins = protocolPlugins(RED as unknown as NodeAPI, (m) => warnings.push(m));
    assert.deepEqual(plugins.map((p) => p.protocol), ["mqtt", "coap", "websocket", "http", "zigbee"]);
    assert.equal(warnings.length, 1);
    const adapters = adaptersFor(plugins, settings, {}, undefined, (m) => warnings.push(m));
    // MQTT and CoAP are off; WebSocket has no server to share here.
    assert.deepEqual(adapters.map((a) => a.name), ["http", "zigbee"]);
    assert.equal(made.length, 1);
  });

  it("a plugin whose create() throws is left out with a warning", () => {
    const broken: ProtocolPlugin = {
      type: "tethral-protocol",
      protocol: "lora",
      create: () => {
        throw new Error("no radio");
      },
    };
    const warnings: string[] = [];
    const adapters = adaptersFor([broken], settings, {}, undefined, (m) => warnings.push(m));
    assert.deepEqual(adapters, []);
    assert.match(warnings[0]!, /protocol lora could not be set up: no radio/);
  });
});
