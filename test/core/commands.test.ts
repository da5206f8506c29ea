import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManualClock } from "../../src/core/clock";
import { Hub, type HubOptions } from "../../src/core/hub";
import type { TethralError } from "../../src/core/errors";
import type { Command, TethralEvent } from "../../src/core/types";
import { SqliteStore } from "../../src/store/sqlite";
import { assertNoPollution, assertRejectsCode } from "../helpers";
import { FakeAdapter, settle } from "./fake-adapter";

async function setup(options: HubOptions = {}) {
  const clock = new ManualClock();
  const adapter = new FakeAdapter();
  const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], ...options });
  await hub.start();
  const events: TethralEvent[] = [];
  hub.subscribe({ types: "command.*" }, (e) => {
    events.push(e);
  });
  await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 60 });
  hub.ingest("d1", { kind: "heartbeat" });
  const statuses = (id?: string) => events.filter((e) => !id || (e.data as { command: Command }).command.id === id).map((e) => e.type.slice(8));
  return { clock, adapter, hub, events, statuses };
}

describe("CommandTracker (through a Hub and an in-process adapter)", () => {
  describe("input", () => {
    it("refuses a command to an unknown device (NOT_FOUND) and bad input (INVALID), queuing nothing", async () => {
      const t = await setup();
      await assertRejectsCode(() => t.hub.sendCommand("ghost", { command: "reboot" }), "NOT_FOUND");
      await assertRejectsCode(() => t.hub.sendCommand("d1", {}), "INVALID", "command");
      await assertRejectsCode(() => t.hub.sendCommand("d1", { command: "has space" }), "INVALID", "command");
      await assertRejectsCode(() => t.hub.sendCommand("d1", { command: "x", params: [1, 2] }), "INVALID", "params");
      await assertRejectsCode(() => t.hub.sendCommand("d1", { command: "x", params: JSON.parse('{"__proto__": {"polluted": 1}}') }), "INVALID", "params.__proto__");
      await assertRejectsCode(() => t.hub.sendCommand("d1", { command: "x", priority: "urgent" }), "INVALID", "priority");
      await assertRejectsCode(() => t.hub.sendCommand("d1", { command: "x", timeout: -1 }), "INVALID", "timeout");
      await assertRejectsCode(() => t.hub.sendCommand("d1", { command: "x", retries: 11 }), "INVALID", "retries");
      await assertRejectsCode(() => t.hub.sendCommand("d1", { command: "x", expiresAt: "2001-01-01T00:00:00Z" }), "INVALID", "expiresAt");
      await assertRejectsCode(() => t.hub.sendCommand("d1", { command: "x", colour: "red" }), "INVALID");
      // In the API's words, not zod's.
      const said = async (input: unknown) => (await t.hub.sendCommand("d1", input).then(() => "taken", (err: TethralError) => err.message)) as string;
      assert.equal(await said({}), "command: is required");
      assert.equal(await said({ command: "x", retries: 1.5 }), "retries: must be a whole number");
      assert.equal(await said({ command: "x", priority: "urgent" }), 'priority: must be one of "low", "normal", "high", "critical"');
      assert.equal(await said({ command: "x", wait: "yes" }), "wait: must be true or false");
      assert.equal(await said({ command: "x", colour: "red" }), "colour: is not a known or writable field");
      assertNoPollution();
      assert.deepEqual(t.events, []);
      assert.deepEqual(t.adapter.frames, []);
      await t.hub.stop();
    });
  });

  describe("ids", () => {
    it("are version 7 UUIDs in the order the commands were made, also within one millisecond and when the clock goes back", async () => {
      const t = await setup();
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) ids.push((await t.hub.sendCommand("d1", { command: "x" })).id);
      t.clock.advance(1);
      ids.push((await t.hub.sendCommand("d1", { command: "x" })).id);
      t.clock.set(t.clock.now() - 60_000);
      ids.push((await t.hub.sendCommand("d1", { command: "x" })).id);
      for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      // The store's primary-key index then grows at its end: a random id put each command's row
      // on a page of its own (a third more bytes written to storage per command in bench:comm).
      assert.deepEqual([...ids].sort(), ids);
      assert.equal(new Set(ids).size, ids.length);
      await t.hub.stop();
    });
  });

  describe("two-way commands", () => {
    it("goes queued → sent → succeeded when the device answers, and a waiting caller gets the result", async () => {
      const t = await setup();
      const pending = t.hub.sendCommand("d1", { command: "reboot", params: { delay: 5 }, wait: true });
      await settle();
      assert.equal(t.adapter.frames.length, 1);
      const frame = t.adapter.frames[0]!;
      assert.deepEqual(frame, { id: frame.id, command: "reboot", params: { delay: 5 } });
      t.clock.advance(30);
      assert.deepEqual(t.adapter.respond("d1", { id: frame.id, ok: true, result: { rebooted: true } }), { ok: true, deviceId: "d1", status: "online", changed: false });
      const done = await pending;
      assert.equal(done.status, "succeeded");
      assert.deepEqual(done.result, { rebooted: true });
      assert.equal(done.attempts, 1);
      assert.ok(done.sentAt && done.completedAt);
      assert.deepEqual(t.statuses(), ["queued", "sent", "succeeded"]);
      assert.deepEqual(await t.hub.getCommand(frame.id), done);
      const stats = t.hub.communicationStatistics().commands;
      assert.equal(stats.byStatus.succeeded, 1);
      assert.equal(stats.latencyMs.samples, 1);
      assert.equal(stats.latencyMs.p99, 30);
      await t.hub.stop();
    });

    it("ends failed with the device's error when it answers ok: false", async () => {
      const t = await setup();
      const pending = t.hub.sendCommand("d1", { command: "open-valve", wait: true });
      await settle();
      t.adapter.respond("d1", { id: t.adapter.frames[0]!.id, ok: false, error: "valve jammed" });
      const done = await pending;
      assert.equal(done.status, "failed");
      assert.equal(done.error, "valve jammed");
      assert.equal(t.events.at(-1)!.priority, "high");
      // An error of blank text says nothing: the command's error says the device failed it.
      for (const error of ["", "   "]) {
        const blank = t.hub.sendCommand("d1", { command: "open-valve", wait: true });
        await settle();
        t.adapter.respond("d1", { id: t.adapter.frames.at(-1)!.id, ok: false, error });
        assert.equal((await blank).error, "device reported failure", JSON.stringify(error));
      }
      await t.hub.stop();
    });

    it("times out without an answer, and with retries sends again after a backoff first", async () => {
      const t = await setup();
      const once = t.hub.sendCommand("d1", { command: "ping", timeout: 2, wait: true });
      await settle();
      t.clock.advance(2000);
      const timedOut = await once;
      assert.equal(timedOut.status, "timed_out");
      assert.match(timedOut.error!, /no answer within 2 s/);

      const retried = t.hub.sendCommand("d1", { command: "ping", timeout: 2, retries: 2, wait: true });
      await settle();
      assert.equal(t.adapter.frames.length, 2);
      t.clock.advance(2000);
      await settle();
      assert.equal(t.adapter.frames.length, 2, "a retry waits for its backoff");
      t.clock.advance(500);
      await settle();
      assert.equal(t.adapter.frames.length, 3, "second attempt after at most the base delay");
      t.clock.advance(2000 + 1000);
      await settle();
      assert.equal(t.adapter.frames.length, 4, "third attempt after at most twice the base delay");
      t.clock.advance(2000);
      const last = await retried;
      assert.equal(last.status, "timed_out");
      assert.equal(last.attempts, 3);
      assert.equal(new Set(t.adapter.frames.slice(1).map((f) => f.id)).size, 1, "every attempt carries the same id");
      await t.hub.stop();
    });

    it("ignores and counts late, duplicate and foreign answers", async () => {
      const t = await setup();
      await t.hub.registerDevice({ id: "d2", protocol: "fake" });
      const pending = t.hub.sendCommand("d1", { command: "ping", timeout: 1, wait: true });
      await settle();
      const id = t.adapter.frames[0]!.id;
      t.adapter.respond("d2", { id, ok: true });
      t.clock.advance(1000);
      assert.equal((await pending).status, "timed_out", "an answer from another device does not count");
      t.adapter.respond("d1", { id, ok: true });
      t.adapter.respond("d1", { id: "00000000-0000-4000-8000-000000000000", ok: true });
      assert.equal((await t.hub.getCommand(id)).status, "timed_out");
      const stats = t.hub.communicationStatistics().commands;
      assert.equal(stats.lateResponses, 1);
      assert.equal(stats.unknownResponses, 2);
      await t.hub.stop();
    });

    it("refuses a malformed answer as a rejected message", async () => {
      const t = await setup();
      for (const body of [{ ok: true }, { id: "x" }, [1], "text"]) {
        const r = t.adapter.respond("d1", body);
        assert.equal(r.ok, false);
        if (!r.ok) assert.equal(r.error.code, "INVALID");
      }
      assert.equal(t.hub.communicationStatistics().protocols.fake!.rejected, 4);
      await t.hub.stop();
    });
  });

  describe("one-way commands", () => {
    it("end at sent with a completedAt and are not pending", async () => {
      const t = await setup();
      const done = await t.hub.sendCommand("d1", { command: "blink", expectResponse: false, wait: true });
      assert.equal(done.status, "sent");
      assert.ok(done.completedAt);
      assert.deepEqual(t.hub.pendingCommands(), []);
      t.adapter.auto = { status: "delivered" };
      const delivered = await t.hub.sendCommand("d1", { command: "blink", expectResponse: false, wait: true });
      assert.equal(delivered.status, "delivered");
      assert.deepEqual(t.statuses(delivered.id), ["queued", "sent", "delivered"]);
      await t.hub.stop();
    });
  });

  describe("the queue", () => {
    it("holds commands while the device has no connection and sends them, highest priority first, one at a time", async () => {
      const t = await setup();
      t.adapter.links.set("d1", false);
      const sent: string[] = [];
      for (const priority of ["low", "normal", "critical", "high", "normal"] as const) {
        const c = await t.hub.sendCommand("d1", { command: `c-${priority}-${sent.length}`, priority });
        sent.push(c.id);
        assert.equal(c.status, "queued");
      }
      await settle();
      assert.equal(t.adapter.frames.length, 0);
      assert.equal(t.hub.pendingCommands("d1").length, 5);
      t.adapter.links.set("d1", true);
      t.adapter.context.connected("d1");
      await settle();
      assert.equal(t.adapter.frames.length, 1, "paced: the next waits until this one has its answer");
      for (let i = 0; i < 5; i++) {
        t.adapter.respond("d1", { id: t.adapter.frames[i]!.id, ok: true });
        await settle();
      }
      assert.deepEqual(
        t.adapter.frames.map((f) => f.command),
        ["c-critical-2", "c-high-3", "c-normal-1", "c-normal-4", "c-low-0"],
      );
      await t.hub.stop();
    });

    it("waits for an offline device (status, when the protocol cannot tell) and sends when it comes back", async () => {
      const t = await setup();
      await t.hub.setState("d1", { status: "offline" });
      const c = await t.hub.sendCommand("d1", { command: "reboot" });
      await settle();
      assert.equal(t.adapter.frames.length, 0);
      t.hub.ingest("d1", { kind: "heartbeat" });
      await settle();
      assert.deepEqual(t.adapter.frames.map((f) => f.id), [c.id]);
      await t.hub.stop();
    });

    it("a caller waiting on a device that is away is answered once every attempt and backoff could have run: hand-over and answer, then the retries' backoffs as they are (500 ms, then doubling), not 30 s each", async () => {
      const t = await setup();
      await t.hub.setState("d1", { status: "offline" });
      let answered: Command | null = null;
      void t.hub.sendCommand("d1", { command: "reboot", wait: true, timeout: 2, retries: 2 }).then((c) => (answered = c));
      await settle();
      // 3 attempts × (2 s hand-over + 1 s + 2 s answer), 0.5 s + 1 s of backoffs, and a second: 17.5 s
      // (it was 3 × 2 + 2 × 30 + 1 = 67 s).
      t.clock.advance(17_499);
      await settle();
      assert.equal(answered, null, "still waiting within the limit");
      t.clock.advance(1);
      await settle();
      assert.equal(answered!.status, "queued", "answered, the command still waiting for the device");
      await t.hub.stop();
    });

    it("supersedes queued commands of the same name when asked", async () => {
      const t = await setup();
      t.adapter.links.set("d1", false);
      const a = await t.hub.sendCommand("d1", { command: "setpoint", params: { value: 20 } });
      const other = await t.hub.sendCommand("d1", { command: "reboot" });
      const b = await t.hub.sendCommand("d1", { command: "setpoint", params: { value: 21 }, supersede: true });
      assert.equal((await t.hub.getCommand(a.id)).status, "superseded");
      const event = t.events.find((e) => e.type === "command.superseded")!;
      assert.equal((event.data as { by: string }).by, b.id);
      assert.deepEqual(t.hub.pendingCommands("d1").map((c) => c.id).sort(), [other.id, b.id].sort());
      await t.hub.stop();
    });

    it("cancels a command that has not ended; a second cancel is CONFLICT, an unknown id NOT_FOUND", async () => {
      const t = await setup();
      t.adapter.links.set("d1", false);
      const c = await t.hub.sendCommand("d1", { command: "reboot" });
      const waiting = t.hub.waitForCommand(c.id);
      assert.equal((await t.hub.cancelCommand(c.id)).status, "cancelled");
      assert.equal((await waiting).status, "cancelled");
      await assertRejectsCode(() => t.hub.cancelCommand(c.id), "CONFLICT");
      await assertRejectsCode(() => t.hub.cancelCommand("nope"), "NOT_FOUND");
      await assertRejectsCode(() => t.hub.getCommand("nope"), "NOT_FOUND");
      t.adapter.links.set("d1", true);
      t.adapter.context.connected("d1");
      await settle();
      assert.equal(t.adapter.frames.length, 0, "a cancelled command is never sent");
      await t.hub.stop();
    });

    it("expires a command that could not be sent in time", async () => {
      const t = await setup();
      t.adapter.links.set("d1", false);
      const c = await t.hub.sendCommand("d1", { command: "reboot", expiresIn: 5 });
      assert.equal(c.expiresAt, new Date(t.clock.now() + 5000).toISOString());
      t.clock.advance(5000);
      assert.equal((await t.hub.getCommand(c.id)).status, "expired");
      assert.deepEqual(t.statuses(c.id), ["queued", "expired"]);
      await t.hub.stop();
    });

    it("retries a send the adapter could not make, then fails with its reason", async () => {
      const t = await setup();
      t.adapter.auto = null;
      const pending = t.hub.sendCommand("d1", { command: "reboot", retries: 1, wait: true });
      await settle();
      t.adapter.sends.shift()!.reject(new Error("connection refused"));
      await settle();
      t.clock.advance(500);
      await settle();
      assert.equal(t.adapter.frames.length, 2);
      t.adapter.sends.shift()!.reject(new Error("connection refused"));
      const done = await pending;
      assert.equal(done.status, "failed");
      assert.equal(done.error, "could not deliver: connection refused");
      await t.hub.stop();
    });

    it("keeps commands while the adapter's transport is down and sends them once it is back", async () => {
      const t = await setup({ commands: { sweepIntervalMs: 1000 } });
      t.adapter.status = "degraded";
      const c = await t.hub.sendCommand("d1", { command: "reboot" });
      await settle();
      assert.equal(t.adapter.frames.length, 0);
      t.adapter.status = "ok";
      t.clock.advance(1000);
      await settle();
      assert.deepEqual(t.adapter.frames.map((f) => f.id), [c.id]);
      await t.hub.stop();
    });

    it("refuses more waiting commands than the per-device limit (UNAVAILABLE)", async () => {
      const t = await setup({ commands: { maxQueuedPerDevice: 2 } });
      t.adapter.links.set("d1", false);
      await t.hub.sendCommand("d1", { command: "a" });
      await t.hub.sendCommand("d1", { command: "b" });
      await assertRejectsCode(() => t.hub.sendCommand("d1", { command: "c" }), "UNAVAILABLE");
      await t.hub.stop();
    });

    it("holds the per-device limit under requests that come together, while their rows are written", async () => {
      const dir = mkdtempSync(join(tmpdir(), "tethral-limit-"));
      const t = await setup({ commands: { maxQueuedPerDevice: 10 }, store: new SqliteStore({ path: join(dir, "hub.sqlite") }) });
      try {
        t.adapter.links.set("d1", false);
        const results = await Promise.allSettled(Array.from({ length: 30 }, (_, i) => t.hub.sendCommand("d1", { command: `c${i}` })));
        assert.equal(results.filter((r) => r.status === "fulfilled").length, 10, "as many as the limit");
        assert.equal(t.hub.pendingCommands("d1").length, 10);
        for (const r of results) if (r.status === "rejected") assert.equal((r.reason as { code?: string }).code, "UNAVAILABLE");
      } finally {
        await t.hub.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("cancels a removed device's commands", async () => {
      const t = await setup();
      t.adapter.links.set("d1", false);
      const c = await t.hub.sendCommand("d1", { command: "reboot" });
      const waiting = t.hub.waitForCommand(c.id);
      await t.hub.removeDevice("d1");
      const done = await waiting;
      assert.equal(done.status, "cancelled");
      assert.equal(done.error, "device removed");
      assert.deepEqual(t.hub.pendingCommands(), []);
      await t.hub.stop();
    });

    it("a caller still waiting when the hub stops gets UNAVAILABLE", async () => {
      const t = await setup();
      t.adapter.links.set("d1", false);
      const waiting = t.hub.sendCommand("d1", { command: "reboot", wait: true });
      await settle();
      await t.hub.stop();
      await assertRejectsCode(() => waiting, "UNAVAILABLE");
    });
  });

  describe("across a restart (SQLite file)", () => {
    let dir: string;
    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), "tethral-commands-"));
    });
    afterEach(() => rmSync(dir, { recursive: true, force: true }));

    it("keeps queued and sent commands; the queued one is sent after the restart and the sent one still takes its answer", async () => {
      const file = join(dir, "hub.sqlite");
      const clock = new ManualClock();
      const first = new FakeAdapter();
      const hub1 = new Hub({ clock, heartbeat: { resolutionMs: 0 }, store: new SqliteStore({ path: file }), protocols: [first] });
      await hub1.start();
      await hub1.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 600 });
      await hub1.registerDevice({ id: "d2", protocol: "fake", heartbeatTimeout: 600 });
      hub1.ingest("d1", { kind: "heartbeat" });
      first.links.set("d2", false);
      const done = await hub1.sendCommand("d1", { command: "blink", expectResponse: false, wait: true });
      const sent = await hub1.sendCommand("d1", { command: "calibrate", timeout: 60 });
      const queued = await hub1.sendCommand("d2", { command: "reboot", priority: "high", params: { why: "update" } });
      await settle();
      await hub1.stop();

      const second = new FakeAdapter();
      second.links.set("d2", false);
      const hub2 = new Hub({ clock, heartbeat: { resolutionMs: 0 }, store: new SqliteStore({ path: file }), protocols: [second] });
      await hub2.start();
      await settle();
      assert.deepEqual(hub2.pendingCommands().map((c) => [c.id, c.status]).sort(), [[sent.id, "sent"], [queued.id, "queued"]].sort());
      assert.equal((await hub2.getCommand(done.id)).status, "sent", "a finished command is read back from the store");
      second.respond("d1", { id: sent.id, ok: true, result: 42 });
      assert.equal((await hub2.getCommand(sent.id)).status, "succeeded");
      second.links.set("d2", true);
      second.context.connected("d2");
      await settle();
      assert.deepEqual(second.frames.map((f) => [f.id, f.command, f.params]), [[queued.id, "reboot", { why: "update" }]]);
      await hub2.flush();
      await hub2.stop();

      const hub3 = new Hub({ clock, store: new SqliteStore({ path: file }), protocols: [new FakeAdapter()] });
      await hub3.start();
      assert.deepEqual(hub3.pendingCommands().map((c) => c.id), [queued.id], "only the one still awaiting its answer");
      assert.equal((await hub3.getCommand(sent.id)).result, 42);
      await hub3.stop();
    });
  });
});
