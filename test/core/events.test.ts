import assert from "node:assert/strict";
import { ManualClock } from "../../src/core/clock";
import { TethralError } from "../../src/core/errors";
import { EventBus, type EventBusOptions, type EventHandler, type SubscribeOptions } from "../../src/core/events";
import { type HubEvent, type Priority, type TethralEvent, isHubOwnEvent } from "../../src/core/types";
import { assertNoPollution } from "../helpers";

/** Event ids are version 7 UUIDs: time-ordered, so they sort in publishing order. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** Lets promise callbacks (a handler's resolution or rejection) run. */
const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function setup(options: EventBusOptions = {}): { clock: ManualClock; bus: EventBus } {
  const clock = new ManualClock();
  return { clock, bus: new EventBus(clock, options) };
}

/** Subscribes a recorder; `types` lists what it received, in order. */
function record(bus: EventBus, options: SubscribeOptions = {}): { events: TethralEvent[]; types: () => string[] } {
  const events: TethralEvent[] = [];
  bus.subscribe(options, (e) => {
    events.push(e);
  });
  return { events, types: () => events.map((e) => e.type) };
}

/**
 * A subscriber whose handler stays busy on its first event until `gate` is resolved, and is
 * synchronous afterwards: everything published meanwhile waits in its queue.
 */
function busySubscriber(bus: EventBus, options: SubscribeOptions = {}) {
  const gate = deferred();
  const seen: TethralEvent[] = [];
  const handle = bus.subscribe(options, (e) => {
    seen.push(e);
    return seen.length === 1 ? gate.promise : undefined;
  });
  return { gate, seen, handle, names: () => seen.map((e) => e.data as string) };
}

function assertInvalid(fn: () => unknown, field?: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof TethralError, `expected a TethralError, got ${String(err)}`);
    assert.equal(err.code, "INVALID");
    assert.equal(err.status, 400);
    if (field !== undefined) assert.equal(err.details[0]?.field, field);
    return true;
  });
}


