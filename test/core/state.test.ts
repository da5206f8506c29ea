import { checkProperties } from "../../src/core/validation";
import assert from "node:assert/strict";
import { ManualClock } from "../../src/core/clock";
import { TethralError } from "../../src/core/errors";
import { EventBus } from "../../src/core/events";
import { Hub } from "../../src/core/hub";
import { DeviceRegistry } from "../../src/core/registry";
import { type ChangeCause, DEFAULT_STATE_OPTIONS, DEFAULT_TRANSITIONS, StateManager, type StateOptions } from "../../src/core/state";
import { allowsTransition } from "../../src/core/transitions";
import { DEVICE_STATUSES, type DeviceState, type DeviceStatus, type EventMap, type JsonObject, type TethralEvent } from "../../src/core/types";
import { assertCode, assertRejectsCode } from "../helpers";

const T0 = "2026-11-27T10:00:00.000Z";
const at = (ms: number) => new Date(Date.UTC(2026, 10, 27, 10, 0, 0) + ms).toISOString();

type Changed = TethralEvent<"state.changed", EventMap["state.changed"]>;

function setup(options: Partial<StateOptions> = {}, devices = ["d1", "d2"]) {
  const clock = new ManualClock();
  const bus = new EventBus(clock);
  const registry = new DeviceRegistry(bus, clock);
  const state = new StateManager(registry, bus, clock, { ...DEFAULT_STATE_OPTIONS, ...options });
  const changed: Changed[] = [];
  bus.subscribe("state.changed", (e) => {
    changed.push(e as Changed);
  });
  for (const id of devices) registry.register({ id, protocol: "mqtt" });
  return { clock, bus, registry, state, changed };
}

type Setup = ReturnType<typeof setup>;

/** A set as the hub makes it: planned (checked, nothing changed yet), then applied. */
function set(t: Setup, id: string, input: unknown, cause?: ChangeCause): DeviceState {
  return t.state.applySet(t.state.planSet(id, input), cause);
}

/** Asserts `fn` fails with `code` and leaves the device's state, history, counters and events as they were. */
function assertNoChange(t: Setup, id: string, fn: () => unknown, code: TethralError["code"], field?: string): void {
  const state = t.state.get(id);
  const history = t.state.history(id);
  const stats = t.state.statistics();
  const events = t.changed.length;
  t.clock.advance(1000);
  assertCode(fn, code, field);
  assert.deepEqual(t.state.get(id), state);
  assert.deepEqual(t.state.history(id), history);
  assert.deepEqual(JSON.stringify(t.state.statistics()), JSON.stringify(stats));
  assert.equal(t.changed.length, events);
}

function assertNoPollution(): void {
  const probe = {} as Record<string, unknown>;
  assert.equal(probe.polluted, undefined);
  assert.equal(typeof probe.constructor, "function");
  assert.equal(Object.hasOwn(Object.prototype, "polluted"), false);
}

/** Puts a device straight into a status, bypassing the rules (to test the rules from there). */
function place(t: Setup, id: string, status: DeviceStatus): void {
  t.registry.setStatus(t.registry.record(id)!, status);
}

