import assert from "node:assert/strict";
import { createHash } from "node:crypto";
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

  it("hash as every stored token was hashed: SHA-256 of the UTF-8, hex (databases keep these)", () => {
    assert.equal(DeviceTokens.hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert.equal(DeviceTokens.hash("é"), createHash("sha256").update(Buffer.from("é", "utf8")).digest("hex"));
  });

  it("check by hash: the token handed out passes, any other fails", async () => {
    const tokens = new DeviceTokens(null);
    const token = DeviceTokens.generate();
    await tokens.save("d1", token, Date.now());
    assert.equal(tokens.verify("d1", token), true);
    assert.equal(tokens.verify("d1", DeviceTokens.generate()), false);
    assert.equal(tokens.verify("d1", undefined), false);
  });
});
