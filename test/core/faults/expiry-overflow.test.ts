import assert from "node:assert/strict";
import { Hub } from "../../../src/core/hub";
import { FakeAdapter } from "../fake-adapter";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("expiresIn beyond 24.8 days (real clock)", () => {
  it("a command to an offline device with expiresIn = 30 days is still queued a moment later", async () => {
    const adapter = new FakeAdapter();
    const hub = new Hub({ protocols: [adapter], deviceTokens: false, onWarning: () => undefined });
    await hub.start();
    await hub.registerDevice({ id: "d1", protocol: "fake" });
    adapter.links.set("d1", false);
    const c = await hub.sendCommand("d1", { command: "reboot", expiresIn: 30 * 24 * 3600 });
    await sleep(50);
    const now = await hub.getCommand(c.id);
    await hub.stop();
    assert.equal(now.status, "queued", `status ${now.status} (${now.error}) 50 ms after a 30-day expiry`);
  });
});
