import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { type AddressInfo, type Socket, createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import helper from "node-red-node-test-helper";
import type { Hub } from "../../src/core";
import tethralHub from "../../src/nodes/tethral-hub";
import { databaseClaim } from "../../src/nodes/hub-config";
import type { HubStatusReport, Node, NodeAPI, NodeDef, TethralHubNode } from "../../src/nodes/types";
import { closedPort } from "../helpers";

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

/**
 * Resolves once no kind of resource is above its count in `before` (waiting up to 2 s), else
 * fails naming the excess. Not equal to it: a timer the process had before the test (another
 * spec file's, in the same mocha worker) may end meanwhile; what a leak leaves never does.
 */
async function noMoreThan(before: Record<string, number>): Promise<void> {
  const excess = () => Object.entries(resources()).filter(([kind, n]) => n > (before[kind] ?? 0));
  const end = Date.now() + 2000;
  while (excess().length > 0 && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(Object.fromEntries(excess()), {}, `resources left behind (before: ${JSON.stringify(before)})`);
}

function nextTick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

let userDir: string;
let savedDb: string | undefined;

/** Each test gets a Node-RED user dir of its own, and TETHRAL_DB as the test sets it. */
async function setUpNodeRed(): Promise<void> {
  userDir = mkdtempSync(path.join(tmpdir(), "tethral-hub-node-"));
  helper.settings({ userDir });
  savedDb = process.env.TETHRAL_DB;
  delete process.env.TETHRAL_DB;
  await helper.startServer();
}

async function tearDownNodeRed(): Promise<void> {
  await helper.unload();
  await helper.stopServer();
  if (savedDb === undefined) delete process.env.TETHRAL_DB;
  else process.env.TETHRAL_DB = savedDb;
  rmSync(userDir, { recursive: true, force: true });
}

describe("tethral-hub config node", function () {
  beforeEach(setUpNodeRed);

  afterEach(async () => {
    await tearDownNodeRed();
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
    const [a, b] = await Promise.all([node.acquire(), node.acquire()]);
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
    // In memory: with a store, hub.stateHistory(id) without a limit returns up to 100 rows
    // whatever state.historySize says (src/core/hub.ts falls back to DEFAULT_STATE_OPTIONS).
    await helper.load(tethralHub, [
      hubConfig({ defaultHeartbeatTimeout: "15", adaptiveTimeout: true, adaptiveFactor: "4", stateHistorySize: "2", storage: "memory" }),
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
    assert.equal(hub.health().components.heartbeat?.timerArmed, false, "the heartbeat timer is disarmed");
    await noMoreThan(before);
    await assert.rejects(node.acquire(), { code: "UNAVAILABLE" });
  });
});

/**
 * Just enough of a PostgreSQL server on 127.0.0.1 to see what a client sends: it asks for the
 * password in clear, notes it, and refuses it (28P01), as a server with another password would.
 */
async function passwordCatcher(): Promise<{ port: number; seen: { user?: string; database?: string; password?: string }[]; close(): Promise<void> }> {
  const seen: { user?: string; database?: string; password?: string }[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
    const attempt: { user?: string; database?: string; password?: string } = {};
    seen.push(attempt);
    let buffer = Buffer.alloc(0);
    let started = false;
    socket.on("data", (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (!started) {
        if (buffer.length < 4 || buffer.length < buffer.readInt32BE(0)) return;
        const fields = buffer.subarray(8, buffer.readInt32BE(0)).toString("utf8").split("\0");
        for (let i = 0; i + 1 < fields.length; i += 2) {
          if (fields[i] === "user") attempt.user = fields[i + 1];
          if (fields[i] === "database") attempt.database = fields[i + 1];
        }
        buffer = buffer.subarray(buffer.readInt32BE(0));
        started = true;
        socket.write(Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 3])); // AuthenticationCleartextPassword
        return;
      }
      if (buffer.length < 5 || buffer.length < 1 + buffer.readInt32BE(1)) return;
      attempt.password = buffer.subarray(5, 1 + buffer.readInt32BE(1)).toString("utf8").replace(/\0$/, "");
      const body = Buffer.from('SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "tethral"\0\0', "utf8");
      const length = Buffer.alloc(4);
      length.writeInt32BE(body.length + 4);
      socket.end(Buffer.concat([Buffer.from("E"), length, body]));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}


function sqliteFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".sqlite"));
}

describe("tethral-hub storage", function () {
  beforeEach(setUpNodeRed);
  afterEach(tearDownNodeRed);

  /** Deploys the hub, registers boiler-1 with a reading and a desired setpoint, and undeploys. */
  async function registerAndUndeploy(config: Record<string, unknown>): Promise<Hub> {
    await helper.load(tethralHub, [hubConfig(config)]);
    const hub = await hubNode().acquire();
    await hub.registerDevice({ id: "boiler-1", protocol: "mqtt", name: "Boiler room" });
    hub.ingest("boiler-1", { kind: "telemetry", data: { temperature: 21.5 } });
    await hub.setState("boiler-1", { desired: { setpoint: 22 } });
    await helper.unload();
    assert.equal(hub.isRunning, false);
    return hub;
  }

  async function redeploy(config: Record<string, unknown>): Promise<Hub> {
    await helper.load(tethralHub, [hubConfig(config)]);
    return hubNode().acquire();
  }

  it("keeps the fleet in a SQLite file across a redeploy", async () => {
    const config = { storage: "sqlite", sqliteFile: "data/fleet.sqlite" };
    await registerAndUndeploy(config);
    const file = path.join(userDir, "data", "fleet.sqlite");
    assert.ok(existsSync(file), "the file is in the user dir, its directory created");

    const hub = await redeploy(config);
    assert.deepEqual(hub.statistics().store && { kind: hub.statistics().store!.kind, where: hub.statistics().store!.description }, {
      kind: "sqlite",
      where: file,
    });
    const device = hub.getDevice("boiler-1");
    assert.equal(device.name, "Boiler room");
    const state = hub.getState("boiler-1");
    assert.deepEqual(state.properties, { temperature: 21.5 });
    assert.deepEqual(state.desired, { setpoint: 22 });
    assert.deepEqual(hubErrors(), []);
  });

  it("keeps the fleet in tethral.sqlite in the user dir by default", async () => {
    await registerAndUndeploy({});
    assert.deepEqual(sqliteFiles(userDir), ["tethral.sqlite"]);
    const hub = await redeploy({ storage: "auto" });
    assert.equal(hub.statistics().store?.description, path.join(userDir, "tethral.sqlite"));
    assert.equal(hub.getDevice("boiler-1").id, "boiler-1");
  });

  it("keeps nothing across a redeploy in memory", async () => {
    await registerAndUndeploy({ storage: "memory" });
    const hub = await redeploy({ storage: "memory" });
    assert.equal(hub.statistics().store, null);
    assert.throws(() => hub.getDevice("boiler-1"), { code: "NOT_FOUND" });
    assert.equal(hub.listDevices().total, 0);
    assert.deepEqual(sqliteFiles(userDir), [], "nothing was written");
  });

  it("auto: uses the file TETHRAL_DB names", async () => {
    const elsewhere = mkdtempSync(path.join(tmpdir(), "tethral-db-"));
    try {
      process.env.TETHRAL_DB = path.join(elsewhere, "from-env.sqlite");
      await registerAndUndeploy({ storage: "auto" });
      assert.deepEqual(sqliteFiles(elsewhere), ["from-env.sqlite"]);
      assert.deepEqual(sqliteFiles(userDir), [], "not the default file");
      const hub = await redeploy({ storage: "auto" });
      assert.equal(hub.getDevice("boiler-1").name, "Boiler room");
      await helper.unload();

      // A relative TETHRAL_DB is taken from the user dir; `:memory:` keeps nothing.
      process.env.TETHRAL_DB = "relative.sqlite";
      await registerAndUndeploy({});
      assert.deepEqual(sqliteFiles(userDir), ["relative.sqlite"]);
      process.env.TETHRAL_DB = ":memory:";
      await registerAndUndeploy({});
      assert.equal((await redeploy({})).listDevices().total, 0);
      assert.deepEqual(sqliteFiles(userDir), ["relative.sqlite"]);
    } finally {
      rmSync(elsewhere, { recursive: true, force: true });
    }
  });

  it("refuses a postgresUrl that is not a postgres:// URL, naming the field", async () => {
    await helper.load([tethralHub, hubUser], [tab, hubConfig({ storage: "postgres", postgresUrl: "mysql://tethral@127.0.0.1/fleet" }), user("u1")]);
    const errors = hubErrors();
    assert.equal(errors.length, 1, JSON.stringify(errors));
    assert.match(errors[0]!, /postgresUrl must start with postgres:\/\/ or postgresql:\/\//);
    await assert.rejects(hubNode().acquire(), (err: Error & { code?: string; details?: { field: string }[] }) => {
      assert.equal(err.code, "INVALID");
      assert.deepEqual(err.details?.map((d) => d.field), ["postgresUrl"]);
      return true;
    });
    assert.equal(hubNode().hubStatus().state, "error");
  });

  it("refuses a postgres storage without a URL, and ignores a URL another storage leaves behind", async () => {
    await helper.load(tethralHub, [hubConfig({ storage: "postgres", postgresUrl: "" })]);
    await assert.rejects(hubNode().acquire(), { code: "INVALID", message: /postgresUrl is required when storage is postgres/ });
    await helper.unload();

    await helper.load(tethralHub, [hubConfig({ storage: "sqlite", postgresUrl: "not a url", sqliteFile: "ok.sqlite" })]);
    assert.equal((await hubNode().acquire()).isRunning, true);
    assert.deepEqual(hubErrors(), []);
  });

  it("fails the start on a TETHRAL_DB URL that cannot be parsed, naming the variable", async () => {
    process.env.TETHRAL_DB = "postgres://tethral@127.0.0.1:port/fleet";
    await helper.load([tethralHub, hubUser], [tab, hubConfig(), user("u1")]);
    await assert.rejects(hubNode().acquire(), { code: "INVALID", message: /TETHRAL_DB: must be a URL like postgres:\/\// });
    const status = hubNode().hubStatus();
    assert.equal(status.state, "error");
    assert.match(status.display.text ?? "", /TETHRAL_DB/);
    assert.equal(hubErrors().filter((e) => /TETHRAL_DB/.test(e)).length, 1, "logged once");
  });

  it("gives the password credential to PostgreSQL and shows it nowhere", async () => {
    const server = await passwordCatcher();
    const password = "s3cret-pa$$word";
    try {
      await helper.load(
        [tethralHub, hubUser],
        [tab, hubConfig({ storage: "postgres", postgresUrl: `postgres://tethral:url-password@127.0.0.1:${server.port}/fleet` }), user("u1")],
        { hub1: { postgresPassword: password } },
      );
      await assert.rejects(hubNode().acquire(), (err: Error & { code?: string }) => {
        assert.equal(err.code, "UNAVAILABLE");
        assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${server.port}/fleet refused the connection: password authentication failed`));
        return true;
      });
      assert.deepEqual(server.seen[0], { user: "tethral", database: "fleet", password });

      const status = hubNode().hubStatus();
      assert.equal(status.state, "error");
      const shown = [status.display.text ?? "", ...hubErrors()].join("\n");
      assert.match(shown, /password authentication failed/);
      assert.doesNotMatch(shown, /s3cret|url-password/);

      // Without the credential, the URL's own password is the one sent.
      await helper.unload();
      await helper.load(tethralHub, [hubConfig({ storage: "postgres", postgresUrl: `postgres://tethral:url-password@127.0.0.1:${server.port}/fleet` })]);
      await assert.rejects(hubNode().acquire(), { code: "UNAVAILABLE" });
      assert.equal(server.seen[1]?.password, "url-password");
    } finally {
      await server.close();
    }
  });

  it("tries a start that failed again on its own, 1 s later and then less often, so input-only flows start once the store can", async () => {
    const blocker = path.join(userDir, "data");
    writeFileSync(blocker, "a file where the database's folder should be");
    await helper.load([tethralHub, hubUser], [tab, hubConfig({ storage: "sqlite", sqliteFile: "data/fleet.sqlite" }), user("u1")]);
    const node = hubNode();
    await assert.rejects((helper.getNode("u1") as HubUserNode).hub);
    assert.equal(node.hubStatus().state, "error");
    rmSync(blocker);
    const started = Date.now();
    while (node.hubStatus().state !== "running" && Date.now() - started < 5000) await new Promise((r) => setTimeout(r, 50));
    assert.equal(node.hubStatus().state, "running", "started again with nobody calling it");
    assert.equal(hubErrors().length, 1, "the failure logged once");
  });

  it("refuses a second hub on the database another deployed hub holds (CONFLICT, naming it), and starts it on its own once that one is removed", async () => {
    const other = { id: "hub2", type: "tethral-hub", name: "Second hub", storage: "sqlite", sqliteFile: "fleet.sqlite", websocketPath: "/second/ws" };
    const first = hubConfig({ storage: "sqlite", sqliteFile: "fleet.sqlite", mqttPort: 0 });
    await helper.load(tethralHub, [first, other]);
    await hubNode().acquire();
    const second = helper.getNode("hub2") as TethralHubNode;
    await assert.rejects(second.acquire(), (err: Error & { code?: string }) => {
      assert.equal(err.code, "CONFLICT");
      assert.match(err.message, /"Test hub"\) already uses this database \(.*fleet\.sqlite\)/);
      return true;
    });
    assert.equal(second.hubStatus().state, "error");
    // The first is removed (a modified-nodes deploy closes it alone): the second starts, nobody calling it.
    await (hubNode() as unknown as { close(removed: boolean): Promise<void> }).close(true);
    const started = Date.now();
    while (second.hubStatus().state !== "running" && Date.now() - started < 5000) await new Promise((r) => setTimeout(r, 20));
    assert.equal(second.hubStatus().state, "running");
    assert.equal((await second.acquire()).statistics().store?.description, path.join(userDir, "fleet.sqlite"));
  });

  it("refuses a second hub on the same SQLite file reached through a symbolic link (CONFLICT)", async () => {
    symlinkSync(userDir, path.join(userDir, "..", `${path.basename(userDir)}-link`));
    const alias = path.join(userDir, "..", `${path.basename(userDir)}-link`, "fleet.sqlite");
    const other = { id: "hub2", type: "tethral-hub", name: "Second hub", storage: "sqlite", sqliteFile: alias, websocketPath: "/second/ws" };
    const first = hubConfig({ storage: "sqlite", sqliteFile: "fleet.sqlite", mqttPort: 0 });
    try {
      await helper.load(tethralHub, [first, other]);
      await hubNode().acquire();
      await assert.rejects((helper.getNode("hub2") as TethralHubNode).acquire(), (err: Error & { code?: string }) => err.code === "CONFLICT");
    } finally {
      rmSync(path.join(userDir, "..", `${path.basename(userDir)}-link`));
    }
  });

  it("names a database by what it is, not how it is spelt: a file through links, this machine's PostgreSQL by any loopback name", () => {
    const dir = realpathSync(mkdtempSync(path.join(tmpdir(), "tethral-claim-")));
    try {
      mkdirSync(path.join(dir, "real"));
      symlinkSync(path.join(dir, "real"), path.join(dir, "link"));
      writeFileSync(path.join(dir, "real", "a.sqlite"), "");
      symlinkSync(path.join(dir, "real", "a.sqlite"), path.join(dir, "b.sqlite"));
      const sqlite = (p: string) => databaseClaim({ kind: "sqlite", description: p });
      assert.equal(sqlite(path.join(dir, "link", "a.sqlite")), sqlite(path.join(dir, "real", "a.sqlite")));
      assert.equal(sqlite(path.join(dir, "b.sqlite")), sqlite(path.join(dir, "real", "a.sqlite")));
      assert.equal(sqlite(path.join(dir, "link", "new.sqlite")), sqlite(path.join(dir, "real", "new.sqlite")), "a file not made yet");
      assert.notEqual(sqlite(path.join(dir, "real", "c.sqlite")), sqlite(path.join(dir, "real", "a.sqlite")));
      assert.equal(sqlite(":memory:"), null, "each in-memory database is its own");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const pg = (description: string) => databaseClaim({ kind: "postgres", description });
    assert.equal(pg("localhost:5432/fleet"), pg("127.0.0.1:5432/fleet"));
    assert.equal(pg("[::1]:5432/fleet"), pg("127.0.0.1:5432/fleet"));
    assert.notEqual(pg("127.0.0.1:5433/fleet"), pg("127.0.0.1:5432/fleet"));
    assert.notEqual(pg("db.example.com:5432/fleet"), pg("127.0.0.1:5432/fleet"));
    assert.notEqual(pg("127.0.0.1:5432/other"), pg("127.0.0.1:5432/fleet"));
  });

  it("starts a second hub on a WebSocket path another hub serves, its WebSocket protocol degraded and saying why", async () => {
    const first = hubConfig({ storage: "memory" });
    const other = { id: "hub2", type: "tethral-hub", name: "Second hub", storage: "memory" };
    await helper.load(tethralHub, [first, other]);
    const a = await hubNode().acquire();
    const b = await (helper.getNode("hub2") as TethralHubNode).acquire();
    assert.ok(a.protocols.includes("websocket"));
    const component = b.health().components["protocol:websocket"] as { status: string; error?: string };
    assert.equal(component.status, "degraded", JSON.stringify(component));
    assert.match(String(component.error), /another Tethral hub already serves WebSocket devices at \/tethral\/ws/);
  });

  it("fails the start on an unreachable database, and tries again on the next use", async () => {
    const port = await closedPort();
    await helper.load(tethralHub, [hubConfig({ storage: "postgres", postgresUrl: `postgresql://tethral@127.0.0.1:${port}/fleet` })]);
    const node = hubNode();
    await assert.rejects(node.acquire(), { code: "UNAVAILABLE", message: /is unreachable/ });
    await assert.rejects(node.acquire(), { code: "UNAVAILABLE" });
    assert.equal(node.hubStatus().state, "error");
    assert.equal(hubErrors().length, 1, "the same reason is logged once");
  });
});
