/// <reference lib="dom" />
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { type BrowserContext, type Page, chromium } from "playwright-core";
import { Simulation } from "../../src/runtime/simulate";
import { type RuntimeChild, fixedPorts, spawnRuntime } from "../runtime/spawn-runtime";

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

/** Simulated devices of every protocol, two each, as `npm run simulate` runs them. */
async function simulate(api: string, sims: Simulation[]): Promise<void> {
  for (const protocol of ["mqtt", "coap", "websocket", "http"] as const) {
    const sim = new Simulation({ api, protocol, devices: 2, interval: 0.5, summary: 0, log: () => undefined });
    // Kept before it starts: one that fails half-way is still stopped by after().
    sims.push(sim);
    await sim.start();
  }
}

/**
 * WCAG contrast ratio of an element's text colour against the first opaque background behind it,
 * as page script: tsx's transform would give a function passed to the page helpers it lacks.
 */
const CONTRAST_SCRIPT = `
window.tethralContrast = function (element) {
  function rgb(css) { return (css.match(/[\\d.]+/g) || []).map(Number); }
  function lin(c) { c = c / 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); }
  function luminance(c) { return 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]); }
  var text = rgb(getComputedStyle(element).color);
  var background = [255, 255, 255];
  for (var e = element; e; e = e.parentElement) {
    var c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length === 3 || c[3] > 0.5) { background = c; break; }
  }
  var a = luminance(text), b = luminance(background);
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
};`;

/**
 * Opens a device in the Devices sidebar and waits for its telemetry charts (the simulated
 * devices report temperature, humidity and battery): one inline SVG line per key, with its last
 * value and the range's min and max. Returns what each chart shows.
 */
async function openCharts(page: Page, device: string): Promise<Array<{ key: string; last: string; range: string; points: number }>> {
  await page.click(`.tethral-device-row[data-device='${device}']`);
  const panel = `.tethral-device-charts[data-device='${device}']`;
  await page.waitForFunction((p) => document.querySelectorAll(`${p} .tethral-chart svg polyline`).length === 3, panel, { timeout: 15_000 });
  return page.$$eval(`${panel} .tethral-chart`, (all) =>
    all.map((c) => ({
      key: c.querySelector(".tethral-chart-key")?.textContent ?? "",
      last: c.querySelector(".tethral-chart-last")?.textContent ?? "",
      range: c.querySelector(".tethral-chart-range")?.textContent ?? "",
      points: (c.querySelector("polyline")?.getAttribute("points") ?? "").trim().split(/\s+/).length,
    })),
  );
}

/** Node-RED 5's right-hand sidebar down to its tab bar, where the Devices tab shows its icon. */
async function sidebarWithBar(page: Page): Promise<{ x: number; y: number; width: number; height: number }> {
  const box = (await page.locator("#red-ui-sidebar").boundingBox())!;
  const viewport = page.viewportSize()!;
  return { x: box.x - 4, y: box.y - 4, width: viewport.width - box.x + 4, height: viewport.height - box.y + 4 };
}

