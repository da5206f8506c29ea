// The flow runtime as `npm start` runs it, in a process of its own (Node-RED starts once per
// process), for tests that restart it or drive it over the network: this package from its
// sources, the shipped flows, ephemeral ports. The user dir is argv[2] (kept across restarts).
// Prints `READY <editor url>` once the flows run, and stops cleanly on SIGTERM or SIGINT.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startRuntime } from "../../src/runtime/start";
import { sourcePackage } from "./source-package";

async function main(): Promise<void> {
  const userDir = process.argv[2];
  if (!userDir) throw new Error("usage: child.ts <user dir>");
  // The embedded broker and the CoAP server on ports of their own, as test/setup.ts does.
  process.env.TETHRAL_MQTT_PORT ??= "0";
  process.env.TETHRAL_COAP_PORT ??= "0";
  // No broker of the developer's shell; a test that runs its own (the cluster's Mosquitto) names
  // it in TETHRAL_TEST_RUNTIME_MQTT_URL.
  if (process.env.TETHRAL_TEST_RUNTIME_MQTT_URL) process.env.TETHRAL_MQTT_URL = process.env.TETHRAL_TEST_RUNTIME_MQTT_URL;
  else delete process.env.TETHRAL_MQTT_URL;
  const pkg = mkdtempSync(path.join(tmpdir(), "tethral-pkg-"));
  process.once("exit", () => rmSync(pkg, { recursive: true, force: true }));
  const runtime = await startRuntime({
    // A fixed port where a test restarts the runtime and its devices must find it again.
    port: Number(process.env.TETHRAL_TEST_RUNTIME_PORT ?? 0),
    host: "127.0.0.1",
    ...(process.env.TETHRAL_ALLOWED_HOSTS && { allowedHosts: process.env.TETHRAL_ALLOWED_HOSTS }),
    userDir,
    nodesDir: sourcePackage(pkg),
    logLevel: (process.env.TETHRAL_TEST_LOG as "warn" | undefined) ?? "warn",
  });
  if (runtime.flows.state !== "start") throw new Error(`the flows did not start: ${JSON.stringify(runtime.flows)}`);
  console.log(`READY ${runtime.url}`);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    // A stop that fails is a failure the test that stopped it must see.
    runtime.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        console.error("the runtime did not stop cleanly:", err);
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
