import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { PACKAGE_ROOT } from "../../src/runtime/start";
import { fixedPorts } from "./spawn-runtime";
import { until } from "../helpers";

const run = promisify(execFile);
const MODULE = "@tethral/node-red-tethral";
// npm install may compile better-sqlite3 from source (see betterSqlitePrebuild).
const INSTALL_LIMIT_MS = 8 * 60_000;

interface NodeSetInfo {
  module: string;
  types: string[];
  enabled: boolean;
  loaded?: boolean;
  err?: string;
}

function nodeAtLeast(major: number, minor: number): boolean {
  const [maj, min] = process.versions.node.split(".").map(Number) as [number, number];
  return maj > major || (maj === major && min >= minor);
}

/**
 * A user's npm install fetches better-sqlite3's prebuilt binary from GitHub, which CI cannot
 * reach; without one, npm compiles it from source (a minute of CPU). This suite's own build for
 * this Node stands in, found where prebuild-install looks for local prebuilds: the directory.
 * When npm picks another better-sqlite3 version the name does not match and it compiles.
 */
async function betterSqlitePrebuild(scratch: string): Promise<string> {
  const moduleDir = path.dirname(require.resolve("better-sqlite3/package.json"));
  const { version } = JSON.parse(readFileSync(path.join(moduleDir, "package.json"), "utf8")) as { version: string };
  const dir = path.join(scratch, "prebuilds");
  mkdirSync(dir);
  const name = `better-sqlite3-v${version}-node-v${process.versions.modules}-${process.platform}-${process.arch}.tar.gz`;
  await run("tar", ["-czf", path.join(dir, name), "-C", moduleDir, "build/Release/better_sqlite3.node"]);
  return dir;
}

/** Node-RED's own start script (red.js) of the Node-RED this suite runs against. */
function redJs(): string {
  return path.join(path.dirname(require.resolve("node-red/package.json")), "red.js");
}