describe("the editor in a browser (Debian's chromium)", function () {
  this.timeout(90_000);
  let runtime: RuntimeChild | null = null;
  const sims: Simulation[] = [];
  let scratch = "";
  let context: BrowserContext | null = null;
  let profile = "";

  before(async function () {
    if (!existsSync(CHROMIUM)) {
      console.log(`    (skipped: ${CHROMIUM} is not installed; .ci/run installs Debian's chromium)`);
      this.skip();
    }
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-browser-"));
    // Fixed ports: a full deploy restarts the hub, and the devices must find its broker again.
    runtime = await spawnRuntime(path.join(scratch, "user"), await fixedPorts());
    await simulate(runtime.api, sims);
    profile = mkdtempSync(path.join(tmpdir(), "tethral-chromium-"));
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1400, height: 900 } });
  });

  after(async () => {
    await context?.close();
    for (const sim of sims) await sim.stop();
    await runtime?.stop();
    if (profile) rmSync(profile, { recursive: true, force: true });
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("shows the Tethral palette, imports an example, deploys it, and lists the devices live in the Devices sidebar", async () => {
    const page: Page = context!.pages()[0] ?? (await context!.newPage());
    const pageErrors: string[] = [];
    page.on("pageerror", (err) => pageErrors.push(`${String(err)}\n${err.stack ?? ""}`));
    await page.goto(runtime!.url);
    await page.waitForSelector(".red-ui-palette-node", { timeout: 30_000 });

    // The palette: a Tethral category holding the eight nodes.
    const palette = await page.$$eval(".red-ui-palette-node[data-palette-type^='tethral-']", (nodes) => nodes.map((n) => n.getAttribute("data-palette-type")));
    assert.deepEqual(palette.sort(), ["tethral-command", "tethral-device", "tethral-event-in", "tethral-event-out", "tethral-hub-info", "tethral-in", "tethral-state", "tethral-state-watch"]);
    mkdirSync(ARTIFACTS, { recursive: true });
    // The shipped REST API flows, zoomed out to show them whole.
    type Actions = { RED: { actions: { invoke(name: string): void } } };
    await page.evaluate(() => {
      const { actions } = (window as unknown as Actions).RED;
      for (let i = 0; i < 3; i++) actions.invoke("core:zoom-out");
    });
    await page.screenshot({ path: path.join(ARTIFACTS, "editor-rest-api.png") });
    await page.evaluate(() => (window as unknown as Actions).RED.actions.invoke("core:zoom-reset"));

    // Import an example as Import > Examples would, and deploy.
    const example = readFileSync(path.join(ROOT, "examples", "05 Watch state, raise an alert.json"), "utf8");
    type Editor = {
      RED: { view: { importNodes(n: unknown, o: object): void }; nodes: { dirty(d?: boolean): boolean; node(id: string): unknown }; workspaces: { add(): void } };
    };
    // Into a tab of its own, as a user would.
    await page.evaluate(() => (window as unknown as Editor).RED.workspaces.add());
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
      // Every simulated device listed, online, with its readings (a full deploy restarted the hub).
      await page.waitForFunction(
        () => {
          const rows = Array.from(document.querySelectorAll(".tethral-device-row")).map((r) => r.textContent ?? "");
          return rows.length === 8 && rows.every((r) => /sim-/.test(r) && /online/.test(r) && /temperature: \d+/.test(r));
        },
        null,
        { timeout: 30_000 },
      );
      // The deploy's notices fade on their own: wait, so the screenshots show the editor.
      await page.waitForSelector(".red-ui-notification", { state: "detached", timeout: 15_000 });
    } finally {
      await page.screenshot({ path: path.join(ARTIFACTS, "editor-devices-sidebar.png") });
    }
    // Every simulated device, each online with its readings.
    const rows = await page.$$eval(".tethral-device-row", (all) => all.map((row) => row.textContent ?? ""));
    for (const protocol of ["mqtt", "coap", "websocket", "http"]) {
      const mine = rows.filter((r) => r.includes(`sim-${protocol}-00`));
      assert.equal(mine.length, 2, `${protocol}: ${JSON.stringify(rows)}`);
    }
    await page.locator("#red-ui-sidebar").screenshot({ path: path.join(ARTIFACTS, "devices-sidebar.png") });
    const nodeRedMajor = Number((await page.evaluate(() => (window as unknown as { RED: { settings: { version: string } } }).RED.settings.version)).split(".")[0]);
    // The Devices tab shows its own icon: Node-RED 5 in its new sidebar bar (a generic square
    // without `icon`), Node-RED 4 in the sidebar's tab strip; both draw it as a CSS mask.
    const tabIcon = nodeRedMajor >= 5 ? "button[data-tab-id='tethral-devices'] .red-ui-sidebar-tab-icon" : "#red-ui-tab-tethral-devices .red-ui-tab-icon";
    const mask = await page.$eval(tabIcon, (i) => (i as HTMLElement).style.maskImage || (i as HTMLElement).style.webkitMaskImage);
    assert.match(mask, /icons\/@tethral\/node-red-tethral\/tethral-devices\.svg/);
    const icon = await page.evaluate(async () => {
      const res = await fetch("icons/@tethral/node-red-tethral/tethral-devices.svg");
      return { status: res.status, type: res.headers.get("content-type") ?? "" };
    });
    assert.equal(icon.status, 200);
    assert.match(icon.type, /svg/);
    if (nodeRedMajor >= 5) await page.screenshot({ path: path.join(ARTIFACTS, "devices-sidebar-nr5-light.png"), clip: await sidebarWithBar(page) });

    // A device opened: its numeric keys charted over the last 24 hours, from the hub's SQLite series.
    const shown = await openCharts(page, "sim-mqtt-001");
    assert.deepEqual(shown.map((c) => c.key), ["battery", "humidity", "temperature"]);
    for (const c of shown) {
      assert.match(c.last, /^-?\d+(\.\d+)?$/, `${c.key}'s last value`);
      const [min, max] = c.range.replace(/^ · /, "").split(" – ").map(Number);
      assert.ok(Number.isFinite(min) && Number.isFinite(max) && min! <= Number(c.last) && Number(c.last) <= max!, `${c.key}: ${c.last} within ${c.range}`);
      assert.ok(c.points >= 2, `${c.key} is drawn: ${c.points} points`);
    }
    await page.locator("#red-ui-sidebar").screenshot({ path: path.join(ARTIFACTS, "devices-sidebar-telemetry.png") });
    // Opening it again closes it.
    await page.click(".tethral-device-row[data-device='sim-mqtt-001']");
    await page.waitForSelector(".tethral-device-charts", { state: "detached", timeout: 5_000 });

    // The device picker of a node's Device field offers the hub's devices as you type.
    const eventOut = (JSON.parse(example) as Array<{ id: string; type: string }>).find((n) => n.type === "tethral-event-out")!.id;
    await page.evaluate((id) => {
      const RED = (window as unknown as { RED: { editor: { edit(n: unknown): void }; nodes: { node(id: string): unknown } } }).RED;
      RED.editor.edit(RED.nodes.node(id));
    }, eventOut);
    await page.waitForSelector("#node-input-deviceId", { state: "visible", timeout: 10_000 });
    // The picker asks the hub chosen in the dialog: typing before the dialog has filled in its hub
    // (slower on a loaded machine) searches no hub, and nothing is offered until the next key.
    await page.waitForFunction(() => {
      const hub = document.querySelector<HTMLSelectElement>("#node-input-hub")?.value;
      return typeof hub === "string" && hub !== "" && hub !== "_ADD_";
    }, null, { timeout: 10_000 });
    // As a user would, typing again when nothing showed: the picker searches on each key, and a
    // search that went out while the machine was busy can come back after the field moved on.
    for (let attempt = 1; ; attempt++) {
      await page.fill("#node-input-deviceId", "");
      await page.type("#node-input-deviceId", "sim-mqtt", { delay: 50 });
      const shown = await page.waitForSelector(".red-ui-autoComplete-container", { timeout: 5_000 }).then(() => true, () => false);
      if (shown) break;
      if (attempt === 3) throw new Error("the device picker offered nothing after three tries");
    }
    const offered = await page.$$eval(".red-ui-autoComplete-container .red-ui-popover-menu-item, .red-ui-autoComplete-container li", (items) => items.map((i) => i.textContent ?? ""));
    assert.ok(offered.some((t) => t.includes("sim-mqtt-002")), `the picker offers the hub's devices: ${JSON.stringify(offered)}`);
    await page.screenshot({ path: path.join(ARTIFACTS, "editor-device-picker.png") });

    // The hub's own dialog, down to its anomaly thresholds.
    await page.evaluate(() => {
      const RED = (window as unknown as { RED: { tray: { close(): void }; editor: { editConfig(a: string, type: string, id: string): void }; nodes: { eachConfig(cb: (n: { id: string; type: string }) => void): void } } }).RED;
      RED.tray.close();
      let hub = "";
      RED.nodes.eachConfig((n) => {
        if (n.type === "tethral-hub") hub = n.id;
      });
      setTimeout(() => RED.editor.editConfig("", "tethral-hub", hub), 500);
    });
    await page.waitForSelector("#node-config-input-flappingThreshold", { state: "attached", timeout: 10_000 });
    await page.evaluate(() => document.querySelector("#node-config-input-outlierWarmup")?.scrollIntoView());
    await page.screenshot({ path: path.join(ARTIFACTS, "editor-hub-settings.png") });
    assert.equal(await page.inputValue("#node-config-input-flappingThreshold"), "6");
    assert.equal(await page.isChecked("#node-config-input-stuckDetection"), true);

    if (nodeRedMajor >= 5) {
      // Node-RED 5's own dark theme (User Settings > View > Appearance), as a user picks it.
      await page.evaluate(() => localStorage.setItem("view-dark-theme", "dark"));
      await page.reload();
      await page.waitForSelector("html.nr-theme-dark .red-ui-palette-node", { timeout: 30_000 });
      await page.evaluate(() => (window as unknown as { RED: { sidebar: { show(id: string): void } } }).RED.sidebar.show("tethral-devices"));
      await page.waitForFunction(() => document.querySelectorAll(".tethral-device-row").length === 8, null, { timeout: 30_000 });
      await page.waitForSelector(".red-ui-notification", { state: "detached", timeout: 15_000 });
      await page.screenshot({ path: path.join(ARTIFACTS, "editor-nr5-dark.png") });
      await page.screenshot({ path: path.join(ARTIFACTS, "devices-sidebar-nr5-dark.png"), clip: await sidebarWithBar(page) });
      await openCharts(page, "sim-mqtt-001");
      // The opened device at the top of the Devices panel (Node-RED 5 shares the sidebar with the Debug panel).
      await page.evaluate(() => document.querySelector(".tethral-device-row[data-device='sim-mqtt-001']")?.scrollIntoView({ block: "start" }));
      await page.screenshot({ path: path.join(ARTIFACTS, "devices-sidebar-telemetry-nr5-dark.png"), clip: await sidebarWithBar(page) });
      await page.addScriptTag({ content: CONTRAST_SCRIPT });
      const checks = [
        [".tethral-device-row b", 7],
        [".tethral-device-row b + span", 4.5],
        [".tethral-devices select", 4.5],
        [".tethral-devices input", 4.5],
        [".tethral-chart-key", 7],
        [".tethral-chart-last", 7],
        [".tethral-chart-range", 4.5],
      ] as const;
      for (const [selector, minimum] of checks) {
        // Looked up and measured in one script: the live list may replace its rows between two
        // calls, and a detached row has no computed colour.
        const ratio = await page.evaluate((s) => (window as unknown as { tethralContrast(e: Element | null): number }).tethralContrast(document.querySelector(s)), selector);
        assert.ok(ratio >= minimum, `${selector} is readable on the dark theme: contrast ${ratio.toFixed(2)} < ${minimum}`);
      }
      await page.evaluate(() => localStorage.removeItem("view-dark-theme"));
    }
    assert.deepEqual(pageErrors, []);
  });
});
