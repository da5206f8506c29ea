import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { Store } from "../../src/core/ports/store";
import { DeviceTokens } from "../../src/core/tokens";

describe("device tokens", () => {
  it("are 32 random bytes each, base64url, none ever handed out twice across the pool's refills", () => {
    const seen = new Set<string>();
    // Several refills of the 128-token pool.
    for (let i = 0; i < 1000; i++) {
      const token = DeviceTokens.generate();
      assert.match(token, /^[A-Za-z0-9_-]{43}$/);
      assert.equal(Buffer.from(token, "base64url").length, 32);
      assert.ok(!seen.has(token), `token ${i} repeats an earlier one`);
      seen.add(token);
    }
  });

  it("are not all-zero (a pool slice is zeroed only after it is read)", () => {
    const zero = Buffer.alloc(32).toString("base64url");
    for (let i = 0; i < 300; i++) assert.notEqual(DeviceTokens.generate(), zero);
  });

  /** Registry records as DeviceTokens finds them; ids missing here are the orphans case. */
  function holders(...ids: string[]) {
    const records = new Map(ids.map((id) => [id, { tokenHash: undefined as string | undefined }]));
    return { records, record: (id: string) => records.get(id) };
  }

  /** A store that keeps token rows, as the databases do. */
  function tokenStore() {
    const rows = new Map<string, { deviceId: string; hash: string; createdAt: number }>();
    return {
      rows,
      store: {
        putToken: async (row: { deviceId: string; hash: string; createdAt: number }) => void rows.set(row.deviceId, row),
        loadTokens: async () => [...rows.values()],
      } as unknown as Store,
    };
  }

  it("are stored as every stored token was: SHA-256 of the UTF-8, hex (databases keep these), and load back", async () => {
    const { rows, store } = tokenStore();
    const tokens = new DeviceTokens(store, holders("abc", "accent"));
    await tokens.save("abc", "abc", 1);
    await tokens.save("accent", "é", 1);
    assert.equal(rows.get("abc")!.hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert.equal(rows.get("accent")!.hash, createHash("sha256").update(Buffer.from("é", "utf8")).digest("hex"));
    // A restart: the hashes come back from the store and still check.
    const reloaded = new DeviceTokens(store, holders("abc", "accent"));
    await reloaded.load();
    assert.equal(reloaded.verify("abc", "abc"), true);
    assert.equal(reloaded.verify("accent", "é"), true);
    assert.equal(reloaded.verify("accent", "e"), false);
  });

  it("check by hash: the token handed out passes, any other fails, a forgotten one fails", async () => {
    const h = holders("d1");
    const tokens = new DeviceTokens(null, h);
    const token = DeviceTokens.generate();
    await tokens.save("d1", token, Date.now());
    assert.equal(h.records.get("d1")!.tokenHash!.length, 32, "kept on the device's record");
    assert.equal(tokens.verify("d1", token), true);
    assert.equal(tokens.verify("d1", DeviceTokens.generate()), false);
    assert.equal(tokens.verify("d1", undefined), false);
    assert.equal(tokens.verify("d2", token), false, "another device's token");
    tokens.forget("d1");
    assert.equal(tokens.verify("d1", token), false);
    assert.equal(tokens.has("d1"), false);
  });

  it("keep a hash for an id with no record yet (a follower's row before its device's), until forgotten", async () => {
    const h = holders();
    const tokens = new DeviceTokens(null, h);
    tokens.restore({ deviceId: "late", hash: createHash("sha256").update("secret").digest("hex") });
    assert.equal(tokens.verify("late", "secret"), true);
    assert.equal(tokens.has("late"), true);
    tokens.forget("late");
    assert.equal(tokens.verify("late", "secret"), false);
  });
});
