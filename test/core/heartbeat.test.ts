import assert from "node:assert/strict";
import { ManualClock } from "../../src/core/clock";
import { DeadlineHeap, type Scheduled } from "../../src/core/deadline-heap";
import { DEFAULT_HEARTBEAT_OPTIONS, HeartbeatMonitor, type HeartbeatOptions } from "../../src/core/heartbeat";

type Options = Partial<Omit<HeartbeatOptions, "adaptive" | "retention">> & {
  adaptive?: Partial<HeartbeatOptions["adaptive"]>;
  retention?: Partial<HeartbeatOptions["retention"]>;
};

/** A monitor on a manual clock that records every callback and counts the timers it asks for. */
function setup(o: Options = {}) {
  const clock = new ManualClock();
  let timersScheduled = 0;
  const setTimeoutOriginal = clock.setTimeout.bind(clock);
  clock.setTimeout = (fn, ms) => {
    timersScheduled++;
    return setTimeoutOriginal(fn, ms);
  };
  const expired: { id: string; lastSeen: number; timeoutMs: number; at: number }[] = [];
  const purged: { id: string; offlineSince: number; at: number }[] = [];
  const learned: { id: string; timeoutSec: number }[] = [];
  const options: HeartbeatOptions = {
    ...DEFAULT_HEARTBEAT_OPTIONS,
    resolutionMs: 0,
    ...o,
    adaptive: { ...DEFAULT_HEARTBEAT_OPTIONS.adaptive, ...o.adaptive },
    retention: { ...DEFAULT_HEARTBEAT_OPTIONS.retention, ...o.retention },
  };
  const monitor = new HeartbeatMonitor(clock, options, {
    onExpire: (id, lastSeen, timeoutMs) => expired.push({ id, lastSeen, timeoutMs, at: clock.now() }),
    onPurge: (id, offlineSince) => purged.push({ id, offlineSince, at: clock.now() }),
    onTimeoutLearned: (id, timeoutSec) => learned.push({ id, timeoutSec }),
  });
  monitor.start();
  return { clock, monitor, expired, purged, learned, timers: () => timersScheduled };
}

