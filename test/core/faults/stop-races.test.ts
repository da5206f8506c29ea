import assert from "node:assert/strict";
import { ManualClock } from "../../../src/core/clock";
import { Hub } from "../../../src/core/hub";
import type { TethralEvent } from "../../../src/core/types";
import { SqliteStore } from "../../../src/store/sqlite";
import type { Store } from "../../../src/core/ports/store";
import { FakeAdapter, settle } from "../fake-adapter";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("commands vs hub.stop()", () => {
  it("a sendCommand({wait:true}) whose store write finishes while the hub stops settles (no promise/timer left behind)", async () => {
    const clock = new ManualClock();
    const adapter = new FakeAdapter();
    const real = new SqliteStore({ path: ":memory:" });
    let gate!: () => void;
    const gated = new Promise<void>((r) => (gate = r));
    let hold = false;
    const store = new Proxy(real, {
      get(target, prop) {
        const v = (target as unknown as Record<string | symbol, unknown>)[prop];
        if (prop === "putCommand") {
          return async (row: unknown) => {
            await (v as (r: unknown) => Promise<void>).call(target, row);
            if (hold) await gated;
          };
        }
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as unknown as Store;
    const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], store, deviceTokens: false, onWarning: () => undefined });
    await hub.start();
    await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 60 });
    hub.ingest("d1", { kind: "heartbeat" });
    adapter.links.set("d1", false);
    hold = true;
    const timersBefore = clock.pendingTimers;
    let outcome = "pending";
    hub.sendCommand("d1", { command: "reboot", wait: true, expiresIn: 60 }).then(
      (c) => (outcome = `resolved ${c.status}`),
      (e: Error) => (outcome = `rejected ${e.message}`),
    );
    await sleep(20);
    await hub.stop();
    gate();
    await sleep(50);
    assert.notEqual(outcome, "pending", "the caller waits for ever: the command was tracked after the tracker stopped");
    assert.ok(clock.pendingTimers <= timersBefore, `timers armed after stop: ${clock.pendingTimers} > ${timersBefore}`);
  });

  it("a send that resolves after hub.stop() changes no status and arms no timer", async () => {
    const clock = new ManualClock();
    const adapter = new FakeAdapter();
    const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], deviceTokens: false });
    await hub.start();
    const events: TethralEvent[] = [];
    hub.subscribe({ types: "command.*" }, (e) => void events.push(e));
    await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 60 });
    hub.ingest("d1", { kind: "heartbeat" });
    adapter.auto = null;
    const c = await hub.sendCommand("d1", { command: "reboot", timeout: 30 });
    await settle();
    assert.equal(adapter.sends.length, 1);
    await hub.stop();
    const timersAfterStop = clock.pendingTimers;
    // A real Node timer (withDeadline, timeout + 1 s) is still armed now, although the hub stopped.
    const liveTimeouts = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    adapter.sends[0]!.resolve({ status: "sent" });
    await settle();
    assert.equal(hub.pendingCommands()[0]?.status, "queued", `status changed after stop to ${hub.pendingCommands()[0]?.status}`);
    assert.equal(clock.pendingTimers, timersAfterStop, "an answer timer was armed after stop");
    void c;
    void liveTimeouts;
  });

  it("after stop, no real timer of the tracker stays armed for an in-flight send", async () => {
    const clock = new ManualClock();
    const adapter = new FakeAdapter();
    const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], deviceTokens: false });
    await hub.start();
    await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 60 });
    hub.ingest("d1", { kind: "heartbeat" });
    adapter.auto = null;
    const before = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    await hub.sendCommand("d1", { command: "reboot", timeout: 3600 });
    await settle();
    await hub.stop();
    const after = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    // clean up the leaked one so mocha can exit
    adapter.sends[0]!.reject(new Error("x"));
    assert.equal(after, before, "a 3601 s setTimeout (withDeadline) keeps the process alive after hub.stop()");
  });
});
