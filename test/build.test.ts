import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { SourceMap, createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import helper from "node-red-node-test-helper";
import { type Options, build } from "tsup";
import * as engine from "../src";
import config from "../tsup.config";
import { FIXTURES, loadWithCatch } from "./nodes/harness";

helper.init(require.resolve("node-red"));

const ROOT = path.join(__dirname, "..");

/** The engine's classes, by name, as the package exports them. */
const ENGINE_CLASSES = Object.entries(engine)
  .filter(([, value]) => typeof value === "function" && /^class\b/.test(Function.prototype.toString.call(value)))
  .map(([name]) => name);

/** Whether built code defines class `name`: `var Name = class`, `exports.Name = class`, `class _Name2`. */
function definesClass(code: string, name: string): boolean {
  return new RegExp(`\\b${name}\\d*\\s*=\\s*class\\b|\\bclass\\s+_?${name}\\d*\\b`).test(code);
}

function builtFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".js"))
    .map((f) => path.join(dir, f));
}

// The package as `npm run build` makes it, in a folder under scratch/: inside the package, so the
// built files find node_modules as they do from dist/.
describe("the build (tsup)", function () {
  this.timeout(120_000);
  let out = "";
  let files: string[] = [];
  const code = new Map<string, string>();
  const load = (file: string): unknown => createRequire(__filename)(path.join(out, file)) as unknown;

  before(async () => {
    mkdirSync(path.join(ROOT, "scratch"), { recursive: true });
    out = mkdtempSync(path.join(ROOT, "scratch", "build-"));
    const options = config as Options;
    const entry = Object.fromEntries(Object.entries(options.entry as Record<string, string>).map(([name, file]) => [name, path.join(ROOT, file)]));
    await build({ ...options, entry, outDir: out, dts: false, silent: true, config: false });
    files = builtFiles(out);
    for (const file of files) code.set(file, readFileSync(file, "utf8"));
  });

  after(() => {
    if (out) rmSync(out, { recursive: true, force: true });
  });

  it("defines each engine class in exactly one built file", () => {
    assert.ok(ENGINE_CLASSES.includes("TethralError") && ENGINE_CLASSES.includes("Hub"), ENGINE_CLASSES.join(", "));
    for (const name of ENGINE_CLASSES) {
      const where = files.filter((f) => definesClass(code.get(f)!, name)).map((f) => path.relative(out, f));
      assert.equal(where.length, 1, `${name} is defined in ${where.length} files: ${where.join(", ")}`);
    }
  });

  it("bundles each source module into one built file at most", () => {
    const seen = new Map<string, Set<string>>();
    for (const file of files) {
      // esbuild heads each module's code with a comment naming its source file.
      for (const [, source] of code.get(file)!.matchAll(/^\/\/ (src\/\S+\.ts)$/gm)) {
        seen.set(source!, (seen.get(source!) ?? new Set()).add(path.relative(out, file)));
      }
    }
    assert.ok(seen.has("src/core/hub.ts"));
    for (const [source, where] of seen) assert.equal(where.size, 1, `${source} is in ${[...where].join(", ")}`);
  });

  it("makes each node and plugin file's exports its function, as Node-RED and the test helper require them", () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as { "node-red": Record<"nodes" | "plugins", Record<string, string>> };
    const listed = [...Object.values(pkg["node-red"].nodes), ...Object.values(pkg["node-red"].plugins)];
    assert.equal(listed.length, 11);
    for (const file of listed) assert.equal(typeof load(path.relative("dist", file)), "function", file);
  });

  it("shares one engine among the node files: the hub's errors are TethralErrors to every node", async () => {
    const built = load("index.js") as typeof engine;
    const hubModule = load("nodes/tethral-hub.js");
    const deviceModule = load("nodes/tethral-device.js");
    for (const name of ENGINE_CLASSES) {
      // Stack traces and logs name the class (esbuild calls a class that names itself `_Name`).
      assert.match((built as unknown as Record<string, { name: string }>)[name]!.name, new RegExp(`^_?${name}$`));
    }
    await helper.startServer();
    try {
      const device = { id: "dev1", type: "tethral-device", z: FIXTURES.tab.id, hub: FIXTURES.hub.id, operation: "get", wires: [["out"]] };
      const t = await loadWithCatch([hubModule, deviceModule] as never, [device]);
      assert.ok(t.hub instanceof built.Hub, "the hub node's hub is the built engine's");
      assert.ok(!(t.hub instanceof engine.Hub), "and not the sources' (the test would prove nothing)");
      assert.throws(
        () => t.hub.getDevice("missing"),
        (err: unknown) => err instanceof built.TethralError && err.code === "NOT_FOUND",
      );
      // The device node (another file) recognises the hub's error by class: its code reaches the Catch node.
      const caught = await t.caught("dev1", { deviceId: "missing" });
      assert.equal((caught.error as { code?: string }).code, "NOT_FOUND");
    } finally {
      await helper.unload();
      await helper.stopServer();
    }
  });

  it("runs the SQLite store's thread from its own entry beside the shared chunks", async () => {
    const built = load("index.js") as typeof engine;
    const dir = mkdtempSync(path.join(tmpdir(), "tethral-build-sqlite-"));
    const store = new built.SqliteStore({ path: path.join(dir, "fleet.sqlite") });
    try {
      await store.open();
      assert.equal(await store.schemaVersion(), built.LATEST_SCHEMA_VERSION);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("maps the shared chunks back to the sources", () => {
    const chunk = files.find((f) => definesClass(code.get(f)!, "TethralError"))!;
    const lines = code.get(chunk)!.split("\n");
    const line = lines.findIndex((l) => definesClass(l, "TethralError"));
    const map = new SourceMap(JSON.parse(readFileSync(`${chunk}.map`, "utf8")) as ConstructorParameters<typeof SourceMap>[0]);
    const entry = map.findEntry(line, lines[line]!.search(/\bclass\b/)) as { originalSource?: string; originalLine?: number };
    const source = readFileSync(path.join(ROOT, "src", "core", "errors.ts"), "utf8").split("\n");
    assert.equal(path.resolve(path.dirname(chunk), entry.originalSource ?? ""), path.join(ROOT, "src", "core", "errors.ts"));
    assert.match(source[entry.originalLine!]!, /class TethralError/);
  });
});
