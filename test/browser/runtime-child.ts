// A Node-RED runtime for the browser test, in a process of its own (Node-RED starts once per
// process): this package from its sources, the shipped flows, and devices that report. It
// prints `READY <url>` and runs until killed. Devices go through the hub's own API here; the
// REST API and the simulator drive them in the end-to-end tests once those exist.
import { mkdtempSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Hub } from "../../src/core";
import type { TethralHubNode } from "../../src/nodes/types";
import { startRuntime } from "../../src/runtime/start";
import { sourcePackage } from "../runtime/source-package";

const HUB_ID = "d3f2e4c6b7a80923"; // the tethral-hub node of flows/flows.json

async function main(): Promise<void> {
  const scratch = mkdtempSync(path.join(tmpdir(), "tethral-browser-"));
  process.env.TETHRAL_DB = ":memory:";
  const runtime = await startRuntime({
    port: 0,
    host: "127.0.0.1",
    userDir: path.join(scratch, "user"),
    nodesDir: sourcePackage(mkdtempSync(path.join(scratch, "pkg-"))),
    logLevel: "warn",
  });
  const RED = createRequire(require.resolve("node-red"))("node-red") as { nodes: { getNode(id: string): unknown } };
  let fed: Hub | null = null;
  let round = 0;
  // After each deploy the hub may be a new one: register the devices on whichever is running.
  setInterval(() => {
    const node = RED.nodes.getNode(HUB_ID) as TethralHubNode | null;
    if (!node || node.hubStatus().state !== "running") return;
    void node.acquire().then(async (hub) => {
      if (fed !== hub) {
        fed = hub;
        for (let i = 0; i < 8; i++) {
          const id = `sim-${String(i).padStart(2, "0")}`;
          if (hub.listDevices({ q: id }).total === 0) await hub.registerDevice({ id, name: `Simulated ${i}`, protocol: ["mqtt", "coap", "websocket", "http"][i % 4]! });
        }
      }
      round++;
      for (let i = 0; i < 8; i++) hub.ingest(`sim-${String(i).padStart(2, "0")}`, { kind: "telemetry", data: { temperature: 20 + ((round + i) % 7), humidity: 40 + i } });
    });
  }, 500).unref();
  console.log(`READY ${runtime.url}`);
  const stop = () => void runtime.stop().finally(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
