import assert from "node:assert/strict";
import { Hub } from "../../../src/core/hub";
import { SqliteStore } from "../../../src/store/sqlite";

describe("rotateToken racing removeDevice", () => {
  it("leaves no token for a device that no longer exists", async () => {
    const store = new SqliteStore({ path: ":memory:" });
    const hub = new Hub({ store, onWarning: () => undefined });
    await hub.start();
    await hub.registerDevice({ id: "d1", protocol: "mqtt" });
    const removing = hub.removeDevice("d1");
    const rotating = hub.rotateToken("d1");
    await removing;
    const r = await rotating.then(() => `resolved with a token`, (e: Error & { code?: string }) => `rejected ${e.code}`);
    const stored = await store.getToken("d1");
    const inMemory = hub.tokens.has("d1");
    await hub.stop();
    assert.equal(hub.listDevices().devices.length, 0);
    assert.deepEqual({ r, stored: stored !== null, inMemory }, { r: "rejected NOT_FOUND", stored: false, inMemory: false });
  });
});
