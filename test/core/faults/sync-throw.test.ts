import assert from "node:assert/strict";
import { ManualClock } from "../../../src/core/clock";
import { Hub } from "../../../src/core/hub";
import type { Device } from "../../../src/core/types";
import type { CommandFrame, SendOutcome } from "../../../src/protocols/types";
import { FakeAdapter } from "../fake-adapter";

class ThrowingAdapter extends FakeAdapter {
  override send(_device: Device, _frame: CommandFrame, _timeoutMs: number): Promise<SendOutcome> {
    throw new Error("no address configured"); // a plugin's non-async send() validating its input
  }
}

describe("an adapter whose send() throws synchronously", () => {
  it("sendCommand({wait: true}) still settles (failed)", async () => {
    const clock = new ManualClock();
    const adapter = new ThrowingAdapter();
    const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], deviceTokens: false });
    await hub.start();
    await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 60 });
    hub.ingest("d1", { kind: "heartbeat" });
    let outcome = "pending";
    const p = hub.sendCommand("d1", { command: "reboot", wait: true }).then((c) => (outcome = c.status), (e: Error) => (outcome = `rejected ${e.message}`));
    await new Promise((r) => setTimeout(r, 50));
    clock.advance(3600_000);
    await new Promise((r) => setTimeout(r, 20));
    const status = hub.pendingCommands().length === 0 ? "ended" : "pending";
    assert.equal(outcome === "pending" ? `caller still waiting; command ${status}` : outcome, "failed");
    await hub.stop();
    void p;
  });
});

class UnaskableAdapter extends FakeAdapter {
  override isConnected(_deviceId: string): boolean | undefined {
    throw new Error("connection table not ready"); // a plugin's bug, not the device's
  }
}

describe("an adapter whose isConnected() throws", () => {
  it("a device coming back still has its message applied; its commands wait, and a flow's change lands whole", async () => {
    const clock = new ManualClock();
    const adapter = new UnaskableAdapter();
    const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], deviceTokens: false });
    await hub.start();
    await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 60 });
    await hub.sendCommand("d1", { command: "reboot" });
    const result = hub.receive({ protocol: "fake", deviceId: "d1", kind: "telemetry", payload: Buffer.from('{"t":21}'), authenticated: true });
    assert.equal(result.ok, true, "the message is taken in");
    assert.deepEqual(hub.getState("d1").properties, { t: 21 });
    assert.equal(hub.getDevice("d1").status, "online");
    await hub.setState("d1", { status: "offline" });
    await hub.setState("d1", { status: "online", desired: { mode: "eco" } });
    assert.deepEqual(hub.getState("d1").desired, { mode: "eco" });
    assert.equal(hub.pendingCommands("d1").length, 1, "still waiting: the adapter cannot say the device is there");
    await hub.stop();
  });
});
