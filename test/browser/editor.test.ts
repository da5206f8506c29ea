/// <reference lib="dom" />
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { type BrowserContext, type Page, chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";
const ROOT = path.join(__dirname, "..", "..");
const ARTIFACTS = path.join(ROOT, "test", "artifacts");
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Starts test/browser/runtime-child.ts and resolves with the editor's URL. */
function startChild(): Promise<{ child: ChildProcess; url: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--require", "tsx/cjs", path.join(__dirname, "runtime-child.ts")], {
      cwd: ROOT,
      env: { ...process.env, TETHRAL_MQTT_PORT: "0", TETHRAL_COAP_PORT: "0" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    const timer = setTimeout(() => reject(new Error(`the runtime did not start: ${out}`)), 30_000);
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const m = /READY (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1]! });
      }
    });
    child.stderr!.on("data", (chunk: Buffer) => (out += chunk.toString()));
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the runtime exited (${code}): ${out}`));
    });
  });
}

describe("the editor in a browser (Debian's chromium)", function () {
  this.timeout(90_000);
  let runtime: { child: ChildProcess; url: string } | null = null;
  let context: BrowserContext | null = null;
  let profile = "";

  before(async function () {
    if (!existsSync(CHROMIUM)) {
      console.log(`    (skipped: ${CHROMIUM} is not installed; .ci/run installs Debian's chromium)`);
      this.skip();
    }
    runtime = await startChild();
    profile = mkdtempSync(path.join(tmpdir(), "tethral-chromium-"));
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1400, height: 900 } });
  });

  after(async () => {
    await context?.close();
    if (runtime) {
      const exited = new Promise((r) => runtime!.child.once("exit", r));
      runtime.child.kill("SIGTERM");
      await exited;
    }
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  it("shows the Tethral palette, imports an example, deploys it, and lists the devices live in the Devices sidebar", async () => {
    const page: Page = context!.pages()[0] ?? (await context!.newPage());
    const pageErrors: string[] = [];
    page.on("pageerror", (err) => pageErrors.push(String(err)));
    await page.goto(runtime!.url);
    await page.waitForSelector(".red-ui-palette-node", { timeout: 30_000 });

    // The palette: a Tethral category holding the seven nodes.
    const palette = await page.$$eval(".red-ui-palette-node[data-palette-type^='tethral-']", (nodes) => nodes.map((n) => n.getAttribute("data-palette-type")));
    assert.deepEqual(palette.sort(), ["tethral-command", "tethral-device", "tethral-event-in", "tethral-event-out", "tethral-in", "tethral-state", "tethral-state-watch"]);

    // Import an example as Import > Examples would, and deploy.
    const example = readFileSync(path.join(ROOT, "examples", "04 Events by priority.json"), "utf8");
    type Editor = { RED: { view: { importNodes(n: unknown, o: object): void }; nodes: { dirty(d?: boolean): boolean; node(id: string): unknown } } };
    // touchImport places the nodes at once (a plain import hangs them on the mouse until a click).
    await page.evaluate((text) => (window as unknown as Editor).RED.view.importNodes(JSON.parse(text), { touchImport: true }), example);
    const ids = (JSON.parse(example) as Array<{ id: string }>).map((n) => n.id);
    await page.waitForFunction((all) => all.every((id) => (window as unknown as Editor).RED.nodes.node(id)), ids, { timeout: 5_000 });
    // A touch import skips the step that marks the workspace changed; the Deploy button waits for it.
    await page.evaluate(() => (window as unknown as Editor).RED.nodes.dirty(true));
    await page.waitForSelector("#red-ui-header-button-deploy:not(.disabled)", { timeout: 5_000 });
    await page.click("#red-ui-header-button-deploy");
    await page.waitForFunction(() => !(window as unknown as Editor).RED.nodes.dirty(), null, { timeout: 15_000 });

    // The Devices sidebar fills as the hub (started by the deployed nodes) hears from devices.
    await page.evaluate(() => (window as unknown as { RED: { sidebar: { show(id: string): void } } }).RED.sidebar.show("tethral-devices"));
    try {
      await page.waitForFunction(() => document.querySelectorAll(".tethral-device-row").length === 8, null, { timeout: 20_000 });
    } finally {
      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: path.join(ARTIFACTS, "editor-devices-sidebar.png") });
    }
    const first = await page.$eval(".tethral-device-row", (row) => row.textContent ?? "");
    assert.match(first, /sim-00/);
    assert.match(first, /online/);
    assert.match(first, /temperature: \d+/);

    // The device picker of a node's Device field offers the hub's devices as you type.
    const eventIn = (JSON.parse(example) as Array<{ id: string; type: string }>).find((n) => n.type === "tethral-event-in")!.id;
    await page.evaluate((id) => {
      const RED = (window as unknown as { RED: { editor: { edit(n: unknown): void }; nodes: { node(id: string): unknown } } }).RED;
      RED.editor.edit(RED.nodes.node(id));
    }, eventIn);
    await page.waitForSelector("#node-input-deviceId", { state: "visible", timeout: 10_000 });
    await page.type("#node-input-deviceId", "sim-0");
    await page.waitForSelector(".red-ui-autoComplete-container", { timeout: 10_000 });
    const offered = await page.$$eval(".red-ui-autoComplete-container .red-ui-popover-menu-item, .red-ui-autoComplete-container li", (items) => items.map((i) => i.textContent ?? ""));
    assert.ok(offered.some((t) => t.includes("sim-03")), `the picker offers the hub's devices: ${JSON.stringify(offered)}`);
    await page.screenshot({ path: path.join(ARTIFACTS, "editor-device-picker.png") });
    assert.deepEqual(pageErrors, []);
  });
});
