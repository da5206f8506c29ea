import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Hub } from "../../../src/core/hub";
import type { TethralEvent } from "../../../src/core/types";
import { HttpAdapter } from "../../../src/protocols/http";
import { SqliteStore } from "../../../src/store/sqlite";

describe("hub.stop() while an HTTP command is in flight", () => {
  it("keeps the command pending for the next start instead of ending it failed", async () => {
    const dir = mkdtempSync(join(tmpdir(), "rv-"));
    const file = join(dir, "hub.sqlite");
    const held: import("node:http").ServerResponse[] = [];
    const server = createServer((_req, res) => void held.push(res));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    try {
      const hub = new Hub({ store: new SqliteStore({ path: file }), protocols: [new HttpAdapter()], deviceTokens: false, onWarning: () => undefined });
      await hub.start();
      const events: TethralEvent[] = [];
      hub.subscribe({ types: "command.*" }, (e) => void events.push(e));
      await hub.registerDevice({ id: "h1", protocol: "http", address: `http://127.0.0.1:${port}/` });
      const c = await hub.sendCommand("h1", { command: "reboot", timeout: 30 });
      const t0 = Date.now();
      while (held.length === 0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 10));
      assert.equal(held.length, 1, "the device got the request");
      await hub.stop();
      const types = events.map((e) => e.type);
      const hub2 = new Hub({ store: new SqliteStore({ path: file }), protocols: [], deviceTokens: false, onWarning: () => undefined });
      await hub2.start();
      const after = await hub2.getCommand(c.id);
      await hub2.stop();
      assert.deepEqual(types.filter((t) => t === "command.failed"), [], `events during stop: ${types.join(", ")}; stored status after restart: ${after.status} (${after.error})`);
      assert.ok(["queued", "sent"].includes(after.status), `stored status after restart: ${after.status} (${after.error})`);
    } finally {
      for (const r of held) r.destroy();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
