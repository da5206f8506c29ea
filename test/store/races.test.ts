import { KEEP_EVERY_ROW } from "./keep-every-row";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManualClock } from "../../src/core/clock";
import { Hub, type HubOptions } from "../../src/core/hub";
import { SqliteStore } from "../../src/store/sqlite";
import { assertCode, assertRejectsCode } from "../helpers";
import { WrappedStore } from "./wrapped-store";

const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The persistence layer against a store that answers late, as PostgreSQL over a network does:
 * durable writes and batches overlap, which a synchronous SQLite never shows.
 */
describe("Hub persistence with a slow database (overlapping writes)", function () {
  this.timeout(30_000);
  let dir: string;
  let file: string;
  const hubs: Hub[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "tethral-races-"));
    file = join(dir, "hub.sqlite");
  });
  afterEach(async () => {
    for (const hub of hubs.splice(0)) await hub.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function open(options: HubOptions = {}): Promise<{ hub: Hub; store: WrappedStore }> {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    const hub = new Hub({
      heartbeat: { resolutionMs: 0 },
      onWarning: () => undefined,
      ...options,
      store,
      // These tests count stored history and events: every report's history and state.changed kept.
      state: { ...KEEP_EVERY_ROW.state, ...options.state },
      persistence: { ...KEEP_EVERY_ROW.persistence, stopTimeoutMs: 500, retryBaseMs: 10, retryMaxMs: 20, ...options.persistence },
    });
    await hub.start();
    hubs.push(hub);
    return { hub, store };
  }

  async function reopen(hub: Hub): Promise<Hub> {
    await hub.stop();
    hubs.splice(hubs.indexOf(hub), 1);
    return (await open()).hub;
  }

  it("writes one batch at a time, however many callers flush at once", async () => {
    // Small transactions: a backlog takes several, and every caller would like to write one.
    const { hub, store } = await open({ clock: new ManualClock(), persistence: { maxTransactionRows: 10 } });
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    store.delayMs = 5;
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 50; i++) hub.ingest("d1", { kind: "telemetry", data: { n: round * 50 + i } });
      await Promise.all([hub.flush(), hub.flush(), hub.stateHistory("d1"), hub.eventHistory({ limit: 5 })]);
    }
    assert.equal(store.maxInFlight, 1);
    assert.equal((await store.inner.stateHistory("d1", 1000)).length, 251);
  });

  it("a removal waits for the batch in flight: no row of the removed device comes back", async () => {
    const clock = new ManualClock();
    const { hub, store } = await open({ clock });
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    hub.ingest("d1", { kind: "telemetry", data: { old: 1 } });
    store.batchDelayMs = 40; // the batch lands after a delete sent meanwhile would
    const flushing = hub.flush(); // the device's state row is on its way
    await tick(5);
    await hub.removeDevice("d1");
    await flushing;
    store.batchDelayMs = 0;
    assert.deepEqual(await store.inner.loadStates(), [], "no state row outlives the removal");
    await hub.registerDevice({ id: "d1", protocol: "coap" });
    hub.ingest("d1", { kind: "telemetry", data: { fresh: true } });
    const again = await reopen(hub);
    assert.deepEqual(again.getState("d1").properties, { fresh: true });
  });

  it("an acknowledged desired state is in the database even when the device reports during the write", async () => {
    const clock = new ManualClock();
    const { hub, store } = await open({ clock });
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    hub.ingest("d1", { kind: "telemetry", data: { t: 1 } });
    await hub.flush();
    store.delayMs = 30;
    const setting = hub.setState("d1", { desired: { setpoint: 22 } });
    await tick(5);
    hub.ingest("d1", { kind: "telemetry", data: { t: 2 } }); // during the write
    const flushing = hub.flush(); // a batch races the direct write
    await setting;
    await flushing;
    // Once the acknowledged row is written, no later write may carry the old desired state:
    // a crash between two batches would otherwise lose an acknowledged change.
    const written = store.batches.flatMap((b) => b.states.filter((r) => r.deviceId === "d1"));
    const acked = written.findIndex((r) => JSON.stringify(r.desired) === '{"setpoint":22}');
    assert.ok(acked >= 0, "the acknowledged row was written");
    for (const row of written.slice(acked)) assert.deepEqual(row.desired, { setpoint: 22 }, `rev ${row.rev} kept the acknowledged desired state`);
    const [row] = await store.inner.loadStates();
    assert.deepEqual(row!.desired, { setpoint: 22 }, "acknowledged, so stored");
    await hub.flush();
    const [latest] = await store.inner.loadStates();
    assert.deepEqual(latest!.desired, { setpoint: 22 });
    assert.deepEqual(latest!.properties, { t: 2 });
    assert.equal(latest!.version, hub.getState("d1").version);
  });

  it("a device takes no traffic until its registration is durable, and a failed one leaves nothing behind", async () => {
    const { hub, store } = await open();
    store.delayMs = 30;
    const registering = hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 60 });
    await tick(5);
    assertCode(() => hub.ingest("d1", { kind: "heartbeat" }), "NOT_FOUND");
    await registering;
    hub.ingest("d1", { kind: "heartbeat" });
    assert.equal(hub.getDevice("d1").status, "online");

    store.down = true;
    const failing = hub.registerDevice({ id: "d2", protocol: "mqtt", heartbeatTimeout: 60 });
    await tick(5);
    assertCode(() => hub.ingest("d2", { kind: "heartbeat" }), "NOT_FOUND");
    await assertRejectsCode(() => failing, "UNAVAILABLE");
    assert.equal(hub.registry.has("d2"), false);
    assert.equal(hub.heartbeat.pending.expiries, 1, "no deadline left behind for d2");
  });

  it("a removal the database refuses keeps the device and every history row waiting for it", async () => {
    const clock = new ManualClock();
    const { hub, store } = await open({ clock });
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    for (let i = 0; i < 5; i++) hub.ingest("d1", { kind: "telemetry", data: { n: i } });
    store.down = true;
    await assertRejectsCode(() => hub.removeDevice("d1"), "UNAVAILABLE");
    assert.ok(hub.registry.has("d1"));
    store.down = false;
    await hub.flush();
    assert.equal((await store.inner.stateHistory("d1", 100)).length, 6, "the online change and five reports");
  });

  it("sets aside only the rows the database refuses, even when it goes away midway", async () => {
    const clock = new ManualClock();
    const { hub, store } = await open({ clock });
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    await hub.flush();
    for (let i = 0; i < 10; i++) hub.ingest("d1", { kind: "telemetry", data: { n: i } });
    let parts = 0;
    // The whole batch is refused; written a row at a time, the database drops after two rows.
    store.refuse = (batch) => batch.history.length > 1;
    const inner = store.inner.writeBatch.bind(store.inner);
    store.inner.writeBatch = async (batch) => {
      if (++parts === 3) {
        store.inner.writeBatch = inner;
        throw new Error("connection reset");
      }
      return inner(batch);
    };
    await assert.rejects(hub.flush());
    store.refuse = null;
    await hub.flush();
    assert.equal((await store.inner.stateHistory("d1", 100)).length, 11, "the online change and ten reports: no row lost");
    assert.equal(hub.statistics().store!.refused, 0);
  });

  it("stop() ends within its time limit when the database never answers, and says what was left", async () => {
    const warnings: string[] = [];
    const { hub, store } = await open({ clock: new ManualClock(), onWarning: (m) => warnings.push(m) });
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    hub.ingest("d1", { kind: "telemetry", data: { n: 1 } });
    store.hang = true;
    const started = Date.now();
    await hub.stop();
    hubs.splice(hubs.indexOf(hub), 1);
    assert.ok(Date.now() - started < 5000, "stop returned");
    assert.ok(warnings.some((w) => w.includes("could not be stored at stop")), warnings.join("\n"));
  });

  it("drops the oldest events from a full buffer during an outage, counted, keeping it within bounds", async () => {
    const { hub, store } = await open({ clock: new ManualClock(), persistence: { maxBufferedRows: 1000 } });
    await hub.flush();
    store.down = true;
    for (let i = 0; i < 20_000; i++) hub.publish("audit.note", { i });
    const stats = hub.statistics().store!;
    assert.ok(stats.pending.events <= 1000);
    assert.equal(stats.pending.events + stats.dropped.events, 20_000);
    store.down = false;
  });

  it("a device set online by hand and never heard from still times out after a restart", async () => {
    const clock = new ManualClock();
    const { hub } = await open({ clock });
    await hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 10 });
    await hub.setState("d1", { status: "online" });
    await hub.stop();
    hubs.splice(hubs.indexOf(hub), 1);
    const { hub: again } = await open({ clock });
    assert.equal(again.getDevice("d1").status, "online");
    clock.advance(10_001);
    assert.equal(again.getDevice("d1").status, "offline");
  });

  it("a hub starts once: a second start is refused instead of loading the fleet twice", async () => {
    const { hub } = await open();
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    await hub.stop();
    hubs.splice(hubs.indexOf(hub), 1);
    await assertRejectsCode(() => hub.start(), "UNAVAILABLE");
  });
});

describe("Hub status after maintenance", () => {
  it("a device cleared from maintenance to unknown comes online with its next message", async () => {
    const clock = new ManualClock();
    const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 } });
    await hub.start();
    await hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 60 });
    hub.ingest("d1", { kind: "heartbeat" });
    await hub.setState("d1", { status: "maintenance" });
    hub.ingest("d1", { kind: "heartbeat" });
    await hub.setState("d1", { status: "unknown" });
    clock.advance(1000);
    hub.ingest("d1", { kind: "heartbeat" });
    assert.equal(hub.getDevice("d1").status, "online");
    await hub.stop();
  });
});
