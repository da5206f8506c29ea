import assert from "node:assert/strict";
import helper from "node-red-node-test-helper";
import type { Hub } from "../../src/core";
import type { Command } from "../../src/core/types";
import tethralCommand from "../../src/nodes/tethral-command";
import tethralHub from "../../src/nodes/tethral-hub";
import type { Node, NodeStatus, TethralHubNode } from "../../src/nodes/types";
import { FakeAdapter } from "../core/fake-adapter";
import { QUIET_HUB, lastStatus, statuses, withCatalogue, collect, until } from "./harness";

helper.init(require.resolve("node-red"));

const tab = { id: "tab1", type: "tab", label: "Test" };
const hubConfig = QUIET_HUB;
const out = { id: "out", type: "helper", z: "tab1" };
const catcher = { id: "catch1", type: "catch", z: "tab1", scope: null, wires: [["errors"]] };
const errors = { id: "errors", type: "helper", z: "tab1" };

type Msg = Record<string, unknown>;
type FlowNode = { id: string; type: string } & Record<string, unknown>;
type HelperNode = Node & {
  on(event: "input", fn: (msg: Msg) => void): void;
  receive(msg: Msg): void;
  status: Node["status"] & { getCalls(): Array<{ thisValue: unknown; args: [NodeStatus] }> };
  send: { getCalls(): Array<{ thisValue: unknown }> };
};

const commandNode = withCatalogue(tethralCommand, "tethral-command");

function command(id: string, extra: Record<string, unknown> = {}) {
  return {
    id,
    type: "tethral-command",
    z: "tab1",
    hub: "hub1",
    deviceId: "pump-1",
    command: "reboot",
    wait: true,
    timeout: "",
    retries: "",
    priority: "normal",
    expiresIn: "",
    supersede: false,
    expectResponse: true,
    wires: [["out"]],
    ...extra,
  };
}

interface Setup {
  cmd: HelperNode;
  out: HelperNode;
  errors: HelperNode;
  hub: Hub;
  adapter: FakeAdapter;
}

async function load(extra: Record<string, unknown> = {}, more: FlowNode[] = []): Promise<Setup> {
  await helper.load([tethralHub, commandNode], [tab, hubConfig, command("cmd1", extra), ...more, out, catcher, errors]);
  const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
  const adapter = new FakeAdapter();
  await hub.addProtocol(adapter);
  await hub.registerDevice({ id: "pump-1", protocol: "fake" });
  await hub.registerDevice({ id: "pump-2", protocol: "fake" });
  return { cmd: node("cmd1"), out: node("out"), errors: node("errors"), hub, adapter };
}

function node(id: string): HelperNode {
  return helper.getNode(id) as HelperNode;
}

function next(n: HelperNode): Promise<Msg> {
  return new Promise((resolve) => n.on("input", resolve));
}

/** The Catch node's message for an input to `cmd`, with `code` checked and the original properties kept. */
async function caught(t: Setup, msg: Msg, code: string): Promise<Msg> {
  const c = next(t.errors);
  t.cmd.receive({ ...msg, keep: "me" });
  const m = await c;
  assert.equal((m.error as { code?: string }).code, code, `${JSON.stringify(msg)}: ${JSON.stringify(m.error)}`);
  assert.equal(m.keep, "me", "the Catch node gets the original message");
  return m;
}