// What a user does: npm pack (or the registry's tarball), npm install into ~/.node-red, start
// Node-RED. Leg 2 of .ci/run (Node 22, Node-RED 5) runs it; on older Node the leg-1 suite
// already covers Node-RED 4.1 with the sources, and the install would repeat a minute of compile.
describe("the packed package, installed as a user installs it", function () {
  this.timeout(INSTALL_LIMIT_MS + 120_000);
  let scratch = "";
  let red: ChildProcess | null = null;
  let output = "";
  let base = "";
  let userDir = "";

  before(async function () {
    if (!nodeAtLeast(22, 9)) {
      console.log(`    (skipped: Node ${process.versions.node}; the packed install is checked on Node >= 22.9 with Node-RED 5, leg 2 of .ci/run)`);
      this.skip();
    }
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-packed-"));
    await run("npm", ["pack", "--pack-destination", scratch], { cwd: PACKAGE_ROOT, timeout: 180_000, maxBuffer: 64 * 1024 * 1024 });
    const tarball = readdirSync(scratch).find((f) => f.endsWith(".tgz"));
    assert.ok(tarball, "npm pack wrote a tarball");

    userDir = path.join(scratch, "node-red");
    mkdirSync(userDir);
    // As Node-RED creates ~/.node-red/package.json on its first start.
    writeFileSync(path.join(userDir, "package.json"), JSON.stringify({ name: "node-red-project", description: "A Node-RED Project", version: "0.0.1", private: true }));
    await run("npm", ["install", "--no-audit", "--no-fund", path.join(scratch, tarball)], {
      cwd: userDir,
      timeout: INSTALL_LIMIT_MS,
      maxBuffer: 64 * 1024 * 1024,
      env: { ...process.env, npm_config_better_sqlite3_local_prebuilds: await betterSqlitePrebuild(scratch) },
    });

    const port = (await fixedPorts()).TETHRAL_TEST_RUNTIME_PORT!;
    // The REST flows' routes sit under /api, as npm start serves them.
    writeFileSync(path.join(userDir, "settings.js"), `module.exports = { uiHost: "127.0.0.1", uiPort: ${port}, flowFile: "flows.json", httpNodeRoot: "/api" };\n`);
    red = spawn(process.execPath, [redJs(), "--userDir", userDir, "--settings", path.join(userDir, "settings.js")], { stdio: ["ignore", "pipe", "pipe"] });
    red.stdout!.on("data", (c: Buffer) => (output += c.toString()));
    red.stderr!.on("data", (c: Buffer) => (output += c.toString()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`Node-RED did not start in 60 s:\n${output}`)), 60_000);
      red!.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`Node-RED exited with ${code}:\n${output}`));
      });
      red!.stdout!.on("data", () => {
        if (/Server now running at/.test(output)) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    base = `http://127.0.0.1:${port}/`;
  });

  after(async () => {
    if (red && red.exitCode === null && red.signalCode === null) {
      const exited = new Promise((r) => red!.once("exit", r));
      red.kill("SIGTERM");
      await exited;
    }
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("puts every Tethral node in the palette, loaded without an error", async () => {
    const res = await fetch(new URL("nodes", base), { headers: { Accept: "application/json" } });
    assert.equal(res.status, 200);
    const sets = ((await res.json()) as NodeSetInfo[]).filter((s) => s.module === MODULE);
    const types = sets.flatMap((s) => s.types).sort();
    assert.deepEqual(types, ["tethral-command", "tethral-device", "tethral-event-in", "tethral-event-out", "tethral-hub", "tethral-hub-info", "tethral-in", "tethral-state", "tethral-state-watch"]);
    for (const set of sets) {
      assert.equal(set.err, undefined, `${set.types.join(",")}: ${set.err}\n${output}`);
      assert.equal(set.enabled, true);
      assert.notEqual(set.loaded, false);
    }
    // The editor side of the nodes and of the Devices sidebar plugin reaches the browser.
    const html = await (await fetch(new URL("nodes", base), { headers: { Accept: "text/html" } })).text();
    assert.match(html, /registerType\(["']tethral-hub["']/);
    const plugins = await (await fetch(new URL("plugins", base), { headers: { Accept: "text/html" } })).text();
    assert.match(plugins, /tethral-devices-sidebar/);
    const icon = await fetch(new URL(`icons/${MODULE}/tethral-devices.svg`, base));
    assert.equal(icon.status, 200);
    assert.match(icon.headers.get("content-type") ?? "", /svg/);
  });

  it("lists the package's examples under Import > Examples", async () => {
    // The requests the editor's Import > Examples dialog makes: the modules, then one module's flows.
    const library = new URL("library/examples/flows/", base);
    const modules = await fetch(library, { headers: { Accept: "application/json" } });
    assert.equal(modules.status, 200);
    assert.ok(((await modules.json()) as string[]).includes(MODULE), `${MODULE} is listed`);
    const res = await fetch(new URL(`${MODULE}/`, library), { headers: { Accept: "application/json" } });
    assert.equal(res.status, 200);
    const listed = ((await res.json()) as Array<{ fn?: string }>).map((e) => e.fn).sort();
    const shipped = readdirSync(path.join(PACKAGE_ROOT, "examples"))
      .filter((f) => f.endsWith(".json"))
      .map((f) => f.slice(0, -".json".length))
      .sort();
    assert.ok(shipped.length > 0);
    assert.deepEqual(listed, shipped);
    // And one of them imports: the flow's JSON comes back.
    const one = await fetch(new URL(`${MODULE}/${encodeURIComponent(shipped[0]!)}`, library), { headers: { Accept: "application/json" } });
    assert.equal(one.status, 200);
    const flow = (await one.json()) as Array<{ type: string }>;
    assert.ok(flow.some((n) => n.type.startsWith("tethral-")));
  });

  it("runs the package's REST API flows: the hub starts on its SQLite file and answers /api/health", async () => {
    // The flows the package ships (flows/flows.json, as installed), deployed as the editor does.
    const flows = readFileSync(path.join(userDir, "node_modules", ...MODULE.split("/"), "flows", "flows.json"), "utf8");
    const deploy = await fetch(new URL("flows", base), { method: "POST", headers: { "Content-Type": "application/json", "Node-RED-Deployment-Type": "full" }, body: flows });
    assert.equal(deploy.status, 204, await deploy.text());
    const health = await until(async () => {
      const res = await fetch(new URL("api/health", base));
      const body = res.headers.get("content-type")?.includes("json") ? ((await res.json()) as { status?: string }) : {};
      return body.status === "ok" && { status: res.status, body };
    }, "/api/health to answer ok", 10_000).catch((err: Error) => assert.fail(`${err.message}\n${output}`));
    assert.equal(health.status, 200, output);
    assert.ok(existsSync(path.join(userDir, "tethral.sqlite")), "the hub keeps its fleet in the user dir's SQLite file");
    // A device registered through the REST API is there to read back.
    const created = await fetch(new URL("api/devices", base), { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ id: "packed-1", protocol: "http" }) });
    assert.equal(created.status, 201, await created.text());
    const read = await fetch(new URL("api/devices/packed-1", base));
    assert.equal(read.status, 200);
    assert.equal(((await read.json()) as { id: string }).id, "packed-1");
  });
});
