import assert from "node:assert/strict";
import { ManualClock } from "../../src/core/clock";
import { Hub, type HubOptions } from "../../src/core/hub";
import {
  MAX_FOR_SECONDS,
  StateWatcher,
  type StateWatchOutput,
  type WatchedChange,
  parseStateWatchOptions,
} from "../../src/core/state-watch";
import type { AnomalyData } from "../../src/core/types";
import { assertCode } from "../helpers";

const T = 1000;

async function setup(settings: Record<string, unknown> = {}, hubOptions: HubOptions = {}) {
  const clock = new ManualClock();
  const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, ...hubOptions });
  await hub.start();
  for (const id of ["d1", "d2"]) await hub.registerDevice({ id, protocol: "mqtt", heartbeatTimeout: 3600 });
  const outputs: StateWatchOutput[] = [];
  const watcher = new StateWatcher(parseStateWatchOptions(settings), clock, {
    emit: (o) => outputs.push(o),
    current: (id) => {
      try {
        return hub.getState(id);
      } catch {
        return undefined;
      }
    },
  });
  const subscription = hub.subscribe(watcher.subscription(), (e) => watcher.handle(e));
  const changes = () => outputs.map((o) => ({ id: o.deviceId, ...(o.change as WatchedChange) }));
  return { clock, hub, watcher, outputs, subscription, changes };
}

type Setup = Awaited<ReturnType<typeof setup>>;

/** Brings both devices online with a first reading, lets any wait run out, then forgets the outputs. */
function warmUp(t: Setup, data: Record<string, number> = { temperature: 20, humidity: 40 }) {
  t.hub.ingest("d1", { kind: "telemetry", data });
  t.hub.ingest("d2", { kind: "telemetry", data });
  t.clock.advance(60 * T);
  t.outputs.length = 0;
}

