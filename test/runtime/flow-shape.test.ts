import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";

interface FlowNode {
  id: string;
  type: string;
  method?: string;
  url?: string;
  wires?: string[][];
}

/**
 * Node-RED's switch node queues its input and takes the next message a turn of the event loop
 * later (setImmediate), so every request of a route through one waits its turn there:
 * under bench:rest's 32 connections a switch on GET /api/devices/{id} held the route to 0.59 of a
 * bare http in → http response flow, where a function node doing the same routing kept it at
 * 0.77–0.91.
 */
describe("the REST API flow (flows/flows.json)", () => {
  const nodes = JSON.parse(readFileSync(join(__dirname, "..", "..", "flows", "flows.json"), "utf8")) as FlowNode[];
  const byId = new Map(nodes.map((n) => [n.id, n]));

  it("routes no request through a switch node, which takes one message per turn of the event loop", () => {
    const routes = nodes.filter((n) => n.type === "http in");
    assert.ok(routes.length > 20, `${routes.length} routes`);
    const found: string[] = [];
    for (const route of routes) {
      const seen = new Set<string>();
      const next = [route.id];
      while (next.length > 0) {
        const node = byId.get(next.pop()!);
        if (!node || seen.has(node.id)) continue;
        seen.add(node.id);
        if (node.type === "switch") found.push(`${route.method?.toUpperCase()} ${route.url}: ${node.type} ${node.id}`);
        for (const wire of node.wires ?? []) next.push(...wire);
      }
    }
    assert.deepEqual(found, []);
  });
});
