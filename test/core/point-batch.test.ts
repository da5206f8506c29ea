import assert from "node:assert/strict";
import { PointBatch, PointBuffer } from "../../src/core/point-batch";
import type { PointRow } from "../../src/core/ports/store";

/** A small seeded generator, so a failure can be run again. */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe("the write-behind queue's telemetry points (PointBuffer)", () => {
  it("keeps every point, in order, through pushes, takes, loans, put-backs, extractions and drops, across growing, compacting and shrinking", () => {
    const rnd = random(42);
    // Small columns, so that growing, moving to the front and shrinking all happen often.
    const buffer = new PointBuffer(64);
    let model: PointRow[] = [];
    let seq = 0;
    const lent: { batch: PointBatch; rows: PointRow[] }[] = [];
    const value = (n: number): PointRow["value"] => (n % 7 === 0 ? `t${n}` : n % 11 === 0 ? n % 2 === 0 : n * 0.5);
    for (let step = 0; step < 4000; step++) {
      const r = rnd();
      if (r < 0.55) {
        // A burst, sometimes large enough to make the columns grow several times.
        const n = Math.floor(rnd() * (rnd() < 0.05 ? 2000 : 60));
        for (let i = 0; i < n; i++) {
          const row = { deviceId: `d${Math.floor(rnd() * 20)}`, key: `k${i % 6}`, ts: 1_000_000 + seq, value: value(seq) };
          seq++;
          buffer.push(row.deviceId, row.key, row.ts, row.value);
          model.push(row);
        }
      } else if (r < 0.7) {
        const max = Math.floor(rnd() * 5000) + 1;
        const batch = buffer.take(max);
        assert.deepEqual(batch.rows(), model.slice(0, max));
        model = model.slice(max);
      } else if (r < 0.8) {
        const max = Math.floor(rnd() * 20000) + 1;
        const batch = buffer.lend(max);
        const rows = model.slice(0, max);
        assert.deepEqual(batch.rows(), rows);
        model = model.slice(max);
        lent.push({ batch, rows });
      } else if (r < 0.86 && lent.length > 0) {
        // What was lent is unchanged by everything since, until it comes back.
        const { batch, rows } = lent.shift()!;
        assert.deepEqual(batch.rows(), rows);
        if (rnd() < 0.3) {
          buffer.prepend(batch);
          model = [...rows, ...model];
        }
        buffer.recycle(batch);
      } else if (r < 0.9) {
        const id = `d${Math.floor(rnd() * 20)}`;
        const mine = buffer.extract(id);
        assert.deepEqual(mine.rows(), model.filter((p) => p.deviceId === id));
        model = model.filter((p) => p.deviceId !== id);
      } else if (r < 0.95) {
        const n = Math.floor(rnd() * 300);
        buffer.drop(n);
        model = model.slice(n);
      } else {
        const all = buffer.take(buffer.length);
        assert.deepEqual(all.rows(), model);
        buffer.append(all);
      }
      assert.equal(buffer.length, model.length);
    }
    assert.deepEqual(buffer.take(Number.MAX_SAFE_INTEGER).rows(), model);
  });

  it("moves what waits to the front when the columns fill behind taken points, and grows them keeping what waits", () => {
    const buffer = new PointBuffer(4096);
    const rows: PointRow[] = [];
    const push = (n: number) => {
      for (let i = 0; i < n; i++) {
        const row = { deviceId: `d${rows.length % 13}`, key: `k${rows.length % 7}`, ts: rows.length, value: rows.length % 9 === 0 ? "x" : rows.length };
        rows.push(row);
        buffer.push(row.deviceId, row.key, row.ts, row.value);
      }
    };
    push(4096);
    assert.deepEqual(buffer.take(3000).rows(), rows.splice(0, 3000));
    // The columns' end is reached with 3,000 free slots in front: what waits moves there.
    push(2000);
    assert.deepEqual(buffer.take(10).rows(), rows.splice(0, 10));
    // Now most slots are in use: the columns double, with what waits copied from where it is.
    push(3000);
    assert.equal(buffer.length, rows.length);
    assert.deepEqual(buffer.take(Number.MAX_SAFE_INTEGER).rows(), rows);
  });

  it("lends its columns when a batch takes everything from the first slot, and goes on in the columns given back", () => {
    const buffer = new PointBuffer();
    buffer.push("d1", "t", 1, 20.5);
    buffer.push("d1", "mode", 1, "eco");
    const first = buffer.lend(100);
    assert.equal(first.length, 2);
    buffer.push("d2", "t", 2, 21);
    // While the first is out, a second loan is a copy: the first's columns are not touched.
    const second = buffer.lend(100);
    assert.notEqual(second.times, first.times);
    assert.deepEqual(first.rows(), [
      { deviceId: "d1", key: "t", ts: 1, value: 20.5 },
      { deviceId: "d1", key: "mode", ts: 1, value: "eco" },
    ]);
    buffer.recycle(first);
    assert.equal(first.others[1], null, "a text is let go of once its batch is back");
    buffer.push("d3", "t", 3, 22);
    const third = buffer.lend(100);
    buffer.push("d4", "t", 4, 23);
    assert.deepEqual(third.rows(), [{ deviceId: "d3", key: "t", ts: 3, value: 22 }]);
    buffer.recycle(third);
    const fourth = buffer.lend(100);
    assert.equal(fourth.times, first.times, "the columns given back are used again");
    assert.deepEqual(fourth.rows(), [{ deviceId: "d4", key: "t", ts: 4, value: 23 }]);
  });

  it("turns rows into columns as they are, so the store still refuses what is not a point", () => {
    const batch = PointBatch.of([
      { deviceId: "d1", key: "t", ts: "5" as never, value: 1 },
      { deviceId: "d1", key: "t", ts: 6, value: { nested: true } as never },
      { deviceId: "d1", key: "t", ts: 7, value: null as never },
      { deviceId: "d1", key: "t", ts: 8, value: Number.NaN },
    ]);
    assert.ok(Number.isNaN(batch.times[0]!), "a text time is not read as a number");
    assert.deepEqual(batch.value(1), { nested: true });
    assert.equal(batch.value(2), null);
    assert.ok(Number.isNaN(batch.value(3) as number));
  });
});
