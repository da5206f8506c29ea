import { defineConfig } from "tsup";

// One CommonJS entry per Node-RED node, plugin and runtime script: Node-RED and
// node-red-node-test-helper both `require()` these files directly.
export default defineConfig({
  entry: {
    index: "src/index.ts",
    "nodes/tethral-hub": "src/nodes/tethral-hub.ts",
    "nodes/tethral-device": "src/nodes/tethral-device.ts",
    "nodes/tethral-state": "src/nodes/tethral-state.ts",
    "nodes/tethral-state-watch": "src/nodes/tethral-state-watch.ts",
    "nodes/tethral-in": "src/nodes/tethral-in.ts",
    "nodes/tethral-command": "src/nodes/tethral-command.ts",
    "nodes/tethral-event-in": "src/nodes/tethral-event-in.ts",
    "nodes/tethral-event-out": "src/nodes/tethral-event-out.ts",
    "nodes/tethral-hub-info": "src/nodes/tethral-hub-info.ts",
    "plugins/tethral-protocols": "src/plugins/tethral-protocols.ts",
    "plugins/tethral-sidebar": "src/plugins/tethral-sidebar.ts",
    "runtime/start": "src/runtime/start.ts",
    "runtime/simulate": "src/runtime/simulate.ts",
    "store/sqlite-worker": "src/store/sqlite-worker.ts",
  },
  format: ["cjs"],
  target: "node20",
  platform: "node",
  outDir: "dist",
  clean: true,
  sourcemap: true,
  dts: { entry: { index: "src/index.ts" } },
  splitting: false,
  shims: false,
});
