import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os, { tmpdir } from "node:os";
import path from "node:path";
import helper from "node-red-node-test-helper";
import { clusterSettingsFor, parseClusterConfig } from "../../src/nodes/hub-config";
import tethralHub from "../../src/nodes/tethral-hub";
import type { Node, NodeDef, TethralHubNode } from "../../src/nodes/types";
import { assertCode } from "../helpers";

helper.init(require.resolve("node-red"));

const VARIABLES = ["TETHRAL_CLUSTER", "TETHRAL_MEMBER_ID", "TETHRAL_PARTITIONS", "TETHRAL_LEASE_SECONDS", "TETHRAL_DB", "TETHRAL_MQTT_URL", "PORT"];

describe("tethral-hub cluster settings", function () {
  describe("parseClusterConfig and clusterSettingsFor", function () {
    it("is off by default, with the host name and port as the member id, 64 partitions and 10 s leases", () => {
      const config = parseClusterConfig({});
      assert.deepEqual(config, { cluster: "auto", memberId: "", partitions: null, leaseSeconds: null });
      assert.deepEqual(clusterSettingsFor(config, {}, 41234), {
        enabled: false,
        source: "default",
        memberId: `${os.hostname()}:41234`,
        partitions: 64,
        leaseMs: 10_000,
      });
      assert.equal(clusterSettingsFor(config, { PORT: "1999" }).memberId, `${os.hostname()}:1999`);
      assert.equal(clusterSettingsFor(config, {}).memberId, `${os.hostname()}:1880`);
    });

    it("auto follows TETHRAL_CLUSTER and the other variables; the dialog's fields win over them", () => {
      const env = { TETHRAL_CLUSTER: "on", TETHRAL_MEMBER_ID: "edge-a", TETHRAL_PARTITIONS: "128", TETHRAL_LEASE_SECONDS: "5" };
      assert.deepEqual(clusterSettingsFor(parseClusterConfig({ cluster: "auto" }), env), {
        enabled: true,
        source: "TETHRAL_CLUSTER",
        memberId: "edge-a",
        partitions: 128,
        leaseMs: 5000,
      });
      const dialog = parseClusterConfig({ cluster: "off", memberId: " edge-b ", partitions: "16", leaseSeconds: "2.5" });
      assert.deepEqual(clusterSettingsFor(dialog, env), { enabled: false, source: "setting", memberId: "edge-b", partitions: 16, leaseMs: 2500 });
      assert.equal(clusterSettingsFor(parseClusterConfig({ cluster: "ON" }), {}).enabled, true);
    });

    it("refuses out-of-range fields, naming each", () => {
      const err = assertCode(() => parseClusterConfig({ cluster: "maybe", partitions: "4097", leaseSeconds: "1" }), "INVALID");
      assert.deepEqual(err.details.map((d) => d.field).sort(), ["cluster", "leaseSeconds", "partitions"]);
      assertCode(() => parseClusterConfig({ partitions: "2.5" }), "INVALID", "partitions");
      assertCode(() => parseClusterConfig({ leaseSeconds: "301" }), "INVALID", "leaseSeconds");
      assertCode(() => parseClusterConfig({ memberId: "${NOT_SET_ANYWHERE}" }), "INVALID", "memberId");
    });

    it("refuses a bad variable, naming it; the partition and lease variables only in cluster mode", () => {
      const auto = parseClusterConfig({});
      assertCode(() => clusterSettingsFor(auto, { TETHRAL_CLUSTER: "sometimes" }), "INVALID", "TETHRAL_CLUSTER");
      assertCode(() => clusterSettingsFor(auto, { TETHRAL_CLUSTER: "on", TETHRAL_PARTITIONS: "0" }), "INVALID", "TETHRAL_PARTITIONS");
      assertCode(() => clusterSettingsFor(auto, { TETHRAL_CLUSTER: "on", TETHRAL_PARTITIONS: "64k" }), "INVALID", "TETHRAL_PARTITIONS");
      assertCode(() => clusterSettingsFor(auto, { TETHRAL_CLUSTER: "on", TETHRAL_LEASE_SECONDS: "1" }), "INVALID", "TETHRAL_LEASE_SECONDS");
      assertCode(() => clusterSettingsFor(auto, { TETHRAL_MEMBER_ID: "x".repeat(201) }), "INVALID", "TETHRAL_MEMBER_ID");
      assert.equal(clusterSettingsFor(auto, { TETHRAL_CLUSTER: "off", TETHRAL_PARTITIONS: "0" }).partitions, 64);
    });
  });

  describe("the hub node", function () {
    let userDir: string;
    const saved: Record<string, string | undefined> = {};

    beforeEach(async () => {
      userDir = mkdtempSync(path.join(tmpdir(), "tethral-hub-cluster-"));
      helper.settings({ userDir });
      for (const name of VARIABLES) {
        saved[name] = process.env[name];
        delete process.env[name];
      }
      await helper.startServer();
    });

    afterEach(async () => {
      await helper.unload();
      await helper.stopServer();
      for (const name of VARIABLES) {
        if (saved[name] === undefined) delete process.env[name];
        else process.env[name] = saved[name];
      }
      rmSync(userDir, { recursive: true, force: true });
    });

    const hubConfig = (extra: Record<string, unknown> = {}) => ({ id: "hub1", type: "tethral-hub", name: "Test hub", mqttBroker: "off", coap: false, websocket: false, ...extra });

    function hubNode(): TethralHubNode {
      const node = helper.getNode("hub1") as TethralHubNode | null;
      assert.ok(node, "the tethral-hub node was created");
      return node;
    }

    function hubErrors(): string[] {
      const log = helper.log();
      return log.args
        .map(([entry]) => entry)
        .filter((entry) => entry.level === log.ERROR && entry.type === "tethral-hub")
        .map((entry) => String(entry.msg));
    }

    /** Deploys the hub with a user, and expects its start refused with one line naming `field`. */
    async function refused(config: Record<string, unknown>, field: string, says: RegExp): Promise<void> {
      const user = { id: "u1", type: "test-hub-user", hub: "hub1", z: "tab1" };
      const hubUser = (RED: Parameters<typeof tethralHub>[0]) => {
        RED.nodes.registerType("test-hub-user", function (this: Node, def: NodeDef & { hub: string }) {
          RED.nodes.createNode(this, def);
          const hub = RED.nodes.getNode(def.hub) as TethralHubNode;
          hub.register(this);
          hub.acquire().catch(() => undefined);
        });
      };
      await helper.load([tethralHub, hubUser], [{ id: "tab1", type: "tab", label: "Test" }, hubConfig(config), user]);
      await assert.rejects(hubNode().acquire(), (err: Error & { code?: string; details?: { field: string }[] }) => {
        assert.equal(err.code, "INVALID");
        assert.deepEqual(err.details?.map((d) => d.field), [field]);
        assert.match(err.message, says);
        assert.doesNotMatch(err.message, /\n/);
        return true;
      });
      const status = hubNode().hubStatus();
      assert.equal(status.state, "error");
      assert.match(status.display.text ?? "", says);
      assert.equal(hubErrors().filter((e) => says.test(e)).length, 1, `logged once: ${JSON.stringify(hubErrors())}`);
    }

    it("passes the member id to the hub, which names itself by it in clusterInfo()", async () => {
      await helper.load(tethralHub, [hubConfig({ storage: "memory", memberId: "edge-7" })]);
      const hub = await hubNode().acquire();
      assert.equal(hub.memberId, "edge-7");
      assert.equal(hub.clusterInfo().member, "edge-7");
      await helper.unload();
      process.env.TETHRAL_MEMBER_ID = "from-env";
      await helper.load(tethralHub, [hubConfig({ storage: "memory" })]);
      assert.equal((await hubNode().acquire()).memberId, "from-env");
    });

    it("refuses cluster mode on the default SQLite file, naming TETHRAL_DB", async () => {
      process.env.TETHRAL_CLUSTER = "on";
      await refused({}, "TETHRAL_DB", /cluster mode \(TETHRAL_CLUSTER=on\) needs PostgreSQL or CockroachDB storage.*not a SQLite file: set TETHRAL_DB/);
    });

    it("refuses cluster mode on memory storage chosen in the dialog, naming the storage setting", async () => {
      await refused({ cluster: "on", storage: "memory" }, "storage", /cluster mode \(the hub's Cluster setting\) needs PostgreSQL.*not memory only: set the hub's storage/);
    });

    it("refuses cluster mode on the embedded broker, naming TETHRAL_MQTT_URL", async () => {
      process.env.TETHRAL_CLUSTER = "on";
      // Refused before the database is reached: nothing listens on this port.
      process.env.TETHRAL_DB = "postgres://tethral@127.0.0.1:9/fleet";
      await refused({ mqttBroker: "auto" }, "TETHRAL_MQTT_URL", /needs an external MQTT broker.*not the embedded one: set TETHRAL_MQTT_URL/);
    });

    it("refuses cluster mode with MQTT off in the dialog, naming the broker setting", async () => {
      await refused({ cluster: "on", storage: "postgres", postgresUrl: "postgres://tethral@127.0.0.1:9/fleet" }, "mqttBroker", /not none \(MQTT is off\): set the hub's MQTT broker to External/);
    });
  });
});