describe("StateWatcher", () => {
  let hubs: Hub[] = [];
  const track = async (settings: Record<string, unknown> = {}, hubOptions: HubOptions = {}) => {
    const t = await setup(settings, hubOptions);
    hubs.push(t.hub);
    return t;
  };
  afterEach(async () => {
    for (const hub of hubs) await hub.stop();
    hubs = [];
  });

  describe("options", () => {
    it("fills in defaults and reads the editor's comma-separated text or arrays", () => {
      assert.deepEqual(parseStateWatchOptions({}), {
        deviceIds: [],
        statuses: [],
        properties: [],
        changes: true,
        anomalies: [],
        onlyOnChange: true,
        ignoreUnknown: false,
        forSeconds: 0,
        outputOnDeploy: false,
      });
      const o = parseStateWatchOptions({
        deviceIds: " d1, d2 d3,,d1 ",
        statuses: "offline,error",
        properties: "temperature, set point ",
        anomalies: ["flapping"],
        changes: "false",
        forSeconds: "2.5",
        ignoreUnknown: true,
        id: "n1",
        type: "tethral-state-watch",
      });
      assert.deepEqual(o.deviceIds, ["d1", "d2", "d3"]);
      assert.deepEqual(o.statuses, ["offline", "error"]);
      assert.deepEqual(o.properties, ["temperature", "set point"]);
      assert.deepEqual(o.anomalies, ["flapping"]);
      assert.equal(o.changes, false);
      assert.equal(o.forSeconds, 2.5);
      assert.equal(o.ignoreUnknown, true);
    });

    it("refuses bad settings with INVALID naming the field", () => {
      assertCode(() => parseStateWatchOptions({ statuses: "offline,asleep" }), "INVALID", "statuses.1");
      assertCode(() => parseStateWatchOptions({ deviceIds: "ok, bad/id" }), "INVALID", "deviceIds.1");
      assertCode(() => parseStateWatchOptions({ anomalies: "spikes" }), "INVALID", "anomalies.0");
      assertCode(() => parseStateWatchOptions({ forSeconds: "soon" }), "INVALID", "forSeconds");
      assertCode(() => parseStateWatchOptions({ forSeconds: -1 }), "INVALID", "forSeconds");
      assertCode(() => parseStateWatchOptions({ forSeconds: MAX_FOR_SECONDS + 1 }), "INVALID", "forSeconds");
      assertCode(() => parseStateWatchOptions({ properties: "x".repeat(129) }), "INVALID", "properties.0");
      assertCode(() => parseStateWatchOptions({ changes: false, anomalies: "" }), "INVALID", "changes");
    });
  });

  it("without filters fires on every change, with the new state, the previous values and the change", async () => {
    const t = await track();
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 21 } });
    assert.deepEqual(t.changes(), [
      { id: "d1", from: { status: "unknown" }, to: { status: "online" }, reason: "heartbeat", version: 1 },
      { id: "d1", from: { properties: { temperature: null } }, to: { properties: { temperature: 21 } }, reason: "telemetry", version: 2 },
    ]);
    const last = t.outputs[1]!;
    assert.equal(last.state.deviceId, "d1");
    assert.equal(last.state.status, "online");
    assert.deepEqual(last.state.properties, { temperature: 21 });
    assert.deepEqual(last.previous, { properties: { temperature: null } });
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 21 } });
    assert.equal(t.outputs.length, 2, "a report that changes nothing is no change");
  });

  it("hands out copies: a flow that changes its message changes neither the hub nor other watchers", async () => {
    const t = await track();
    const other: unknown[] = [];
    t.hub.subscribe({ types: "state.changed" }, (e) => {
      other.push((e.data as { state: { properties: unknown } }).state.properties);
    });
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 21 } });
    const out = t.outputs.at(-1)!;
    (out.state.properties as Record<string, unknown>).temperature = 99;
    (out.previous.properties as Record<string, unknown>).temperature = 99;
    assert.deepEqual(t.hub.getState("d1").properties, { temperature: 21 });
    assert.deepEqual(other.at(-1), { temperature: 21 });
    assert.deepEqual((out.change as WatchedChange).from, { properties: { temperature: null } });
  });

  it("watches only the devices named, and subscribes only to them", async () => {
    const t = await track({ deviceIds: "d2" });
    assert.deepEqual(t.watcher.subscription(), { types: ["state.changed"], deviceId: ["d2"] });
    warmUp(t);
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 22 } });
    t.hub.ingest("d2", { kind: "telemetry", data: { temperature: 23 } });
    assert.deepEqual(t.outputs.map((o) => o.deviceId), ["d2"]);
    // Events handed in by hand (another subscription) are filtered too.
    t.watcher.handle({ ...fakeChanged("d1"), deviceId: "d1" });
    assert.equal(t.outputs.length, 1);
  });

  it("with a status filter fires only when the status becomes one of its statuses", async () => {
    const t = await track({ statuses: "offline" });
    warmUp(t);
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 22 } });
    await t.hub.setState("d1", { desired: { setpoint: 21 } });
    assert.equal(t.outputs.length, 0, "property and desired changes are not status changes");
    t.hub.ingest("d1", { kind: "status", data: "offline" });
    assert.deepEqual(t.changes(), [{ id: "d1", from: { status: "online" }, to: { status: "offline" }, reason: "reported", version: 5 }]);
    assert.deepEqual(t.outputs[0]!.previous, { status: "online" });
    t.hub.ingest("d1", { kind: "heartbeat" });
    assert.equal(t.outputs.length, 1, "back online is not offline");
    t.clock.advance(3600 * T + 1); // both devices silent past their timeout
    assert.deepEqual(
      t.changes().slice(1).map((c) => [c.id, c.reason, c.to.status]),
      [
        ["d2", "heartbeat-timeout", "offline"], // silent since the warm-up
        ["d1", "heartbeat-timeout", "offline"],
      ],
    );
  });

  it("with a property filter fires only on changes touching those reported or desired properties", async () => {
    const t = await track({ properties: "temperature, setpoint" });
    warmUp(t);
    t.hub.ingest("d1", { kind: "telemetry", data: { humidity: 41 } });
    t.hub.ingest("d1", { kind: "status", data: "offline" });
    assert.equal(t.outputs.length, 0, "another property and the status do not fire");
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 20, humidity: 42 } });
    assert.equal(t.outputs.length, 0, "only on change: the watched property kept its value");
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 21, humidity: 43 } });
    await t.hub.setState("d1", { desired: { setpoint: 22 } });
    await t.hub.setState("d1", { desired: { mode: "eco" } });
    assert.deepEqual(
      t.changes().map((c) => [c.from, c.to]),
      [
        [{ properties: { temperature: 20, humidity: 42 } }, { properties: { temperature: 21, humidity: 43 } }],
        [{ desired: { setpoint: null } }, { desired: { setpoint: 22 } }],
      ],
    );
  });

  it("with a status and a property filter fires on those properties while the status is one of the statuses", async () => {
    const t = await track({ statuses: "online", properties: "temperature" });
    warmUp(t);
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 21 } });
    t.hub.ingest("d1", { kind: "status", data: "offline" });
    await t.hub.setState("d2", { status: "maintenance" });
    t.hub.ingest("d2", { kind: "telemetry", data: { temperature: 25 } }); // in maintenance: stays there
    assert.deepEqual(
      t.outputs.map((o) => [o.deviceId, o.state.status, o.state.properties.temperature]),
      [["d1", "online", 21]],
    );
  });

  it("ignores transitions from or to unknown when asked: a new device's first message, a first value", async () => {
    const t = await track({ ignoreUnknown: true });
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 20 } });
    assert.equal(t.outputs.length, 0, "unknown → online and null → 20 are skipped");
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 21, humidity: 40 } });
    assert.deepEqual(t.changes().map((c) => c.to), [{ properties: { temperature: 21, humidity: 40 } }], "fires for temperature; humidity rides along");
    await t.hub.setState("d1", { status: "maintenance" });
    await t.hub.setState("d1", { status: "unknown" });
    assert.deepEqual(t.changes().map((c) => c.to.status).slice(1), ["maintenance"], "maintenance → unknown is skipped");

    const all = await track({ statuses: "online" });
    all.hub.ingest("d1", { kind: "telemetry", data: { temperature: 20 } });
    assert.equal(all.outputs.length, 1, "without the option, unknown → online fires");
  });

  it("with only-on-change off also fires on reports that repeat a watched value, once per report", async () => {
    const t = await track({ properties: "temperature", onlyOnChange: false });
    assert.deepEqual(t.watcher.subscription().types, ["state.changed", "message.received", "device.removed"]);
    warmUp(t);
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 20 } }); // repeats
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 20, humidity: 41 } }); // repeats temperature, changes humidity
    t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 21 } }); // changes: fires once, not twice
    t.hub.ingest("d1", { kind: "telemetry", data: { humidity: 41 } }); // not watched
    t.hub.ingest("d1", { kind: "state", data: { properties: { temperature: 21 } } }); // repeats, as a state report
    assert.deepEqual(
      t.changes().map((c) => [c.reason, c.from, c.to]),
      [
        ["telemetry", { properties: { temperature: 20 } }, { properties: { temperature: 20 } }],
        ["telemetry", { properties: { temperature: 20 } }, { properties: { temperature: 20 } }],
        ["telemetry", { properties: { temperature: 20 } }, { properties: { temperature: 21 } }],
        ["state", { properties: { temperature: 21 } }, { properties: { temperature: 21 } }],
      ],
    );

    const status = await track({ statuses: "offline", onlyOnChange: false });
    warmUp(status);
    status.hub.ingest("d1", { kind: "status", data: "offline" });
    status.hub.ingest("d1", { kind: "status", data: "offline" }); // a retained last will, again
    status.hub.ingest("d1", { kind: "state", data: { status: "offline" } });
    status.hub.ingest("d2", { kind: "telemetry", data: { temperature: 30 } });
    assert.deepEqual(
      status.changes().map((c) => [c.id, c.reason, c.from.status, c.to.status]),
      [
        ["d1", "reported", "online", "offline"],
        ["d1", "status", "offline", "offline"],
        ["d1", "state", "offline", "offline"],
      ],
    );
  });

  describe("for a duration", () => {
    it("fires once the matching state has held, with the state and the values from before it began", async () => {
      const t = await track({ statuses: "offline", forSeconds: 10 });
      warmUp(t);
      const timers = t.clock.pendingTimers;
      t.hub.ingest("d1", { kind: "status", data: "offline" });
      assert.equal(t.watcher.waitingCount, 1);
      assert.equal(t.clock.pendingTimers, timers + 1);
      t.clock.advance(10 * T - 1);
      assert.equal(t.outputs.length, 0);
      await t.hub.setState("d1", { desired: { setpoint: 5 } }); // still offline: no effect on the wait
      t.clock.advance(1);
      assert.deepEqual(t.changes(), [{ id: "d1", from: { status: "online" }, to: { status: "offline" }, reason: "reported", version: 3 }]);
      assert.equal(t.outputs[0]!.state.desired.setpoint, 5, "the state as it is when the wait ends");
      assert.equal(t.watcher.waitingCount, 0);
      assert.equal(t.clock.pendingTimers, timers);
    });

    it("is cancelled by a change that leaves the condition, and starts afresh on the next match", async () => {
      const t = await track({ statuses: "offline", forSeconds: 10 });
      warmUp(t);
      t.hub.ingest("d1", { kind: "status", data: "offline" });
      t.clock.advance(5 * T);
      t.hub.ingest("d1", { kind: "heartbeat" }); // online again
      assert.equal(t.watcher.waitingCount, 0);
      t.clock.advance(20 * T);
      assert.equal(t.outputs.length, 0);
      t.hub.ingest("d1", { kind: "status", data: "offline" });
      t.clock.advance(10 * T);
      assert.equal(t.outputs.length, 1);
    });

    it("is not restarted by a further matching change, which is merged into what goes out", async () => {
      const t = await track({ properties: "temperature", forSeconds: 10 });
      warmUp(t);
      t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 21 } });
      t.clock.advance(6 * T);
      t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 22 } });
      t.clock.advance(4 * T);
      assert.deepEqual(t.changes(), [
        { id: "d1", from: { properties: { temperature: 20 } }, to: { properties: { temperature: 22 } }, reason: "telemetry", version: 4 },
      ]);
      assert.deepEqual(t.outputs[0]!.previous, { properties: { temperature: 20 } });
    });

    it("keeps one wait per device", async () => {
      const t = await track({ statuses: "offline", forSeconds: 10 });
      warmUp(t);
      t.hub.ingest("d1", { kind: "status", data: "offline" });
      t.clock.advance(3 * T);
      t.hub.ingest("d2", { kind: "status", data: "offline" });
      assert.equal(t.watcher.waitingCount, 2);
      t.clock.advance(7 * T);
      assert.deepEqual(t.outputs.map((o) => o.deviceId), ["d1"]);
      t.clock.advance(3 * T);
      assert.deepEqual(t.outputs.map((o) => o.deviceId), ["d1", "d2"]);
    });

    it("with ignore-unknown, is cancelled when the status or a watched value becomes unknown", async () => {
      const t = await track({ ignoreUnknown: true, properties: "setpoint", forSeconds: 10 });
      warmUp(t);
      await t.hub.setState("d1", { desired: { setpoint: 20 } });
      await t.hub.setState("d1", { desired: { setpoint: 21 } });
      assert.equal(t.watcher.waitingCount, 1);
      await t.hub.setState("d1", { desired: { setpoint: null } });
      assert.equal(t.watcher.waitingCount, 0);
      t.clock.advance(20 * T);
      assert.equal(t.outputs.length, 0);
    });

    it("is cancelled when the device is removed", async () => {
      const t = await track({ statuses: "offline", forSeconds: 10 });
      warmUp(t);
      t.hub.ingest("d1", { kind: "status", data: "offline" });
      await t.hub.removeDevice("d1");
      assert.equal(t.watcher.waitingCount, 0);
      t.clock.advance(20 * T);
      assert.equal(t.outputs.length, 0);
    });

    it("stop() clears every timer and nothing fires afterwards", async () => {
      const t = await track({ forSeconds: 10 });
      warmUp(t);
      const timers = t.clock.pendingTimers;
      t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 30 } });
      t.hub.ingest("d2", { kind: "telemetry", data: { temperature: 30 } });
      assert.equal(t.clock.pendingTimers, timers + 2);
      t.watcher.stop();
      assert.equal(t.clock.pendingTimers, timers);
      assert.equal(t.watcher.waitingCount, 0);
      t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 31 } });
      t.clock.advance(20 * T);
      assert.equal(t.outputs.length, 0);
      assert.equal(t.clock.pendingTimers, timers);
    });
  });

  describe("anomalies", () => {
    it("fire for the kinds chosen, at start and when they clear, with the device's state", async () => {
      const t = await track(
        { changes: false, anomalies: "flapping" },
        { anomaly: { flapping: { enabled: true, threshold: 4, windowSec: 60, clearBelow: 1 } } },
      );
      assert.deepEqual(t.watcher.subscription().types, ["state.anomaly"]);
      warmUp(t);
      for (const data of ["offline", "online", "offline", "online"]) t.hub.ingest("d1", { kind: "status", data });
      assert.equal(t.outputs.length, 1, "state changes are not watched");
      const out = t.outputs[0]!;
      assert.equal(out.deviceId, "d1");
      assert.equal(out.state.status, "online");
      assert.deepEqual(out.previous, {});
      const anomaly = (out.change as { anomaly: AnomalyData }).anomaly;
      assert.equal(anomaly.kind, "flapping");
      assert.equal(anomaly.active, true);
      t.clock.advance(61 * T);
      assert.deepEqual(
        t.outputs.map((o) => (o.change as { anomaly: AnomalyData }).anomaly.active),
        [true, false],
      );
    });

    it("are filtered by kind and, when they name one, by property", async () => {
      const t = await track(
        { changes: false, anomalies: "stuck", properties: "temperature" },
        { anomaly: { stuck: { enabled: true, reports: 3, seconds: 0, numericOnly: true }, outlier: { enabled: false, alpha: 0.1, zScore: 4, warmup: 20, minStddev: 0 } } },
      );
      warmUp(t, { temperature: 20, humidity: 40 });
      for (let i = 0; i < 4; i++) t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 20, humidity: 40 } });
      const kinds = t.outputs.map((o) => (o.change as { anomaly: AnomalyData }).anomaly);
      assert.deepEqual(kinds.map((a) => [a.kind, a.property]), [["stuck", "temperature"]]);
      const all = t.hub.events.query({ type: "state.anomaly", limit: 100 }).map((e) => (e.data as AnomalyData).property);
      assert.deepEqual(all.sort(), ["humidity", "temperature"], "the hub found both; the filter let one through");
    });
  });

  describe("output on deploy", () => {
    it("gives the current state of each matching device", async () => {
      const t = await track({ statuses: "online", properties: "temperature" });
      t.hub.ingest("d1", { kind: "telemetry", data: { temperature: 20 } });
      t.hub.ingest("d2", { kind: "telemetry", data: { humidity: 40 } });
      await t.hub.registerDevice({ id: "d3", protocol: "mqtt" });
      const outs = t.watcher.initialOutputs(t.hub);
      assert.deepEqual(
        outs.map((o) => [o.deviceId, o.previous, o.change]),
        [["d1", {}, { from: {}, to: {}, reason: "deploy", version: 2 }]],
      );
      assert.deepEqual(outs[0]!.state, t.hub.getState("d1"));

      const named = await track({ deviceIds: "d2 ghost d1" });
      named.hub.ingest("d1", { kind: "telemetry", data: { temperature: 20 } });
      assert.deepEqual(named.watcher.initialOutputs(named.hub).map((o) => [o.deviceId, o.state.status]), [
        ["d2", "unknown"],
        ["d1", "online"],
      ]);
      const known = await track({ ignoreUnknown: true });
      assert.deepEqual(known.watcher.initialOutputs(known.hub), [], "devices never heard from are unknown");
      const anomaliesOnly = await track({ changes: false, anomalies: "outlier" });
      anomaliesOnly.hub.ingest("d1", { kind: "heartbeat" });
      assert.deepEqual(anomaliesOnly.watcher.initialOutputs(anomaliesOnly.hub), []);
    });
  });
});

function fakeChanged(deviceId: string) {
  return {
    id: "e1",
    type: "state.changed",
    priority: "normal" as const,
    source: "test",
    deviceId,
    data: {
      from: { status: "offline" },
      to: { status: "online" },
      reason: "test",
      version: 9,
      state: { deviceId, status: "online", properties: {}, desired: {}, delta: {}, version: 9, changedAt: null, updatedAt: null, reportedAt: null },
    },
    timestamp: "2026-11-27T10:00:00.000Z",
    expiresAt: null,
    causeId: null,
    parentCauseId: null,
  };
}
