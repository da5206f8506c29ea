import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import helper from "node-red-node-test-helper";
import { Hub } from "../../src/core/hub";
import { DevicesFeed, type FeedUpdate } from "../../src/nodes/devices-feed";
import tethralEventOut from "../../src/nodes/tethral-event-out";
import tethralHub from "../../src/nodes/tethral-hub";
import type { TethralHubNode } from "../../src/nodes/types";
import tethralSidebar from "../../src/plugins/tethral-sidebar";

helper.init(require.resolve("node-red"));

describe("Devices sidebar: the feed", function () {
  it("pushes only the devices that changed, at most once per interval, and nothing after stop", async () => {
    const hub = new Hub({ deviceTokens: false });
    await hub.start();
    const updates: FeedUpdate[] = [];
    const baseline = hub.events.subscriberCount;
    const feed = new DevicesFeed(hub, "hub1", (u) => updates.push(u), 30);
    feed.start();
    try {
      assert.equal(hub.events.hasSubscribers("state.changed", "a"), false, "the feed costs reports no state.changed event");
      await hub.registerDevice({ id: "a", protocol: "mqtt", name: "Alpha" });
      await hub.registerDevice({ id: "b", protocol: "coap" });
      for (let i = 0; i < 20; i++) hub.ingest("a", { kind: "telemetry", data: { t: i, nested: { no: 1 } } });
      await new Promise((r) => setTimeout(r, 80));
      assert.equal(updates.length, 1, "twenty-two changes, one update");
      assert.deepEqual(updates[0]!.changed.map((d) => [d.id, d.status, d.properties]).sort(), [
        ["a", "online", { t: 19 }],
        ["b", "unknown", {}],
      ]);
      await hub.removeDevice("b");
      await new Promise((r) => setTimeout(r, 80));
      assert.deepEqual(updates[1], { hub: "hub1", changed: [], removed: ["b"] });
      feed.stop();
      hub.ingest("a", { kind: "telemetry", data: { t: 99 } });
      await new Promise((r) => setTimeout(r, 80));
      assert.equal(updates.length, 2);
      assert.equal(hub.events.subscriberCount, baseline);
    } finally {
      feed.stop();
      await hub.stop();
    }
  });
});

