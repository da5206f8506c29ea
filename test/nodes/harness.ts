import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import helper from "node-red-node-test-helper";
import type { Hub } from "../../src/core";
import type { Node, NodeAPI, NodeStatus, TethralHubNode } from "../../src/nodes/types";

/** A hub config node that opens no port: memory storage, no MQTT, CoAP or WebSocket. */
export const QUIET_HUB = { id: "hub1", type: "tethral-hub", storage: "memory", mqttBroker: "off", coap: false, websocket: false };

/**
 * The node module with a `RED._` that reads the node's real message catalogue: the helper's
 * returns the key and drops substitutions, so status texts are checked as users see them, and
 * a key of the node's that the catalogue lacks fails the test. A key of another Tethral node's
 * catalogue fails too: Node-RED looks a node's keys up in its own catalogue only, so a user
 * would see the key itself. Other keys pass through.
 */
export function withCatalogue(module: (RED: NodeAPI) => void, type: string): (RED: NodeAPI) => void {
  const file = path.join(__dirname, "..", "..", "nodes", "locales", "en-US", `${type}.json`);
  const catalogue = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  const _ = (key: string, substitutions: Record<string, unknown> = {}): string => {
    if (/^tethral-[\w-]+\./.test(key) && !key.startsWith(`${type}.`)) throw new Error(`${type} asked for ${key}: another node's message, which Node-RED does not look up for it`);
    if (!key.startsWith(`${type}.`)) return key;
    const found = key.split(".").reduce<unknown>((at, part) => (at as Record<string, unknown> | undefined)?.[part], catalogue);
    if (typeof found !== "string") throw new Error(`no message ${key} in the catalogue`);
    return found.replace(/__(\w+)__/g, (_m, name: string) => String(substitutions[name]));
  };
  return (RED) => module(Object.assign(Object.create(RED) as NodeAPI, { _ }));
}

/** Every status a node showed, oldest first (the helper spies on Node.prototype.status, shared by all nodes). */
export function statuses(node: Node): NodeStatus[] {
  const spy = node.status as unknown as { getCalls(): Array<{ thisValue: unknown; args: [NodeStatus] }> };
  return spy
    .getCalls()
    .filter((call) => call.thisValue === node)
    .map((call) => call.args[0]);
}

export function lastStatus(node: Node): NodeStatus | undefined {
  return statuses(node).at(-1);
}

/** The flow around the nodes under test: a tab, the quiet hub, a Catch node and two helper nodes. */
export const FIXTURES = {
  tab: { id: "tab1", type: "tab", label: "Test" },
  hub: QUIET_HUB,
  catcher: { id: "catch1", type: "catch", z: "tab1", scope: null, wires: [["errors"]] },
  errors: { id: "errors", type: "helper", z: "tab1" },
  out: { id: "out", type: "helper", z: "tab1" },
};

export type Msg = Record<string, unknown>;
export type FlowEntry = Msg & { id: string; type: string };
export type HelperNode = Node & { on(event: "input", fn: (msg: Msg) => void): void; receive(msg: Msg): void };

/** What came out next: on the node's output, or at the Catch node. */
export type Arrival = { via: "out" | "error"; msg: Msg };

export interface Loaded {
  hubNode: TethralHubNode;
  hub: Hub;
  node(id: string): HelperNode;
  /** Sends `msg` into node `id` and resolves with the next arrival. */
  call(id: string, msg: Msg): Promise<Arrival>;
  /** As `call`, expecting an output; resolves with the output msg. */
  ok(id: string, msg: Msg): Promise<Msg>;
  /** As `call`, expecting the Catch node; resolves with the caught msg. */
  caught(id: string, msg: Msg): Promise<Msg>;
}

/**
 * Loads `nodes` (wired to the helper node `out`) with a quiet hub (its settings changed by
 * `hubSettings`) and a Catch node wired to the helper node `errors`, and hands back a
 * request/answer view of them.
 */
export async function loadWithCatch(modules: Array<(RED: NodeAPI) => void>, nodes: FlowEntry[], hubSettings: Msg = {}): Promise<Loaded> {
  const { tab, hub, catcher, errors, out } = FIXTURES;
  await helper.load(modules as never, [tab, { ...hub, ...hubSettings }, ...nodes, catcher, errors, out]);
  const arrivals: Arrival[] = [];
  const waiting: Array<(a: Arrival) => void> = [];
  const arrive = (a: Arrival) => {
    const w = waiting.shift();
    if (w) w(a);
    else arrivals.push(a);
  };
  (helper.getNode("out") as HelperNode).on("input", (msg) => arrive({ via: "out", msg }));
  (helper.getNode("errors") as HelperNode).on("input", (msg) => arrive({ via: "error", msg }));
  const next = () => (arrivals.length > 0 ? Promise.resolve(arrivals.shift()!) : new Promise<Arrival>((r) => waiting.push(r)));
  const hubNode = helper.getNode("hub1") as TethralHubNode;
  const node = (id: string) => helper.getNode(id) as HelperNode;
  const call = (id: string, msg: Msg) => {
    node(id).receive(msg);
    return next();
  };
  return {
    hubNode,
    hub: await hubNode.acquire(),
    node,
    call,
    async ok(id, msg) {
      const a = await call(id, msg);
      assert.equal(a.via, "out", `expected an output, got ${JSON.stringify(a.msg.error)}`);
      return a.msg;
    },
    async caught(id, msg) {
      const a = await call(id, msg);
      assert.equal(a.via, "error", `expected an error, got an output: ${JSON.stringify(a.msg.payload)}`);
      return a.msg;
    },
  };
}

/** Every message `n` receives from now on, in order. */
export function collect(n: { on(event: "input", fn: (msg: Msg) => void): void }): Msg[] {
  const seen: Msg[] = [];
  n.on("input", (m) => seen.push(m));
  return seen;
}

export { until } from "../helpers";
