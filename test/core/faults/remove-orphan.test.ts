import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManualClock } from "../../../src/core/clock";
import { Hub } from "../../../src/core/hub";
import { SqliteStore } from "../../../src/store/sqlite";
import type { Store } from "../../../src/core/ports/store";
import { FakeAdapter, settle } from "../fake-adapter";

function gatedStore(real: SqliteStore, state: { gate: Promise<void> | null; deleted: boolean }): Store {
  return new Proxy(real, {
    get(target, prop) {
      const v = (target as unknown as Record<string | symbol, unknown>)[prop];
      if (prop === "deleteDevice") {
        return async (id: string) => {
          await (v as (id: string) => Promise<void>).call(target, id);
          state.deleted = true;
          if (state.gate) await state.gate;
        };
      }
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as unknown as Store;
}

describe("command status written behind a device's deletion", () => {
  it("leaves no command row of a removed device (it would be sent to a new device of the same id after a restart)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "rv-"));
    const file = join(dir, "hub.sqlite");
    try {
      const clock = new ManualClock();
      const adapter = new FakeAdapter();
      let open!: () => void;
      const state = { gate: new Promise<void>((r) => (open = r)) as Promise<void> | null, deleted: false };
      const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], deviceTokens: false, store: gatedStore(new SqliteStore({ path: file }), state), onWarning: () => undefined });
      await hub.start();
      await hub.registerDevice({ id: "d1", protocol: "fake", heartbeatTimeout: 600 });
      hub.ingest("d1", { kind: "heartbeat" });
      adapter.auto = null;
      await hub.sendCommand("d1", { command: "unlock-door", timeout: 60 });
      await settle();
      const removing = hub.removeDevice("d1");
      while (!state.deleted) await new Promise((r) => setTimeout(r, 5));
      // The device's delete is committed; its send completes now (status sent, written behind).
      adapter.sends[0]!.resolve({ status: "sent" });
      await settle();
      clock.advance(25);
      await new Promise((r) => setTimeout(r, 50));
      open();
      await removing;
      await hub.flush();
      await hub.stop();

      // A new device is registered under the same id, and the hub restarts.
      const hub2 = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [new FakeAdapter()], deviceTokens: false, store: new SqliteStore({ path: file }), onWarning: () => undefined });
      await hub2.start();
      await hub2.registerDevice({ id: "d1", protocol: "fake" });
      await hub2.stop();
      const a3 = new FakeAdapter();
      const hub3 = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [a3], deviceTokens: false, store: new SqliteStore({ path: file }), onWarning: () => undefined });
      await hub3.start();
      const pending = hub3.pendingCommands("d1").map((x) => `${x.command}:${x.status}`);
      await hub3.stop();
      assert.deepEqual(pending, [], "the removed device's command is pending for the new device d1");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
