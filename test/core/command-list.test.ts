import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManualClock } from "../../src/core/clock";
import { Hub, type HubOptions } from "../../src/core/hub";
import { SqliteStore } from "../../src/store/sqlite";
import { assertRejectsCode } from "../helpers";
import { FakeAdapter, settle } from "./fake-adapter";
import { WrappedStore } from "../store/wrapped-store";

/** A hub whose device d1 is away: its commands wait queued until a test lets them go. */
async function setup(options: HubOptions = {}) {
  const clock = new ManualClock();
  const adapter = new FakeAdapter();
  const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], ...options });
  await hub.start();
  await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 600 });
  await hub.registerDevice({ id: "d2", protocol: "fake", heartbeatTimeout: 600 });
  adapter.links.set("d1", false);
  return { clock, adapter, hub };
}

/** Three commands a millisecond apart: the first cancelled, the others queued. */
async function threeCommands(t: Awaited<ReturnType<typeof setup>>) {
  const a = await t.hub.sendCommand("d1", { command: "a" });
  t.clock.advance(1);
  const b = await t.hub.sendCommand("d1", { command: "b" });
  t.clock.advance(1);
  const c = await t.hub.sendCommand("d1", { command: "c" });
  await t.hub.sendCommand("d2", { command: "elsewhere" });
  await t.hub.cancelCommand(a.id);
  return { a, b, c };
}

const names = (list: Array<{ command: string }>) => list.map((c) => c.command);

describe("A device's commands (Hub.deviceCommands)", () => {
  it("lists them newest first from memory, filtered by status (comma list or list) and limited", async () => {
    const t = await setup();
    await threeCommands(t);
    assert.deepEqual(names(await t.hub.deviceCommands("d1")), ["c", "b", "a"]);
    assert.deepEqual(names(await t.hub.deviceCommands("d1", { status: "queued" })), ["c", "b"]);
    assert.deepEqual(names(await t.hub.deviceCommands("d1", { status: "cancelled,SUCCEEDED" })), ["a"]);
    assert.deepEqual(names(await t.hub.deviceCommands("d1", { status: ["queued", "cancelled"], limit: "2" })), ["c", "b"]);
    assert.deepEqual(await t.hub.deviceCommands("d1", { status: "expired" }), []);
    await t.hub.stop();
  });

  it("refuses an unknown device (NOT_FOUND) and a bad query (INVALID naming status or limit)", async () => {
    const t = await setup();
    await assertRejectsCode(() => t.hub.deviceCommands("ghost"), "NOT_FOUND");
    await assertRejectsCode(() => t.hub.deviceCommands("d1", { status: "queued,lost" }), "INVALID", "status");
    for (const limit of ["0", "1001", "-1", "many", 2.5]) await assertRejectsCode(() => t.hub.deviceCommands("d1", { limit }), "INVALID", "limit");
    await assertRejectsCode(() => t.hub.deviceCommands("d1", { colour: "red" } as never), "INVALID", "colour");
    await t.hub.stop();
  });

  it("with a store, lists finished commands from before a restart", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tethral-cmdlist-"));
    try {
      const file = join(dir, "hub.sqlite");
      const t = await setup({ store: new SqliteStore({ path: file }) });
      const { b } = await threeCommands(t);
      // The list writes the cancel behind before it reads the store.
      await t.hub.cancelCommand(b.id);
      assert.deepEqual(names(await t.hub.deviceCommands("d1", { status: "cancelled" })), ["b", "a"]);
      await t.hub.stop();

      const clock = new ManualClock();
      const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, store: new SqliteStore({ path: file }), protocols: [new FakeAdapter()] });
      await hub.start();
      await settle();
      const after = await hub.deviceCommands("d1", { limit: 10 });
      assert.deepEqual(names(after), ["c", "b", "a"]);
      assert.deepEqual(after.slice(1).map((c) => c.status), ["cancelled", "cancelled"], "finished before the restart, read from the store");
      assert.deepEqual(names(await hub.deviceCommands("d1", { status: "cancelled", limit: 1 })), ["b"]);
      await hub.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("with a store, a status that changes while the store is read is answered as memory has it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tethral-cmdlist-"));
    try {
      const store = new WrappedStore(new SqliteStore({ path: join(dir, "hub.sqlite") }));
      const t = await setup({ store });
      const { c } = await threeCommands(t);
      const read = store.deviceCommands;
      let rowsRead!: () => void;
      let release!: () => void;
      const readDone = new Promise<void>((resolve) => (rowsRead = resolve));
      const held = new Promise<void>((resolve) => (release = resolve));
      store.deviceCommands = async (...args) => {
        const rows = await read(...args);
        rowsRead();
        await held;
        return rows;
      };
      const listing = t.hub.deviceCommands("d1");
      await readDone; // the store's rows say c is queued
      await t.hub.cancelCommand(c.id);
      release();
      const list = await listing;
      assert.deepEqual(
        list.map((x) => [x.command, x.status]),
        [["c", "cancelled"], ["b", "queued"], ["a", "cancelled"]],
      );
      await t.hub.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
