import { KEEP_EVERY_ROW } from "./keep-every-row";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManualClock } from "../../src/core/clock";
import { Hub, type HubOptions } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { SqliteStore } from "../../src/store/sqlite";
import type { Store, WriteBatch } from "../../src/core/ports/store";
import { WrappedStore } from "./wrapped-store";
import { PointBatch } from "../../src/core/point-batch";
import { HttpAdapter } from "../../src/protocols/http";
import { assertRejectsCode } from "../helpers";
import type { Persistence } from "../../src/core/write-behind";
import { until } from "../protocols/mqtt-device";

describe("Hub persistence (SQLite file)", () => {
  let dir: string;
  let file: string;
  const hubs: Hub[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "tethral-persist-"));
    file = join(dir, "hub.sqlite");
  });

  afterEach(async () => {
    for (const hub of hubs.splice(0)) await hub.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function open(options: HubOptions = {}, store: Store = new SqliteStore({ path: file })): Promise<Hub> {
    // These tests count stored history and events: every report's history and state.changed kept.
    const hub = new Hub({
      heartbeat: { resolutionMs: 0 },
      onWarning: () => undefined,
      ...options,
      state: { ...KEEP_EVERY_ROW.state, ...options.state },
      persistence: { ...KEEP_EVERY_ROW.persistence, ...options.persistence },
      store,
    });
    await hub.start();
    hubs.push(hub);
    return hub;
  }

  async function close(hub: Hub): Promise<void> {
    await hub.stop();
    hubs.splice(hubs.indexOf(hub), 1);
  }

  it("a restarted hub finds every device, its state (versions included), history and events", async () => {
    const clock = new ManualClock();
    const first = await open({ clock });
    await first.registerDevice({ id: "boiler-1", protocol: "mqtt", manufacturer: "Acme", capabilities: ["temperature"], tags: ["floor-2"], metadata: { room: "B1" }, heartbeatTimeout: 60 });
    await first.registerDevice({ id: "door-7", protocol: "coap", address: "coap://127.0.0.1:5683" });
    first.ingest("boiler-1", { kind: "telemetry", data: { temperature: 21.5 } });
    clock.advance(1000);
    first.ingest("boiler-1", { kind: "telemetry", data: { temperature: 22 } });
    await first.setState("boiler-1", { desired: { setpoint: 22.5 } });
    await first.updateDevice("door-7", { name: "Front door", tags: ["entry"] });
    first.publish("audit.note", { text: "checked" }, { priority: "high" });
    const devices = first.listDevices().devices;
    const state = first.getState("boiler-1");
    const history = await first.stateHistory("boiler-1");
    await close(first);

    const second = await open({ clock });
    assert.deepEqual(second.listDevices().devices, devices);
    assert.deepEqual(second.getState("boiler-1"), state);
    assert.equal(second.getState("boiler-1").version, 4, "online, two reports and a desired change");
    assert.deepEqual(await second.stateHistory("boiler-1"), history);
    const types = (await second.eventHistory({ limit: 100 })).map((e) => e.type);
    for (const type of ["device.registered", "device.updated", "state.changed", "device.online", "audit.note", "hub.stopped", "hub.started"]) {
      assert.ok(types.includes(type), `${type} survived the restart`);
    }
    assert.deepEqual(second.listDevices({ capability: "temperature" }).devices.map((d) => d.id), ["boiler-1"], "indexes rebuilt");
  });

  it("answers an event query as a hub without a store does: a priority and a minimum that leave none match nothing; a since past 9999 is refused", async () => {
    const stored = await open();
    const memory = new Hub({ onWarning: () => undefined });
    await memory.start();
    hubs.push(memory);
    for (const hub of [stored, memory]) {
      hub.publish("audit.low", { n: 1 }, { priority: "low" });
      hub.publish("audit.high", { n: 2 }, { priority: "high" });
      assert.deepEqual(await hub.eventHistory({ type: "audit.*", priority: "low", minPriority: "high" }), []);
      assert.deepEqual((await hub.eventHistory({ type: "audit.*", priority: ["low", "high"], minPriority: "high" })).map((e) => e.type), ["audit.high"]);
      for (const since of [253_402_300_800_000, "10000-01-01T00:00:00Z", -1]) {
        await assertRejectsCode(() => hub.eventHistory({ since }), "INVALID", "since");
      }
    }
  });

  it("acknowledges a registration only once it is in the database", async () => {
    const hub = await open();
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    // No flush: a second connection sees the row at once.
    const reader = new SqliteStore({ path: file });
    await reader.open();
    assert.deepEqual((await reader.loadDevices()).map((d) => d.id), ["d1"]);
    await hub.setState("d1", { desired: { mode: "eco" } });
    assert.deepEqual((await reader.loadStates())[0]!.desired, { mode: "eco" }, "desired state durable before the answer");
    await hub.removeDevice("d1");
    assert.deepEqual(await reader.loadDevices(), []);
    await reader.close();
  });

  it("resumes heartbeats from the stored lastSeen: silent while down means offline on time", async () => {
    const clock = new ManualClock();
    const first = await open({ clock });
    await first.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 60 });
    first.ingest("d1", { kind: "heartbeat" });
    await close(first);

    clock.advance(45_000); // the hub was down for 45 s
    const second = await open({ clock });
    assert.equal(second.getDevice("d1").status, "online");
    clock.advance(15_000);
    assert.equal(second.getDevice("d1").status, "online", "exactly the timeout");
    clock.advance(1);
    assert.equal(second.getDevice("d1").status, "offline", "60 s after its last message, not 60 s after start");
  });

  it("keeps a heartbeat timeout adaptive timeouts learned across a restart: a device slower than the default does not go offline at each report until it is learned again", async () => {
    const clock = new ManualClock();
    const heartbeat = { resolutionMs: 0, defaultTimeoutSec: 1, adaptive: { enabled: true, factor: 3, minSec: 1, maxSec: 3600, minSamples: 5 } };
    const first = await open({ clock, heartbeat });
    await first.registerDevice({ id: "slow", protocol: "mqtt" });
    for (let i = 0; i < 8; i++) {
      first.ingest("slow", { kind: "heartbeat" });
      clock.advance(1500); // past the 1 s default: offline between reports, until learned
    }
    const learned = first.heartbeat.effectiveTimeoutSec("slow");
    assert.equal(learned, 4.5, "3 × the 1.5 s gaps");
    await close(first);

    const second = await open({ clock, heartbeat });
    assert.equal(second.heartbeat.effectiveTimeoutSec("slow"), learned, "the learned timeout, restored");
    const offline: string[] = [];
    second.subscribe({ types: "device.offline" }, (e) => void offline.push(e.deviceId!));
    for (let i = 0; i < 5; i++) {
      second.ingest("slow", { kind: "heartbeat" });
      clock.advance(1500);
    }
    assert.deepEqual(offline, [], "no offline between reports 1.5 s apart");
  });

  describe("removing long-gone devices (retention) across a restart", () => {
    const HOUR = 3_600_000;
    const retention = { resolutionMs: 0, retention: { enabled: true, offlineForSec: 3600 } };
    const registered = (hub: Hub, id: string) => {
      try {
        hub.getDevice(id);
        return true;
      } catch {
        return false;
      }
    };
    /** Lets a removal the clock made due reach the store. */
    const settle = () => new Promise((r) => setTimeout(r, 50));
    /** `id` is still there `keptMs` from now (`why`), and removed once `removedMs` more have passed. */
    async function keptThenRemoved(clock: ManualClock, hub: Hub, id: string, keptMs: number, removedMs: number, why: string): Promise<void> {
      clock.advance(keptMs);
      await settle();
      assert.ok(registered(hub, id), why);
      clock.advance(removedMs);
      await until(() => !registered(hub, id));
    }

    it("counts the offline time the previous run saw: a restart neither brings the removal forward nor puts it off", async () => {
      const clock = new ManualClock();
      const first = await open({ clock, heartbeat: retention });
      await first.registerDevice({ id: "gone", protocol: "mqtt", heartbeatTimeout: 60 });
      first.ingest("gone", { kind: "heartbeat" });
      const wentOffline = clock.now() + 60_000;
      clock.advance(60_001);
      assert.equal(first.getDevice("gone").status, "offline");
      clock.advance(HOUR / 2);
      await close(first);

      const second = await open({ clock, heartbeat: retention });
      // Counted from its lastSeen, it would go an hour after its last message: a timeout early.
      await keptThenRemoved(clock, second, "gone", wentOffline + HOUR - 1_000 - clock.now(), 1_001, "offline for less than the retention age");
    });

    it("counts each downtime out once, however many restarts follow", async () => {
      const clock = new ManualClock();
      const first = await open({ clock, heartbeat: retention });
      await first.registerDevice({ id: "gone", protocol: "mqtt", heartbeatTimeout: 60 });
      first.ingest("gone", { kind: "heartbeat" });
      clock.advance(60_001 + 10 * 60_000); // offline for 10 minutes under the first run
      await close(first);
      clock.advance(2 * HOUR); // down
      const second = await open({ clock, heartbeat: retention });
      clock.advance(2 * 60_000); // 12 minutes offline under a hub
      await close(second);
      clock.advance(HOUR); // down again
      const third = await open({ clock, heartbeat: retention });
      await keptThenRemoved(clock, third, "gone", HOUR - 13 * 60_000, 2 * 60_000, "offline for 59 minutes under a hub");
    });

    it("counts a device that said it was going offline from then, across a restart", async () => {
      const clock = new ManualClock();
      const first = await open({ clock, heartbeat: retention });
      await first.registerDevice({ id: "bye", protocol: "mqtt", heartbeatTimeout: 3600 });
      first.ingest("bye", { kind: "heartbeat" });
      first.ingest("bye", { kind: "status", data: "offline" });
      assert.equal(first.getDevice("bye").status, "offline");
      clock.advance(50 * 60_000);
      await close(first);
      const second = await open({ clock, heartbeat: retention });
      await keptThenRemoved(clock, second, "bye", 9 * 60_000, 2 * 60_000, "offline for 59 minutes");
    });

    it("does not count the time no hub was up: a hub off for longer than the retention age keeps its fleet as it starts", async () => {
      const clock = new ManualClock();
      const first = await open({ clock, heartbeat: retention });
      for (const id of ["a", "b"]) {
        await first.registerDevice({ id, protocol: "mqtt", heartbeatTimeout: 60 });
        first.ingest(id, { kind: "heartbeat" });
      }
      await close(first);

      clock.advance(2 * HOUR); // down for twice the retention age
      const second = await open({ clock, heartbeat: retention });
      clock.advance(60_001);
      await settle();
      assert.deepEqual([registered(second, "a"), registered(second, "b")], [true, true], "both kept, offline");
      assert.equal(second.getDevice("a").status, "offline");
      second.ingest("a", { kind: "heartbeat" }); // a speaks again; b never does
      await keptThenRemoved(clock, second, "b", HOUR - 61_000, 1_000, "offline since the start, for less than the retention age");
      assert.ok(registered(second, "a"));
    });
  });

  it("a backlog past a batch's worth arms one flush at once, not one a value, and the flush stores every point", async () => {
    // Counts the timers armed to run at once: before the mend, every value appended past
    // flushPoints cleared the waiting one and armed another (six a report of six values).
    class CountingClock extends ManualClock {
      immediate = 0;
      override setTimeout(fn: () => void, ms: number) {
        if (ms === 0) this.immediate++;
        return super.setTimeout(fn, ms);
      }
    }
    const clock = new CountingClock();
    const hub = await open({ clock, persistence: { flushPoints: 30 } });
    for (let i = 0; i < 100; i++) await hub.registerDevice({ id: `d${i}`, protocol: "mqtt" });
    clock.advance(1000);
    await hub.flush();
    const before = clock.immediate;
    // As one socket read hands them over: no timer runs in between.
    for (let i = 0; i < 100; i++) hub.ingest(`d${i}`, { kind: "telemetry", data: { a: i, b: i * 2, c: i * 3 } });
    assert.ok(clock.immediate - before <= 1, `${clock.immediate - before} timers armed to run at once for 300 values`);
    clock.advance(0);
    await hub.flush();
    for (const i of [0, 57, 99]) {
      const answer = await hub.telemetry(`d${i}`, { keys: ["a", "b", "c"], from: 0 });
      assert.deepEqual(Object.fromEntries(["a", "b", "c"].map((k) => [k, answer.series[k]?.map((p) => p.value)])), { a: [i], b: [i * 2], c: [i * 3] });
    }
  });

  it("stop() writes everything still waiting in the batcher", async () => {
    const clock = new ManualClock(); // the flush timer never fires on its own
    const first = await open({ clock });
    await first.registerDevice({ id: "d1", protocol: "mqtt" });
    for (let i = 0; i < 500; i++) first.ingest("d1", { kind: "telemetry", data: { n: i } });
    await close(first);
    const second = await open({ clock });
    assert.deepEqual(second.getState("d1").properties, { n: 499 });
    assert.equal((await second.stateHistory("d1", 1000)).length, 501, "the status change and 500 reports");
  });

  it("refuses a registration it cannot store, keeps serving from memory, and lands every buffered write when the database returns", async () => {
    const flaky = new WrappedStore(new SqliteStore({ path: file }));
    const clock = new ManualClock();
    const hub = await open({ clock, persistence: { retryBaseMs: 10, retryMaxMs: 10, stopTimeoutMs: 200 } }, flaky);
    const seen: TethralEvent[] = [];
    hub.subscribe({ types: "store.*" }, (e) => {
      seen.push(e);
    });
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });

    flaky.down = true;
    await assertRejectsCode(() => hub.registerDevice({ id: "d2", protocol: "mqtt" }), "UNAVAILABLE");
    assert.equal(hub.registry.has("d2"), false, "an unacknowledged registration is not kept");
    await assertRejectsCode(() => hub.setState("d1", { desired: { x: 1 } }), "UNAVAILABLE");
    assert.deepEqual(hub.getState("d1").desired, {}, "nor an unacknowledged desired change");
    for (let i = 0; i < 100; i++) {
      hub.ingest("d1", { kind: "telemetry", data: { n: i } });
      clock.advance(100);
    }
    assert.deepEqual(hub.getState("d1").properties, { n: 99 }, "memory keeps serving");
    await new Promise((resolve) => setImmediate(resolve)); // let the failed flush put its batch back
    assert.deepEqual(seen.map((e) => e.type), ["store.degraded"]);
    assert.equal(hub.health().status, "degraded");
    assert.ok(hub.statistics().store!.pending.history >= 100);

    flaky.down = false;
    clock.advance(100);
    await hub.flush();
    assert.deepEqual(seen.map((e) => e.type), ["store.degraded", "store.recovered"]);
    assert.equal(hub.health().status, "ok");
    const history = await flaky.inner.stateHistory("d1", 1000);
    assert.equal(history.length, 101, "every history entry written during the outage landed");
    assert.deepEqual((await flaky.inner.loadStates())[0]!.properties, { n: 99 });
  });

  it("bounds the write buffer during an outage: drops the oldest events first, and counts them", async () => {
    const flaky = new WrappedStore(new SqliteStore({ path: file }));
    const clock = new ManualClock();
    const hub = await open({ clock, persistence: { maxBufferedRows: 50, retryBaseMs: 10, retryMaxMs: 10, stopTimeoutMs: 200 } }, flaky);
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    await hub.flush();
    flaky.down = true;
    // 20 reports wait as 60 rows (history, event, point each) and a few of the online change: over the bound by fewer than the events.
    for (let i = 0; i < 20; i++) hub.ingest("d1", { kind: "telemetry", data: { n: i } });
    const stats = hub.statistics().store!;
    // The bound counts every row that waits: history, events and telemetry points.
    const waiting = stats.pending.history + stats.pending.events + stats.pending.points;
    assert.ok(waiting <= 50 && waiting >= 45, `${waiting} rows wait: at the bound of 50, shedding a few at a time`);
    assert.ok(stats.dropped.events > 0, `events went first: ${JSON.stringify(stats)}`);
    assert.equal(stats.dropped.history, 0, "history kept while events could be dropped");
    assert.equal(stats.dropped.points, 0, "points kept while events could be dropped");
    flaky.down = false;
    await hub.flush();
    assert.deepEqual((await flaky.inner.loadStates())[0]!.properties, { n: 19 }, "the latest state is never dropped");
  });

  it("health is degraded while the write backlog is past half its bound or rows are being dropped, and says why", async () => {
    const slow = new WrappedStore(new SqliteStore({ path: file }));
    const clock = new ManualClock();
    const hub = await open({ clock, persistence: { maxBufferedRows: 40, flushRows: 1000, stopTimeoutMs: 200 } }, slow);
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    await hub.flush();
    assert.equal(hub.health().status, "ok");
    // The database is reachable and answers nothing for now: nothing fails, the backlog grows.
    slow.hang = true;
    let n = 0;
    while (hub.statistics().store!.backlog.rows <= 20) hub.ingest("d1", { kind: "telemetry", data: { n: n++ } });
    let health = hub.health();
    assert.equal(health.status, "degraded");
    assert.equal(health.components.store!.status, "degraded");
    assert.match(String(health.components.store!.error), /backlog is \d+ rows, past half its bound of 40/);
    assert.deepEqual(health.components.store!.backlog, hub.statistics().store!.backlog);
    for (let i = 0; i < 40; i++) hub.ingest("d1", { kind: "telemetry", data: { n: n++ } });
    assert.ok(hub.statistics().store!.dropped.events > 0);
    health = hub.health();
    assert.equal(health.status, "degraded");
    assert.match(String(health.components.store!.error), /rows were dropped 0 s ago/);
    slow.hang = false;
    await hub.flush();
    assert.equal(hub.statistics().store!.backlog.rows, 0);
    assert.equal(hub.health().status, "degraded", "still dropping, a moment ago");
    clock.advance(61_000);
    health = hub.health();
    assert.equal(health.status, "ok");
    assert.equal(health.components.store!.error, undefined);
  });

  it("health shows the event loop's lag and the heap in use", async () => {
    const hub = await open();
    // The monitor measures from its first tick on: hold the loop once it has ticked.
    await new Promise((resolve) => setTimeout(resolve, 60));
    const busyUntil = Date.now() + 120;
    while (Date.now() < busyUntil); // holds the loop: the lag shows it
    await new Promise((resolve) => setTimeout(resolve, 100));
    const proc = hub.health().components.process as unknown as { status: string; eventLoopLagMs: { p50: number; p99: number; max: number }; heap: { usedBytes: number; limitBytes: number; usedRatio: number }; rssBytes: number };
    assert.equal(proc.status, "ok");
    assert.ok(proc.eventLoopLagMs.max >= 80, `the loop was held for 120 ms: max lag ${proc.eventLoopLagMs.max} ms`);
    assert.ok(proc.eventLoopLagMs.p50 <= proc.eventLoopLagMs.p99 && proc.eventLoopLagMs.p99 <= proc.eventLoopLagMs.max);
    assert.ok(proc.heap.usedBytes > 1_000_000 && proc.heap.usedBytes < proc.heap.limitBytes);
    assert.ok(proc.heap.usedRatio > 0 && proc.heap.usedRatio < 1);
    assert.ok(proc.rssBytes >= proc.heap.usedBytes);
  });

  it("rolls back an update the database refused", async () => {
    const flaky = new WrappedStore(new SqliteStore({ path: file }));
    const hub = await open({ persistence: { stopTimeoutMs: 200 } }, flaky);
    await hub.registerDevice({ id: "d1", protocol: "mqtt", name: "Before", tags: ["a"] });
    const before = hub.getDevice("d1");
    flaky.down = true;
    await assertRejectsCode(() => hub.updateDevice("d1", { name: "After", tags: ["b"], heartbeatTimeout: 5 }), "UNAVAILABLE");
    assert.deepEqual(hub.getDevice("d1"), before);
    assert.deepEqual(hub.listDevices({ tag: "a" }).devices.map((d) => d.id), ["d1"], "indexes rolled back too");
    await assertRejectsCode(() => hub.removeDevice("d1"), "UNAVAILABLE");
    assert.ok(hub.registry.has("d1"));
    flaky.down = false;
  });

  it("stores awkward input exactly: SQL-looking text, quotes, unicode and large metadata", async () => {
    const first = await open();
    const metadata = {
      note: "'; DROP TABLE devices; --",
      quotes: `"double" 'single' \`back\``,
      path: "C:\\temp\\new",
      emoji: "🌡️ température",
      nested: { list: Array.from({ length: 200 }, (_, i) => ({ i, s: "x".repeat(200) })) },
      constructor: { prototype: "kept" },
    };
    await first.registerDevice({ id: "odd:device.1", protocol: "mqtt", name: "Robert'); DROP TABLE states;--", metadata });
    first.ingest("odd:device.1", { kind: "telemetry", data: { "key with 'quote'": "value \"quoted\"", "€": 1 } });
    const device = first.getDevice("odd:device.1");
    const state = first.getState("odd:device.1");
    await close(first);
    const second = await open();
    assert.deepEqual(second.getDevice("odd:device.1"), device);
    assert.deepEqual(second.getState("odd:device.1"), state);
  });

  it("a burst of reports stamped ahead of the clock, then a restart (or a desired-state write): the next points are stamped after the stored ones, none skipped", async () => {
    const clock = new ManualClock();
    const first = await open({ clock });
    await first.registerDevice({ id: "burst-1", protocol: "mqtt" });
    // 20 reports in one millisecond: stamped a millisecond apart, 19 ms ahead of the clock.
    for (let i = 1; i <= 20; i++) first.ingest("burst-1", { kind: "telemetry", data: { n: i } });
    await first.flush();
    // A desired-state write rewrites the state row after them: it keeps the last point's time too.
    await first.setState("burst-1", { desired: { mode: "eco" } });
    const stored = await (first as unknown as { persistence: Persistence }).persistence.store.loadStates();
    assert.equal(stored.find((r) => r.deviceId === "burst-1")?.pointTs, clock.now() + 19, "the stored row, written by the desired state");
    await close(first);

    clock.advance(5);
    const second = await open({ clock });
    for (let i = 21; i <= 22; i++) second.ingest("burst-1", { kind: "telemetry", data: { n: i } });
    await second.flush();
    const points = await second.telemetry("burst-1", { keys: ["n"], from: 0, to: clock.now() + 60_000, limit: 100 });
    assert.deepEqual(points.series.n!.map((p) => p.value), Array.from({ length: 22 }, (_, i) => i + 1), "every report's point, in order");
  });

  it("a device stored with an address its protocol's adapter now refuses keeps it: other changes go through, one sent back as read too, and a failed write puts it back as it was", async () => {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    // Stored by a hub without the HTTP adapter, which checks nothing.
    const first = await open({}, store);
    await first.registerDevice({ id: "legacy", protocol: "http", address: "ftp://10.0.0.1/x" });
    await close(first);
    const hub = await open({ protocols: [new HttpAdapter()] }, new WrappedStore(new SqliteStore({ path: file })));
    const read = hub.getDevice("legacy");
    await hub.updateDevice("legacy", { name: "renamed" });
    await hub.updateDevice("legacy", { name: "again", protocol: read.protocol, address: read.address });
    await assertRejectsCode(() => hub.updateDevice("legacy", { address: "ftp://10.0.0.2/y" }), "INVALID", "address");
    const wrapped = (hub as unknown as { persistence: Persistence }).persistence.store as WrappedStore;
    wrapped.down = true;
    await assertRejectsCode(() => hub.updateDevice("legacy", { name: "while down" }), "UNAVAILABLE");
    await assertRejectsCode(() => hub.updateDevice("legacy", { address: "http://10.0.0.1/ok" }), "UNAVAILABLE");
    const now = hub.getDevice("legacy");
    assert.equal(now.name, "again", "put back as it was");
    assert.equal(now.address, "ftp://10.0.0.1/x");
    wrapped.down = false;
  });

  it("removing a device removes its rows, and a late batch does not bring them back", async () => {
    const clock = new ManualClock();
    const hub = await open({ clock });
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    hub.ingest("d1", { kind: "telemetry", data: { t: 1 } }); // waits in the batcher
    await hub.removeDevice("d1");
    await hub.flush();
    await hub.registerDevice({ id: "d1", protocol: "coap" });
    await close(hub);
    const again = await open({ clock });
    assert.equal(again.getDevice("d1").protocol, "coap");
    assert.equal(again.getState("d1").version, 0, "no state from the removed device");
    assert.deepEqual(await again.stateHistory("d1"), []);
  });

  it("tells when what was applied is stored (a cluster member's acknowledgements): not while writes fail, once one lands", async () => {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    const hub = await open({ persistence: { flushIntervalMs: 20, retryBaseMs: 10, retryMaxMs: 10, stopTimeoutMs: 200 } }, store);
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    const p = (hub as unknown as { persistence: Persistence }).persistence;
    await until(async () => p.writtenMark() === null, "nothing waiting", 2_000);
    const heard: number[] = [];
    p.onWritten((index) => heard.push(index));
    store.down = true;
    hub.ingest("d1", { kind: "telemetry", data: { t: 1 } });
    const mark = p.writtenMark();
    assert.notEqual(mark, null, "a report waits to be written");
    await new Promise((resolve) => setTimeout(resolve, 150));
    assert.ok(!heard.some((i) => i > mark!), `heard ${heard.join(", ")} above ${mark} while every write failed`);
    store.down = false;
    await until(async () => heard.some((i) => i > mark!), "the write that stored it heard", 3_000);
    const points = await store.inner.points({ deviceId: "d1", key: "t", from: 0, to: Date.now() + 1000, limit: 10 });
    assert.deepEqual(points.map((x) => x.value), [1]);
  });

  it("discards what waits of some devices (a cluster partition another member held since): queued rows, and those of a batch failing meanwhile, which is put back without them", async () => {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    const hub = await open({ persistence: { flushIntervalMs: 60_000, retryBaseMs: 10, retryMaxMs: 10, stopTimeoutMs: 2_000 } }, store);
    await hub.registerDevice({ id: "a-1", protocol: "mqtt" });
    await hub.registerDevice({ id: "b-1", protocol: "mqtt" });
    const p = (hub as unknown as { persistence: Persistence }).persistence;
    // Report 1 goes into a batch that fails after 200 ms; report 2 waits behind it.
    hub.ingest("a-1", { kind: "telemetry", data: { t: 1 } });
    hub.ingest("b-1", { kind: "telemetry", data: { t: 1 } });
    store.down = true;
    store.batchDelayMs = 200;
    const failing = hub.flush().catch(() => undefined);
    await until(async () => store.inFlight === 1, "a batch on its way", 2_000);
    hub.ingest("a-1", { kind: "telemetry", data: { t: 2 } });
    hub.ingest("b-1", { kind: "telemetry", data: { t: 2 } });
    p.discard((id) => id === "a-1");
    await failing;
    store.down = false;
    store.batchDelayMs = 0;
    await hub.flush();
    const points = (id: string) => store.inner.points({ deviceId: id, key: "t", from: 0, to: Date.now() + 1000, limit: 10 });
    assert.deepEqual((await points("b-1")).map((x) => x.value), [1, 2]);
    assert.deepEqual((await points("a-1")).map((x) => x.value), [], "neither the queued report nor the put-back one");
    assert.equal((await store.inner.stateHistory("a-1", 10)).length, 0);
    assert.equal((await store.inner.stateHistory("b-1", 10)).length, 3, "online, then two reports");
    assert.ok(p.statistics().fenced >= 4, `counted as fenced: ${p.statistics().fenced}`);
  });

  /** The devices a batch has rows of. */
  const devicesOf = (batch: WriteBatch) =>
    new Set([...batch.history.map((h) => h.deviceId), ...batch.states.map((x) => x.deviceId), ...batch.presence.map((r) => r.id), ...PointBatch.of(batch.points).rows().map((p) => p.deviceId)]);

  it("writing a refused batch a row at a time, drops the rows of a device whose partition moved meanwhile (fenced), and writes the others' (presence too), not taking it for an outage", async () => {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    const hub = await open({ persistence: { flushIntervalMs: 60_000 } }, store);
    for (const id of ["ok-1", "bad-1", "moved-1"]) await hub.registerDevice({ id, protocol: "mqtt" });
    for (const id of ["ok-1", "bad-1", "moved-1"]) hub.ingest(id, { kind: "telemetry", data: { t: 1 } });
    const p = (hub as unknown as { persistence: Persistence }).persistence;
    // The batch is refused for bad-1's history row; while it is written apart, moved-1's partition moves.
    let apart = false;
    store.refuse = (batch) => {
      const refused = batch.history.some((h) => h.deviceId === "bad-1");
      apart ||= refused;
      return refused;
    };
    store.fence = (batch) => (apart && devicesOf(batch).has("moved-1") ? ["moved-1"] : null);
    await hub.flush();
    const stats = p.statistics();
    assert.ok(stats.fenced > 0, `moved-1's rows counted as fenced: ${JSON.stringify(stats)}`);
    assert.equal(hub.health().components.store?.status, "ok", "not degraded");
    assert.equal((await store.inner.stateHistory("ok-1", 10)).length, 2, "ok-1's rows written");
    assert.equal((await store.inner.stateHistory("moved-1", 10)).length, 0);
    const stored = new Map((await store.inner.loadDevices()).map((d) => [d.id, d]));
    assert.deepEqual(["ok-1", "bad-1", "moved-1"].map((id) => stored.get(id)?.status), ["online", "online", "unknown"], "the others' presence written");
  });

  it("writing a refused batch a row at a time, writes none of a fenced device's other parts, even when the fence would let them pass", async () => {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    const hub = await open({ persistence: { flushIntervalMs: 60_000 } }, store);
    for (const id of ["bad-1", "moved-1"]) await hub.registerDevice({ id, protocol: "mqtt" });
    hub.ingest("bad-1", { kind: "telemetry", data: { t: 1 } });
    for (let t = 1; t <= 3; t++) hub.ingest("moved-1", { kind: "telemetry", data: { t } });
    let apart = false;
    store.refuse = (batch) => {
      const refused = batch.history.some((h) => h.deviceId === "bad-1");
      apart ||= refused;
      return refused;
    };
    // moved-1 is refused once while the batch is written apart; its later parts would pass (its partition claimed back).
    let checks = 0;
    store.fence = (batch) => (apart && devicesOf(batch).has("moved-1") && checks++ === 0 ? ["moved-1"] : null);
    await hub.flush();
    assert.equal(checks, 1, "no later part of moved-1 reached the database");
    assert.deepEqual(await store.inner.stateHistory("moved-1", 10), [], "none of its parts written after one was refused");
  });

  /** Refuses every batch with a history row of `id` (a row the database cannot take); `apartFrom()` is the count of batches stored when that first happened. */
  function refuseHistoryOf(store: WrappedStore, id: string): () => number | null {
    let from: number | null = null;
    store.refuse = (batch) => {
      const refused = batch.history.some((h) => h.deviceId === id);
      if (refused) from ??= store.batches.length;
      return refused;
    };
    return () => from;
  }

  it("writing a refused batch apart, stores a device's presence (its fingerprint) with its other rows or not at all: a partition moving midway leaves none of it", async () => {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    const hub = await open({ persistence: { flushIntervalMs: 60_000 } }, store);
    for (const id of ["bad-1", "moved-1"]) await hub.registerDevice({ id, protocol: "mqtt" });
    for (const id of ["bad-1", "moved-1"]) hub.ingest(id, { kind: "telemetry", data: { t: 1 } });
    const apartFrom = refuseHistoryOf(store, "bad-1");
    // moved-1's partition moves once the first part written apart is stored.
    store.fence = (batch) => {
      const from = apartFrom();
      return from !== null && store.batches.length > from && devicesOf(batch).has("moved-1") ? ["moved-1"] : null;
    };
    await hub.flush();
    const stored = new Map((await store.inner.loadDevices()).map((d) => [d.id, d]));
    assert.equal(stored.get("moved-1")?.status, "unknown", "moved-1's presence not stored without its rows");
    assert.deepEqual(await store.inner.stateHistory("moved-1", 10), []);
    assert.equal(stored.get("bad-1")?.status, "online", "bad-1's presence stored");
  });

  it("writing a refused device's rows one at a time, stores its presence last: a partition moving midway leaves its fingerprint unstored", async () => {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    const hub = await open({ persistence: { flushIntervalMs: 60_000 } }, store);
    await hub.registerDevice({ id: "bad-1", protocol: "mqtt" });
    hub.ingest("bad-1", { kind: "telemetry", data: { t: 1 } });
    const apartFrom = refuseHistoryOf(store, "bad-1");
    // Its partition moves once its first row alone is stored.
    store.fence = (batch) => {
      const from = apartFrom();
      return from !== null && store.batches.length > from && devicesOf(batch).has("bad-1") ? ["bad-1"] : null;
    };
    await hub.flush();
    const from = apartFrom();
    assert.ok(from !== null && store.batches.slice(from).some((b) => devicesOf(b).has("bad-1")), "a row of its stored alone before the move");
    const stored = new Map((await store.inner.loadDevices()).map((d) => [d.id, d]));
    assert.equal(stored.get("bad-1")?.status, "unknown", "its presence, checked last, refused with the rest");
  });

  it("writing a refused batch apart, when the database goes away midway, puts what is left back in its order", async () => {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    const hub = await open({ persistence: { flushIntervalMs: 60_000, retryBaseMs: 60_000, retryMaxMs: 60_000 } }, store);
    for (const id of ["a-1", "b-1", "bad-1"]) await hub.registerDevice({ id, protocol: "mqtt" });
    for (const id of ["a-1", "b-1", "bad-1"]) hub.ingest(id, { kind: "telemetry", data: { t: 1 } });
    const firstTried: string[][] = [];
    let back = false;
    store.refuse = (batch) => {
      const devices = devicesOf(batch);
      if (back && firstTried.length === 0) firstTried.push(batch.history.map((h) => h.deviceId));
      // a-1's part goes through; the database is gone for the parts after it.
      if (!back && devices.size === 1 && devices.has("a-1")) store.down = true;
      return batch.history.some((h) => h.deviceId === "bad-1");
    };
    await hub.flush().catch(() => undefined);
    assert.equal(hub.health().components.store?.status, "degraded");
    store.down = false;
    back = true;
    await hub.flush();
    const order = [...new Set(firstTried[0])];
    assert.deepEqual(order, ["b-1", "bad-1"], "b-1's rows before bad-1's, as they came");
  });

  /** A hub whose write of moved-1's four reports (six rows, in batches of three) failed: the store degraded. */
  async function refusedLater(store: WrappedStore): Promise<{ hub: Hub; p: Persistence }> {
    const hub = await open({ persistence: { flushIntervalMs: 60_000, maxTransactionRows: 3, retryBaseMs: 60_000, retryMaxMs: 60_000 } }, store);
    await hub.registerDevice({ id: "moved-1", protocol: "mqtt" });
    store.down = true;
    for (let t = 1; t <= 4; t++) hub.ingest("moved-1", { kind: "telemetry", data: { t } });
    await hub.flush().catch(() => undefined);
    assert.equal(hub.health().components.store?.status, "degraded");
    store.down = false;
    return { hub, p: (hub as unknown as { persistence: Persistence }).persistence };
  }

  it("writes none of the waiting rows of a device the fence refused, in this batch or the ones after it", async () => {
    const store = new WrappedStore(new SqliteStore({ path: file }));
    const { hub, p } = await refusedLater(store);
    // The first batch is refused (moved-1's partition is another member's); the next ones would pass.
    let refusals = 0;
    store.fence = (batch) => (devicesOf(batch).has("moved-1") && refusals++ === 0 ? ["moved-1"] : null);
    await hub.flush();
    assert.equal(store.batches.filter((b) => devicesOf(b).has("moved-1")).length, 0, "none of moved-1's rows written");
    assert.ok(p.statistics().fenced >= 6, `counted: ${p.statistics().fenced}`);
  });

  it("after stop() no timer of the hub or its batcher is pending on the injected clock", async () => {
    const clock = new ManualClock();
    const hub = await open({ clock });
    await hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 5 });
    hub.ingest("d1", { kind: "telemetry", data: { t: 1 } });
    assert.ok(clock.pendingTimers >= 3, "heartbeat, flush and retention timers armed");
    await close(hub);
    assert.equal(clock.pendingTimers, 0);
  });

  it("purges old events in the background, in bounded batches", async () => {
    const clock = new ManualClock();
    const day = 24 * 3600 * 1000;
    const hub = await open({
      clock,
      persistence: { retention: { eventsMaxAgeMs: day, intervalMs: 60_000, batchSize: 10, budgetMs: 10_000 } },
    });
    for (let i = 0; i < 35; i++) hub.publish("audit.note", { i });
    await hub.flush();
    clock.advance(2 * day);
    hub.publish("audit.note", { i: "fresh" });
    await hub.flush();
    clock.advance(60_000); // the retention timer fires
    // Its rounds run on the database thread: waited for, not given a fixed time (50 ms was too
    // little on a loaded CI machine, 2026-12-08).
    await until(() => hub.statistics().store!.purged.events >= 35, "the background purge");
    const left = await hub.eventHistory({ type: "audit.note", limit: 1000 });
    assert.deepEqual(left.map((e) => (e.data as { i: unknown }).i), ["fresh"]);
    assert.equal(hub.statistics().store!.purged.events >= 35, true);
  });

  it("gives a store of the caller's own its points as rows it may keep; the built-in stores take the queue's columns", async () => {
    const inner = new SqliteStore({ path: file });
    const custom = new WrappedStore(inner);
    Object.defineProperty(custom, "pointColumns", { value: undefined });
    const kept: unknown[] = [];
    const write = custom.writeBatch;
    custom.writeBatch = async (batch) => {
      kept.push(batch.points);
      await write(batch);
    };
    const clock = new ManualClock();
    const hub = await open({ clock }, custom);
    await hub.registerDevice({ id: "m1", protocol: "mqtt" });
    for (let i = 0; i < 3; i++) {
      hub.ingest("m1", { kind: "telemetry", data: { t: i, mode: `m${i}` } });
      clock.advance(1000);
      await hub.flush();
    }
    const batches = kept.filter((p) => Array.isArray(p) && p.length > 0) as { key: string; value: unknown }[][];
    assert.equal(batches.length, 3, "every batch's points came as an array of rows");
    // Later batches did not change what an earlier one handed over.
    assert.deepEqual(batches.map((rows) => rows.map((r) => `${r.key}=${String(r.value)}`)), [["t=0", "mode=m0"], ["t=1", "mode=m1"], ["t=2", "mode=m2"]]);
    assert.equal(inner.pointColumns, true);
  });
});