describe("HeartbeatMonitor", () => {
  describe("online → offline at the timeout boundary", () => {
    it("keeps a device alive at exactly its timeout and expires it 1 ms later", () => {
      const h = setup();
      h.monitor.track("d1", 10);
      const t0 = h.clock.now();
      assert.equal(h.monitor.beat("d1"), true, "the first message brings the device online");
      h.clock.advance(10_000);
      assert.equal(h.expired.length, 0, "silent for exactly the timeout is not past it");
      assert.equal(h.monitor.isAlive("d1"), true);
      h.clock.advance(1);
      assert.deepEqual(h.expired, [{ id: "d1", lastSeen: t0, timeoutMs: 10_000, at: t0 + 10_001 }]);
      assert.equal(h.monitor.isAlive("d1"), false);
    });

    it("uses the hub default when the device has no timeout of its own", () => {
      const h = setup({ defaultTimeoutSec: 30 });
      h.monitor.track("d1", undefined);
      h.monitor.beat("d1");
      h.clock.advance(30_000);
      assert.equal(h.expired.length, 0);
      h.clock.advance(1);
      assert.equal(h.expired.length, 1);
      assert.equal(h.expired[0]!.timeoutMs, 30_000);
    });

    it("every message restarts the wait; only silence past the timeout expires", () => {
      const h = setup();
      h.monitor.track("d1", 10);
      h.monitor.beat("d1");
      for (let i = 0; i < 5; i++) {
        h.clock.advance(9_000);
        assert.equal(h.monitor.beat("d1"), false, "an alive device does not come online again");
      }
      assert.equal(h.expired.length, 0);
      const last = h.clock.now();
      h.clock.advance(10_001);
      assert.deepEqual(
        h.expired.map((e) => [e.id, e.lastSeen]),
        [["d1", last]],
      );
    });

    it("expires once, then comes back on the next message and can expire again", () => {
      const h = setup();
      h.monitor.track("d1", 5);
      h.monitor.beat("d1");
      h.clock.advance(60_000);
      assert.equal(h.expired.length, 1, "one offline per silence, not one per tick");
      assert.equal(h.monitor.beat("d1"), true, "back online");
      h.clock.advance(5_001);
      assert.equal(h.expired.length, 2);
    });

    it("does not watch a device that has never spoken", () => {
      const h = setup();
      h.monitor.track("never", 1);
      h.clock.advance(3_600_000);
      assert.equal(h.expired.length, 0);
      assert.equal(h.monitor.pending.timerArmed, false);
    });

    it("expires devices in deadline order, each with its own timeout", () => {
      const h = setup();
      h.monitor.track("slow", 30);
      h.monitor.track("fast", 5);
      h.monitor.track("mid", 10);
      for (const id of ["slow", "fast", "mid"]) h.monitor.beat(id);
      h.clock.advance(31_000);
      assert.deepEqual(
        h.expired.map((e) => e.id),
        ["fast", "mid", "slow"],
      );
    });

    it("a changed device timeout moves its deadline, earlier or later", () => {
      const h = setup();
      h.monitor.track("d1", 60);
      h.monitor.beat("d1");
      h.monitor.setTimeout("d1", 5);
      h.clock.advance(5_001);
      assert.equal(h.expired.length, 1, "shortened");
      h.monitor.beat("d1");
      h.monitor.setTimeout("d1", 120);
      h.clock.advance(60_001);
      assert.equal(h.expired.length, 1, "lengthened: not expired at the old 60 s");
      h.monitor.setTimeout("d1", undefined);
      assert.equal(h.monitor.effectiveTimeoutSec("d1"), DEFAULT_HEARTBEAT_OPTIONS.defaultTimeoutSec);
    });

    it("rounds deadlines up to the resolution so one timer serves many devices", () => {
      const h = setup({ resolutionMs: 1000 });
      h.clock.set(Math.ceil(h.clock.now() / 1000) * 1000 + 100);
      h.monitor.track("d1", 10);
      h.monitor.beat("d1");
      const t0 = h.clock.now();
      h.clock.advance(10_001);
      assert.equal(h.expired.length, 0, "not before the next whole second");
      h.clock.advance(1000);
      assert.equal(h.expired.length, 1);
      assert.equal(h.expired[0]!.at, Math.ceil((t0 + 10_001) / 1000) * 1000);
    });
  });

  describe("cost: no scan of the fleet", () => {
    it("arms one timer for the earliest deadline and no timer per tick while nothing is due", () => {
      const h = setup();
      for (let i = 0; i < 1000; i++) {
        h.monitor.track(`d${i}`, 60);
        h.monitor.beat(`d${i}`);
      }
      const armed = h.timers();
      assert.equal(h.clock.pendingTimers, 1, "one timer for the whole fleet");
      // A minute of traffic, every device heard each second: heartbeats never touch the timer.
      for (let s = 0; s < 59; s++) {
        h.clock.advance(1000);
        for (let i = 0; i < 1000; i++) h.monitor.beat(`d${i}`);
      }
      assert.equal(h.timers(), armed, "no timer was scheduled while nothing fell due");
      assert.equal(h.monitor.pending.expiries, 1000, "one deadline entry per device, however many messages");
    });

    it("a tick handles the devices that fall due, and leaves the others' entries alone", () => {
      const h = setup();
      for (let i = 0; i < 1000; i++) {
        h.monitor.track(`d${i}`, 150);
        h.monitor.beat(`d${i}`);
        h.clock.advance(60); // deadlines spread over a minute, as in a real fleet
      }
      // Devices 0..9 fall silent; everyone else keeps talking.
      for (let s = 0; s < 200; s++) {
        h.clock.advance(1000);
        for (let i = 10; i < 1000; i++) if (i % 60 === s % 60) h.monitor.beat(`d${i}`);
      }
      assert.deepEqual(
        h.expired.map((e) => e.id).sort(),
        Array.from({ length: 10 }, (_, i) => `d${i}`).sort(),
      );
      assert.equal(h.monitor.pending.expiries, 990, "the silent ten left the deadline heap");
    });
  });

  describe("explicit offline, revive, untrack", () => {
    it("markOffline takes a device offline at once and cancels its deadline", () => {
      const h = setup();
      h.monitor.track("d1", 10);
      h.monitor.beat("d1");
      assert.equal(h.monitor.markOffline("d1"), true);
      assert.equal(h.monitor.markOffline("d1"), false, "already offline");
      h.clock.advance(20_000);
      assert.equal(h.expired.length, 0, "no timeout after an explicit offline");
      assert.equal(h.monitor.beat("d1"), true, "the next message brings it back");
    });

    it("revive expects traffic from now on: a silent device expires one timeout later", () => {
      const h = setup();
      h.monitor.track("d1", 10);
      h.clock.advance(5_000);
      h.monitor.revive("d1");
      assert.equal(h.monitor.isAlive("d1"), true);
      h.clock.advance(10_000);
      assert.equal(h.expired.length, 0);
      h.clock.advance(1);
      assert.equal(h.expired.length, 1);
    });

    it("untrack forgets a device: no expiry, no purge, and beat() is a no-op", () => {
      const h = setup({ retention: { enabled: true, offlineForSec: 1 } });
      h.monitor.track("d1", 1);
      h.monitor.beat("d1");
      h.monitor.untrack("d1");
      h.clock.advance(10_000);
      assert.equal(h.expired.length + h.purged.length, 0);
      assert.equal(h.monitor.beat("d1"), false);
      assert.equal(h.monitor.pending.expiries, 0);
    });
  });

  describe("resuming after a restart", () => {
    it("counts a restored device's deadline from its persisted lastSeen", () => {
      const h = setup();
      const lastSeen = h.clock.now() - 55_000; // heard 55 s before the hub came up
      h.monitor.track("d1", 60, lastSeen);
      assert.equal(h.monitor.isAlive("d1"), true);
      h.clock.advance(5_000);
      assert.equal(h.expired.length, 0);
      h.clock.advance(1);
      assert.equal(h.expired.length, 1, "expired 60 s after its last message, not 60 s after start");
      assert.equal(h.expired[0]!.lastSeen, lastSeen);
    });

    it("a device silent past its timeout while the hub was down expires at the first tick", () => {
      const h = setup();
      h.monitor.track("d1", 60, h.clock.now() - 3_600_000);
      h.clock.advance(0);
      h.clock.advance(1);
      assert.equal(h.expired.length, 1);
    });
  });

  describe("retention of long-gone devices", () => {
    it("is off by default", () => {
      const h = setup();
      h.monitor.track("d1", 1);
      h.monitor.beat("d1");
      h.clock.advance(365 * 24 * 3600 * 1000);
      assert.equal(h.purged.length, 0);
    });

    it("purges a device offline longer than the retention age, with when it went offline", () => {
      const h = setup({ retention: { enabled: true, offlineForSec: 3600 } });
      h.monitor.track("d1", 10);
      h.monitor.beat("d1");
      const t0 = h.clock.now();
      h.clock.advance(10_001 + 3_600_000 - 1);
      assert.equal(h.purged.length, 0);
      h.clock.advance(1);
      assert.deepEqual(
        h.purged.map((p) => [p.id, p.offlineSince]),
        [["d1", t0 + 10_000]],
      );
    });

    it("does not purge a device that came back in time", () => {
      const h = setup({ retention: { enabled: true, offlineForSec: 3600 } });
      h.monitor.track("d1", 10);
      h.monitor.beat("d1");
      h.clock.advance(1_800_000);
      h.monitor.beat("d1");
      h.clock.advance(3_600_000);
      assert.equal(h.purged.length, 0, "it went offline again only 10 s after its return");
      h.clock.advance(20_000);
      assert.equal(h.purged.length, 1);
    });
  });

  describe("adaptive timeout", () => {
    it("learns factor × the median gap and expires a quiet device by it", () => {
      const h = setup({ adaptive: { enabled: true, factor: 3, minSec: 1, maxSec: 3600, minSamples: 5 } });
      h.monitor.track("d1", undefined);
      h.monitor.beat("d1");
      for (let i = 0; i < 8; i++) {
        h.clock.advance(2_000);
        h.monitor.beat("d1");
      }
      assert.equal(h.monitor.effectiveTimeoutSec("d1"), 6);
      assert.deepEqual(h.learned, [{ id: "d1", timeoutSec: 6 }], "told once, not at every refresh");
      h.clock.advance(6_001);
      assert.equal(h.expired.length, 1, "expired after 6 s, not the 60 s default");
    });

    it("ignores a jitter outlier (median, not mean) and stays within the bounds", () => {
      const h = setup({ adaptive: { enabled: true, factor: 3, minSec: 10, maxSec: 20, minSamples: 5 } });
      h.monitor.track("d1", undefined);
      h.monitor.beat("d1");
      for (const gap of [1000, 1000, 50_000, 1000, 1000, 1000, 1000, 1000]) {
        h.clock.advance(gap);
        h.monitor.beat("d1");
      }
      assert.equal(h.monitor.effectiveTimeoutSec("d1"), 10, "3 × 1 s, raised to the 10 s floor");
      for (let i = 0; i < 16; i++) {
        h.clock.advance(30_000);
        h.monitor.beat("d1");
      }
      assert.equal(h.monitor.effectiveTimeoutSec("d1"), 20, "3 × 30 s, capped at 20 s");
    });

    it("a device's own timeout wins over the learned one", () => {
      const h = setup({ adaptive: { enabled: true, factor: 3, minSec: 1, maxSec: 3600, minSamples: 5 } });
      h.monitor.track("d1", 100);
      h.monitor.beat("d1");
      for (let i = 0; i < 8; i++) {
        h.clock.advance(1_000);
        h.monitor.beat("d1");
      }
      assert.equal(h.monitor.effectiveTimeoutSec("d1"), 100);
      assert.equal(h.learned.length, 0);
    });
  });

  describe("lifecycle", () => {
    it("stop() cancels its timer and start() re-arms it", () => {
      const h = setup();
      h.monitor.track("d1", 10);
      h.monitor.beat("d1");
      assert.equal(h.clock.pendingTimers, 1);
      h.monitor.stop();
      assert.equal(h.clock.pendingTimers, 0);
      h.clock.advance(20_000);
      assert.equal(h.expired.length, 0, "no expiry while stopped");
      h.monitor.start();
      h.clock.advance(0);
      assert.equal(h.expired.length, 1, "the overdue device expires as soon as it runs again");
    });
  });
});