describe("EventBus", () => {
  describe("event envelope", () => {
    it("gives every event a uuid id, an ISO timestamp from the clock, a source, a priority and a causeId", () => {
      const { clock, bus } = setup();
      clock.advance(1234);
      const e = bus.publishCustom("sensor.read", { v: 1 });
      assert.match(e.id, UUID);
      assert.match(e.timestamp, ISO);
      assert.equal(e.timestamp, new Date(clock.now()).toISOString());
      assert.equal(e.type, "sensor.read");
      assert.equal(e.source, "hub");
      assert.equal(e.priority, "normal");
      assert.equal(e.deviceId, null);
      assert.equal(e.causeId, null);
      assert.equal(e.expiresAt, null);
      assert.deepEqual(e.data, { v: 1 });
    });

    it("carries the source, device, priority and causeId it was published with", () => {
      const { bus } = setup();
      const cause = bus.publishCustom("flow.step", 1);
      const e = bus.publishCustom("flow.next", 2, { source: "flow", deviceId: "boiler-1", priority: "high", causeId: cause.id });
      assert.equal(e.source, "flow");
      assert.equal(e.deviceId, "boiler-1");
      assert.equal(e.priority, "high");
      assert.equal(e.causeId, cause.id);
    });

    it("carries the parent cause it was published with next to the cause, null when none", () => {
      const { bus } = setup();
      const hubs = bus.publish("device.online", { previous: "offline", lastSeen: "2026-01-01T00:00:00.000Z" }, { causeId: "m-1" });
      assert.equal(hubs.parentCauseId, null);
      const e = bus.publishCustom("flow.reacted", 1, { causeId: "msg-2", parentCauseId: "m-1" });
      assert.equal(e.causeId, "msg-2");
      assert.equal(e.parentCauseId, "m-1");
      assert.deepEqual(bus.query({ type: "flow.reacted" })[0], e);
      assertInvalid(() => bus.publishCustom("x", 1, { parentCauseId: "p".repeat(129) }), "parentCauseId");
      assertInvalid(() => bus.publishCustom("x", 1, { parentCauseId: 7 as unknown as string }), "parentCauseId");
    });

    it("uses the bus's defaultSource when none is given", () => {
      const { bus } = setup({ defaultSource: "edge-7" });
      assert.equal(bus.publishCustom("x.y", null).source, "edge-7");
    });

    it("gives each event its own id", () => {
      const { bus } = setup();
      const ids = new Set<string>();
      for (let i = 0; i < 500; i++) ids.add(bus.publishCustom("x.y", i).id);
      assert.equal(ids.size, 500);
    });

    it("delivers the same envelope the publisher got back", () => {
      const { bus } = setup();
      const r = record(bus);
      const e = bus.publish("hub.started", { devices: 3 }, { source: "hub" });
      assert.equal(r.events.length, 1);
      assert.deepEqual(r.events[0], e);
    });

    it("types publish from the one event map", () => {
      const { bus } = setup();
      const e = bus.publish("device.online", { previous: "offline", lastSeen: "2026-11-27T10:00:00.000Z" }, { deviceId: "d1" });
      const previous: string = e.data.previous;
      assert.equal(previous, "offline");
      // @ts-expect-error device.online data needs previous and lastSeen
      bus.publish("device.online", { devices: 1 });
      // @ts-expect-error not a hub event type: user types go through publishCustom
      bus.publish("my.event", {});
    });
  });

  describe("typed events", () => {
    const lastSeen = "2026-01-01T00:00:00.000Z";

    it("hands a subscription the events its patterns match, with their data typed", () => {
      const { bus } = setup();
      const seen: string[] = [];
      // Exact and prefix patterns of the hub's own types: `switch` narrows the data, no casts.
      bus.subscribe(["device.*", "state.anomaly"], (e) => {
        switch (e.type) {
          case "device.online":
            seen.push(`online after ${e.data.previous}`);
            break;
          case "device.offline":
            seen.push(`offline: ${e.data.reason}`);
            break;
          case "state.anomaly":
            seen.push(`anomaly ${e.data.kind}`);
            break;
          default:
            seen.push(e.type);
        }
      });
      // A pattern user events may match brings them too: `isHubOwnEvent` tells them apart.
      bus.subscribe({ types: "*", filter: (e) => !isHubOwnEvent(e) }, (e) => void seen.push(`user ${e.type}`));
      bus.publish("device.online", { previous: "unknown", lastSeen }, { deviceId: "d1" });
      bus.publish("device.offline", { previous: "online", lastSeen, timeout: 60, reason: "timeout" }, { deviceId: "d1" });
      bus.publish("state.anomaly", { kind: "stuck", active: true }, { deviceId: "d1" });
      bus.publish("hub.started", { devices: 1 });
      bus.publishCustom("devices.counted", 3);
      assert.deepEqual(seen, ["online after unknown", "offline: timeout", "anomaly stuck", "user devices.counted"]);
    });

    it("isHubOwnEvent knows the hub's own types, whatever the event's path (a history, the store)", () => {
      const { bus } = setup({ transientTypes: [] });
      bus.publish("message.received", { kind: "telemetry", protocol: "mqtt", data: { t: 1 }, retained: false });
      bus.publishCustom("message", 1);
      const kinds: string[] = [];
      for (const e of bus.query()) {
        if (!isHubOwnEvent(e)) kinds.push(`user ${e.type}`);
        else if (e.type === "message.received") kinds.push(`received ${e.data.kind}`);
      }
      assert.deepEqual(kinds, ["user message", "received telemetry"]);
    });

    it("gives message.received subscribers the hub's parsed report, kept out of the event's JSON, history and store", () => {
      const recorded: HubEvent[] = [];
      const { bus } = setup({ transientTypes: [], recorder: (e) => void recorded.push(e) });
      const reports: unknown[] = [];
      const copies: unknown[] = [];
      bus.subscribe("message.received", (e) => {
        reports.push(e.report);
        copies.push(JSON.parse(JSON.stringify(e)), structuredClone(e), { ...e });
      });
      const report = { status: null, properties: { t: 1 } };
      const data = { kind: "telemetry", protocol: "mqtt", data: { t: 1 }, retained: false };
      const published = bus.publish("message.received", data, { deviceId: "d1", causeId: "m-1", report });
      assert.deepEqual(reports, [report]);
      for (const copy of [...copies, published, recorded[0], bus.query()[0]]) {
        assert.deepEqual(Object.keys(copy as object).includes("report"), false);
        assert.deepEqual(copy, published);
      }
      assert.equal((recorded[0] as { report?: unknown }).report, undefined, "the store never sees it");
      assert.equal((bus.query()[0] as { report?: unknown }).report, undefined, "nor the history");
    });

    it("returns a transient event with its report, whether or not anyone subscribes", () => {
      const { bus } = setup();
      const report = { status: null, properties: { t: 1 } };
      const data = { kind: "telemetry" as const, protocol: "mqtt", data: { t: 1 }, retained: false };
      const reportOf = (e: object) => (e as { report?: unknown }).report;
      assert.deepEqual(reportOf(bus.publish("message.received", data, { deviceId: "d1", report })), report, "no subscriber");
      bus.subscribe("message.received", () => undefined);
      assert.deepEqual(reportOf(bus.publish("message.received", data, { deviceId: "d1", report })), report, "a subscriber");
    });
  });

  describe("subscription type patterns", () => {
    it("a device's subscriber that a handler adds while an event is offered gets that event too", () => {
      const { bus } = setup();
      const got: number[] = [];
      let added = false;
      bus.subscribe("custom.x", () => {
        if (added) return;
        added = true;
        bus.subscribe({ types: "custom.*", deviceId: "d1" }, (e) => void got.push((e.data as { n: number }).n));
      });
      bus.publishCustom("custom.x", { n: 1 }, { deviceId: "d1" });
      bus.publishCustom("custom.x", { n: 2 }, { deviceId: "d1" });
      assert.deepEqual(got, [1, 2]);
    });

    it("an exact pattern matches only that type", () => {
      const { bus } = setup();
      const r = record(bus, { types: "device.online" });
      bus.publish("device.online", { previous: "unknown", lastSeen: "x" });
      bus.publish("device.offline", { previous: "online", lastSeen: null, timeout: 60, reason: "timeout" });
      bus.publishCustom("device-online", 1);
      assert.deepEqual(r.types(), ["device.online"]);
    });

    it("`device.*` matches every device event and nothing else", () => {
      const { bus } = setup();
      const r = record(bus, { types: "device.*" });
      bus.publish("device.online", { previous: "unknown", lastSeen: "x" });
      bus.publish("device.offline", { previous: "online", lastSeen: null, timeout: 60, reason: "timeout" });
      bus.publish("state.anomaly", { kind: "stuck", active: true });
      bus.publishCustom("devices.extra", 1);
      bus.publishCustom("device", 1);
      assert.deepEqual(r.types(), ["device.online", "device.offline"]);
    });

    it("`*` matches hub and user events alike", () => {
      const { bus } = setup();
      const r = record(bus, { types: "*" });
      bus.publish("hub.started", { devices: 0 });
      bus.publishCustom("my:thing/happened", 1);
      assert.deepEqual(r.types(), ["hub.started", "my:thing/happened"]);
    });

    it("defaults to `*` and accepts a list of patterns, delivering a matching event once", () => {
      const { bus } = setup();
      const all = record(bus);
      const list = record(bus, { types: ["alarm.fire", "alarm.*", "door.open"] });
      bus.publishCustom("alarm.fire", 1);
      bus.publishCustom("door.open", 2);
      bus.publishCustom("door.closed", 3);
      assert.deepEqual(all.types(), ["alarm.fire", "door.open", "door.closed"]);
      assert.deepEqual(list.types(), ["alarm.fire", "door.open"]);
    });

    it("a `*` inside a pattern matches any run of characters", () => {
      const { bus } = setup();
      const r = record(bus, { types: "plant.*.alarm" });
      bus.publishCustom("plant.north.alarm", 1);
      bus.publishCustom("plant.north.ok", 2);
      bus.publishCustom("plantXnorth.alarm", 3);
      assert.deepEqual(r.types(), ["plant.north.alarm"]);
    });

    it("the (types, handler, options) form is the same subscription", () => {
      const { bus } = setup();
      const got: string[] = [];
      bus.subscribe("a.*", (e) => void got.push(e.type), { minPriority: "high" });
      bus.publishCustom("a.low", 1);
      bus.publishCustom("a.high", 1, { priority: "high" });
      bus.publishCustom("b.high", 1, { priority: "high" });
      assert.deepEqual(got, ["a.high"]);
    });
  });

  describe("subscription filters", () => {
    it("minPriority lets through that priority and above only", () => {
      const { bus } = setup();
      const r = record(bus, { minPriority: "high" });
      for (const p of ["low", "normal", "high", "critical"] as Priority[]) bus.publishCustom(`p.${p}`, p, { priority: p });
      assert.deepEqual(r.types(), ["p.high", "p.critical"]);
    });

    it("deviceId keeps the events of the listed devices, never device-less ones", () => {
      const { bus } = setup();
      const one = record(bus, { deviceId: "d1" });
      const two = record(bus, { deviceId: ["d1", "d2"], types: "t.*" });
      bus.publishCustom("t.a", 1, { deviceId: "d1" });
      bus.publishCustom("t.b", 2, { deviceId: "d2" });
      bus.publishCustom("t.c", 3, { deviceId: "d3" });
      bus.publishCustom("t.d", 4);
      bus.publishCustom("u.e", 5, { deviceId: "d1" });
      assert.deepEqual(one.types(), ["t.a", "u.e"]);
      assert.deepEqual(two.types(), ["t.a", "t.b"]);
    });

    it("source keeps events from the listed sources", () => {
      const { bus } = setup();
      const r = record(bus, { source: ["mqtt", "coap"] });
      bus.publishCustom("m.1", 1, { source: "mqtt" });
      bus.publishCustom("m.2", 1, { source: "http" });
      bus.publishCustom("m.3", 1, { source: "coap" });
      bus.publishCustom("m.4", 1);
      assert.deepEqual(r.types(), ["m.1", "m.3"]);
    });

    it("a predicate filter sees the whole event", () => {
      const { bus } = setup();
      const r = record(bus, { filter: (e) => (e.data as { t: number }).t > 30 });
      bus.publishCustom("temp", { t: 20 });
      bus.publishCustom("temp", { t: 35 });
      assert.deepEqual(
        r.events.map((e) => e.data),
        [{ t: 35 }],
      );
    });

    it("combines type, device, priority, source and predicate filters (all must pass)", () => {
      const { bus } = setup();
      const r = record(bus, {
        types: "alarm.*",
        deviceId: "d1",
        minPriority: "normal",
        source: "flow",
        filter: (e) => e.data === "yes",
      });
      const base = { deviceId: "d1", source: "flow", priority: "high" as Priority };
      bus.publishCustom("alarm.a", "yes", base);
      bus.publishCustom("other.a", "yes", base);
      bus.publishCustom("alarm.b", "yes", { ...base, deviceId: "d2" });
      bus.publishCustom("alarm.c", "yes", { ...base, priority: "low" });
      bus.publishCustom("alarm.d", "yes", { ...base, source: "mqtt" });
      bus.publishCustom("alarm.e", "no", base);
      assert.deepEqual(r.types(), ["alarm.a"]);
    });

    it("a predicate that throws counts as a failure of that subscriber only", () => {
      const errors: string[] = [];
      const { bus } = setup({ onHandlerError: (_err, _e, name) => errors.push(name) });
      const good = record(bus);
      const handle = bus.subscribe({ name: "bad-filter", filter: () => { throw new Error("boom"); } }, () => undefined);
      assert.doesNotThrow(() => bus.publishCustom("x.y", 1));
      assert.equal(good.events.length, 1);
      assert.equal(handle.stats().failed, 1);
      assert.equal(bus.statistics().failed, 1);
      assert.deepEqual(errors, ["bad-filter"]);
    });

    it("hasSubscribers tells whether any subscription could receive a type for a device", () => {
      const { bus } = setup();
      assert.equal(bus.hasSubscribers("message.received", "d1"), false);
      const h = bus.subscribe({ types: "message.*", deviceId: "d1" }, () => undefined);
      assert.equal(bus.hasSubscribers("message.received", "d1"), true);
      assert.equal(bus.hasSubscribers("message.received", "d2"), false);
      assert.equal(bus.hasSubscribers("message.received"), false);
      h.unsubscribe();
      assert.equal(bus.hasSubscribers("message.received", "d1"), false);
      bus.subscribe("message.received", () => undefined);
      assert.equal(bus.hasSubscribers("message.received"), true);
    });
  });

  describe("priority", () => {
    it("delivers synchronously, in publish order, to an idle subscriber", () => {
      const { bus } = setup();
      const r = record(bus);
      bus.publishCustom("a", 1, { priority: "low" });
      assert.equal(r.events.length, 1, "delivered before publish returned");
      bus.publishCustom("b", 1, { priority: "critical" });
      bus.publishCustom("c", 1, { priority: "normal" });
      assert.deepEqual(r.types(), ["a", "b", "c"]);
    });

    it("while an async subscriber is busy, its queued events come highest priority first, FIFO within one", async () => {
      const { bus } = setup();
      const s = busySubscriber(bus);
      bus.publishCustom("e", "first");
      bus.publishCustom("e", "low-1", { priority: "low" });
      bus.publishCustom("e", "normal-1", { priority: "normal" });
      bus.publishCustom("e", "critical-1", { priority: "critical" });
      bus.publishCustom("e", "high-1", { priority: "high" });
      bus.publishCustom("e", "low-2", { priority: "low" });
      bus.publishCustom("e", "critical-2", { priority: "critical" });
      assert.deepEqual(s.names(), ["first"]);
      assert.equal(s.handle.stats().queued, 6);
      s.gate.resolve();
      await flush();
      assert.deepEqual(s.names(), ["first", "critical-1", "critical-2", "high-1", "normal-1", "low-1", "low-2"]);
      assert.equal(s.handle.stats().queued, 0);
      assert.equal(s.handle.stats().delivered, 7);
    });

    it("a busy subscriber does not hold up the others", () => {
      const { bus } = setup();
      const s = busySubscriber(bus);
      const r = record(bus);
      bus.publishCustom("a", "a");
      bus.publishCustom("b", "b");
      assert.deepEqual(r.types(), ["a", "b"]);
      assert.deepEqual(s.names(), ["a"]);
    });

    it("events a handler publishes to itself wait until it returns, then come highest first", () => {
      const { bus } = setup();
      const got: string[] = [];
      bus.subscribe("loop.*", (e) => {
        got.push(e.type);
        if (e.type === "loop.start") {
          bus.publishCustom("loop.low", 1, { priority: "low" });
          bus.publishCustom("loop.crit", 1, { priority: "critical" });
          assert.deepEqual(got, ["loop.start"], "not delivered re-entrantly");
        }
      });
      bus.publishCustom("loop.start", 1);
      assert.deepEqual(got, ["loop.start", "loop.crit", "loop.low"]);
    });
  });

  describe("history", () => {
    it("is newest first and limited by `limit` (default 100)", () => {
      const { bus } = setup();
      for (let i = 0; i < 150; i++) bus.publishCustom("n", i);
      const all = bus.query();
      assert.equal(all.length, 100);
      assert.equal(all[0]!.data, 149);
      assert.equal(all[99]!.data, 50);
      assert.deepEqual(
        bus.query({ limit: 3 }).map((e) => e.data),
        [149, 148, 147],
      );
      assert.deepEqual(bus.query({ limit: 0 }), []);
    });

    it("is bounded by historySize: the oldest events fall out", () => {
      const { bus } = setup({ historySize: 5 });
      for (let i = 0; i < 12; i++) bus.publishCustom("n", i);
      assert.deepEqual(
        bus.query({ limit: 100 }).map((e) => e.data),
        [11, 10, 9, 8, 7],
      );
      assert.equal(bus.statistics().historySize, 5);
    });

    it("is queried by type (exact, pattern or list), priority, minPriority, device and source", () => {
      const { bus } = setup();
      bus.publish("device.online", { previous: "unknown", lastSeen: "x" }, { deviceId: "d1", source: "heartbeat" });
      bus.publish("device.offline", { previous: "online", lastSeen: null, timeout: 1, reason: "t" }, {
        deviceId: "d2",
        priority: "high",
        source: "heartbeat",
      });
      bus.publish("state.anomaly", { kind: "stuck", active: true }, { deviceId: "d1", source: "anomaly" });
      bus.publishCustom("user.ping", 1, { priority: "low", source: "flow" });
      bus.publishCustom("user.alarm", 2, { priority: "critical", source: "flow", deviceId: "d2" });
      const types = (q: Parameters<EventBus["query"]>[0]) => bus.query(q).map((e) => e.type);
      assert.deepEqual(types({ type: "device.online" }), ["device.online"]);
      assert.deepEqual(types({ type: "device.*" }), ["device.offline", "device.online"]);
      assert.deepEqual(types({ type: ["user.*", "state.anomaly"] }), ["user.alarm", "user.ping", "state.anomaly"]);
      assert.deepEqual(types({ priority: "high" }), ["device.offline"]);
      assert.deepEqual(types({ priority: ["low", "critical"] }), ["user.alarm", "user.ping"]);
      assert.deepEqual(types({ minPriority: "high" }), ["user.alarm", "device.offline"]);
      assert.deepEqual(types({ deviceId: "d1" }), ["state.anomaly", "device.online"]);
      assert.deepEqual(types({ source: "flow" }), ["user.alarm", "user.ping"]);
      assert.deepEqual(types({ deviceId: "d2", type: "user.*" }), ["user.alarm"]);
      assert.deepEqual(types({ deviceId: "nope" }), []);
    });

    it("is queried by `since` as epoch ms, ISO string or Date, inclusive", () => {
      const { clock, bus } = setup();
      bus.publishCustom("t", "a");
      clock.advance(1000);
      const mark = clock.now();
      bus.publishCustom("t", "b");
      clock.advance(1000);
      bus.publishCustom("t", "c");
      const data = (since: number | string | Date) => bus.query({ since }).map((e) => e.data);
      assert.deepEqual(data(mark), ["c", "b"]);
      assert.deepEqual(data(new Date(mark).toISOString()), ["c", "b"]);
      assert.deepEqual(data(new Date(mark + 1)), ["c"]);
      assert.deepEqual(data(clock.now() + 1), []);
      assertInvalid(() => bus.query({ since: "not a time" }), "since");
      assertInvalid(() => bus.query({ since: "2026-02-30T00:00:00Z" }), "since");
      // Date.parse reads these as 2001-02-01, 2001-05-01 and June 12th.
      for (const since of ["hello 2", "-5", "2026-12-07junk", "12/01/2026"]) assertInvalid(() => bus.query({ since }), "since");
      const zone = process.env.TZ;
      try {
        process.env.TZ = "Asia/Tokyo";
        assert.deepEqual(data(new Date(mark).toISOString().slice(0, 19)), ["c", "b"], "a time without a zone is UTC");
      } finally {
        if (zone === undefined) delete process.env.TZ;
        else process.env.TZ = zone;
      }
    });

    it("keeps transient types (message.received by default) out of history but still delivers them", () => {
      const { bus } = setup();
      const r = record(bus);
      bus.publish("message.received", { kind: "telemetry", protocol: "mqtt", data: {}, retained: false }, { deviceId: "d1" });
      bus.publishCustom("kept", 1);
      assert.deepEqual(r.types(), ["message.received", "kept"]);
      assert.deepEqual(
        bus.query().map((e) => e.type),
        ["kept"],
      );
      assert.equal(bus.keepsHistoryOf("message.received"), false);
      assert.equal(bus.keepsHistoryOf("kept"), true);
    });

    it("honours configured transient types", () => {
      const { bus } = setup({ transientTypes: ["noise"] });
      bus.publishCustom("noise", 1);
      bus.publish("message.received", { kind: "heartbeat", protocol: null, data: null, retained: false });
      assert.deepEqual(
        bus.query().map((e) => e.type),
        ["message.received"],
      );
    });
  });

  describe("statistics", () => {
    it("counts published, delivered, failed, retried, dropped and expired, by type and by priority", async () => {
      const { clock, bus } = setup();
      record(bus, { types: "ok.*" });
      bus.subscribe("bad.*", () => {
        throw new Error("nope");
      });
      const s = busySubscriber(bus, { types: "q.*", queueLimit: 1, dropPolicy: "drop-newest" });
      const rejecting = bus.subscribe("rej", () => Promise.reject(new Error("x")), { retries: 1, retryDelayMs: 10 });

      bus.publishCustom("ok.a", 1); // delivered 1
      bus.publishCustom("ok.a", 2, { priority: "high" }); // delivered 1
      bus.publishCustom("bad.a", 3, { priority: "low" }); // failed 1
      bus.publishCustom("q.a", 4); // in flight
      bus.publishCustom("q.b", 5); // queued
      bus.publishCustom("q.c", 6); // dropped
      bus.publishCustom("ok.gone", 7, { ttlMs: 0 }); // expired at publish
      bus.publishCustom("rej", 8, { priority: "critical" });
      await flush();
      clock.advance(10);
      await flush();
      s.gate.resolve();
      await flush();

      const st = bus.statistics();
      assert.equal(st.published, 8);
      assert.equal(st.delivered, 4, "ok.a twice, q.a and q.b");
      assert.equal(st.failed, 2, "bad.a and rej after its one retry");
      assert.equal(st.retried, 1);
      assert.equal(st.dropped, 1);
      assert.equal(st.expired, 1);
      assert.equal(st.subscribers, 4);
      assert.equal(st.historySize, 7, "all but the expired one");
      assert.deepEqual(st.byType, { "ok.a": 2, "bad.a": 1, "q.a": 1, "q.b": 1, "q.c": 1, "ok.gone": 1, rej: 1 });
      assert.deepEqual(st.byPriority, { low: 1, normal: 5, high: 1, critical: 1 });
      assert.deepEqual(
        { ...rejecting.stats(), name: "" },
        { name: "", delivered: 0, failed: 1, retried: 1, dropped: 0, expired: 0, queued: 0, maxQueued: 0 },
      );
      assert.equal(s.handle.stats().dropped, 1);
      assert.equal(s.handle.stats().maxQueued, 1);
    });

    it("hands out copies: changing a returned statistics object changes nothing", () => {
      const { bus } = setup();
      bus.publishCustom("a", 1);
      const st = bus.statistics();
      st.byType.a = 99;
      st.byPriority.normal = 99;
      assert.equal(bus.statistics().byType.a, 1);
      assert.equal(bus.statistics().byPriority.normal, 1);
    });

    it("names subscriptions and lists their statistics", () => {
      const { bus } = setup();
      bus.subscribe({ name: "dashboard", types: "x" }, () => undefined);
      bus.publishCustom("x", 1);
      const list = bus.subscriptionStats();
      assert.equal(list.length, 1);
      assert.equal(list[0]!.name, "dashboard");
      assert.equal(list[0]!.delivered, 1);
    });
  });

  describe("expiry", () => {
    it("an event already expired when published is neither delivered nor kept, but is counted", () => {
      const { clock, bus } = setup();
      const r = record(bus);
      const a = bus.publishCustom("gone.ttl", 1, { ttlMs: 0 });
      bus.publishCustom("gone.past", 1, { expiresAt: clock.now() - 1 });
      bus.publishCustom("gone.now", 1, { expiresAt: new Date(clock.now()) });
      assert.equal(a.expiresAt, new Date(clock.now()).toISOString());
      assert.equal(r.events.length, 0);
      assert.deepEqual(bus.query(), []);
      const st = bus.statistics();
      assert.equal(st.expired, 3);
      assert.equal(st.published, 3);
      assert.equal(st.delivered, 0);
    });

    it("an expired event takes no history slot and is counted even with no subscriber", () => {
      const { clock, bus } = setup({ historySize: 2 });
      bus.publishCustom("live", 1);
      bus.publishCustom("live", 2);
      for (let i = 0; i < 5; i++) bus.publishCustom("dead", i, { expiresAt: clock.now() });
      assert.deepEqual(
        bus.query().map((e) => e.data),
        [2, 1],
      );
      assert.equal(bus.statistics().expired, 5);
      assert.equal(bus.statistics().historySize, 2);
    });

    it("accepts expiresAt as epoch ms, ISO string or Date and ttlMs, and reports it as ISO", () => {
      const { clock, bus } = setup();
      const at = clock.now() + 5000;
      const iso = new Date(at).toISOString();
      assert.equal(bus.publishCustom("a", 1, { expiresAt: at }).expiresAt, iso);
      assert.equal(bus.publishCustom("a", 1, { expiresAt: iso }).expiresAt, iso);
      assert.equal(bus.publishCustom("a", 1, { expiresAt: new Date(at) }).expiresAt, iso);
      assert.equal(bus.publishCustom("a", 1, { ttlMs: 5000 }).expiresAt, iso);
      assert.equal(bus.publishCustom("a", 1, { expiresAt: null }).expiresAt, null);
    });

    it("refuses an expiry that is not a time", () => {
      const { bus } = setup();
      assertInvalid(() => bus.publishCustom("a", 1, { expiresAt: "tomorrow-ish" }), "expiresAt");
      assertInvalid(() => bus.publishCustom("a", 1, { ttlMs: Number.NaN }), "ttlMs");
      assertInvalid(() => bus.publishCustom("a", 1, { ttlMs: Number.POSITIVE_INFINITY }), "ttlMs");
      // Finite but past what a Date can hold: still INVALID, never a RangeError from formatting.
      assertInvalid(() => bus.publishCustom("a", 1, { ttlMs: 1e16 }), "ttlMs");
      assertInvalid(() => bus.publishCustom("a", 1, { expiresAt: 1e16 }), "expiresAt");
      assert.equal(bus.statistics().published, 0, "a refused event is not counted");
    });

    it("an event leaves history once it expires", () => {
      const { clock, bus } = setup();
      bus.publishCustom("short", 1, { ttlMs: 1000 });
      bus.publishCustom("long", 2);
      assert.deepEqual(
        bus.query().map((e) => e.type),
        ["long", "short"],
      );
      assert.equal(bus.statistics().historySize, 2);
      clock.advance(999);
      assert.equal(bus.query({ type: "short" }).length, 1);
      clock.advance(1);
      assert.deepEqual(
        bus.query().map((e) => e.type),
        ["long"],
      );
      assert.equal(bus.statistics().historySize, 1);
    });

    it("an event that expires while queued is not delivered, and is counted as expired", async () => {
      const { clock, bus } = setup();
      const s = busySubscriber(bus);
      bus.publishCustom("e", "first");
      bus.publishCustom("e", "short-lived", { ttlMs: 100, priority: "critical" });
      bus.publishCustom("e", "lasting");
      clock.advance(100);
      s.gate.resolve();
      await flush();
      assert.deepEqual(s.names(), ["first", "lasting"]);
      assert.equal(s.handle.stats().expired, 1);
      assert.equal(bus.statistics().expired, 1);
      assert.equal(s.handle.stats().delivered, 2);
    });

    it("an event that expires while awaiting a retry is dropped, and the subscriber keeps receiving", async () => {
      const { clock, bus } = setup();
      const seen: string[] = [];
      const h = bus.subscribe(
        "job.*",
        (e) => {
          seen.push(e.type);
          return e.type === "job.flaky" ? Promise.reject(new Error("later")) : undefined;
        },
        { retryDelayMs: 1000 },
      );
      bus.publishCustom("job.flaky", 1, { ttlMs: 500 });
      await flush();
      assert.equal(clock.pendingTimers, 1, "a retry is scheduled");
      clock.advance(1000);
      await flush();
      assert.deepEqual(seen, ["job.flaky"], "not handed over again after it expired");
      assert.equal(h.stats().expired, 1);
      bus.publishCustom("job.next", 2);
      await flush();
      assert.deepEqual(seen, ["job.flaky", "job.next"], "the subscriber is not wedged");
      assert.equal(h.stats().queued, 0);
      assert.equal(clock.pendingTimers, 0);
    });
  });

  describe("failure isolation", () => {
    it("a handler that throws never reaches the publisher or the other subscribers", () => {
      const failures: { err: unknown; type: string; name: string }[] = [];
      const { bus } = setup({ onHandlerError: (err, e, name) => failures.push({ err, type: e.type, name }) });
      const before = record(bus);
      const bad = bus.subscribe({ name: "thrower" }, () => {
        throw new Error("handler bug");
      });
      const after = record(bus);
      assert.doesNotThrow(() => bus.publishCustom("x", 1));
      assert.equal(before.events.length, 1);
      assert.equal(after.events.length, 1);
      assert.equal(bad.stats().failed, 1);
      assert.equal(failures.length, 1);
      assert.equal((failures[0]!.err as Error).message, "handler bug");
      assert.equal(failures[0]!.type, "x");
      assert.equal(failures[0]!.name, "thrower");
      // The thrower still gets the next event.
      bus.publishCustom("y", 2);
      assert.equal(bad.stats().failed, 2);
      assert.equal(after.events.length, 2);
    });

    it("an onHandlerError hook that throws is swallowed too", () => {
      const { bus } = setup({
        onHandlerError: () => {
          throw new Error("hook bug");
        },
      });
      bus.subscribe({}, () => {
        throw new Error("handler bug");
      });
      const r = record(bus);
      assert.doesNotThrow(() => bus.publishCustom("x", 1));
      assert.equal(r.events.length, 1);
    });

    it("a handler that throws something that is not an Error is handled the same way", () => {
      const { bus } = setup();
      const h = bus.subscribe({}, () => {
        throw "a string";
      });
      assert.doesNotThrow(() => bus.publishCustom("x", 1));
      assert.equal(h.stats().failed, 1);
    });

    it("a rejected promise never surfaces as an unhandled rejection", async () => {
      const unhandled: unknown[] = [];
      const onUnhandled = (r: unknown) => unhandled.push(r);
      process.on("unhandledRejection", onUnhandled);
      try {
        const { bus } = setup();
        bus.subscribe({ retries: 0 }, () => Promise.reject(new Error("async bug")));
        bus.publishCustom("x", 1);
        await flush();
        await flush();
        assert.deepEqual(unhandled, []);
        assert.equal(bus.statistics().failed, 1);
      } finally {
        process.off("unhandledRejection", onUnhandled);
      }
    });
  });

  describe("async subscribers: retries with backoff", () => {
    it("retries a rejecting handler with doubling delays, then fails once and reports it", async () => {
      const errors: unknown[] = [];
      const { clock, bus } = setup({ onHandlerError: (err) => errors.push(err) });
      let calls = 0;
      const h = bus.subscribe({ name: "flaky" }, () => {
        calls++;
        return Promise.reject(new Error(`attempt ${calls}`));
      });
      bus.publishCustom("x", 1);
      await flush();
      assert.equal(calls, 1);
      // Default: 3 retries after 100, 200 and 400 ms.
      for (const delay of [100, 200, 400]) {
        const before: number = calls;
        clock.advance(delay - 1);
        await flush();
        assert.equal(errors.length, 0);
        assert.equal(calls, before, `no retry before ${delay} ms`);
        clock.advance(1);
        await flush();
        assert.equal(calls, before + 1, `retried after ${delay} ms`);
      }
      assert.equal(calls, 4);
      assert.equal(clock.pendingTimers, 0, "no further retry");
      assert.equal(errors.length, 1);
      assert.equal((errors[0] as Error).message, "attempt 4");
      assert.equal(h.stats().retried, 3);
      assert.equal(h.stats().failed, 1);
      assert.equal(h.stats().delivered, 0);
      assert.equal(bus.statistics().retried, 3);
      assert.equal(bus.statistics().failed, 1);
    });

    it("counts a delivery when a retry succeeds", async () => {
      const { clock, bus } = setup();
      let calls = 0;
      const h = bus.subscribe({ retryDelayMs: 50 }, () => (++calls < 3 ? Promise.reject(new Error("not yet")) : Promise.resolve()));
      bus.publishCustom("x", 1);
      await flush();
      clock.advance(50);
      await flush();
      clock.advance(100);
      await flush();
      assert.equal(calls, 3);
      assert.equal(h.stats().delivered, 1);
      assert.equal(h.stats().failed, 0);
      assert.equal(h.stats().retried, 2);
      assert.equal(clock.pendingTimers, 0);
    });

    it("hands the same event to every retry", async () => {
      const { clock, bus } = setup();
      const ids: string[] = [];
      bus.subscribe({ retries: 2, retryDelayMs: 10 }, (e) => {
        ids.push(e.id);
        return Promise.reject(new Error("x"));
      });
      const e = bus.publishCustom("x", 1);
      for (let i = 0; i < 3; i++) {
        await flush();
        clock.advance(1000);
      }
      await flush();
      assert.deepEqual(ids, [e.id, e.id, e.id]);
    });

    it("with retries: 0 fails at once and schedules nothing", async () => {
      const { clock, bus } = setup();
      const h = bus.subscribe({ retries: 0 }, () => Promise.reject(new Error("x")));
      bus.publishCustom("x", 1);
      await flush();
      assert.equal(clock.pendingTimers, 0);
      assert.equal(h.stats().failed, 1);
      assert.equal(h.stats().retried, 0);
    });

    it("caps the backoff at 30 s", async () => {
      const { clock, bus } = setup();
      let calls = 0;
      bus.subscribe({ retries: 2, retryDelayMs: 20_000 }, () => {
        calls++;
        return Promise.reject(new Error("x"));
      });
      bus.publishCustom("x", 1);
      await flush();
      clock.advance(20_000);
      await flush();
      assert.equal(calls, 2);
      clock.advance(29_999);
      await flush();
      assert.equal(calls, 2);
      clock.advance(1);
      await flush();
      assert.equal(calls, 3, "second retry after 30 s, not 40 s");
    });

    it("events published while an event is being retried wait for it, then are delivered", async () => {
      const { clock, bus } = setup();
      const seen: unknown[] = [];
      let failFirst = true;
      bus.subscribe({ retryDelayMs: 100 }, (e) => {
        seen.push(e.data);
        if (e.data === "a" && failFirst) {
          failFirst = false;
          return Promise.reject(new Error("x"));
        }
        return undefined;
      });
      bus.publishCustom("x", "a");
      await flush();
      bus.publishCustom("x", "b");
      bus.publishCustom("x", "c", { priority: "high" });
      assert.deepEqual(seen, ["a"]);
      clock.advance(100);
      await flush();
      assert.deepEqual(seen, ["a", "a", "c", "b"]);
    });

    it("a handler that returns a resolved promise counts as delivered after it settles", async () => {
      const { bus } = setup();
      const gate = deferred();
      const h = bus.subscribe({}, () => gate.promise);
      bus.publishCustom("x", 1);
      assert.equal(h.stats().delivered, 0, "not before it settles");
      gate.resolve();
      await flush();
      assert.equal(h.stats().delivered, 1);
    });
  });

  describe("bounded subscriber queues", () => {
    it("drop-newest gives up the events that do not fit", async () => {
      const { bus } = setup();
      const s = busySubscriber(bus, { queueLimit: 2, dropPolicy: "drop-newest" });
      for (const n of ["first", "a", "b", "c", "d"]) bus.publishCustom("e", n);
      assert.equal(s.handle.stats().queued, 2);
      assert.equal(s.handle.stats().dropped, 2);
      s.gate.resolve();
      await flush();
      assert.deepEqual(s.names(), ["first", "a", "b"]);
      assert.equal(bus.statistics().dropped, 2);
    });

    it("drop-oldest gives up the events that waited longest", async () => {
      const { bus } = setup();
      const s = busySubscriber(bus, { queueLimit: 2, dropPolicy: "drop-oldest" });
      bus.publishCustom("e", "first");
      bus.publishCustom("e", "a", { priority: "critical" });
      bus.publishCustom("e", "b", { priority: "low" });
      bus.publishCustom("e", "c");
      bus.publishCustom("e", "d");
      s.gate.resolve();
      await flush();
      assert.deepEqual(s.names(), ["first", "c", "d"], "a (critical but oldest) and b went");
      assert.equal(s.handle.stats().dropped, 2);
    });

    it("drop-lowest (the default) evicts the oldest of the lowest priority, never a critical one for a low flood", async () => {
      const { bus } = setup();
      const s = busySubscriber(bus, { queueLimit: 3 });
      bus.publishCustom("e", "first");
      bus.publishCustom("e", "crit", { priority: "critical" });
      bus.publishCustom("e", "n1");
      bus.publishCustom("e", "l1", { priority: "low" });
      bus.publishCustom("e", "h1", { priority: "high" }); // full: evicts l1 (lowest)
      bus.publishCustom("e", "n2"); // full: evicts n1 (oldest normal)
      for (let i = 0; i < 50; i++) bus.publishCustom("e", `flood${i}`, { priority: "low" }); // all dropped
      assert.equal(s.handle.stats().dropped, 52);
      assert.equal(s.handle.stats().queued, 3);
      s.gate.resolve();
      await flush();
      assert.deepEqual(s.names(), ["first", "crit", "h1", "n2"]);
      assert.equal(bus.statistics().dropped, 52);
    });

    it("drop-lowest drops a newcomer lower than everything queued", async () => {
      const { bus } = setup();
      const s = busySubscriber(bus, { queueLimit: 1, dropPolicy: "drop-lowest" });
      bus.publishCustom("e", "first");
      bus.publishCustom("e", "high", { priority: "high" });
      bus.publishCustom("e", "normal");
      bus.publishCustom("e", "critical", { priority: "critical" });
      s.gate.resolve();
      await flush();
      assert.deepEqual(s.names(), ["first", "critical"]);
      assert.equal(s.handle.stats().dropped, 2);
    });

    it("counts queued and the high-water mark", async () => {
      const { bus } = setup();
      const s = busySubscriber(bus, { queueLimit: 10 });
      for (let i = 0; i < 5; i++) bus.publishCustom("e", String(i));
      assert.equal(s.handle.stats().queued, 4);
      assert.equal(s.handle.stats().maxQueued, 4);
      s.gate.resolve();
      await flush();
      assert.equal(s.handle.stats().queued, 0);
      assert.equal(s.handle.stats().maxQueued, 4);
      assert.equal(s.handle.stats().dropped, 0);
    });

    it("keeps one queue per subscriber: a full queue drops only for its owner", async () => {
      const { bus } = setup();
      const small = busySubscriber(bus, { queueLimit: 1, dropPolicy: "drop-newest" });
      const big = busySubscriber(bus, { queueLimit: 100 });
      for (let i = 0; i < 5; i++) bus.publishCustom("e", String(i));
      small.gate.resolve();
      big.gate.resolve();
      await flush();
      assert.deepEqual(small.names(), ["0", "1"]);
      assert.deepEqual(big.names(), ["0", "1", "2", "3", "4"]);
      assert.equal(small.handle.stats().dropped, 3);
      assert.equal(big.handle.stats().dropped, 0);
    });
  });

  describe("publishCustom", () => {
    it("refuses every prefix the hub owns with INVALID", () => {
      const { bus } = setup();
      for (const prefix of ["device.", "state.", "message.", "command.", "hub.", "store."]) {
        assertInvalid(() => bus.publishCustom(`${prefix}fake`, 1), "type");
      }
      assert.equal(bus.statistics().published, 0);
    });

    it("refuses bad type names with INVALID", () => {
      const { bus } = setup();
      const r = record(bus);
      for (const bad of ["", "has space", "a*b", "tëst", "x".repeat(129), "new\nline", "a#b"]) {
        assertInvalid(() => bus.publishCustom(bad, 1), "type");
      }
      assertInvalid(() => bus.publishCustom(42 as unknown as string, 1), "type");
      assertInvalid(() => bus.publishCustom(null as unknown as string, 1), "type");
      assert.equal(r.events.length, 0);
    });

    it("accepts user names outside the reserved prefixes", () => {
      const { bus } = setup();
      for (const good of ["my.event", "a:b/c-d_e.f", "x".repeat(128), "device", "devices.added", "hubby", "Device.online"]) {
        assert.equal(bus.publishCustom(good, 1).type, good);
      }
    });

    it("refuses an unknown priority with INVALID", () => {
      const { bus } = setup();
      assertInvalid(() => bus.publishCustom("a", 1, { priority: "urgent" as Priority }), "priority");
    });

    it("serialises errors as the contract's JSON body", () => {
      const { bus } = setup();
      try {
        bus.publishCustom("device.fake", 1);
        assert.fail("should throw");
      } catch (err) {
        assert.ok(err instanceof TethralError);
        const body = JSON.parse(JSON.stringify(err)) as { error: { code: string; message: string; details: unknown[] } };
        assert.equal(body.error.code, "INVALID");
        assert.ok(body.error.message.length > 0);
        assert.ok(Array.isArray(body.error.details));
      }
    });
  });

  describe("subscribe validation", () => {
    it("refuses a missing handler, empty or over-long patterns and an unknown minPriority", () => {
      const { bus } = setup();
      assertInvalid(() => bus.subscribe({}, undefined as unknown as EventHandler), "handler");
      assertInvalid(() => bus.subscribe({ types: [] }, () => undefined), "types");
      assertInvalid(() => bus.subscribe({ types: "" }, () => undefined), "types");
      assertInvalid(() => bus.subscribe({ types: "x".repeat(129) }, () => undefined), "types");
      assertInvalid(() => bus.subscribe({ minPriority: "urgent" as Priority }, () => undefined), "minPriority");
      assert.equal(bus.subscriberCount, 0);
    });
  });

  describe("unsubscribe", () => {
    it("a handle's unsubscribe stops delivery and is idempotent", () => {
      const { bus } = setup();
      const got: string[] = [];
      const h = bus.subscribe("a.*", (e) => void got.push(e.type));
      const other = record(bus, { types: "a.*" });
      bus.publishCustom("a.1", 1);
      h.unsubscribe();
      h.unsubscribe();
      bus.publishCustom("a.2", 1);
      assert.deepEqual(got, ["a.1"]);
      assert.deepEqual(other.types(), ["a.1", "a.2"]);
      assert.equal(bus.subscriberCount, 1);
    });

    it("removes device-scoped, exact and pattern subscriptions alike", () => {
      const { bus } = setup();
      const got: string[] = [];
      const handles = [
        bus.subscribe({ deviceId: ["d1", "d2"] }, (e) => void got.push(`dev:${e.type}`)),
        bus.subscribe({ types: "t.x" }, (e) => void got.push(`exact:${e.type}`)),
        bus.subscribe({ types: "t.*" }, (e) => void got.push(`pattern:${e.type}`)),
      ];
      for (const h of handles) h.unsubscribe();
      bus.publishCustom("t.x", 1, { deviceId: "d1" });
      bus.publishCustom("t.x", 1, { deviceId: "d2" });
      assert.deepEqual(got, []);
      assert.equal(bus.subscriberCount, 0);
      assert.equal(bus.hasSubscribers("t.x", "d1"), false);
    });

    it("unsubscribeOwner removes every subscription of that owner and no other", () => {
      const { bus } = setup();
      const got: string[] = [];
      bus.subscribe({ owner: "node-1", types: "a" }, () => void got.push("n1-a"));
      bus.subscribe({ owner: "node-1", deviceId: "d1" }, () => void got.push("n1-d1"));
      bus.subscribe({ owner: "node-1", types: "*" }, () => void got.push("n1-*"));
      bus.subscribe({ owner: "node-2", types: "a" }, () => void got.push("n2-a"));
      bus.subscribe({ types: "a" }, () => void got.push("unowned"));
      assert.equal(bus.unsubscribeOwner("node-1"), 3);
      assert.equal(bus.unsubscribeOwner("node-1"), 0);
      assert.equal(bus.unsubscribeOwner("nobody"), 0);
      bus.publishCustom("a", 1, { deviceId: "d1" });
      assert.deepEqual(got, ["n2-a", "unowned"]);
      assert.equal(bus.subscriberCount, 2);
    });

    it("a subscriber removed by another handler during a publish does not receive that event", () => {
      const { bus } = setup();
      const got: string[] = [];
      let victim: { unsubscribe(): void } | null = null;
      bus.subscribe({}, () => {
        got.push("first");
        victim?.unsubscribe();
      });
      victim = bus.subscribe({}, () => void got.push("victim"));
      bus.subscribe({}, () => void got.push("last"));
      bus.publishCustom("x", 1);
      assert.deepEqual(got, ["first", "last"]);
    });

    it("a subscription made during a publish starts with the next event", () => {
      const { bus } = setup();
      const got: string[] = [];
      let added = false;
      bus.subscribe({}, () => {
        if (!added) {
          added = true;
          bus.subscribe({}, (e) => void got.push(`new:${e.data as string}`));
        }
      });
      bus.publishCustom("x", "one");
      bus.publishCustom("x", "two");
      assert.deepEqual(got, ["new:two"]);
    });

    it("unsubscribing cancels a pending retry and forgets queued events", async () => {
      const { clock, bus } = setup();
      let calls = 0;
      const h = bus.subscribe({}, () => {
        calls++;
        return Promise.reject(new Error("x"));
      });
      bus.publishCustom("x", 1);
      bus.publishCustom("x", 2);
      await flush();
      assert.equal(clock.pendingTimers, 1);
      assert.equal(bus.pendingRetries, 1);
      h.unsubscribe();
      assert.equal(clock.pendingTimers, 0);
      assert.equal(bus.pendingRetries, 0);
      clock.advance(60_000);
      await flush();
      assert.equal(calls, 1);
    });
  });

  describe("close", () => {
    it("cancels every pending retry timer and removes every subscription", async () => {
      const { clock, bus } = setup();
      let calls = 0;
      for (let i = 0; i < 3; i++) {
        bus.subscribe({ types: `t${i}` }, () => {
          calls++;
          return Promise.reject(new Error("x"));
        });
      }
      for (let i = 0; i < 3; i++) bus.publishCustom(`t${i}`, i);
      await flush();
      assert.equal(clock.pendingTimers, 3);
      assert.equal(bus.pendingRetries, 3);
      bus.close();
      assert.equal(clock.pendingTimers, 0);
      assert.equal(bus.pendingRetries, 0);
      assert.equal(bus.subscriberCount, 0);
      clock.advance(3_600_000);
      await flush();
      assert.equal(calls, 3, "no retry ran after close");
    });

    it("a handler promise that rejects after close schedules no retry", async () => {
      const { clock, bus } = setup();
      const gate = deferred();
      bus.subscribe({}, () => gate.promise);
      bus.publishCustom("x", 1);
      bus.close();
      gate.reject(new Error("late"));
      await flush();
      assert.equal(clock.pendingTimers, 0);
    });

    it("leaves the bus usable for publishing and history", () => {
      const { bus } = setup();
      bus.close();
      bus.publishCustom("after", 1);
      assert.equal(bus.query()[0]!.type, "after");
    });
  });

  describe("edge cases", () => {
    it("refuses __proto__ keys in user event data, keeps constructor keys as plain data, and pollutes nothing", () => {
      const { bus } = setup();
      const r = record(bus);
      const bad = JSON.parse('{"v": 1, "nested": {"__proto__": {"polluted": "yes"}}}') as unknown;
      assertInvalid(() => bus.publishCustom("weird", bad, { deviceId: "d1" }), "data.nested.__proto__");
      assert.equal(r.events.length, 0, "a refused event reaches nobody");
      assert.equal(bus.query({ deviceId: "d1" }).length, 0, "and is not kept");
      const data = JSON.parse('{"constructor": {"prototype": {"polluted": "yes"}}, "v": 1}') as unknown;
      bus.publishCustom("weird", data, { deviceId: "d1" });
      const kept = bus.query({ deviceId: "d1" })[0]!;
      assert.equal(JSON.stringify(kept.data), JSON.stringify(data));
      assertNoPollution();
    });

    it("handles __proto__ and constructor as event types, device ids and sources", () => {
      const { bus } = setup();
      const byType: string[] = [];
      const byDevice: string[] = [];
      bus.subscribe({ types: ["__proto__", "constructor"] }, (e) => void byType.push(e.type));
      bus.subscribe({ deviceId: ["__proto__", "constructor"], source: "constructor" }, (e) => void byDevice.push(e.deviceId!));
      bus.publishCustom("__proto__", 1, { deviceId: "__proto__", source: "constructor" });
      bus.publishCustom("constructor", 2, { deviceId: "constructor", source: "constructor" });
      bus.publishCustom("toString", 3, { deviceId: "hasOwnProperty", source: "constructor" });
      assert.deepEqual(byType, ["__proto__", "constructor"]);
      assert.deepEqual(byDevice, ["__proto__", "constructor"]);
      const st = bus.statistics();
      assert.ok(Object.hasOwn(st.byType, "__proto__"));
      assert.equal(JSON.stringify(st.byType), '{"__proto__":1,"constructor":1,"toString":1}');
      assert.deepEqual(
        bus.query({ type: "__proto__" }).map((e) => e.data),
        [1],
      );
      assert.deepEqual(
        bus.query({ deviceId: "constructor" }).map((e) => e.data),
        [2],
      );
      assertNoPollution();
    });

    it("refuses user event data over 256 KiB, and delivers a large string under it intact", () => {
      const { bus } = setup();
      const r = record(bus);
      assertInvalid(() => bus.publishCustom("blob", { big: "x".repeat(1024 * 1024) }), "data");
      assert.equal(r.events.length, 0);
      const big = "x".repeat(200 * 1024 - 1) + "!";
      bus.publishCustom("blob", { big });
      assert.equal((r.events[0]!.data as { big: string }).big, big);
      assert.equal((bus.query({ type: "blob" })[0]!.data as { big: string }).big.length, 200 * 1024);
    });

    it("refuses user events whose source, cause or device id is not plain text, and data that is not JSON", () => {
      const { bus } = setup();
      assertInvalid(() => bus.publishCustom("x", 1, { causeId: {} as unknown as string }), "causeId");
      assertInvalid(() => bus.publishCustom("x", 1, { source: "s".repeat(65) }), "source");
      assertInvalid(() => bus.publishCustom("x", 1, { deviceId: "not a device id" }), "deviceId");
      assertInvalid(() => bus.publishCustom("x", { when: new Date() }), "data.when");
      assertInvalid(() => bus.publishCustom("x", { n: Number.NaN }), "data.n");
      assert.equal(bus.statistics().published, 0);
    });

    it("refuses subscription settings that would break publishers or let a queue grow without bound", () => {
      const { bus } = setup();
      const h = () => undefined;
      assertInvalid(() => bus.subscribe({ dropPolicy: "drop-everything" as never }, h), "dropPolicy");
      assertInvalid(() => bus.subscribe({ queueLimit: Number.NaN }, h), "queueLimit");
      assertInvalid(() => bus.subscribe({ queueLimit: Number.POSITIVE_INFINITY }, h), "queueLimit");
      assertInvalid(() => bus.subscribe({ retries: -1 }, h), "retries");
      assertInvalid(() => bus.subscribe(null as never, h), "types");
      assert.equal(bus.subscriberCount, 0);
      bus.publishCustom("still.works", 1);
    });

    it("a 1 MB type name is refused, not processed", () => {
      const { bus } = setup();
      assertInvalid(() => bus.publishCustom("a".repeat(1024 * 1024), 1), "type");
      assertInvalid(() => bus.subscribe({ types: "a".repeat(1024 * 1024) }, () => undefined), "types");
    });

    it("keeps counting by type without bound on memory when user types are unbounded", () => {
      const { bus } = setup({ historySize: 10 });
      for (let i = 0; i < 1500; i++) bus.publishCustom(`t.${i}`, i);
      const st = bus.statistics();
      assert.ok(Object.keys(st.byType).length <= 1001);
      const total = Object.values(st.byType).reduce((a, b) => a + b, 0);
      assert.equal(total, 1500, "every event still counted");
      assert.equal(st.historySize, 10);
      // The hub's own types are counted by name however many user types came first.
      bus.publish("device.removed", { device: {}, reason: "user" } as never, { deviceId: "d1" });
      assert.equal(bus.statistics().byType["device.removed"], 1);
      assert.equal(bus.statistics().byType["(other)"], 500);
    });
  });
});
