import { defineConfig } from "tsup";

// One CommonJS entry per Node-RED node, plugin and runtime script: Node-RED and
// node-red-node-test-helper both `require()` these files directly. Code the entries share goes
// into chunks beside them (dist/chunk-*.js), so a process holds one engine however many node
// files it loads, and `instanceof TethralError` holds across them (test/build.test.ts).
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
  splitting: true,
  // With splitting tsup bundles ESM and converts each file to CommonJS: rollup (which this turns
  // on) converts without rewriting the code, where its default (sucrase) would also transpile
  // class fields and optional chaining. A node file's default export becomes its module.exports,
  // so node and plugin sources say `export default function (RED)`: an `export =` would come out
  // wrapped in lazy initialisers, with the engine's class names lost.
  treeshake: "safest",
  shims: false,
});
