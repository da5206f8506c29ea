import assert from "node:assert/strict";
import {
  AnomalyDetector,
  type AnomalyOptions,
  DEFAULT_ANOMALY_OPTIONS,
  type FlappingOptions,
  type OutlierOptions,
  type StuckOptions,
} from "../../src/core/anomaly";
import { ManualClock } from "../../src/core/clock";
import { TethralError } from "../../src/core/errors";
import { EventBus } from "../../src/core/events";
import { Hub } from "../../src/core/hub";
import type { AnomalyData, DeviceStatus, JsonObject, TethralEvent } from "../../src/core/types";
import { assertNoPollution } from "../helpers";

interface Overrides {
  flapping?: Partial<FlappingOptions>;
  stuck?: Partial<StuckOptions>;
  outlier?: Partial<OutlierOptions>;
  maxPropertiesPerDevice?: number;
}

function options(o: Overrides = {}): AnomalyOptions {
  return {
    flapping: { ...DEFAULT_ANOMALY_OPTIONS.flapping, ...o.flapping },
    // These tests follow every value type; the default (numeric only) has its own test.
    stuck: { ...DEFAULT_ANOMALY_OPTIONS.stuck, numericOnly: false, ...o.stuck },
    outlier: { ...DEFAULT_ANOMALY_OPTIONS.outlier, ...o.outlier },
    maxPropertiesPerDevice: o.maxPropertiesPerDevice ?? DEFAULT_ANOMALY_OPTIONS.maxPropertiesPerDevice,
  };
}

type AnomalyEvent = TethralEvent<"state.anomaly", AnomalyData>;

function setup(o: Overrides = {}) {
  const clock = new ManualClock();
  const bus = new EventBus(clock);
  const detector = new AnomalyDetector(bus, clock, options(o));
  const events: AnomalyEvent[] = [];
  bus.subscribe("state.anomaly", (e) => {
    events.push(e as AnomalyEvent);
  });
  const of = (kind: AnomalyData["kind"], active?: boolean) =>
    events.filter((e) => e.data.kind === kind && (active === undefined || e.data.active === active));
  return { clock, bus, detector, events, of };
}

/** Alternates a device between online and offline `n` times, one every `everyMs`. */
function flip(d: { detector: AnomalyDetector; clock: ManualClock }, id: string, n: number, everyMs = 1000, start: DeviceStatus = "online") {
  let from = start;
  for (let i = 0; i < n; i++) {
    const to: DeviceStatus = from === "online" ? "offline" : "online";
    d.detector.onStatus(id, from, to, d.clock.now());
    from = to;
    if (i < n - 1) d.clock.advance(everyMs);
  }
  return from;
}

/** Reports `properties` `n` times, advancing `everyMs` between reports. */
function report(d: { detector: AnomalyDetector; clock: ManualClock }, id: string, properties: JsonObject, n: number, everyMs = 1000) {
  for (let i = 0; i < n; i++) {
    d.detector.onReport(id, properties, d.clock.now());
    if (i < n - 1) d.clock.advance(everyMs);
  }
}

/** Deterministic noise around `mean`: amplitude at most `amp`, consecutive values far apart. */
function noise(i: number, mean = 20, amp = 0.5): number {
  return mean + amp * Math.sin(i * 1.7);
}