describe("Devices sidebar: admin endpoints and the plugin", function () {
  beforeEach(async () => helper.startServer());
  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  const flow = [
    { id: "tab1", type: "tab", label: "Test" },
    { id: "hub1", type: "tethral-hub", name: "Plant", storage: "memory", mqttBroker: "off", coap: false, websocket: false },
    { id: "out1", type: "tethral-event-out", z: "tab1", hub: "hub1", eventType: "x.y" },
  ];

  it("lists deployed hubs and a running hub's devices, filtered and paged, with a few values each", async () => {
    await helper.load([tethralHub, tethralEventOut], flow);
    const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
    await hub.registerDevice({ id: "pump-1", name: "Pump", protocol: "mqtt" });
    await hub.registerDevice({ id: "valve-2", protocol: "coap" });
    hub.ingest("pump-1", { kind: "telemetry", data: { rpm: 1200 } });
    const hubs = await helper.request().get("/tethral/hubs");
    assert.equal(hubs.status, 200);
    assert.deepEqual(hubs.body, [{ id: "hub1", name: "Plant", state: "running" }]);
    const all = await helper.request().get("/tethral/hubs/hub1/devices");
    const body = all.body as { state: string; total: number; devices: Array<{ id: string; status: string; properties: unknown }> };
    assert.equal(body.state, "running");
    assert.equal(body.total, 2);
    assert.deepEqual(body.devices.map((d) => [d.id, d.status, d.properties]), [
      ["pump-1", "online", { rpm: 1200 }],
      ["valve-2", "unknown", {}],
    ]);
    const filtered = (await helper.request().get("/tethral/hubs/hub1/devices?q=valve&limit=5")).body as { total: number };
    assert.equal(filtered.total, 1);
    const missing = await helper.request().get("/tethral/hubs/nope/devices");
    assert.equal(missing.status, 404);
  });

  it("charts a device's numeric keys (a real SQLite store): averages, last value, min and max; 404, and 503 without a database", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "tethral-sidebar-charts-"));
    try {
      const stored = [flow[0]!, { ...flow[1]!, storage: "sqlite", sqliteFile: path.join(dir, "fleet.sqlite") }, flow[2]!];
      await helper.load([tethralHub, tethralEventOut], stored);
      const hub = await (helper.getNode("hub1") as TethralHubNode).acquire();
      await hub.registerDevice({ id: "pump-1", protocol: "mqtt" });
      await hub.registerDevice({ id: "quiet", protocol: "mqtt" });
      const started = Date.now();
      for (const [rpm, flow] of [[1200, 3.5], [1500, 2.5], [900, 4], [1000, 3]]) {
        hub.ingest("pump-1", { kind: "telemetry", data: { rpm, flow, running: true, mode: "auto" } });
        await new Promise((r) => setTimeout(r, 5));
      }
      const res = await helper.request().get("/tethral/hubs/hub1/devices/pump-1/telemetry");
      assert.equal(res.status, 200, JSON.stringify(res.body));
      type Charts = { deviceId: string; from: number; to: number; interval: string; intervalMs: number; charts: Array<{ key: string; last: number; min: number; max: number; points: Array<[number, number]> }> };
      const body = res.body as Charts;
      assert.equal(body.deviceId, "pump-1");
      assert.equal(body.interval, "10s", "a device that began reporting just now: fine buckets");
      assert.equal(body.intervalMs, 10_000);
      assert.ok(body.from <= started && body.to >= started);
      assert.deepEqual(body.charts.map((c) => c.key), ["flow", "rpm"], "numeric keys only, sorted");
      const rpm = body.charts.find((c) => c.key === "rpm")!;
      assert.deepEqual([rpm.last, rpm.min, rpm.max], [1000, 900, 1500]);
      // Four reports in a few ms: one bucket of 10 s, or two when they straddle its edge.
      assert.ok(rpm.points.length >= 1 && rpm.points.length <= 2, JSON.stringify(rpm.points));
      if (rpm.points.length === 1) assert.equal(rpm.points[0]![1], 1150, "the bucket's average");
      assert.ok(rpm.points.every(([t]) => t >= body.from && t <= body.to && t % 10_000 === 0), "bucket starts");

      // The last value and the range are of one moment: a report that lands while the chart's
      // queries run (here, as the last of them answers) shows at the next refresh, not as a last
      // value outside the range drawn.
      const telemetry = hub.telemetry.bind(hub);
      let answered = 0;
      hub.telemetry = async (...args: Parameters<typeof hub.telemetry>) => {
        const answer = await telemetry(...args);
        if (++answered === 4) hub.ingest("pump-1", { kind: "telemetry", data: { rpm: 5000, flow: 3 } });
        return answer;
      };
      const racing = (await helper.request().get("/tethral/hubs/hub1/devices/pump-1/telemetry")).body as Charts;
      hub.telemetry = telemetry;
      assert.equal(answered, 4);
      const raced = racing.charts.find((c) => c.key === "rpm")!;
      assert.deepEqual([raced.last, raced.min, raced.max], [1000, 900, 1500]);

      const none = (await helper.request().get("/tethral/hubs/hub1/devices/quiet/telemetry")).body as Charts;
      assert.deepEqual(none.charts, [], "a device with no series");
      const ghost = await helper.request().get("/tethral/hubs/hub1/devices/ghost/telemetry");
      assert.equal(ghost.status, 404);
      assert.equal((ghost.body as { error: { code: string } }).error.code, "NOT_FOUND");
      assert.equal((await helper.request().get("/tethral/hubs/nope/devices/pump-1/telemetry")).status, 404);

      await helper.unload();
      await helper.load([tethralHub, tethralEventOut], flow);
      const memory = await (helper.getNode("hub1") as TethralHubNode).acquire();
      await memory.registerDevice({ id: "pump-1", protocol: "mqtt" });
      const unavailable = await helper.request().get("/tethral/hubs/hub1/devices/pump-1/telemetry");
      assert.equal(unavailable.status, 503);
      assert.match((unavailable.body as { error: { message: string } }).error.message, /store|memory/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the plugin module registers the sidebar plugin", () => {
    const ids: string[] = [];
    tethralSidebar({ plugins: { registerPlugin: (id: string) => ids.push(id) } } as never);
    assert.deepEqual(ids, ["tethral-devices-sidebar"]);
  });
});