describe("DeadlineHeap", () => {
  interface Item extends Scheduled {
    name: number;
  }

  it("pops items in deadline order through random schedules, moves and removals", () => {
    let seed = 42;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const heap = new DeadlineHeap<Item>();
    const items: Item[] = Array.from({ length: 500 }, (_, name) => ({ name, due: 0, heapIndex: -1 }));
    const inHeap = new Set<Item>();
    for (let step = 0; step < 5000; step++) {
      const item = items[Math.floor(random() * items.length)]!;
      if (random() < 0.2) {
        heap.remove(item);
        inHeap.delete(item);
      } else {
        heap.schedule(item, Math.floor(random() * 10_000));
        inHeap.add(item);
      }
    }
    assert.equal(heap.size, inHeap.size, "an item is in the heap at most once");
    const expected = [...inHeap].map((i) => i.due).sort((a, b) => a - b);
    const popped: number[] = [];
    for (let it = heap.popDue(Infinity); it; it = heap.popDue(Infinity)) {
      popped.push(it.due);
      assert.equal(it.heapIndex, -1);
    }
    assert.deepEqual(popped, expected);
  });

  it("popDue returns nothing before the earliest deadline", () => {
    const heap = new DeadlineHeap<Item>();
    heap.schedule({ name: 1, due: 0, heapIndex: -1 }, 100);
    assert.equal(heap.popDue(99), undefined);
    assert.equal(heap.popDue(100)?.name, 1);
  });
});
