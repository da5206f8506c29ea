import assert from "node:assert/strict";
import { ManualClock } from "../../../src/core/clock";
import { Hub } from "../../../src/core/hub";
import type { SendOutcome } from "../../../src/protocols/types";
import { FakeAdapter, settle } from "../fake-adapter";

describe("an adapter (plugin) that resolves send() with something that is not a SendOutcome", () => {
  it("does not leave an unhandled rejection nor stall the device's queue", async () => {
    const unhandled: unknown[] = [];
    const listeners = process.listeners("unhandledRejection");
    process.removeAllListeners("unhandledRejection");
    const onUnhandled = (r: unknown) => void unhandled.push(r);
    process.on("unhandledRejection", onUnhandled);
    try {
      const clock = new ManualClock();
      const adapter = new FakeAdapter();
      const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], deviceTokens: false });
      await hub.start();
      await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 60 });
      hub.ingest("d1", { kind: "heartbeat" });
      adapter.auto = null;
      const a = await hub.sendCommand("d1", { command: "a", timeout: 1 });
      await settle();
      // e.g. a plugin's `async send() { client.write(...) }`, resolving undefined
      adapter.sends.shift()!.resolve(undefined as unknown as SendOutcome);
      await settle();
      await new Promise((r) => setTimeout(r, 20));
      adapter.auto = { status: "sent" };
      await hub.sendCommand("d1", { command: "b" });
      clock.advance(60_000);
      await settle();
      const first = await hub.getCommand(a.id);
      await hub.stop();
      assert.notEqual(first.status, "queued", `${first.status} ${hub.pendingCommands().map(c=>c.command+":"+c.status).join(",")}: ` + "the first command is stuck for ever, holding the device's only slot");
      assert.deepEqual(adapter.frames.map((f) => f.command), ["a", "b"]);
      assert.deepEqual(unhandled.map(String), [], "unhandled rejection from the tracker (crashes Node 20 by default)");
    } finally {
      process.removeListener("unhandledRejection", onUnhandled);
      for (const l of listeners) process.on("unhandledRejection", l);
    }
  });
});
