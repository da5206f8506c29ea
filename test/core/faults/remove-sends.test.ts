import assert from "node:assert/strict";
import { ManualClock } from "../../../src/core/clock";
import { Hub } from "../../../src/core/hub";
import { FakeAdapter, settle } from "../fake-adapter";

describe("removing a device", () => {
  it("does not hand the device's next queued command to the adapter while removing it", async () => {
    const clock = new ManualClock();
    const adapter = new FakeAdapter();
    const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], deviceTokens: false });
    await hub.start();
    await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 60 });
    hub.ingest("d1", { kind: "heartbeat" });
    adapter.links.set("d1", true);
    adapter.auto = null; // sends stay in flight
    await hub.sendCommand("d1", { command: "first" });
    await hub.sendCommand("d1", { command: "second" });
    await settle();
    assert.deepEqual(adapter.frames.map((f) => f.command), ["first"]);
    await hub.removeDevice("d1");
    await settle();
    assert.deepEqual(adapter.frames.map((f) => f.command), ["first"], "a command was sent to a device during its removal");
    await hub.stop();
  });
});
