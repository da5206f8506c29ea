import assert from "node:assert/strict";
import { Hub } from "../../src/core/hub";
import { parseExposition, sampleValue } from "../prometheus";

async function sample(hub: Hub, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  return sampleValue(parseExposition((await hub.metrics.exposition()).text), name, labels);
}

describe("HubMetrics", () => {
  it("keeps each hub's metrics apart, with the process metrics in both, however many hubs one process holds", async () => {
    const hubs = [new Hub(), new Hub(), new Hub()];
    try {
      for (const hub of hubs) await hub.start();
      await hubs[0]!.registerDevice({ id: "a", protocol: "mqtt" });
      await hubs[0]!.registerDevice({ id: "b", protocol: "mqtt" });
      await hubs[1]!.registerDevice({ id: "c", protocol: "mqtt" });
      assert.equal(await sample(hubs[0]!, "tethral_devices", { status: "unknown" }), 2);
      assert.equal(await sample(hubs[1]!, "tethral_devices", { status: "unknown" }), 1);
      assert.equal(await sample(hubs[2]!, "tethral_devices", { status: "unknown" }), 0);
      for (const hub of hubs) assert.ok((await sample(hub, "process_cpu_user_seconds_total"))! >= 0);
    } finally {
      for (const hub of hubs) await hub.stop();
    }
  });

  it("counts refusals by protocol and reason, and a flow's own report under protocol none", async () => {
    const hub = new Hub();
    await hub.start();
    try {
      await hub.registerDevice({ id: "a", protocol: "mqtt" });
      assert.equal(hub.receive({ protocol: "mqtt", deviceId: "a", kind: "telemetry", payload: "{}", token: "wrong" }).ok, false);
      assert.equal(hub.receive({ protocol: "mqtt", deviceId: "a", kind: "telemetry", payload: "{}", token: "wrong" }).ok, false);
      assert.equal(hub.receive({ protocol: "coap", deviceId: "zz", kind: "telemetry", payload: "{}" }).ok, false);
      assert.throws(() => hub.ingest("a", { kind: "telemetry", data: [1] as never }));
      assert.equal(await sample(hub, "tethral_messages_refused_total", { protocol: "mqtt", reason: "bad-token" }), 2);
      assert.equal(await sample(hub, "tethral_messages_refused_total", { protocol: "coap", reason: "unknown-device" }), 1);
      assert.equal(await sample(hub, "tethral_messages_refused_total", { protocol: "none", reason: "invalid-payload" }), 1);
      assert.equal(await sample(hub, "tethral_messages_received_total", { protocol: "mqtt" }), 2);
    } finally {
      await hub.stop();
    }
  });
});