describe("tethral-command node", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("without a hub, gives the Catch node UNAVAILABLE with the original message", async () => {
    await helper.load([tethralHub, commandNode], [tab, command("cmd1", { hub: "" }), out, catcher, errors]);
    const c = next(node("errors"));
    node("cmd1").receive({ keep: "me" });
    const m = await c;
    assert.deepEqual([(m.error as { code?: string }).code, (m.error as { message?: string }).message, m.keep], ["UNAVAILABLE", "No Tethral hub configured", "me"]);
  });

  it("waits for the device's answer: msg.payload is its result, msg.command the command, other properties kept", async () => {
    const t = await load();
    t.adapter.auto = null;
    const got = next(t.out);
    t.cmd.receive({ payload: { delay: 5 }, topic: "kept", keep: { nested: true } });
    await until(() => t.adapter.sends.length === 1, "the adapter's send");
    const { frame, resolve } = t.adapter.sends[0]!;
    assert.deepEqual({ command: frame.command, params: frame.params }, { command: "reboot", params: { delay: 5 } });
    resolve({ status: "sent" });
    t.adapter.respond("pump-1", { id: frame.id, ok: true, result: { uptime: 42 } });
    const m = await got;
    assert.deepEqual(m.payload, { uptime: 42 });
    const cmd = m.command as Command;
    assert.equal(cmd.id, frame.id);
    assert.equal(cmd.status, "succeeded");
    assert.equal(cmd.deviceId, "pump-1");
    assert.deepEqual(cmd.params, { delay: 5 });
    assert.equal(m.topic, "kept");
    assert.deepEqual(m.keep, { nested: true });
    assert.deepEqual(await t.hub.getCommand(frame.id), cmd, "the command object as the hub has it");
  });

  it("takes msg.deviceId and msg.command over the configured ones, and sends {} when msg.payload is absent", async () => {
    const t = await load();
    t.adapter.auto = { status: "answered", ok: true, result: "ok" };
    const seen = collect(t.out);
    t.cmd.receive({ deviceId: "pump-2", command: "blink" });
    t.cmd.receive({ payload: null });
    // The command object of an earlier tethral-command node is not a command name.
    t.cmd.receive({ command: { id: "x", command: "other" } });
    await until(() => seen.length === 3, "three outputs");
    assert.deepEqual(
      seen.map((m) => [(m.command as Command).deviceId, (m.command as Command).command, (m.command as Command).params]),
      [
        ["pump-2", "blink", {}],
        ["pump-1", "reboot", {}],
        ["pump-1", "reboot", {}],
      ],
    );
    assert.deepEqual(
      seen.map((m) => m.payload),
      ["ok", "ok", "ok"],
    );
  });

  it("passes the options, configured or from msg, to the hub", async () => {
    const t = await load({ timeout: "7", retries: "2", priority: "low", expiresIn: "60" });
    const seen = collect(t.out);
    t.cmd.receive({ wait: false });
    t.cmd.receive({ wait: false, timeout: 3, retries: 0, priority: "critical", expiresIn: 3600, expectResponse: false });
    await until(() => seen.length === 2, "two outputs");
    const [a, b] = seen.map((m) => m.command as Command);
    assert.deepEqual([a!.timeout, a!.retries, a!.priority, a!.expectResponse], [7, 2, "low", true]);
    assert.deepEqual([b!.timeout, b!.retries, b!.priority, b!.expectResponse], [3, 0, "critical", false]);
    const expiresIn = (c: Command) => Math.round((Date.parse(c.expiresAt!) - Date.parse(c.createdAt)) / 1000);
    assert.deepEqual([expiresIn(a!), expiresIn(b!)], [60, 3600]);
  });

  it("without wait, passes the message on at once: msg.command queued, msg.payload null", async () => {
    const t = await load({ wait: false });
    t.adapter.auto = { status: "answered", ok: true, result: 7 };
    const got = next(t.out);
    t.cmd.receive({ payload: { x: 1 }, keep: 1 });
    const m = await got;
    assert.equal(m.payload, null);
    assert.equal((m.command as Command).status, "queued");
    assert.equal(m.keep, 1);
    // msg.wait overrides the editor the other way too.
    const waited = next(t.out);
    t.cmd.receive({ wait: true });
    assert.equal((await waited).payload, 7);
  });

  it("a one-way command (expectResponse false) ends once sent: output with msg.payload null", async () => {
    const t = await load({ expectResponse: false });
    const got = next(t.out);
    t.cmd.receive({});
    const m = await got;
    assert.equal(m.payload, null);
    assert.equal((m.command as Command).status, "sent");
    assert.notEqual((m.command as Command).completedAt, null);
  });

  it("hands a failed command to a Catch node: DEVICE_ERROR with the device's error, msg.command set", async () => {
    const t = await load();
    t.adapter.auto = { status: "answered", ok: false, error: "motor jammed" };
    const m = await caught(t, { payload: { speed: 3 } }, "DEVICE_ERROR");
    // The device's own words, as the other nodes' errors read.
    assert.equal((m.error as { message: string }).message, "motor jammed");
    assert.equal((m.command as Command).status, "failed");
    assert.equal((m.command as Command).error, "motor jammed");
    assert.deepEqual(m.payload, { speed: 3 }, "the original payload");
  });

  it("hands timed-out and expired commands to a Catch node with TIMEOUT", async () => {
    const t = await load();
    // The device takes the command but never answers.
    const timedOut = await caught(t, { timeout: 0.05 }, "TIMEOUT");
    assert.equal((timedOut.command as Command).status, "timed_out");
    // The device is away until the command expires.
    t.adapter.links.set("pump-2", false);
    const expired = await caught(t, { deviceId: "pump-2", expiresIn: 0.05 }, "TIMEOUT");
    assert.equal((expired.command as Command).status, "expired");
  });

  it("hands a superseded command to a Catch node with CONFLICT", async () => {
    const t = await load();
    t.adapter.links.set("pump-1", false);
    const c = next(t.errors);
    t.cmd.receive({ payload: { v: 1 }, keep: "first" });
    await until(() => t.hub.pendingCommands("pump-1").length === 1, "the first command queued");
    const queued = next(t.out);
    t.cmd.receive({ payload: { v: 2 }, supersede: true, wait: false });
    const m = await c;
    assert.equal((m.error as { code: string }).code, "CONFLICT");
    assert.equal(m.keep, "first");
    assert.equal((m.command as Command).status, "superseded");
    assert.equal(((await queued).command as Command).status, "queued");
  });

  it("when the wait ends with the device still away, passes the message on with the command queued", async () => {
    const t = await load();
    t.adapter.links.set("pump-1", false);
    const got = next(t.out);
    t.cmd.receive({ timeout: 0.05, keep: true });
    const m = await got;
    assert.equal(m.payload, null);
    assert.equal((m.command as Command).status, "queued");
    assert.equal(m.keep, true);
    assert.equal(t.adapter.frames.length, 0, "nothing was sent");
    assert.deepEqual(
      t.hub.pendingCommands("pump-1").map((c) => c.id),
      [(m.command as Command).id],
      "the hub keeps it for when the device comes back",
    );
    assert.deepEqual(lastStatus(t.cmd), { fill: "blue", shape: "dot", text: "sent reboot → queued" });
  });

  it("hands refused input to a Catch node before anything is queued: INVALID, NOT_FOUND", async () => {
    const t = await load({ deviceId: "", command: "" });
    const cases: Array<[Msg, string]> = [
      [{ command: "reboot" }, "INVALID"],
      [{ deviceId: "pump-1" }, "INVALID"],
      [{ deviceId: "ghost", command: "reboot" }, "NOT_FOUND"],
      [{ deviceId: "pump-1", command: "has space" }, "INVALID"],
      [{ deviceId: "pump-1", command: "reboot", payload: "fast" }, "INVALID"],
      [{ deviceId: "pump-1", command: "reboot", payload: [1, 2] }, "INVALID"],
      [{ deviceId: "pump-1", command: "reboot", priority: "urgent" }, "INVALID"],
      [{ deviceId: "pump-1", command: "reboot", timeout: "5" }, "INVALID"],
      [{ deviceId: "pump-1", command: "reboot", retries: 99 }, "INVALID"],
      [{ deviceId: "pump-1", command: "reboot", wait: "yes" }, "INVALID"],
    ];
    for (const [msg, code] of cases) await caught(t, msg, code);
    assert.equal(t.hub.pendingCommands().length, 0);
    assert.equal(t.adapter.frames.length, 0);
    assert.deepEqual(lastStatus(t.cmd), { fill: "red", shape: "ring", text: "reboot: INVALID" });
  });

  it("shows the commands in flight, then the last result and how long it took", async () => {
    const t = await load();
    t.adapter.auto = null;
    const got = collect(t.out);
    t.cmd.receive({});
    t.cmd.receive({ deviceId: "pump-2" });
    await until(() => t.adapter.sends.length === 2, "two sends");
    assert.deepEqual(lastStatus(t.cmd), { fill: "blue", shape: "ring", text: "2 in flight (reboot)" });
    const [first, second] = t.adapter.sends;
    first!.resolve({ status: "answered", ok: true, result: null });
    await until(() => got.length === 1, "the first answer");
    assert.deepEqual(lastStatus(t.cmd), { fill: "blue", shape: "ring", text: "1 in flight (reboot)" });
    second!.resolve({ status: "answered", ok: false, error: "busy" });
    await until(() => statuses(t.cmd).at(-1)?.fill === "red", "the second answer");
    assert.match(lastStatus(t.cmd)!.text!, /^sent reboot → failed \d+ ms$/);
    t.adapter.auto = { status: "answered", ok: true, result: null };
    t.cmd.receive({});
    await until(() => got.length === 2, "the third answer");
    assert.equal(lastStatus(t.cmd)!.fill, "green");
    assert.match(lastStatus(t.cmd)!.text!, /^sent reboot → succeeded \d+ ms$/);
  });

  it("get and cancel look up the command msg.commandId names (or the one in msg.command), with the command object as msg.payload", async () => {
    const t = await load({ wait: false }, [command("look", { operation: "get" }), command("drop", { operation: "cancel" })]);
    // No answers: the command stays queued until cancelled.
    t.adapter.links.set("pump-1", false);
    const sent = next(t.out);
    t.cmd.receive({});
    const queued = (await sent).command as Command;
    assert.equal(queued.status, "queued");

    const got = next(t.out);
    node("look").receive({ commandId: queued.id, keep: 1 });
    const m = await got;
    assert.equal((m.payload as Command).id, queued.id);
    assert.equal((m.payload as Command).status, "queued");
    assert.equal((m.command as Command).id, queued.id);
    assert.equal(m.keep, 1);
    assert.deepEqual(lastStatus(node("look")), { fill: "green", shape: "dot", text: "reboot: queued" });

    // The command object an earlier command node left in msg.command names it too.
    const cancelled = next(t.out);
    node("drop").receive({ command: queued });
    assert.equal(((await cancelled).payload as Command).status, "cancelled");
    assert.equal((await t.hub.getCommand(queued.id)).status, "cancelled");

    const unknown = next(t.errors);
    node("look").receive({ commandId: "no-such-command" });
    assert.equal(((await unknown).error as { code?: string }).code, "NOT_FOUND");
    const none = next(t.errors);
    node("look").receive({});
    assert.equal(((await none).error as { code?: string }).code, "INVALID");
  });

  it("keeps to its configured operation whatever msg.operation says (a device or state node's leftover)", async () => {
    const t = await load({ wait: false }, [command("look", { operation: "get" }), command("drop", { operation: "cancel" })]);
    t.adapter.links.set("pump-1", false);
    const sent = next(t.out);
    t.cmd.receive({ operation: "get", keep: 1 });
    const m = await sent;
    assert.equal((m.command as Command).command, "reboot", "a send node sends");
    assert.equal((m.command as Command).status, "queued");
    const id = (m.command as Command).id;
    // A leftover that names another command operation changes nothing either.
    const looked = next(t.out);
    node("look").receive({ operation: "cancel", commandId: id });
    assert.equal(((await looked).payload as Command).status, "queued", "a get node only gets");
    assert.equal((await t.hub.getCommand(id)).status, "queued");
    const cancelled = next(t.out);
    node("drop").receive({ operation: "get", commandId: id });
    assert.equal(((await cancelled).payload as Command).status, "cancelled", "a cancel node cancels");
  });

  it("two nodes share one hub", async () => {
    const t = await load({}, [command("cmd2", { deviceId: "pump-2", command: "blink" })]);
    t.adapter.auto = { status: "answered", ok: true, result: 1 };
    const seen = collect(t.out);
    t.cmd.receive({});
    node("cmd2").receive({});
    await until(() => seen.length === 2, "both answers");
    assert.deepEqual(seen.map((m) => `${(m.command as Command).deviceId}/${(m.command as Command).command}`).sort(), ["pump-1/reboot", "pump-2/blink"]);
    assert.equal((helper.getNode("hub1") as TethralHubNode).userCount(), 2);
  });

  it("a node removed while it waits sends nothing when the answer comes; the hub keeps the command", async () => {
    const t = await load();
    t.adapter.auto = null;
    t.cmd.receive({});
    await until(() => t.adapter.sends.length === 1, "the send");
    const old = t.cmd;
    await helper.setFlows([tab, hubConfig, out, catcher, errors], "nodes");
    assert.equal((helper.getNode("hub1") as TethralHubNode).userCount(), 0);
    assert.equal(t.hub.isRunning, true);
    const { frame, resolve } = t.adapter.sends[0]!;
    resolve({ status: "answered", ok: true, result: 1 });
    assert.equal((await t.hub.waitForCommand(frame.id)).status, "succeeded");
    await new Promise((r) => setImmediate(r));
    assert.equal(old.send.getCalls().filter((c) => c.thisValue === old).length, 0);
  });
});