describe("StateManager", () => {
  describe("a new device", () => {
    it("starts unknown with empty objects, version 0 and no times or history", async () => {
      const t = setup();
      assert.deepEqual(t.state.get("d1"), {
        deviceId: "d1", status: "unknown", properties: {}, desired: {}, delta: {}, version: 0, changedAt: null, updatedAt: null, reportedAt: null,
      });
      assert.deepEqual(t.state.history("d1"), []);
    });

    it("answers NOT_FOUND for unknown devices on get, report, set, setStatus and history", async () => {
      const t = setup();
      assertCode(() => t.state.get("nope"), "NOT_FOUND");
      assertCode(() => t.state.report("nope", { a: 1 }), "NOT_FOUND");
      assertCode(() => set(t, "nope", { desired: { a: 1 } }), "NOT_FOUND");
      assertCode(() => t.state.setStatus("nope", "online"), "NOT_FOUND");
      assertCode(() => t.state.history("nope"), "NOT_FOUND");
      assert.equal(t.state.statistics().reports, 0);
      assert.equal(t.changed.length, 0);
    });
  });

  describe("reports", () => {
    it("merges reported properties, bumps the version and stamps updatedAt and reportedAt but not changedAt", async () => {
      const t = setup();
      t.clock.advance(1000);
      assert.equal(t.state.report("d1", { temperature: 21.5, humidity: 40 }), true);
      t.clock.advance(1000);
      assert.equal(t.state.report("d1", { temperature: 22 }), true);
      assert.deepEqual(t.state.get("d1"), {
        deviceId: "d1", status: "unknown", properties: { temperature: 22, humidity: 40 }, desired: {}, delta: {}, version: 2,
        changedAt: null, updatedAt: at(2000), reportedAt: at(2000),
      });
    });

    it("does not bump the version for a report that changes nothing, but stamps reportedAt", async () => {
      const t = setup();
      t.state.report("d1", { a: 1, nested: { list: [1, { b: true }] } });
      t.clock.advance(5000);
      assert.equal(t.state.report("d1", { a: 1, nested: { list: [1, { b: true }] } }), false);
      assert.equal(t.state.report("d1", {}), false);
      const s = t.state.get("d1");
      assert.equal(s.version, 1);
      assert.equal(s.updatedAt, T0);
      assert.equal(s.reportedAt, at(5000));
      assert.equal(t.state.history("d1").length, 1);
      assert.equal(t.changed.length, 1);
      assert.deepEqual(t.state.statistics().reports, 3);
      assert.deepEqual(t.state.statistics().changes, 1);
    });

    it("records only the keys that changed, with their previous values (null when new)", async () => {
      const t = setup();
      t.state.report("d1", { a: 1, b: 2 });
      t.state.report("d1", { a: 1, b: 3, c: "x" }, { reason: "telemetry", causeId: "msg-7" });
      const last = t.state.history("d1").at(-1)!;
      assert.deepEqual(last.from, { properties: { b: 2, c: null } });
      assert.deepEqual(last.to, { properties: { b: 3, c: "x" } });
      assert.equal(last.reason, "telemetry");
      assert.equal(last.causeId, "msg-7");
    });

    it("keeps at most 256 properties per device: the 257th distinct key is INVALID and changes nothing", async () => {
      const t = setup();
      const half = (from: number) => Object.fromEntries(Array.from({ length: 128 }, (_, i) => [`k${from + i}`, i]));
      t.state.report("d1", half(0));
      t.state.report("d1", half(128));
      assert.equal(Object.keys(t.state.get("d1").properties).length, 256);
      assertNoChange(t, "d1", () => t.state.report("d1", { k0: "changed", extra: 1 }), "INVALID", "properties");
      assert.equal(t.state.get("d1").properties.k0, 0);
      assert.equal(t.state.report("d1", { k0: "changed", k255: null }), true, "known keys can still change");
      assert.equal(t.state.get("d1").version, 3);
      assert.equal(t.state.report("d2", half(0)), true, "the limit is per device");
    });

    it("stores constructor and prototype keys as data without touching Object.prototype", async () => {
      const t = setup();
      const props = JSON.parse('{"constructor": {"prototype": {"polluted": true}}, "prototype": 1, "toString": "x"}') as JsonObject;
      checkProperties(props);
      t.state.report("d1", props);
      assert.deepEqual(t.state.get("d1").properties, props);
      set(t, "d1", { desired: { constructor: "c" } });
      assert.deepEqual(t.state.get("d1").delta, { constructor: "c" });
      t.state.report("d1", { constructor: "c" });
      assert.deepEqual(t.state.get("d1").delta, {});
      assertNoPollution();
    });
  });

  describe("desired and delta", () => {
    it("derives delta from desired keys whose reported value differs, and drops them once reported", async () => {
      const t = setup();
      t.state.report("d1", { setpoint: 20, mode: "eco" });
      set(t, "d1", { desired: { setpoint: 22, mode: "eco", fan: { speed: 2 } } });
      let s = t.state.get("d1");
      assert.deepEqual(s.desired, { setpoint: 22, mode: "eco", fan: { speed: 2 } });
      assert.deepEqual(s.delta, { setpoint: 22, fan: { speed: 2 } });
      t.state.report("d1", { setpoint: 22 });
      assert.deepEqual(t.state.get("d1").delta, { fan: { speed: 2 } });
      t.state.report("d1", { fan: { speed: 2 } });
      s = t.state.get("d1");
      assert.deepEqual(s.delta, {});
      assert.deepEqual(s.desired, { setpoint: 22, mode: "eco", fan: { speed: 2 } }, "desired stays until removed");
      t.state.report("d1", { mode: "boost" });
      assert.deepEqual(t.state.get("d1").delta, { mode: "eco" });
    });

    it("removes a desired key with null; null for an absent key changes nothing", async () => {
      const t = setup();
      set(t, "d1", { desired: { a: 1, b: 2 } });
      const s = set(t, "d1", { desired: { a: null } });
      assert.deepEqual(s.desired, { b: 2 });
      assert.deepEqual(s.delta, { b: 2 });
      assert.equal(s.version, 2);
      assert.deepEqual(t.state.history("d1").at(-1)!.to, { desired: { a: null } });
      assert.deepEqual(t.state.history("d1").at(-1)!.from, { desired: { a: 1 } });
      assert.equal(set(t, "d1", { desired: { a: null } }).version, 2);
      assert.equal(set(t, "d1", { desired: { b: 2 } }).version, 2, "the same value is no change");
      assert.deepEqual(set(t, "d1", { desired: { b: null } }).desired, {});
      assert.equal(t.changed.length, 3);
    });

    it("refuses an empty desired key, which no report could ever match (it would stay in the delta)", async () => {
      const t = setup();
      assertNoChange(t, "d1", () => set(t, "d1", { desired: { "": 1 } }), "INVALID", "desired");
      assertNoChange(t, "d1", () => set(t, "d1", { desired: { ok: 1, "": 2 } }), "INVALID", "desired");
      // One kept from before the check can go.
      assert.equal(set(t, "d1", { desired: { "": null } }).version, 0, "removing a key that is not there changes nothing");
    });

    it("keeps desired within 256 keys and 256 KiB however many sets build it up (every change goes to the device whole); removals always pass", async () => {
      const t = setup();
      const keys = (from: number, n: number, value: unknown = 1) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${from + i}`, value]));
      set(t, "d1", { desired: keys(0, 200) });
      set(t, "d1", { desired: keys(200, 56) });
      assert.equal(Object.keys(t.state.get("d1").desired).length, 256);
      assertNoChange(t, "d1", () => set(t, "d1", { desired: { k0: 2, extra: 1 } }), "INVALID", "desired");
      assert.equal(set(t, "d1", { desired: { k0: 2, k1: null } }).version, 3, "known keys can still change, and keys go");

      // Each set is under 256 KiB; together they would not be.
      const big = "v".repeat(1500);
      set(t, "d2", { desired: keys(0, 100, big) });
      assertNoChange(t, "d2", () => set(t, "d2", { desired: keys(100, 100, big) }), "INVALID", "desired");
      assert.equal(Object.keys(t.state.get("d2").desired).length, 100);
      assert.equal(set(t, "d2", { desired: keys(0, 50, null) }).version, 2, "shrinking is always allowed");
    });

    it("sets status and desired together as one version bump, one history entry and one event", async () => {
      const t = setup();
      t.clock.advance(3000);
      const s = set(t, "d1", { status: "maintenance", desired: { firmware: "2.0" } }, { causeId: "req-1" });
      assert.equal(s.version, 1);
      assert.equal(s.status, "maintenance");
      assert.equal(s.changedAt, at(3000));
      assert.equal(s.updatedAt, at(3000));
      assert.equal(s.reportedAt, null);
      const h = t.state.history("d1");
      assert.equal(h.length, 1);
      assert.deepEqual(h[0]!.from, { status: "unknown", desired: { firmware: null } });
      assert.deepEqual(h[0]!.to, { status: "maintenance", desired: { firmware: "2.0" } });
      assert.equal(h[0]!.reason, "set");
      assert.equal(t.changed.length, 1);
      assert.equal(t.changed[0]!.causeId, "req-1");
      assert.equal(set(t, "d1", { status: "maintenance", desired: { firmware: "2.0" } }).version, 1, "repeating it changes nothing");
    });

    it("checks expectedVersion: a stale version is a CONFLICT that changes nothing", async () => {
      const t = setup();
      set(t, "d1", { desired: { a: 1 } });
      assertNoChange(t, "d1", () => set(t, "d1", { desired: { a: 2 }, status: "online", expectedVersion: 0 }), "CONFLICT", "expectedVersion");
      assertNoChange(t, "d1", () => set(t, "d1", { desired: { a: 2 }, expectedVersion: 2 }), "CONFLICT", "expectedVersion");
      assert.equal(set(t, "d1", { desired: { a: 2 }, expectedVersion: 1 }).version, 2);
      assert.equal(set(t, "d2", { desired: { a: 2 }, expectedVersion: 0 }).version, 1, "a new device is at version 0");
    });

    it("refuses bad input to set with INVALID, changing nothing", async () => {
      const t = setup();
      set(t, "d1", { desired: { a: 1 } });
      const bad: [unknown, string][] = [
        [{ desired: [1] }, "desired"],
        [{ desired: "x" }, "desired"],
        [{ desired: { v: NaN } }, "desired.v"],
        [{ desired: JSON.parse('{"a": {"__proto__": {"polluted": 1}}}') }, "desired.a.__proto__"],
        [{ status: "asleep" }, "status"],
        [{ expectedVersion: -1 }, "expectedVersion"],
        [{ expectedVersion: "1" }, "expectedVersion"],
        [{ properties: { a: 1 } }, "properties"],
        [null, "(body)"],
      ];
      for (const [input, field] of bad) assertNoChange(t, "d1", () => set(t, "d1", input), "INVALID", field);
      assertNoPollution();
    });
  });

  describe("status and transitions", () => {
    it("moves changedAt only when the status changes, and updatedAt on any change", async () => {
      const t = setup();
      t.clock.advance(1000);
      assert.equal(t.state.setStatus("d1", "online"), true);
      t.clock.advance(1000);
      t.state.report("d1", { a: 1 });
      t.clock.advance(1000);
      set(t, "d1", { desired: { a: 2 } });
      t.clock.advance(1000);
      assert.equal(t.state.setStatus("d1", "online"), false, "the same status is no change");
      const s = t.state.get("d1");
      assert.equal(s.changedAt, at(1000));
      assert.equal(s.updatedAt, at(3000));
      assert.equal(s.reportedAt, at(2000));
      assert.equal(s.version, 3);
      assert.equal(t.registry.get("d1").status, "online", "the registry sees the status");
    });

    it("follows the default transition table", async () => {
      const allowed: Record<DeviceStatus, DeviceStatus[]> = {
        unknown: ["online", "offline", "error", "maintenance"],
        online: ["offline", "error", "maintenance"],
        offline: ["online", "error", "maintenance"],
        error: ["online", "offline", "maintenance"],
        maintenance: ["unknown", "online", "offline", "error"],
      };
      for (const from of DEVICE_STATUSES) {
        for (const to of DEVICE_STATUSES) {
          if (from === to) continue;
          const t = setup();
          place(t, "d1", from);
          if (allowed[from].includes(to)) {
            assert.equal(t.state.setStatus("d1", to), true, `${from} → ${to}`);
            assert.equal(t.state.get("d1").status, to);
          } else {
            assertNoChange(t, "d1", () => t.state.setStatus("d1", to), "INVALID", "status");
            assertNoChange(t, "d1", () => set(t, "d1", { status: to, desired: { x: 1 } }), "INVALID", "status");
            assert.equal(t.state.get("d1").status, from, `${from} → ${to} is refused`);
          }
          assert.equal(allowsTransition(DEFAULT_TRANSITIONS, from, to), allowed[from].includes(to));
        }
      }
      assert.deepEqual(DEFAULT_TRANSITIONS, allowed);
    });

    it("refuses online → unknown with INVALID on status", async () => {
      const t = setup();
      t.state.setStatus("d1", "online");
      assertNoChange(t, "d1", () => set(t, "d1", { status: "unknown" }), "INVALID", "status");
      assert.equal(t.registry.list({ status: "online" }).total, 1);
    });

    it("applies custom transition rules given in the options, also through the Hub", async () => {
      const rules: StateOptions["transitions"] = {
        unknown: ["online"],
        online: ["error"],
        offline: [],
        error: ["online", "unknown"],
        maintenance: [],
      };
      const t = setup({ transitions: rules });
      assertNoChange(t, "d1", () => t.state.setStatus("d1", "offline"), "INVALID", "status");
      t.state.setStatus("d1", "online");
      assertNoChange(t, "d1", () => t.state.setStatus("d1", "maintenance"), "INVALID", "status");
      t.state.setStatus("d1", "error");
      t.state.setStatus("d1", "unknown");
      assert.equal(t.state.get("d1").status, "unknown");

      const hub = new Hub({ clock: new ManualClock(), state: { transitions: rules } });
      await hub.registerDevice({ id: "h", protocol: "mqtt" });
      await assertRejectsCode(() => hub.setState("h", { status: "maintenance" }), "INVALID", "status");
      assert.equal((await hub.setState("h", { status: "online" })).status, "online");
    });
  });

  describe("history", () => {
    it("returns changes oldest first with time, version, from/to, reason and causeId", async () => {
      const t = setup();
      t.state.report("d1", { a: 1 });
      t.clock.advance(1000);
      t.state.setStatus("d1", "online", { causeId: "hb-1" });
      t.clock.advance(1000);
      set(t, "d1", { desired: { a: 2 } }, { reason: "flow" });
      assert.deepEqual(t.state.history("d1"), [
        { deviceId: "d1", at: T0, version: 1, from: { properties: { a: null } }, to: { properties: { a: 1 } }, reason: "report", causeId: null },
        { deviceId: "d1", at: at(1000), version: 2, from: { status: "unknown" }, to: { status: "online" }, reason: "status", causeId: "hb-1" },
        { deviceId: "d1", at: at(2000), version: 3, from: { desired: { a: null } }, to: { desired: { a: 2 } }, reason: "flow", causeId: null },
      ]);
      assert.deepEqual(t.state.history("d2"), [], "each device has its own");
    });

    it("keeps the newest historySize entries after the ring wraps many times, and history(id, n) gives the last n", async () => {
      const t = setup({ historySize: 5 });
      for (let i = 1; i <= 23; i++) t.state.report("d1", { n: i });
      const h = t.state.history("d1");
      assert.deepEqual(h.map((e) => e.version), [19, 20, 21, 22, 23]);
      assert.deepEqual(h.map((e) => e.to.properties!.n), [19, 20, 21, 22, 23]);
      assert.deepEqual(t.state.history("d1", 2).map((e) => e.version), [22, 23]);
      assert.deepEqual(t.state.history("d1", 1).map((e) => e.version), [23]);
      assert.deepEqual(t.state.history("d1", 0), []);
      assert.deepEqual(t.state.history("d1", 50).length, 5);
      for (let wrap = 0; wrap < 7; wrap++) {
        const before = t.state.get("d1").version;
        for (let i = 0; i < 3; i++) t.state.report("d1", { n: before + i + 1 });
        assert.deepEqual(t.state.history("d1").map((e) => e.version), [before - 1, before, before + 1, before + 2, before + 3]);
      }
    });

    it("keeps every entry while under the bound", async () => {
      const t = setup();
      for (let i = 1; i <= 100; i++) t.state.report("d1", { n: i });
      const h = t.state.history("d1");
      assert.equal(h.length, 100);
      assert.equal(h[0]!.version, 1);
      assert.equal(h[99]!.version, 100);
      t.state.report("d1", { n: 101 });
      assert.deepEqual(t.state.history("d1", 3).map((e) => e.version), [99, 100, 101]);
      assert.equal(t.state.history("d1")[0]!.version, 2);
    });

    it("hands out copies of history entries", async () => {
      const t = setup();
      t.state.report("d1", { a: { deep: 1 } });
      (t.state.history("d1")[0]!.to.properties!.a as JsonObject).deep = 99;
      t.state.history("d1")[0]!.from.properties = { hacked: true };
      assert.deepEqual(t.state.history("d1")[0]!.to, { properties: { a: { deep: 1 } } });
      assert.deepEqual(t.state.history("d1")[0]!.from, { properties: { a: null } });
      assert.deepEqual(t.state.get("d1").properties, { a: { deep: 1 } });
    });
  });

  describe("state.changed events", () => {
    it("carry from, to, reason, version, the new state, the device and the causeId", async () => {
      const t = setup();
      t.state.report("d1", { a: 1 }, { causeId: "m-1", source: "mqtt", reason: "telemetry" });
      t.state.setStatus("d1", "online", { causeId: "m-2" });
      assert.equal(t.changed.length, 2);
      const [first, second] = t.changed as [Changed, Changed];
      assert.equal(first.deviceId, "d1");
      assert.equal(first.causeId, "m-1");
      assert.equal(first.source, "mqtt");
      assert.deepEqual(first.data.from, { properties: { a: null } });
      assert.deepEqual(first.data.to, { properties: { a: 1 } });
      assert.equal(first.data.reason, "telemetry");
      assert.equal(first.data.version, 1);
      assert.equal(first.data.state.version, 1);
      assert.deepEqual(first.data.state.properties, { a: 1 });
      assert.deepEqual(second.data.from, { status: "unknown" });
      assert.deepEqual(second.data.to, { status: "online" });
      assert.equal(second.data.state.status, "online");
      assert.equal(second.causeId, "m-2");
      first.data.state.properties.a = 42;
      (first.data.to.properties as JsonObject).a = 42;
      assert.deepEqual(t.state.get("d1").properties, { a: 1 }, "an event holds a copy");
      assert.deepEqual(t.state.history("d1")[0]!.to, { properties: { a: 1 } });
    });

    it("of values kept as series (no history): changing what an event carries changes neither the state nor another event", async () => {
      const t = setup();
      t.state.report("d1", { a: 1, o: { x: 1 } }, { series: true });
      t.state.report("d1", { a: 2, o: { x: 2 } }, { series: true });
      t.state.report("d1", { a: 3 }, { series: true });
      assert.equal(t.changed.length, 3);
      const [first, second, third] = t.changed as [Changed, Changed, Changed];
      assert.deepEqual(t.state.history("d1"), [], "no history entry shares them");
      // Objects among the values: the event holds copies.
      ((second.data.to.properties as JsonObject).o as JsonObject).x = 42;
      ((second.data.from.properties as JsonObject).o as JsonObject).x = 42;
      assert.deepEqual(t.state.get("d1").properties, { a: 3, o: { x: 2 } });
      assert.deepEqual(first.data.to.properties, { a: 1, o: { x: 1 } });
      // Plain values only: the event carries the change's own from and to, which nothing else holds.
      (third.data.to.properties as JsonObject).a = 42;
      (third.data.from.properties as JsonObject).a = 42;
      third.data.state.properties.a = 42;
      assert.deepEqual(t.state.get("d1").properties, { a: 3, o: { x: 2 } });
      assert.deepEqual(second.data.to.properties, { a: 2, o: { x: 42 } });
      assert.deepEqual(second.data.state.properties, { a: 2, o: { x: 2 } });
    });
  });

  describe("copies", () => {
    it("returns copies: changing a returned state or the inputs afterwards changes nothing inside", async () => {
      const t = setup();
      const reported: JsonObject = { a: { list: [1] } };
      const desired = { desired: { b: { x: 1 } } };
      t.state.report("d1", reported);
      const returned: DeviceState[] = [set(t, "d1", desired), t.state.get("d1"), t.state.list().states[0]!];
      for (const s of returned) {
        (s.properties.a as { list: number[] }).list.push(2);
        (s.desired.b as JsonObject).x = 2;
        (s.delta.b as JsonObject).x = 3;
        s.version = 99;
        s.status = "online";
      }
      ((reported.a as JsonObject).list as number[]).push(3);
      desired.desired.b.x = 4;
      const s = t.state.get("d1");
      assert.deepEqual(s.properties, { a: { list: [1] } });
      assert.deepEqual(s.desired, { b: { x: 1 } });
      assert.deepEqual(s.delta, { b: { x: 1 } });
      assert.equal(s.version, 2);
      assert.equal(s.status, "unknown");
    });
  });

  describe("list", () => {
    it("lists every state in registration order, or those with a status, paged with totals", async () => {
      const t = setup({}, ["a", "b", "c", "d", "e"]);
      for (const id of ["b", "c", "e"]) t.state.setStatus(id, "online");
      t.state.setStatus("d", "offline");
      const all = t.state.list();
      assert.equal(all.total, 5);
      assert.deepEqual(all.states.map((s) => s.deviceId), ["a", "b", "c", "d", "e"]);
      const online = t.state.list({ status: "online" });
      assert.equal(online.total, 3);
      assert.deepEqual(online.states.map((s) => s.deviceId), ["b", "c", "e"]);
      assert.ok(online.states.every((s) => s.status === "online"));
      const page = t.state.list({ status: "online", limit: 1, offset: 1 });
      assert.deepEqual(page.states.map((s) => s.deviceId), ["c"]);
      assert.equal(page.total, 3);
      assert.deepEqual(t.state.list({ limit: 2, offset: 3 }).states.map((s) => s.deviceId), ["d", "e"]);
      assert.deepEqual(t.state.list({ status: "error" }), { states: [], total: 0 });
      t.state.setStatus("c", "offline");
      // Within a status, the order is not registration order (see the report): compare as a set.
      assert.deepEqual(t.state.list({ status: "offline" }).states.map((s) => s.deviceId).sort(), ["c", "d"]);
      assert.equal(t.state.list({ status: "online" }).total, 2);
      assertCode(() => t.state.list({ status: "asleep" as DeviceStatus }), "INVALID", "status");
    });

    it("filters by several statuses and by protocol, as comma lists or lists in any case", async () => {
      const t = setup({}, ["a", "b", "c"]);
      t.registry.register({ id: "w1", protocol: "websocket" });
      t.registry.register({ id: "h1", protocol: "http" });
      for (const id of ["a", "w1"]) t.state.setStatus(id, "online");
      for (const id of ["b", "h1"]) t.state.setStatus(id, "offline");
      const ids = (q: Parameters<Setup["state"]["list"]>[0]) => t.state.list(q).states.map((s) => s.deviceId).sort();
      assert.deepEqual(ids({ status: "online,offline" }), ["a", "b", "h1", "w1"]);
      assert.deepEqual(ids({ status: ["ONLINE", "offline"] }), ["a", "b", "h1", "w1"]);
      assert.deepEqual(ids({ protocol: "websocket,HTTP" }), ["h1", "w1"]);
      assert.deepEqual(ids({ protocol: "mqtt", status: "online,unknown" }), ["a", "c"]);
      assert.deepEqual(ids({ protocol: "mqtt,http", status: "offline" }), ["b", "h1"]);
      const page = t.state.list({ status: "online,offline", limit: 2, offset: 1 });
      assert.equal(page.total, 4);
      assert.equal(page.states.length, 2);
      assert.equal(t.state.list({ protocol: "mqtt", status: "offline", limit: 0 }).total, 1);
      assert.deepEqual(t.state.list({ protocol: "zigbee" }), { states: [], total: 0 });
      const err = assertCode(() => t.state.list({ status: "online,asleep" }), "INVALID", "status");
      assert.equal(err.details[0]!.field, "status");
    });

    it("pages 100 states by default", async () => {
      const t = setup({}, Array.from({ length: 120 }, (_, i) => `d${i}`));
      const all = t.state.list();
      assert.equal(all.states.length, 100);
      assert.equal(all.total, 120);
    });
  });

  describe("statistics", () => {
    it("counts transitions, reports, changes and devices with a delta, up and down, including removal through the hub", async () => {
      const clock = new ManualClock();
      const hub = new Hub({ clock });
      for (const id of ["a", "b", "c"]) await hub.registerDevice({ id, protocol: "mqtt" });
      const s = hub.state;
      await hub.setState("a", { desired: { t: 20 } });
      await hub.setState("b", { desired: { t: 20 } });
      let stats = s.statistics();
      assert.equal(stats.withDelta, 2);
      assert.equal(stats.changes, 2);
      s.report("a", { t: 20 });
      stats = s.statistics();
      assert.equal(stats.withDelta, 1, "a reported what it was asked");
      assert.equal(stats.reports, 1);
      assert.equal(stats.changes, 3);
      s.report("a", { t: 20 });
      assert.equal(s.statistics().reports, 2);
      assert.equal(s.statistics().changes, 3, "an unchanged report is not a change");
      s.report("a", { t: 19 });
      assert.equal(s.statistics().withDelta, 2, "a drifted away again");
      await hub.setState("a", { desired: { t: null } });
      assert.equal(s.statistics().withDelta, 1, "nothing desired, no delta");
      s.setStatus("c", "online");
      s.setStatus("c", "offline");
      await hub.setState("b", { status: "maintenance" });
      stats = s.statistics();
      assert.equal(stats.transitions, 3);
      assert.deepEqual(stats.transitionsByStatus, { unknown: 0, online: 1, offline: 1, error: 0, maintenance: 1 });
      assert.deepEqual({ ...stats.byStatus }, { unknown: 1, offline: 1, maintenance: 1 });
      assert.equal(stats.total, 3);
      await hub.removeDevice("b");
      stats = s.statistics();
      assert.equal(stats.withDelta, 0, "a removed device takes its delta with it");
      assert.equal(stats.total, 2);
      assert.deepEqual({ ...stats.byStatus }, { unknown: 1, offline: 1 });
      await hub.registerDevice({ id: "b", protocol: "mqtt" });
      assert.deepEqual(s.get("b").desired, {}, "a device registered again starts afresh");
      assert.equal(s.get("b").version, 0);
      assert.equal(s.statistics().withDelta, 0);
    });
  });

  describe("checkProperties", () => {
    it("refuses non-objects with INVALID", async () => {
      for (const bad of [null, undefined, 5, "x", true, [1, 2], new Date(0), new Map()]) {
        assertCode(() => checkProperties(bad), "INVALID", "properties");
      }
      assertCode(() => checkProperties([], "data"), "INVALID", "data");
    });

    it("refuses __proto__ keys at any depth, naming the path", async () => {
      assertCode(() => checkProperties(JSON.parse('{"__proto__": {"polluted": 1}}')), "INVALID", "properties.__proto__");
      assertCode(() => checkProperties(JSON.parse('{"a": [{"b": {"__proto__": {}}}]}')), "INVALID", "properties.a[0].b.__proto__");
      assertNoPollution();
    });

    it("refuses non-finite numbers and over-deep nesting", async () => {
      assertCode(() => checkProperties({ t: Infinity }), "INVALID", "properties.t");
      assertCode(() => checkProperties({ t: [NaN] }), "INVALID", "properties.t[0]");
      let deep: JsonObject = {};
      for (let i = 0; i < 20; i++) deep = { x: deep };
      assertCode(() => checkProperties(deep), "INVALID");
    });

    it("accepts 256 KiB and 256 keys, and refuses one byte or one key more", async () => {
      const of = (bytes: number) => ({ k: "x".repeat(bytes - '{"k":""}'.length) });
      assert.deepEqual(checkProperties(of(256 * 1024)), of(256 * 1024));
      assertCode(() => checkProperties(of(256 * 1024 + 1)), "INVALID", "properties");
      const keys = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]));
      assert.equal(Object.keys(checkProperties(keys(256))).length, 256);
      assertCode(() => checkProperties(keys(257)), "INVALID", "properties");
    });

    it("counts the bytes of values whose JSON is longest for their size: numbers of 25 characters, escaped and astral text", async () => {
      // The check bounds a value's JSON from above while it walks, and serializes only what may be
      // too long: each of these, just past 256 KiB, must still be refused, and just under, kept.
      const longest = -0.0000019953823596627614; // 25 characters as JSON
      assert.equal(JSON.stringify(longest).length, 25);
      const cases: Array<[string, (n: number) => JsonObject]> = [
        ["numbers", (n) => ({ a: Array.from({ length: n }, () => longest) })],
        ["escaped text", (n) => ({ a: "\u0001".repeat(n) })],
        ["astral text", (n) => ({ a: "😀".repeat(n) })],
        ["escaped keys", (n) => ({ a: Array.from({ length: n }, (_, i) => ({ [`${"\u0002".repeat(120)}${i}`]: i })) })],
      ];
      for (const [name, of] of cases) {
        const bytes = (n: number) => Buffer.byteLength(JSON.stringify(of(n)));
        let n = 1;
        while (bytes(n * 2) <= 256 * 1024) n *= 2;
        for (let step = n / 2; step >= 1; step /= 2) if (bytes(n + step) <= 256 * 1024) n += step;
        assert.ok(bytes(n) <= 256 * 1024 && bytes(n + 1) > 256 * 1024, name);
        assert.deepEqual(checkProperties(of(n)), of(n), `${name}: ${bytes(n)} bytes kept`);
        assertCode(() => checkProperties(of(n + 1)), "INVALID", "properties");
      }
    });

    it("measures a value whose getter checks another value meanwhile as if it had not", async () => {
      const props = {
        a: "x".repeat(256 * 1024),
        get b() {
          checkProperties({ x: 1 });
          return 1;
        },
      };
      assertCode(() => checkProperties(props), "INVALID", "properties");
    });

    it("keeps constructor keys as data", async () => {
      const props = JSON.parse('{"constructor": {"name": "x"}}') as JsonObject;
      assert.equal(checkProperties(props), props);
      assertNoPollution();
    });
  });

  describe("through the Hub", () => {
    it("telemetry reports merge into properties and the state history carries the message id", async () => {
      const clock = new ManualClock();
      const hub = new Hub({ clock });
      await hub.registerDevice({ id: "x", protocol: "mqtt" });
      await hub.setState("x", { desired: { setpoint: 22 } });
      clock.advance(1000);
      hub.ingest("x", { kind: "telemetry", data: { setpoint: 22, temperature: 21 }, causeId: "msg-1" });
      const s = hub.getState("x");
      assert.equal(s.status, "online");
      assert.deepEqual(s.properties, { setpoint: 22, temperature: 21 });
      assert.deepEqual(s.delta, {});
      assert.equal(s.changedAt, at(1000));
      const h = await hub.stateHistory("x");
      assert.ok(h.slice(1).every((e) => e.causeId === "msg-1"));
      assert.deepEqual((await hub.stateHistory("x", 1))[0]!.to, { properties: { setpoint: 22, temperature: 21 } });
    });
  });
});
