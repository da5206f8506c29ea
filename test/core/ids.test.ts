import assert from "node:assert/strict";
import { newId, newTimeId } from "../../src/core/ids";

describe("ids", () => {
  it("newId gives distinct version 4 UUIDs", () => {
    const ids = Array.from({ length: 10_000 }, () => newId());
    assert.equal(new Set(ids).size, ids.length);
    for (const id of ids.slice(0, 100)) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("newTimeId gives version 7 UUIDs that carry the time and sort in the order they were made", () => {
    const t = Date.now() + 2; // near now: the generator remembers the latest time it has used
    const ids: string[] = [];
    for (let i = 0; i < 6000; i++) ids.push(newTimeId(t + Math.floor(i / 3000))); // 3000 in the same millisecond
    assert.deepEqual([...ids].sort(), ids);
    assert.equal(new Set(ids).size, ids.length);
    assert.match(ids[0]!, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(parseInt(ids[0]!.replace(/-/g, "").slice(0, 12), 16), t);
  });

  it("newTimeId stays in order when the clock goes back", () => {
    const a = newTimeId(Date.now() + 5);
    const b = newTimeId(Date.now() - 60_000);
    assert.ok(b > a);
  });
});
