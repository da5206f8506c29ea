import assert from "node:assert/strict";
import { ChurnMap } from "../../src/core/churn-map";

describe("ChurnMap (entries that come and go: commands in flight, calls waiting)", () => {
  it("gets, sets, counts and deletes like a Map", () => {
    const m = new ChurnMap<string, { n: number }>();
    assert.equal(m.size, 0);
    assert.equal(m.get("a"), undefined);
    assert.equal(m.has("a"), false);
    const a = { n: 1 };
    assert.equal(m.set("a", a), m);
    assert.equal(m.get("a"), a);
    assert.equal(m.has("a"), true);
    m.set("a", { n: 2 });
    assert.equal(m.size, 1, "setting a key again does not count it twice");
    assert.equal(m.get("a")!.n, 2);
    assert.equal(m.delete("a"), true);
    assert.equal(m.delete("a"), false);
    assert.equal(m.size, 0);
    assert.equal(m.has("a"), false);
  });

  it("iterates command ids in insertion order, and numeric ids in increasing order", () => {
    const ids = ["5f2c-0001", "0a11-0002", "zz-3", "b-4"];
    const m = new ChurnMap<string, string>();
    for (const id of ids) m.set(id, id.toUpperCase());
    m.delete("0a11-0002");
    m.set("0a11-0002", "again");
    assert.deepEqual([...m.keys()], ["5f2c-0001", "zz-3", "b-4", "0a11-0002"]);
    assert.deepEqual([...m.values()], ["5F2C-0001", "ZZ-3", "B-4", "again"]);
    assert.deepEqual([...m], [["5f2c-0001", "5F2C-0001"], ["zz-3", "ZZ-3"], ["b-4", "B-4"], ["0a11-0002", "again"]]);
    const calls = new ChurnMap<number, string>();
    for (let id = 1; id <= 5; id++) calls.set(id, `call ${id}`);
    calls.delete(2);
    assert.deepEqual([...calls.values()], ["call 1", "call 3", "call 4", "call 5"]);
  });

  it("keys that an object's prototype would have are ordinary keys", () => {
    const m = new ChurnMap<string, number>();
    for (const k of ["__proto__", "constructor", "toString", "hasOwnProperty"]) m.set(k, k.length);
    assert.equal(m.size, 4);
    assert.equal(m.get("__proto__"), 9);
    assert.equal(m.has("valueOf"), false);
    assert.deepEqual([...m.keys()], ["__proto__", "constructor", "toString", "hasOwnProperty"]);
  });

  it("skips what is deleted during an iteration, and a clear ends it", () => {
    const m = new ChurnMap<string, number>();
    for (let i = 0; i < 6; i++) m.set(`k-${i}`, i);
    const seen: number[] = [];
    for (const v of m.values()) {
      seen.push(v);
      if (v === 1) {
        m.delete("k-2");
        m.delete("k-0");
      }
    }
    assert.deepEqual(seen, [0, 1, 3, 4, 5]);
    assert.equal(m.size, 4);
    const before: string[] = [];
    for (const [k] of m) {
      before.push(k);
      m.clear();
    }
    assert.deepEqual(before, ["k-1"]);
    assert.equal(m.size, 0);
    assert.deepEqual([...m.values()], []);
    m.set("k-9", 9);
    assert.deepEqual([...m], [["k-9", 9]]);
  });
});
