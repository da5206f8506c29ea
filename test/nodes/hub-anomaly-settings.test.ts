import assert from "node:assert/strict";
import { Hub } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { DEFAULT_ANOMALY_OPTIONS } from "../../src/core/anomaly";
import { HUB_CONFIG_DEFAULTS, parseHubConfig, toHubOptions } from "../../src/nodes/hub-config";
import { assertCode } from "../helpers";

describe("tethral-hub anomaly settings", function () {
  it("default to the engine's thresholds, and an editor's text values are read as numbers", () => {
    const { flapping, stuck, outlier } = DEFAULT_ANOMALY_OPTIONS;
    assert.deepEqual(toHubOptions(parseHubConfig({ id: "hub1", type: "tethral-hub" })).anomaly, {
      flapping: { enabled: flapping.enabled, threshold: flapping.threshold, windowSec: flapping.windowSec },
      stuck: { enabled: stuck.enabled, reports: stuck.reports, seconds: stuck.seconds },
      outlier: { enabled: outlier.enabled, zScore: outlier.zScore, warmup: outlier.warmup },
    });
    const parsed = parseHubConfig({ flappingThreshold: "4", flappingWindow: "60", stuckDetection: false, stuckSeconds: "120", outlierZScore: "3.5", outlierWarmup: "50" });
    assert.deepEqual(toHubOptions(parsed).anomaly, {
      flapping: { enabled: true, threshold: 4, windowSec: 60 },
      stuck: { enabled: false, reports: 30, seconds: 120 },
      outlier: { enabled: true, zScore: 3.5, warmup: 50 },
    });
  });

  it("refuses thresholds the detector cannot work with, naming each field", () => {
    assertCode(() => parseHubConfig({ flappingThreshold: 2 }), "INVALID", "flappingThreshold");
    assertCode(() => parseHubConfig({ flappingWindow: 0 }), "INVALID", "flappingWindow");
    assertCode(() => parseHubConfig({ stuckReports: 1 }), "INVALID", "stuckReports");
    assertCode(() => parseHubConfig({ stuckSeconds: -5 }), "INVALID", "stuckSeconds");
    assertCode(() => parseHubConfig({ outlierZScore: "lots" }), "INVALID", "outlierZScore");
    assertCode(() => parseHubConfig({ outlierWarmup: 0.5 }), "INVALID", "outlierWarmup");
  });

  it("reach the hub: a value unchanged for the configured number of reports is stuck, and an off detector stays quiet", async () => {
    for (const [stuckDetection, expected] of [[true, 1], [false, 0]] as const) {
      const hub = new Hub({ ...toHubOptions({ ...HUB_CONFIG_DEFAULTS, stuckDetection, stuckReports: 3 }), onWarning: () => undefined });
      await hub.start();
      try {
        const anomalies: TethralEvent[] = [];
        hub.subscribe({ types: "state.anomaly" }, (e) => void anomalies.push(e));
        await hub.registerDevice({ id: "t-1", protocol: "mqtt" });
        for (let i = 0; i < 3; i++) hub.ingest("t-1", { kind: "telemetry", data: { temperature: 20 } });
        assert.equal(anomalies.filter((e) => (e.data as { kind?: string }).kind === "stuck").length, expected, `stuckDetection ${stuckDetection}`);
      } finally {
        await hub.stop();
      }
    }
  });

  it("reach the hub: a device flaps at the configured number of transitions, not before", async () => {
    const flaps = async (flappingThreshold: number) => {
      const hub = new Hub({ ...toHubOptions({ ...HUB_CONFIG_DEFAULTS, flappingThreshold }), onWarning: () => undefined });
      await hub.start();
      try {
        const anomalies: TethralEvent[] = [];
        hub.subscribe({ types: "state.anomaly" }, (e) => void anomalies.push(e));
        await hub.registerDevice({ id: "f-1", protocol: "mqtt" });
        // Online, offline, online, offline: four transitions.
        for (let i = 0; i < 2; i++) {
          hub.ingest("f-1", { kind: "telemetry", data: { v: i } });
          hub.ingest("f-1", { kind: "status", data: "offline" });
        }
        return anomalies.filter((e) => (e.data as { kind?: string }).kind === "flapping").length;
      } finally {
        await hub.stop();
      }
    };
    assert.equal(await flaps(3), 1, "3 transitions flap");
    assert.equal(await flaps(6), 0, "the default 6 does not, yet");
  });
});
