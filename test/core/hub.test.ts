import assert from "node:assert/strict";
import { ManualClock } from "../../src/core/clock";
import { TethralError } from "../../src/core/errors";
import { Hub, type HubOptions } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { assertCode } from "../helpers";
import { FakeAdapter } from "./fake-adapter";

/** A started hub with every event it publishes kept (start is awaited: a hub takes no commands before it runs). */
async function setup(options: HubOptions = {}) {
  const clock = new ManualClock();
  const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, ...options });
  const events: TethralEvent[] = [];
  hub.subscribe({ types: "*" }, (e) => {
    events.push(e);
  });
  await hub.start();
  const types = () => events.map((e) => e.type);
  const of = (type: string) => events.filter((e) => e.type === type);
  return { clock, hub, events, types, of };
}


describe("Hub", () => {
  describe("device traffic through ingest", () => {
    it("brings a device online on its first message and merges telemetry into its state", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "boiler-1", protocol: "mqtt", heartbeatTimeout: 60 });
      const result = t.hub.ingest("boiler-1", { kind: "telemetry", data: { temperature: 21.5 }, protocol: "mqtt", causeId: "msg-1" });
      assert.deepEqual(result, { deviceId: "boiler-1", status: "online", changed: true, causeId: "msg-1" });
      const device = t.hub.getDevice("boiler-1");
      assert.equal(device.status, "online");
      assert.equal(device.lastSeen, new Date(t.clock.now()).toISOString());
      const state = t.hub.getState("boiler-1");
      assert.deepEqual(state.properties, { temperature: 21.5 });
      assert.equal(state.version, 2, "one change for the status, one for the property");
      assert.deepEqual(t.types().slice(-4), ["state.changed", "device.online", "state.changed", "message.received"]);
      const online = t.of("device.online")[0]!;
      assert.equal(online.deviceId, "boiler-1");
      assert.equal(online.causeId, "msg-1", "the event traces back to the message");
      assert.deepEqual(
        (await t.hub.stateHistory("boiler-1")).map((h) => [h.reason, h.causeId]),
        [
          ["heartbeat", "msg-1"],
          ["telemetry", "msg-1"],
        ],
      );
    });

    it("goes offline when silent past its timeout and back online on the next message", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "coap", heartbeatTimeout: 10 });
      t.hub.ingest("d1", { kind: "heartbeat" });
      t.clock.advance(10_000);
      assert.equal(t.hub.getDevice("d1").status, "online");
      t.clock.advance(1);
      assert.equal(t.hub.getDevice("d1").status, "offline");
      const offline = t.of("device.offline");
      assert.equal(offline.length, 1);
      assert.equal(offline[0]!.priority, "high");
      assert.deepEqual(offline[0]!.data, { previous: "online", lastSeen: "2026-11-27T10:00:00.000Z", timeout: 10, reason: "timeout" });
      t.hub.ingest("d1", { kind: "heartbeat" });
      assert.equal(t.hub.getDevice("d1").status, "online");
      assert.equal(t.of("device.online").length, 2);
    });

    it("a plain heartbeat of an online device changes nothing but lastSeen", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt" });
      t.hub.ingest("d1", { kind: "heartbeat" });
      const before = t.hub.getState("d1");
      const count = t.events.length;
      t.clock.advance(500);
      const result = t.hub.ingest("d1", { kind: "heartbeat" });
      assert.equal(result.changed, false);
      assert.equal(result.causeId, t.events.at(-1)!.causeId, "the message.received event carries the result's cause id");
      assert.equal(t.hub.getState("d1").version, before.version);
      assert.equal(t.events.length, count + 1, "only message.received");
      assert.equal(t.events.at(-1)!.type, "message.received");
      assert.equal(t.hub.getDevice("d1").lastSeen, new Date(t.clock.now()).toISOString());
    });

    it("makes no cause id for a plain heartbeat when nothing is recorded and nobody listens", async () => {
      const clock = new ManualClock();
      const hub = new Hub({ clock });
      await hub.registerDevice({ id: "d1", protocol: "mqtt" });
      hub.ingest("d1", { kind: "heartbeat" });
      assert.equal(hub.ingest("d1", { kind: "heartbeat" }).causeId, null);
    });

    it("an offline status message (MQTT last will) takes the device offline at once", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 600 });
      t.hub.ingest("d1", { kind: "status", data: "online" });
      t.hub.ingest("d1", { kind: "status", data: "offline" });
      assert.equal(t.hub.getDevice("d1").status, "offline");
      assert.equal((t.of("device.offline")[0]!.data as { reason: string }).reason, "reported");
      t.clock.advance(601_000);
      assert.equal(t.of("device.offline").length, 1, "no second offline from the timeout");
    });

    it("a device may report an error status and clear it by reporting online", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "websocket" });
      t.hub.ingest("d1", { kind: "state", data: { status: "error", properties: { code: 17 } } });
      assert.equal(t.hub.getDevice("d1").status, "error");
      assert.deepEqual(t.hub.getState("d1").properties, { code: 17 });
      t.hub.ingest("d1", { kind: "heartbeat" });
      assert.equal(t.hub.getDevice("d1").status, "error", "a heartbeat does not hide an error");
      t.hub.ingest("d1", { kind: "state", data: { status: "online" } });
      assert.equal(t.hub.getDevice("d1").status, "online");
    });

    describe("refuses bad input, counts it, and changes nothing", () => {
      const cases: [string, unknown, string, string][] = [
        ["telemetry that is not an object", { kind: "telemetry", data: [1, 2] }, "INVALID", "data"],
        ["telemetry that is a string", { kind: "telemetry", data: "21.5" }, "INVALID", "data"],
        ["telemetry with a __proto__ key", { kind: "telemetry", data: JSON.parse('{"__proto__": {"polluted": 1}}') }, "INVALID", "data.__proto__"],
        ["telemetry with a 1 MB string", { kind: "telemetry", data: { blob: "x".repeat(1 << 20) } }, "INVALID", "data"],
        ["telemetry with NaN", { kind: "telemetry", data: { t: Number.NaN } }, "INVALID", "data.t"],
        ["telemetry with a NUL character", { kind: "telemetry", data: { s: "a\u0000b" } }, "INVALID", "data.s"],
        ["telemetry with a lone surrogate", { kind: "telemetry", data: { s: "temp \ud83c" } }, "INVALID", "data.s"],
        ["a state with an unknown status", { kind: "state", data: { status: "sleeping" } }, "INVALID", "data.status"],
        // Named by its first 31 units, not 32: the 32nd is half of an emoji (a lone surrogate in JSON).
        ["telemetry with a key of 100 emoji", { kind: "telemetry", data: { [`a${"😀".repeat(100)}`]: 1 } }, "INVALID", `data.a${"😀".repeat(15)}…`],
        ["a state with an unknown field", { kind: "state", data: { colour: "red" } }, "INVALID", "data.colour"],
        ["a status that is neither online nor offline", { kind: "status", data: "maybe" }, "INVALID", "data"],
        ["an unknown kind", { kind: "gossip", data: {} }, "INVALID", "kind"],
      ];
      for (const [name, message, code, field] of cases) {
        it(name, async () => {
          const t = await setup();
          await t.hub.registerDevice({ id: "d1", protocol: "mqtt" });
          const before = JSON.stringify([t.hub.getDevice("d1"), t.hub.getState("d1")]);
          assertCode(() => t.hub.ingest("d1", message as never), code as TethralError["code"], field);
          assert.equal(JSON.stringify([t.hub.getDevice("d1"), t.hub.getState("d1")]), before, "device and state untouched");
          assert.equal(t.hub.getDevice("d1").lastSeen, null, "a refused message is not a heartbeat");
          assert.equal(t.of("message.rejected").length, 1);
          assert.equal(t.hub.statistics().messages.rejected, 1);
          assert.equal(({} as Record<string, unknown>).polluted, undefined);
        });
      }

      it("an unknown device is NOT_FOUND and published as message.rejected", async () => {
        const t = await setup();
        assertCode(() => t.hub.ingest("ghost", { kind: "heartbeat", protocol: "coap" }), "NOT_FOUND");
        const rejected = t.of("message.rejected")[0]!;
        assert.equal(rejected.deviceId, "ghost");
        assert.equal((rejected.data as { reason: string }).reason, "unknown-device");
        assert.equal(t.hub.deviceStatistics().total, 0);
      });

      it("a constructor key in telemetry is ordinary data", async () => {
        const t = await setup();
        await t.hub.registerDevice({ id: "d1", protocol: "mqtt" });
        t.hub.ingest("d1", { kind: "telemetry", data: JSON.parse('{"constructor": 1, "prototype": {"x": 2}}') });
        assert.deepEqual(JSON.parse(JSON.stringify(t.hub.getState("d1").properties)), { constructor: 1, prototype: { x: 2 } });
      });
    });
  });

  describe("maintenance", () => {
    it("suppresses offline alarms and keeps its status through traffic until cleared", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 10 });
      t.hub.ingest("d1", { kind: "heartbeat" });
      await t.hub.setState("d1", { status: "maintenance" });
      t.clock.advance(60_000);
      assert.equal(t.hub.getDevice("d1").status, "maintenance");
      assert.equal(t.of("device.offline").length, 0, "no alarm while in maintenance");
      t.hub.ingest("d1", { kind: "telemetry", data: { t: 1 } });
      assert.equal(t.hub.getDevice("d1").status, "maintenance", "traffic does not end maintenance");
      await t.hub.setState("d1", { status: "online" });
      t.clock.advance(10_001);
      assert.equal(t.hub.getDevice("d1").status, "offline", "cleared to online, then silent: offline again");
      assert.equal(t.of("device.offline").length, 1);
    });

    it("setting offline by hand stops the wait; the next message brings the device back", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 10 });
      t.hub.ingest("d1", { kind: "heartbeat" });
      await t.hub.setState("d1", { status: "offline" });
      t.hub.ingest("d1", { kind: "heartbeat" });
      assert.equal(t.hub.getDevice("d1").status, "online");
    });
  });

  describe("presence: every status change is announced the same way", () => {
    it("a flow setting a device online or offline publishes device.online / device.offline with its cause", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 10 });
      await t.hub.setState("d1", { status: "online" }, { causeId: "flow-msg-1", parentCauseId: "device-msg-0" });
      const online = t.of("device.online");
      assert.equal(online.length, 1);
      assert.equal(online[0]!.deviceId, "d1");
      assert.equal(online[0]!.source, "user");
      assert.equal(online[0]!.causeId, "flow-msg-1");
      assert.equal(online[0]!.parentCauseId, "device-msg-0", "traced back to what the flow reacted to");
      assert.deepEqual(online[0]!.data, { previous: "unknown", lastSeen: null }, "never heard from: no lastSeen");
      await t.hub.setState("d1", { status: "offline" }, { causeId: "flow-msg-2", source: "flow" });
      const offline = t.of("device.offline");
      assert.equal(offline.length, 1);
      assert.equal(offline[0]!.source, "flow", "the change's own source, as device.online has");
      assert.equal((offline[0]!.data as { reason: string }).reason, "user");
      assert.equal(offline[0]!.causeId, "flow-msg-2");
      // Maintenance is no alarm, and clearing it to offline announces nothing either.
      await t.hub.setState("d1", { status: "maintenance" });
      await t.hub.setState("d1", { status: "offline" });
      assert.equal(t.of("device.offline").length, 1);
      assert.equal(t.of("device.online").length, 1);
    });

    it("a command waiting for an offline device goes out when a flow sets the device online", async () => {
      const adapter = new FakeAdapter("mqtt");
      const t = await setup({ protocols: [adapter] });
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 10 });
      await t.hub.setState("d1", { status: "offline" });
      const command = await t.hub.sendCommand("d1", { command: "reboot" });
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(adapter.frames.length, 0, "not sent to an offline device");
      await t.hub.setState("d1", { status: "online" });
      await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(
        adapter.frames.map((f) => f.id),
        [command.id],
        "sent once the device is back",
      );
    });
  });

  describe("events and what they carry are plain objects", () => {
    /** Every object reachable from `value`, with its path. */
    function objects(value: unknown, path: string, out: Array<[string, object]> = []): Array<[string, object]> {
      if (value === null || typeof value !== "object") return out;
      out.push([path, value]);
      for (const [k, v] of Object.entries(value)) objects(v, `${path}.${k}`, out);
      return out;
    }

    it("gives flows events whose every object has Object.prototype as its prototype, keys in the contract's order, and a JSON round trip that loses nothing", async () => {
      // The hub builds events, device copies and state views with constructors rather than
      // literals (src/core/plain.ts); a flow, JSON and Node-RED's cloning must not see a difference.
      const t = await setup({ protocols: [new FakeAdapter("mqtt")] });
      await t.hub.registerDevice({ id: "p-1", protocol: "mqtt", heartbeatTimeout: 60, metadata: { room: { floor: 2 } } });
      t.hub.ingest("p-1", { kind: "telemetry", data: { temperature: 21.5, nested: { a: [1, { b: 2 }] } } });
      const command = await t.hub.sendCommand("p-1", { command: "set", params: { level: 3 } });
      await new Promise((resolve) => setImmediate(resolve));
      await t.hub.cancelCommand(command.id);
      const afterUpdate = await t.hub.updateDevice("p-1", { name: "Boiler" });
      t.clock.advance(61_000);
      await t.hub.removeDevice("p-1");
      const seen = new Set(t.types());
      for (const type of ["device.registered", "state.changed", "device.online", "command.queued", "command.sent", "command.cancelled", "device.updated", "device.offline", "device.removed"]) {
        assert.ok(seen.has(type), `${type} was published`);
      }
      for (const event of t.events) {
        assert.deepEqual(Object.keys(event), ["id", "type", "priority", "source", "deviceId", "data", "timestamp", "expiresAt", "causeId", "parentCauseId"]);
        for (const [path, o] of objects(event, event.type)) {
          const proto = Object.getPrototypeOf(o);
          assert.ok(proto === Object.prototype || proto === Array.prototype, `${path} is a plain object or array`);
          assert.equal(Object.prototype.toString.call(o), Array.isArray(o) ? "[object Array]" : "[object Object]", path);
          if (!Array.isArray(o)) assert.equal((o as { constructor?: unknown }).constructor, Object, `${path}.constructor is Object`);
        }
        // structuredClone makes plain objects; deepEqual compares prototypes, so this fails for anything else.
        assert.deepEqual(structuredClone(event), event, `${event.type}: its clone is equal to it`);
      }
      const registered = t.of("device.registered")[0]!.data as { device: Record<string, unknown> };
      assert.deepEqual(Object.keys(registered), ["device"]);
      assert.deepEqual(Object.keys(registered.device), [
        "id", "name", "protocol", "address", "manufacturer", "model", "firmware", "capabilities", "tags", "heartbeatTimeout", "metadata", "status", "lastSeen", "createdAt", "updatedAt",
      ]);
      const changed = t.of("state.changed").at(-1)!.data as Record<string, unknown>;
      assert.deepEqual(Object.keys(changed), ["from", "to", "reason", "version", "state"]);
      assert.deepEqual(Object.keys(changed.state as object), ["deviceId", "status", "properties", "desired", "delta", "version", "changedAt", "updatedAt", "reportedAt"]);
      assert.deepEqual(Object.keys(t.of("device.online")[0]!.data as object), ["previous", "lastSeen"]);
      assert.deepEqual(Object.keys(t.of("device.offline")[0]!.data as object), ["previous", "lastSeen", "timeout", "reason"]);
      assert.deepEqual(Object.keys(t.of("device.removed")[0]!.data as object), ["device", "reason"]);
      const cancelled = t.of("command.cancelled")[0]!.data as { command: Record<string, unknown> };
      assert.deepEqual(Object.keys(cancelled), ["command"]);
      assert.deepEqual(Object.keys(cancelled.command), [
        "id", "deviceId", "command", "params", "status", "attempts", "priority", "createdAt", "sentAt", "completedAt", "expiresAt", "result", "error", "expectResponse", "timeout", "retries",
      ]);
      assert.deepEqual(cancelled.command, { ...(await t.hub.getCommand(command.id)) });
      assert.deepEqual(t.of("device.updated")[0]!.data, { device: { ...afterUpdate }, changes: ["name"] }, "deepEqual, which compares prototypes, sees plain objects");
      await t.hub.stop();
    });
  });

  describe("registry glue", () => {
    it("a registration refused (bad input, a taken id, a bad cause) is a rejected promise that changes nothing, never a throw", async () => {
      const t = await setup();
      for (const [input, cause, code] of [
        [{ id: "bad id!", protocol: "mqtt" }, {}, "INVALID"],
        [null, {}, "INVALID"],
        [{ id: "d1", protocol: "mqtt" }, { causeId: 7 }, "INVALID"],
        // A flow's object whose id cannot be read: refused as any other bad input.
        [Object.defineProperty({ protocol: "mqtt" }, "id", { enumerable: true, get: () => { throw new TypeError("no id"); } }), {}, undefined],
      ] as const) {
        let pending: Promise<unknown> | undefined;
        assert.doesNotThrow(() => {
          pending = t.hub.registerDevice(input, cause as never);
        });
        await assert.rejects(pending!, (err: unknown) => (code === undefined ? err instanceof TypeError : (err as { code?: string }).code === code));
      }
      assert.equal(t.hub.listDevices().total, 0);
      const token = (await t.hub.registerDevice({ id: "d1", protocol: "mqtt" })).token;
      assert.equal(typeof token, "string");
      await assert.rejects(t.hub.registerDevice({ id: "d1", protocol: "coap" }), (err: unknown) => (err as { code?: string }).code === "CONFLICT");
      assert.equal(t.hub.getDevice("d1").protocol, "mqtt");
      assert.equal(t.of("device.registered").length, 1);
      // The token answered is the one the hub checks.
      assert.equal(t.hub.tokens.verify("d1", token), true);
      assert.equal(t.hub.tokens.verify("d1", `${token}x`), false);
    });

    it("a changed heartbeatTimeout takes effect at once", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 600 });
      t.hub.ingest("d1", { kind: "heartbeat" });
      await t.hub.updateDevice("d1", { heartbeatTimeout: 5 });
      t.clock.advance(5_001);
      assert.equal(t.hub.getDevice("d1").status, "offline");
    });

    it("removing a device stops its heartbeat and forgets its state; the id can be registered afresh", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt", heartbeatTimeout: 10 });
      t.hub.ingest("d1", { kind: "telemetry", data: { t: 1 } });
      await t.hub.removeDevice("d1");
      t.clock.advance(60_000);
      assert.equal(t.of("device.offline").length, 0);
      assertCode(() => t.hub.getState("d1"), "NOT_FOUND");
      await t.hub.registerDevice({ id: "d1", protocol: "coap" });
      assert.deepEqual(t.hub.getState("d1").properties, {});
      assert.equal(t.hub.getState("d1").version, 0);
      assert.equal((t.of("device.removed")[0]!.data as { reason: string }).reason, "user");
    });

    it("removes devices offline longer than the retention age, with a device.removed event", async () => {
      const t = await setup({ heartbeat: { resolutionMs: 0, retention: { enabled: true, offlineForSec: 3600 } } });
      await t.hub.registerDevice({ id: "gone", protocol: "mqtt", heartbeatTimeout: 10 });
      await t.hub.registerDevice({ id: "kept", protocol: "mqtt", heartbeatTimeout: 10 });
      t.hub.ingest("gone", { kind: "heartbeat" });
      t.hub.ingest("kept", { kind: "heartbeat" });
      await t.hub.setState("kept", { status: "maintenance" });
      t.clock.advance(2 * 3_600_000);
      assert.deepEqual(
        t.hub.listDevices().devices.map((d) => d.id),
        ["kept"],
        "a device in maintenance is not cleaned up",
      );
      const removed = t.of("device.removed");
      assert.equal(removed.length, 1);
      assert.equal((removed[0]!.data as { reason: string }).reason, "retention");
    });

    it("tells when the adaptive timeout learns a device's cadence", async () => {
      const t = await setup({ heartbeat: { resolutionMs: 0, adaptive: { enabled: true, factor: 3, minSec: 1, minSamples: 5 } } });
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt" });
      for (let i = 0; i < 10; i++) {
        t.hub.ingest("d1", { kind: "heartbeat" });
        t.clock.advance(2_000);
      }
      const learned = t.of("device.updated").find((e) => (e.data as { reason?: string }).reason === "adaptive-timeout");
      assert.ok(learned, "a device.updated event with the learned timeout");
      assert.equal((learned.data as { effectiveTimeout: number }).effectiveTimeout, 6);
    });
  });

  describe("user events", () => {
    it("publishes user events and refuses the hub's own prefixes and unknown devices", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt" });
      const e = t.hub.publish("alarm.raised", { level: 3 }, { priority: "critical", deviceId: "d1" });
      assert.equal(e.source, "flow");
      assert.equal((await t.hub.eventHistory({ type: "alarm.*" }))[0]!.id, e.id);
      (e.data as { level: number }).level = 99; // a flow changing the msg.event it was handed
      assert.deepEqual((await t.hub.eventHistory({ type: "alarm.*" }))[0]!.data, { level: 3 }, "history keeps what was published");
      assertCode(() => t.hub.publish("device.online", {}), "INVALID", "type");
      assertCode(() => t.hub.publish("alarm.raised", {}, { deviceId: "ghost" }), "NOT_FOUND");
    });
  });

  describe("health and statistics", () => {
    it("reports component health and counts", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d1", protocol: "mqtt", capabilities: ["temperature"] });
      t.hub.ingest("d1", { kind: "telemetry", data: { t: 1 } });
      await t.hub.registerDevice({ id: "quiet", protocol: "mqtt" });
      const health = t.hub.health();
      assert.equal(health.status, "ok");
      assert.equal(health.components.registry!.devices, 2);
      assert.equal(health.components.heartbeat!.tracked, 1, "only the device heard from is watched");
      const stats = t.hub.statistics();
      assert.equal(stats.devices.byStatus.online, 1);
      assert.equal(stats.messages.byKind.telemetry, 1);
      assert.equal(stats.state.transitions, 1);
    });
  });

  describe("lifecycle", () => {
    it("after stop() no timer it made is pending on the injected clock", async () => {
      const clock = new ManualClock();
      const hub = new Hub({ clock, heartbeat: { resolutionMs: 0, retention: { enabled: true, offlineForSec: 60 } } });
      await hub.start();
      for (let i = 0; i < 20; i++) {
        await hub.registerDevice({ id: `d${i}`, protocol: "mqtt", heartbeatTimeout: 5 });
        hub.ingest(`d${i}`, { kind: "heartbeat" });
      }
      // Flapping, a retrying subscriber and offline devices waiting for retention all hold timers.
      hub.subscribe({ types: "device.*" }, () => Promise.reject(new Error("down")));
      for (let i = 0; i < 8; i++) {
        clock.advance(5_001);
        hub.ingest("d0", { kind: "heartbeat" });
      }
      assert.ok(clock.pendingTimers > 0);
      await hub.stop();
      assert.equal(clock.pendingTimers, 0);
      assert.equal(hub.events.subscriberCount, 0);
      assert.equal(hub.heartbeat.pending.timerArmed, false);
    });

    it("after stop() no timer or handle is left in the process (real clock)", async () => {
      const hub = new Hub({ heartbeat: { resolutionMs: 50 } });
      await hub.start();
      // Taken after the first await: mocha arms its own test timer once the test has started.
      const baseline = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
      hub.subscribe({ types: "*" }, () => undefined);
      for (let i = 0; i < 10; i++) {
        await hub.registerDevice({ id: `d${i}`, protocol: "mqtt", heartbeatTimeout: 30 });
        hub.ingest(`d${i}`, { kind: "telemetry", data: { t: i } });
      }
      assert.ok(process.getActiveResourcesInfo().filter((r) => r === "Timeout").length > baseline, "the hub armed a timer");
      await hub.stop();
      assert.equal(process.getActiveResourcesInfo().filter((r) => r === "Timeout").length, baseline, "no timer of the hub's is left");
      assert.equal(hub.events.subscriberCount, 0);
      assert.equal(hub.isRunning, false);
    });

    it("publishes hub.started and hub.stopped", async () => {
      const clock = new ManualClock();
      const hub = new Hub({ clock });
      await hub.start();
      await hub.stop();
      assert.deepEqual(
        (await hub.eventHistory({ type: "hub.*" })).map((e) => e.type),
        ["hub.stopped", "hub.started"],
      );
    });
  });
});