describe("AnomalyDetector", () => {
  describe("flapping", () => {
    const flapping = { threshold: 4, windowSec: 60, clearBelow: 1 };

    it("starts exactly at the threshold, as a high-priority state.anomaly with its figures", async () => {
      const d = setup({ flapping });
      flip(d, "d1", 3);
      assert.equal(d.events.length, 0, "three transitions are below the threshold");
      assert.equal(d.detector.isFlapping("d1"), false);
      d.clock.advance(1000);
      d.detector.onStatus("d1", "offline", "online", d.clock.now());
      assert.equal(d.events.length, 1);
      const e = d.events[0]!;
      assert.equal(e.type, "state.anomaly");
      assert.equal(e.deviceId, "d1");
      assert.equal(e.priority, "high");
      assert.equal(e.source, "anomaly");
      assert.deepEqual(e.data, { kind: "flapping", active: true, transitions: 4, windowSec: 60 });
      assert.equal(d.detector.isFlapping("d1"), true);
      assert.deepEqual(d.detector.statistics().active, { flapping: 1, stuck: 0 });
      assert.equal(d.detector.statistics().detected.flapping, 1);
    });

    it("counts neither a transition a retained message made nor the way back out of it", async () => {
      const d = setup({ flapping });
      for (let i = 0; i < 5; i++) {
        // A broker replays the device's retained offline at each resubscribe; live traffic follows.
        d.detector.onStatus("d1", "online", "offline", d.clock.now(), true);
        d.clock.advance(1000);
        d.detector.onStatus("d1", "offline", "online", d.clock.now());
        d.clock.advance(1000);
      }
      assert.equal(d.events.length, 0);
      // Live transitions still count as before.
      flip(d, "d1", 4);
      assert.equal(d.detector.isFlapping("d1"), true);
    });

    it("does not start below the threshold: transitions that left the window do not count", async () => {
      const d = setup({ flapping });
      flip(d, "d1", 3, 1000);
      d.clock.advance(61_000);
      flip(d, "d1", 3, 1000, "offline");
      d.clock.advance(61_000);
      flip(d, "d1", 3, 1000, "offline");
      assert.equal(d.events.length, 0);
      assert.equal(d.detector.isFlapping("d1"), false);
    });

    it("counts only online/offline transitions", async () => {
      const d = setup({ flapping: { ...flapping, threshold: 2 } });
      const now = () => d.clock.now();
      d.detector.onStatus("d1", "unknown", "online", now());
      d.detector.onStatus("d1", "online", "error", now());
      d.detector.onStatus("d1", "error", "online", now());
      d.detector.onStatus("d1", "online", "maintenance", now());
      d.detector.onStatus("d1", "maintenance", "offline", now());
      d.detector.onStatus("d1", "offline", "error", now());
      d.detector.onStatus("d1", "unknown", "offline", now());
      assert.equal(d.events.length, 0);
      d.detector.onStatus("d1", "offline", "online", now());
      d.detector.onStatus("d1", "online", "offline", now());
      assert.equal(d.of("flapping", true).length, 1);
    });

    it("keeps devices apart", async () => {
      const d = setup({ flapping });
      flip(d, "d1", 2);
      flip(d, "d2", 2);
      flip(d, "d1", 1);
      flip(d, "d2", 1);
      assert.equal(d.events.length, 0);
      flip(d, "d1", 1, 1000, "offline");
      assert.deepEqual(
        d.events.map((e) => e.deviceId),
        ["d1"],
      );
      assert.equal(d.detector.isFlapping("d2"), false);
    });

    it("clears, with an active:false event, only once the window holds clearBelow transitions or fewer", async () => {
      const d = setup({ flapping });
      // Transitions at 0, 1, 2 and 3 s: flapping from 3 s.
      flip(d, "d1", 4, 1000);
      assert.equal(d.detector.isFlapping("d1"), true);
      // At 60.5 s the 0 s transition has left: 3 in the window, below the threshold but above
      // clearBelow, so the device still flaps (hysteresis).
      d.clock.set(Date.UTC(2026, 10, 27, 10, 0, 0) + 60_500);
      assert.equal(d.detector.isFlapping("d1"), true);
      assert.equal(d.of("flapping", false).length, 0);
      // At 61.5 s: 2 in the window, still above clearBelow.
      d.clock.advance(1000);
      assert.equal(d.detector.isFlapping("d1"), true);
      assert.equal(d.of("flapping", false).length, 0);
      // At 62.5 s: 1 in the window: cleared.
      d.clock.advance(1000);
      assert.equal(d.detector.isFlapping("d1"), false);
      const cleared = d.of("flapping", false);
      assert.equal(cleared.length, 1);
      assert.deepEqual(cleared[0]!.data, { kind: "flapping", active: false, transitions: 1, windowSec: 60 });
      assert.equal(cleared[0]!.deviceId, "d1");
      assert.deepEqual(d.detector.statistics().active, { flapping: 0, stuck: 0 });
      assert.equal(d.detector.statistics().detected.flapping, 1, "a clear is not a detection");
      assert.equal(d.clock.pendingTimers, 0, "no timer left once cleared");
    });

    it("stays flapping while transitions keep coming between clearBelow and the threshold", async () => {
      const d = setup({ flapping });
      let from = flip(d, "d1", 4, 1000);
      // Then one transition every 20 s: 3 in any 60 s window, never 1 or fewer.
      for (let i = 0; i < 30; i++) {
        d.clock.advance(20_000);
        from = flip(d, "d1", 1, 0, from);
      }
      assert.equal(d.detector.isFlapping("d1"), true);
      assert.equal(d.of("flapping", true).length, 1, "started once, not again while it lasts");
      assert.equal(d.of("flapping", false).length, 0);
      d.clock.advance(120_000);
      assert.equal(d.detector.isFlapping("d1"), false);
      assert.equal(d.of("flapping", false).length, 1);
    });

    it("starts again after it cleared", async () => {
      const d = setup({ flapping });
      const from = flip(d, "d1", 4);
      d.clock.advance(300_000);
      assert.equal(d.detector.isFlapping("d1"), false);
      d.clock.advance(1000);
      flip(d, "d1", 4, 1000, from);
      assert.equal(d.of("flapping", true).length, 2);
      assert.equal(d.detector.statistics().detected.flapping, 2);
      assert.equal(d.detector.isFlapping("d1"), true);
    });

    it("follows configured thresholds and can be switched off", async () => {
      const strict = setup({ flapping: { threshold: 10, windowSec: 60, clearBelow: 2 } });
      flip(strict, "d1", 9, 100);
      assert.equal(strict.events.length, 0);
      flip(strict, "d1", 1, 100, "offline");
      assert.equal(strict.events.length, 1);
      assert.equal(strict.events[0]!.data.transitions, 10);

      const off = setup({ flapping: { ...flapping, enabled: false } });
      flip(off, "d1", 50, 10);
      assert.equal(off.events.length, 0);
      assert.equal(off.clock.pendingTimers, 0);
    });

    it("onForget cancels the clear timer and the device's counts, with no event later", async () => {
      const d = setup({ flapping });
      flip(d, "d1", 4);
      assert.equal(d.clock.pendingTimers, 1);
      d.detector.onForget("d1");
      assert.equal(d.clock.pendingTimers, 0);
      assert.equal(d.detector.isFlapping("d1"), false);
      assert.deepEqual(d.detector.statistics().active, { flapping: 0, stuck: 0 });
      d.clock.advance(600_000);
      assert.equal(d.of("flapping", false).length, 0);
      d.detector.onForget("d1");
      d.detector.onForget("never-seen");
      assert.deepEqual(d.detector.statistics().active, { flapping: 0, stuck: 0 });
    });

    it("stop() cancels every clear timer", async () => {
      const d = setup({ flapping });
      flip(d, "d1", 4);
      flip(d, "d2", 4);
      assert.equal(d.clock.pendingTimers, 2);
      d.detector.stop();
      assert.equal(d.clock.pendingTimers, 0);
      d.clock.advance(600_000);
      assert.equal(d.of("flapping", false).length, 0);
    });

    it("after stop(), a device still marked flapping clears once it flips again and then settles", async () => {
      const d = setup({ flapping });
      const from = flip(d, "d1", 4);
      d.detector.stop();
      d.clock.advance(600_000);
      // The hub is started again and the device makes one more transition.
      flip(d, "d1", 1, 0, from);
      d.clock.advance(120_000);
      assert.equal(d.detector.isFlapping("d1"), false);
      assert.equal(d.of("flapping", false).length, 1);
      assert.deepEqual(d.detector.statistics().active, { flapping: 0, stuck: 0 });
    });
  });

  describe("stuck values", () => {
    it("reports a property that has not changed for N reports, once, and clears when it changes", async () => {
      const d = setup({ stuck: { reports: 5, seconds: 0 }, outlier: { enabled: false } });
      report(d, "d1", { temperature: 21.5 }, 4);
      assert.equal(d.events.length, 0, "4 identical reports are not stuck");
      d.clock.advance(1000);
      d.detector.onReport("d1", { temperature: 21.5 }, d.clock.now());
      assert.equal(d.events.length, 1);
      const e = d.events[0]!;
      assert.equal(e.deviceId, "d1");
      assert.equal(e.priority, "normal");
      assert.equal(e.source, "anomaly");
      assert.deepEqual(e.data, { kind: "stuck", active: true, property: "temperature", value: 21.5, reports: 5, seconds: 4 });
      assert.deepEqual(d.detector.statistics(), { detected: { flapping: 0, stuck: 1, outlier: 0 }, active: { flapping: 0, stuck: 1 } });

      report(d, "d1", { temperature: 21.5 }, 20);
      assert.equal(d.events.length, 1, "not reported again while it stays stuck");

      d.detector.onReport("d1", { temperature: 21.6 }, d.clock.now());
      assert.equal(d.events.length, 2);
      assert.deepEqual(d.events[1]!.data, { kind: "stuck", active: false, property: "temperature", value: 21.6 });
      assert.deepEqual(d.detector.statistics().active, { flapping: 0, stuck: 0 });
      assert.equal(d.detector.statistics().detected.stuck, 1);
    });

    it("reports a property that has not changed for T seconds while reports keep arriving", async () => {
      const d = setup({ stuck: { reports: 0, seconds: 60 } });
      report(d, "d1", { level: 3 }, 6, 10_000); // 0 … 50 s
      assert.equal(d.events.length, 0);
      d.clock.advance(9_999);
      d.detector.onReport("d1", { level: 3 }, d.clock.now());
      assert.equal(d.events.length, 0, "59.999 s is not 60 s");
      d.clock.advance(1);
      d.detector.onReport("d1", { level: 3 }, d.clock.now());
      assert.equal(d.events.length, 1);
      assert.deepEqual(d.events[0]!.data, { kind: "stuck", active: true, property: "level", value: 3, reports: 8, seconds: 60 });
    });

    it("does not call a silent device stuck: the seconds test needs reports", async () => {
      const d = setup({ stuck: { reports: 0, seconds: 60 } });
      d.detector.onReport("d1", { level: 3 }, d.clock.now());
      d.clock.advance(3_600_000);
      assert.equal(d.events.length, 0);
    });

    it("counts again from a change", async () => {
      const d = setup({ stuck: { reports: 5, seconds: 60 } });
      report(d, "d1", { v: 1 }, 4, 14_000);
      report(d, "d1", { v: 2 }, 4, 14_000);
      report(d, "d1", { v: 1 }, 4, 14_000);
      assert.equal(d.events.length, 0);
    });

    it("follows each property and each device on its own", async () => {
      const d = setup({ stuck: { reports: 3, seconds: 0 } });
      for (let i = 0; i < 3; i++) {
        d.detector.onReport("d1", { fixed: 7, moving: i }, d.clock.now());
        d.detector.onReport("d2", { fixed: i }, d.clock.now());
      }
      assert.deepEqual(
        d.events.map((e) => [e.deviceId, e.data.property]),
        [["d1", "fixed"]],
      );
    });

    it("a report that leaves a property out does not reset or advance it", async () => {
      const d = setup({ stuck: { reports: 3, seconds: 0 } });
      d.detector.onReport("d1", { a: 1, b: 1 }, d.clock.now());
      d.detector.onReport("d1", { b: 2 }, d.clock.now());
      d.detector.onReport("d1", { a: 1, b: 3 }, d.clock.now());
      assert.equal(d.events.length, 0);
      d.detector.onReport("d1", { a: 1, b: 4 }, d.clock.now());
      assert.deepEqual(
        d.events.map((e) => e.data.property),
        ["a"],
      );
    });

    it("follows only numbers by default: a mode or firmware string that stays put is normal", async () => {
      const clock = new ManualClock();
      const bus = new EventBus(clock);
      const detector = new AnomalyDetector(bus, clock, { ...DEFAULT_ANOMALY_OPTIONS, stuck: { ...DEFAULT_ANOMALY_OPTIONS.stuck, reports: 3 } });
      const seen: AnomalyEvent[] = [];
      bus.subscribe("state.anomaly", (e) => {
        seen.push(e as AnomalyEvent);
      });
      for (let i = 0; i < 5; i++) detector.onReport("d1", { mode: "eco", firmware: "1.2.0", t: 20 }, clock.now());
      assert.deepEqual(
        seen.map((e) => e.data.property),
        ["t"],
      );
    });

    it("compares structured values by content, not identity", async () => {
      const d = setup({ stuck: { reports: 3, seconds: 0 } });
      for (let i = 0; i < 3; i++) d.detector.onReport("d1", { pos: { x: 1, y: [2, 3] } }, d.clock.now());
      assert.equal(d.events.length, 1);
      assert.deepEqual(d.events[0]!.data.value, { x: 1, y: [2, 3] });
    });

    it("is not fooled by a caller that reuses and mutates the same object between reports", async () => {
      const d = setup({ stuck: { reports: 3, seconds: 0 } });
      const pos = { x: 0 };
      const props = { pos } as JsonObject;
      for (let i = 0; i < 10; i++) {
        pos.x = i;
        d.detector.onReport("d1", props, d.clock.now());
      }
      assert.equal(d.of("stuck").length, 0, "the value changed every time");
    });

    it("can be switched off", async () => {
      const d = setup({ stuck: { enabled: false, reports: 2, seconds: 1 } });
      report(d, "d1", { v: 1 }, 50, 1000);
      assert.equal(d.events.length, 0);
    });

    it("onForget drops the device's stuck count", async () => {
      const d = setup({ stuck: { reports: 2, seconds: 0 } });
      report(d, "d1", { a: 1, b: 2 }, 2);
      assert.equal(d.detector.statistics().active.stuck, 2);
      d.detector.onForget("d1");
      assert.equal(d.detector.statistics().active.stuck, 0);
      // Known again from scratch: one report is not stuck.
      d.detector.onReport("d1", { a: 1 }, d.clock.now());
      assert.equal(d.of("stuck", true).length, 2);
    });

    it("follows at most maxPropertiesPerDevice properties per device", async () => {
      const d = setup({ stuck: { reports: 2, seconds: 0 }, maxPropertiesPerDevice: 2 });
      report(d, "d1", { a: 1, b: 1, c: 1, e: 1 }, 3);
      assert.deepEqual(
        d.events.map((e) => e.data.property),
        ["a", "b"],
      );
    });
  });

  describe("numeric outliers", () => {
    const outlier = { alpha: 0.1, zScore: 4, warmup: 20 };

    it("reports nothing during the warm-up, however wild the values", async () => {
      const d = setup({ outlier: { ...outlier, warmup: 5 }, stuck: { enabled: false } });
      for (const v of [20, 20.2, 19.8, 20.1]) d.detector.onReport("d1", { t: v }, d.clock.now());
      d.detector.onReport("d1", { t: 10_000 }, d.clock.now()); // the 5th sample: still warming up
      assert.equal(d.events.length, 0);
    });

    it("judges the first sample after the warm-up", async () => {
      const d = setup({ outlier: { ...outlier, warmup: 5 }, stuck: { enabled: false } });
      for (const v of [20, 20.2, 19.8, 20.1, 19.9]) d.detector.onReport("d1", { t: v }, d.clock.now());
      d.detector.onReport("d1", { t: 10_000 }, d.clock.now());
      assert.equal(d.of("outlier").length, 1);
    });

    it("does not report normal noise", async () => {
      const d = setup({ outlier, stuck: { enabled: false } });
      for (let i = 0; i < 2000; i++) d.detector.onReport("d1", { t: noise(i) }, d.clock.now());
      assert.equal(d.events.length, 0);
      assert.equal(d.detector.statistics().detected.outlier, 0);
    });

    it("reports a big jump after the warm-up with its mean, stddev and zScore", async () => {
      const d = setup({ outlier, stuck: { enabled: false } });
      for (let i = 0; i < 200; i++) d.detector.onReport("d1", { t: noise(i) }, d.clock.now());
      d.detector.onReport("d1", { t: 35 }, d.clock.now());
      assert.equal(d.events.length, 1);
      const e = d.events[0]!;
      assert.equal(e.deviceId, "d1");
      assert.equal(e.priority, "normal");
      const data = e.data as AnomalyData & { mean: number; stddev: number; zScore: number };
      assert.equal(data.kind, "outlier");
      assert.equal(data.active, true);
      assert.equal(data.property, "t");
      assert.equal(data.value, 35);
      assert.ok(Math.abs(data.mean - 20) < 0.3, `mean ${data.mean} is about 20`);
      assert.ok(data.stddev > 0.1 && data.stddev < 0.6, `stddev ${data.stddev} is about the noise`);
      assert.ok(data.zScore > 4, `zScore ${data.zScore} is past the threshold`);
      const expected = (35 - data.mean) / data.stddev;
      assert.ok(Math.abs(data.zScore - expected) / expected < 0.01, "zScore is |value - mean| / stddev");
      for (const figure of [data.mean, data.stddev, data.zScore]) {
        assert.equal(Math.round(figure * 1000) / 1000, figure, "figures are rounded to 3 decimals");
      }
      assert.equal(d.detector.statistics().detected.outlier, 1);
      assert.deepEqual(d.detector.statistics().active, { flapping: 0, stuck: 0 }, "an outlier is a single event, not a state");
    });

    it("still judges later values after one too large to learn (1e308 among readings of 20): it is reported, with its z-score as a number", async () => {
      for (const huge of [1e308, -1e308, 1e200]) {
        const d = setup({ outlier, stuck: { enabled: false } });
        for (let i = 0; i < 100; i++) d.detector.onReport("d1", { t: noise(i) }, d.clock.now());
        d.detector.onReport("d1", { t: huge }, d.clock.now());
        assert.equal(d.of("outlier").length, 1, `${huge} is an outlier`);
        assert.ok(Number.isFinite((d.events[0]!.data as unknown as { zScore: number }).zScore), "a z-score JSON can carry");
        for (let i = 100; i < 200; i++) d.detector.onReport("d1", { t: noise(i) }, d.clock.now());
        assert.equal(d.of("outlier").length, 1, "normal noise after it is normal");
        d.detector.onReport("d1", { t: 35 }, d.clock.now());
        assert.equal(d.of("outlier").length, 2, `an ordinary jump after ${huge} is still seen (until 2026-12-08 never again)`);
      }
      // During the warm-up too.
      const w = setup({ outlier: { ...outlier, warmup: 5 }, stuck: { enabled: false } });
      for (const v of [20, 1e308, 20.2, 19.8, 20.1, 19.9, 20]) w.detector.onReport("d1", { t: v }, w.clock.now());
      w.detector.onReport("d1", { t: 10_000 }, w.clock.now());
      assert.equal(w.of("outlier").length, 1);
    });

    it("reports a drop as well as a jump", async () => {
      const d = setup({ outlier, stuck: { enabled: false } });
      for (let i = 0; i < 100; i++) d.detector.onReport("d1", { t: noise(i) }, d.clock.now());
      d.detector.onReport("d1", { t: 5 }, d.clock.now());
      assert.equal(d.of("outlier").length, 1);
      assert.equal(d.events[0]!.data.value, 5);
    });

    it("follows the configured zScore", async () => {
      const lax = setup({ outlier: { ...outlier, zScore: 1000 }, stuck: { enabled: false } });
      for (let i = 0; i < 100; i++) lax.detector.onReport("d1", { t: noise(i) }, lax.clock.now());
      lax.detector.onReport("d1", { t: 35 }, lax.clock.now());
      assert.equal(lax.events.length, 0);

      // 21.5 sits about 4.2 deviations from this noise (whose own values stay under 2).
      const judge = (zScore: number) => {
        const d = setup({ outlier: { ...outlier, zScore }, stuck: { enabled: false } });
        for (let i = 0; i < 100; i++) d.detector.onReport("d1", { t: noise(i) }, d.clock.now());
        assert.equal(d.events.length, 0, `noise is not an outlier at zScore ${zScore}`);
        d.detector.onReport("d1", { t: 21.5 }, d.clock.now());
        return d.events.length;
      };
      assert.equal(judge(3), 1);
      assert.equal(judge(6), 0);
    });

    it("adapts to a new level: a lasting step stops being an outlier", async () => {
      const d = setup({ outlier: { alpha: 0.2, zScore: 4, warmup: 20 }, stuck: { enabled: false } });
      for (let i = 0; i < 100; i++) d.detector.onReport("d1", { t: noise(i) }, d.clock.now());
      for (let i = 0; i < 200; i++) d.detector.onReport("d1", { t: noise(i, 40) }, d.clock.now());
      const reported = d.of("outlier").length;
      assert.ok(reported >= 1, "the step is reported");
      d.events.length = 0;
      for (let i = 0; i < 200; i++) d.detector.onReport("d1", { t: noise(i, 40) }, d.clock.now());
      assert.equal(d.events.length, 0, "the new level is normal by now");
    });

    it("does not judge a property that never varied: there is no spread to measure a jump against", async () => {
      const d = setup({ outlier: { ...outlier, warmup: 5 }, stuck: { enabled: false } });
      for (let i = 0; i < 6; i++) d.detector.onReport("d1", { t: 20 }, d.clock.now());
      d.detector.onReport("d1", { t: 21 }, d.clock.now());
      assert.equal(d.events.length, 0);
    });

    it("with minStddev, judges a jump from a constant warm-up against that floor", async () => {
      const d = setup({ outlier: { ...outlier, warmup: 5, minStddev: 0.1 }, stuck: { enabled: false } });
      for (let i = 0; i < 6; i++) d.detector.onReport("d1", { t: 20 }, d.clock.now());
      d.detector.onReport("d1", { t: 20.3 }, d.clock.now());
      assert.equal(d.events.length, 0, "3 floors away is within a z-score of 4");
      d.detector.onReport("d1", { t: 21 }, d.clock.now());
      assert.equal(d.events.length, 1);
      assert.equal(d.events[0]!.data.stddev, 0.1);
      assert.ok(Number.isFinite(d.events[0]!.data.zScore as number));
      assert.doesNotThrow(() => JSON.stringify(d.events[0]));
    });

    it("ignores values that are not numbers, and each property has its own statistics", async () => {
      const d = setup({ outlier: { ...outlier, warmup: 5 }, stuck: { enabled: false } });
      for (let i = 0; i < 50; i++) {
        d.detector.onReport("d1", { t: noise(i), h: noise(i, 1000, 10), mode: i % 2 ? "eco" : "boost", ok: true, tags: [i] }, d.clock.now());
      }
      d.detector.onReport("d1", { t: 20, h: 1000, mode: "x".repeat(100), ok: false, tags: null }, d.clock.now());
      assert.equal(d.events.length, 0, "h at 1000 is normal for h though far from t");
    });

    it("keeps devices apart", async () => {
      const d = setup({ outlier: { ...outlier, warmup: 5 }, stuck: { enabled: false } });
      for (let i = 0; i < 50; i++) {
        d.detector.onReport("cold", { t: noise(i, -20) }, d.clock.now());
        d.detector.onReport("hot", { t: noise(i, 80) }, d.clock.now());
      }
      d.detector.onReport("cold", { t: 80 }, d.clock.now());
      d.detector.onReport("hot", { t: 80 }, d.clock.now());
      assert.deepEqual(
        d.events.map((e) => e.deviceId),
        ["cold"],
      );
    });

    it("can be switched off", async () => {
      const d = setup({ outlier: { ...outlier, enabled: false, warmup: 2 }, stuck: { enabled: false } });
      for (let i = 0; i < 50; i++) d.detector.onReport("d1", { t: noise(i) }, d.clock.now());
      d.detector.onReport("d1", { t: 1e9 }, d.clock.now());
      assert.equal(d.events.length, 0);
    });
  });

  describe("statistics", () => {
    it("counts detections by kind and what is active now", async () => {
      const d = setup({
        flapping: { threshold: 2, windowSec: 10, clearBelow: 0 },
        stuck: { reports: 2, seconds: 0 },
        outlier: { alpha: 0.1, zScore: 4, warmup: 5 },
      });
      assert.deepEqual(d.detector.statistics(), { detected: { flapping: 0, stuck: 0, outlier: 0 }, active: { flapping: 0, stuck: 0 } });
      flip(d, "d1", 2);
      flip(d, "d2", 2);
      report(d, "d1", { s: "on" }, 2);
      for (let i = 0; i < 10; i++) d.detector.onReport("d3", { t: noise(i) }, d.clock.now());
      d.detector.onReport("d3", { t: 99 }, d.clock.now());
      d.detector.onReport("d3", { t: -99 }, d.clock.now());
      assert.deepEqual(d.detector.statistics(), { detected: { flapping: 2, stuck: 1, outlier: 2 }, active: { flapping: 2, stuck: 1 } });
      d.clock.advance(60_000);
      d.detector.onReport("d1", { s: "off" }, d.clock.now());
      assert.deepEqual(d.detector.statistics(), { detected: { flapping: 2, stuck: 1, outlier: 2 }, active: { flapping: 0, stuck: 0 } });
    });

    it("hands out a copy", async () => {
      const d = setup();
      const st = d.detector.statistics();
      st.detected.outlier = 99;
      st.active.stuck = 99;
      assert.deepEqual(d.detector.statistics(), { detected: { flapping: 0, stuck: 0, outlier: 0 }, active: { flapping: 0, stuck: 0 } });
    });
  });

  describe("edge cases", () => {
    it("follows __proto__ and constructor property keys as plain data without polluting Object.prototype", async () => {
      const d = setup({ stuck: { reports: 3, seconds: 0 }, outlier: { alpha: 0.1, zScore: 4, warmup: 5 } });
      const raw = '{"__proto__": {"polluted": "yes"}, "constructor": 5, "prototype": {"polluted": 1}, "hasOwnProperty": 1}';
      for (let i = 0; i < 3; i++) d.detector.onReport("d1", JSON.parse(raw) as JsonObject, d.clock.now());
      assertNoPollution();
      assert.deepEqual(
        d.events.map((e) => e.data.property),
        ["__proto__", "constructor", "prototype", "hasOwnProperty"],
      );
      const proto = d.events[0]!;
      assert.deepEqual(Object.getOwnPropertyDescriptor(proto.data, "value")?.value, { polluted: "yes" });
      // Outliers on a property named constructor work like any other.
      for (let i = 0; i < 20; i++) d.detector.onReport("d1", JSON.parse(`{"constructor": ${noise(i)}}`) as JsonObject, d.clock.now());
      d.detector.onReport("d1", { constructor: 1000 } as unknown as JsonObject, d.clock.now());
      assert.equal(d.of("outlier").length, 1);
      assert.equal(d.of("outlier")[0]!.data.property, "constructor");
      // A change of the __proto__ value clears it.
      d.detector.onReport("d1", JSON.parse('{"__proto__": {"polluted": "no"}}') as JsonObject, d.clock.now());
      assert.equal(d.of("stuck", false).filter((e) => e.data.property === "__proto__").length, 1);
      assertNoPollution();
    });

    it("handles __proto__ and constructor as device ids", async () => {
      const d = setup({ flapping: { threshold: 2, windowSec: 60, clearBelow: 0 }, stuck: { reports: 2, seconds: 0 } });
      for (const id of ["__proto__", "constructor"]) {
        flip(d, id, 2);
        report(d, id, { v: 1 }, 2);
      }
      assert.equal(d.of("flapping", true).length, 2);
      assert.equal(d.of("stuck", true).length, 2);
      assert.equal(d.detector.isFlapping("__proto__"), true);
      assert.equal(d.detector.isFlapping("toString"), false);
      d.clock.advance(120_000);
      assert.equal(d.of("flapping", false).length, 2);
      d.detector.onForget("__proto__");
      d.detector.onForget("constructor");
      assertNoPollution();
    });

    it("copes with 1 MB string values: stuck when repeated, cleared when the last character changes", async () => {
      const d = setup({ stuck: { reports: 3, seconds: 0 } });
      const big = "x".repeat(1024 * 1024);
      for (let i = 0; i < 3; i++) d.detector.onReport("d1", { blob: big.slice(0, -1) + "a" }, d.clock.now());
      assert.equal(d.of("stuck", true).length, 1);
      assert.equal((d.events[0]!.data.value as string).length, 1024 * 1024);
      d.detector.onReport("d1", { blob: big.slice(0, -1) + "b" }, d.clock.now());
      assert.equal(d.of("stuck", false).length, 1);
      assert.equal(d.of("outlier").length, 0);
    });

    it("ignores an empty report", async () => {
      const d = setup();
      assert.doesNotThrow(() => d.detector.onReport("d1", {}, d.clock.now()));
      assert.equal(d.events.length, 0);
    });
  });

  describe("through a real Hub", () => {
    const ID = "boiler-1";

    function hubSetup(anomaly: Overrides = {}) {
      const clock = new ManualClock();
      const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, anomaly: { ...anomaly, stuck: { numericOnly: false, ...anomaly.stuck } } });
      return { clock, hub };
    }

    const anomalies = (hub: Hub, kind?: string) =>
      hub.events
        .query({ type: "state.anomaly", limit: 1000 })
        .reverse()
        .filter((e) => kind === undefined || (e.data as AnomalyData).kind === kind)
        .map((e) => e as AnomalyEvent);

    it("flags a device flapping between heartbeat timeouts and status reports, and clears it when it settles", async () => {
      const { clock, hub } = hubSetup({ flapping: { threshold: 4, windowSec: 60, clearBelow: 1 } });
      await hub.start();
      await hub.registerDevice({ id: ID, protocol: "mqtt", heartbeatTimeout: 5 });
      hub.ingest(ID, { kind: "telemetry", data: { temperature: 21 }, protocol: "mqtt" }); // unknown → online: not a flip
      assert.equal(hub.getDevice(ID).status, "online");
      clock.advance(5001); // silent past its timeout: online → offline (1)
      assert.equal(hub.getDevice(ID).status, "offline");
      hub.ingest(ID, { kind: "heartbeat", protocol: "mqtt" }); // offline → online (2)
      hub.ingest(ID, { kind: "status", data: "offline", protocol: "mqtt" }); // online → offline (3)
      assert.equal(anomalies(hub).length, 0);
      assert.equal(hub.anomaly.isFlapping(ID), false);
      hub.ingest(ID, { kind: "telemetry", data: { temperature: 21 }, protocol: "mqtt" }); // offline → online (4)
      const started = anomalies(hub, "flapping");
      assert.equal(started.length, 1);
      assert.equal(started[0]!.deviceId, ID);
      assert.equal(started[0]!.priority, "high");
      assert.deepEqual(started[0]!.data, { kind: "flapping", active: true, transitions: 4, windowSec: 60 });
      assert.equal(hub.stateStatistics().anomalies.active.flapping, 1);

      // It then goes quiet: one more timeout (5), then nothing.
      clock.advance(5001);
      assert.equal(hub.getDevice(ID).status, "offline");
      clock.advance(50_000);
      assert.equal(hub.anomaly.isFlapping(ID), true, "still 2+ transitions in the window");
      clock.advance(60_000);
      assert.equal(hub.anomaly.isFlapping(ID), false);
      const all = anomalies(hub, "flapping");
      assert.deepEqual(
        all.map((e) => e.data.active),
        [true, false],
      );
      assert.equal(hub.stateStatistics().anomalies.active.flapping, 0);
      assert.equal(hub.stateStatistics().anomalies.detected.flapping, 1);
      await hub.stop();
      assert.equal(clock.pendingTimers, 0);
    });

    it("names the report or status change that showed an anomaly as its cause, as that change's state.changed does", async () => {
      const { clock, hub } = hubSetup({ stuck: { reports: 3, seconds: 0 }, outlier: { alpha: 0.1, zScore: 4, warmup: 5 }, flapping: { threshold: 2, windowSec: 60, clearBelow: 0 } });
      await hub.start();
      await hub.registerDevice({ id: ID, protocol: "mqtt", heartbeatTimeout: 60 });
      const causes = (type: string, kind?: string) =>
        hub.events
          .query({ type, deviceId: ID, limit: 1000 })
          .filter((e) => kind === undefined || (e.data as AnomalyData).kind === kind)
          .map((e) => e.causeId);
      for (let i = 0; i < 10; i++) {
        hub.ingest(ID, { kind: "telemetry", data: { temperature: noise(i), valve: "open" }, protocol: "mqtt" });
        clock.advance(1000);
      }
      const jump = hub.ingest(ID, { kind: "telemetry", data: { temperature: 80 }, protocol: "mqtt" });
      assert.ok(jump.causeId, "the report has an id");
      assert.deepEqual(causes("state.anomaly", "outlier"), [jump.causeId]);
      const stuck = causes("state.anomaly", "stuck");
      assert.equal(stuck.length, 1);
      assert.ok(stuck[0] !== null && causes("state.changed").includes(stuck[0]!), "the stuck value's report");
      hub.ingest(ID, { kind: "status", data: "offline", protocol: "mqtt" });
      const back = hub.ingest(ID, { kind: "status", data: "online", protocol: "mqtt" });
      assert.deepEqual(causes("state.anomaly", "flapping"), [back.causeId], "the status report that made it flapping");
      await hub.stop();
    });

    it("reports stuck values and outliers from ingested telemetry, and tells subscribers", async () => {
      const { clock, hub } = hubSetup({ stuck: { reports: 5, seconds: 0 }, outlier: { alpha: 0.1, zScore: 4, warmup: 10 } });
      await hub.start();
      await hub.registerDevice({ id: ID, protocol: "mqtt", heartbeatTimeout: 60 });
      const seen: AnomalyEvent[] = [];
      hub.subscribe({ types: "state.anomaly", deviceId: ID }, (e) => void seen.push(e as AnomalyEvent));
      for (let i = 0; i < 30; i++) {
        hub.ingest(ID, { kind: "telemetry", data: { temperature: noise(i), valve: "open" }, protocol: "mqtt" });
        clock.advance(1000);
      }
      assert.deepEqual(
        seen.map((e) => [e.data.kind, e.data.property, e.data.active]),
        [["stuck", "valve", true]],
      );
      hub.ingest(ID, { kind: "telemetry", data: { temperature: 80, valve: "closed" }, protocol: "mqtt" });
      assert.deepEqual(
        seen.map((e) => [e.data.kind, e.data.property, e.data.active]),
        [
          ["stuck", "valve", true],
          ["outlier", "temperature", true],
          ["stuck", "valve", false],
        ],
      );
      assert.equal(seen[1]!.data.value, 80);
      assert.deepEqual(hub.stateStatistics().anomalies.detected, { flapping: 0, stuck: 1, outlier: 1 });
      assert.equal(anomalies(hub).length, 3, "kept in the event history");
      await hub.stop();
      assert.equal(clock.pendingTimers, 0);
    });

    it("a state report's properties go through the detector as well", async () => {
      const { hub } = hubSetup({ stuck: { reports: 3, seconds: 0 } });
      await hub.registerDevice({ id: ID, protocol: "mqtt" });
      for (let i = 0; i < 3; i++) hub.ingest(ID, { kind: "state", data: { properties: { valve: "open" } } });
      assert.equal(anomalies(hub, "stuck").length, 1);
      assert.equal(anomalies(hub, "stuck")[0]!.data.property, "valve");
    });

    it("removing a flapping device forgets it: no clear event later, counts drop", async () => {
      const { clock, hub } = hubSetup({ flapping: { threshold: 2, windowSec: 60, clearBelow: 0 } });
      await hub.start();
      await hub.registerDevice({ id: ID, protocol: "mqtt", heartbeatTimeout: 5 });
      hub.ingest(ID, { kind: "heartbeat" });
      hub.ingest(ID, { kind: "status", data: "offline" });
      hub.ingest(ID, { kind: "heartbeat" });
      assert.equal(hub.anomaly.isFlapping(ID), true);
      await hub.removeDevice(ID);
      assert.equal(hub.anomaly.isFlapping(ID), false);
      assert.equal(hub.stateStatistics().anomalies.active.flapping, 0);
      clock.advance(600_000);
      assert.deepEqual(
        anomalies(hub).map((e) => e.data.active),
        [true],
      );
      assert.equal(clock.pendingTimers, 0);
      await hub.stop();
    });

    it("stopping the hub while a device flaps leaves no timer behind", async () => {
      const { clock, hub } = hubSetup({ flapping: { threshold: 2, windowSec: 60, clearBelow: 0 } });
      await hub.start();
      await hub.registerDevice({ id: ID, protocol: "mqtt", heartbeatTimeout: 5 });
      hub.ingest(ID, { kind: "heartbeat" });
      hub.ingest(ID, { kind: "status", data: "offline" });
      hub.ingest(ID, { kind: "heartbeat" });
      assert.equal(hub.anomaly.isFlapping(ID), true);
      await hub.stop();
      assert.equal(clock.pendingTimers, 0);
    });

    it("takes constructor keys in telemetry as data and refuses __proto__ keys, polluting nothing", async () => {
      const { hub } = hubSetup({ stuck: { reports: 2, seconds: 0 } });
      await hub.registerDevice({ id: ID, protocol: "mqtt" });
      const good = JSON.parse('{"constructor": 1, "prototype": {"polluted": true}}') as unknown;
      hub.ingest(ID, { kind: "telemetry", data: good });
      hub.ingest(ID, { kind: "telemetry", data: good });
      assert.deepEqual(
        anomalies(hub, "stuck").map((e) => e.data.property),
        ["constructor", "prototype"],
      );
      assert.throws(
        () => hub.ingest(ID, { kind: "telemetry", data: JSON.parse('{"__proto__": {"polluted": true}}') as unknown }),
        (err: unknown) => err instanceof TethralError && err.code === "INVALID",
      );
      assertNoPollution();
      assert.equal(hub.getState(ID).properties.constructor, 1);
    });
  });
});
