import assert from "node:assert/strict";
import { iso, isoOrNull } from "../../src/core/json";

describe("timestamps as ISO text", () => {
  it("iso gives exactly what Date#toISOString gives, for cached seconds, colliding cache slots and every millisecond", () => {
    const base = Date.UTC(2026, 11, 4, 23, 59, 58);
    const cases: number[] = [0, 1, 999, 1000, 86_399_999, 951_782_400_000 /* 2000-02-29 */, 253_402_300_799_999 /* 9999-12-31T23:59:59.999Z */];
    for (let ms = 0; ms < 1000; ms++) cases.push(base + ms, base + 1000 + ms, base + 2000 + ms /* next day */);
    // Seconds 256 apart share a cache slot: each must still read its own second.
    for (let i = 0; i < 50; i++) cases.push(base + i * 256_000 + i, base + i * 256_000 + 7, base + i);
    let seed = 7;
    for (let i = 0; i < 20_000; i++) {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
      cases.push(Math.floor((seed / 2_147_483_648) * 4_102_444_800_000));
    }
    for (const ms of cases) assert.equal(iso(ms), new Date(ms).toISOString(), `at ${ms}`);
  });

  it("iso falls back to Date for times outside four-digit years and fractions of a millisecond", () => {
    for (const ms of [-1, -86_400_001, 253_402_300_800_000, 1.5]) assert.equal(iso(ms), new Date(ms).toISOString());
    assert.throws(() => iso(Number.NaN), RangeError);
  });

  it("isoOrNull gives null for a device never seen (0)", () => {
    assert.equal(isoOrNull(0), null);
    assert.equal(isoOrNull(1000), "1970-01-01T00:00:01.000Z");
  });
});
