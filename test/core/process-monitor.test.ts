import assert from "node:assert/strict";
import { ProcessMonitor } from "../../src/core/process-monitor";
import { until } from "../helpers";

/** Holds the event loop for `ms`: what a slow flow or a long synchronous call does. */
function hold(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("ProcessMonitor: the event loop's lag, sampled while the loop has work", function () {
  let monitor: ProcessMonitor;

  afterEach(function () {
    monitor?.stop();
  });

  it("stops its 20 ms timer while the loop is idle, starts it again with work, and then sees a stall", async function () {
    // A look every 50 ms; two idle looks in a row stop the timer.
    monitor = new ProcessMonitor({ checkMs: 50, idleShare: 0.05, idleChecks: 2 });
    monitor.start();
    assert.equal(monitor.sampling, true, "it samples from the start");
    await until(() => !monitor.sampling, "the timer stopped on an idle loop", 3000);
    // The idle spell lasts a while: the time the timer was stopped must not read as lag.
    await sleep(300);
    // Work (here 30 ms of a 50 ms look: far over 5%) starts the timer at the next look.
    hold(30);
    await until(() => monitor.sampling, "the timer running again", 3000);
    await sleep(60);
    const resumed = monitor.reading().eventLoopLagMs;
    assert.ok(resumed.max < 70, `nothing held the loop 70 ms, yet the lag read ${resumed.max} ms`);
    // Once it runs, a stall shows in the lag as before.
    hold(120);
    await sleep(30);
    const lag = monitor.reading().eventLoopLagMs;
    assert.ok(lag.max >= 80, `the loop was held for 120 ms: max lag ${lag.max} ms`);
  });

  it("sees a stall that begins while its timer is stopped: the look it holds up runs late", async function () {
    monitor = new ProcessMonitor({ checkMs: 50, idleShare: 0.05, idleChecks: 2 });
    monitor.start();
    await until(() => !monitor.sampling, "the timer stopped on an idle loop", 3000);
    hold(300);
    await until(() => monitor.sampling, "the timer running again", 3000);
    const lag = monitor.reading().eventLoopLagMs;
    assert.ok(lag.max >= 200, `the loop was held for 300 ms with the timer stopped: max lag ${lag.max} ms`);
  });

  it("reads how late its timer ran beyond its 20 ms period: a loop never held reads about 0", async function () {
    monitor = new ProcessMonitor({ checkMs: 50, idleShare: 0, idleChecks: 1000 });
    monitor.start();
    await sleep(300);
    const lag = monitor.reading().eventLoopLagMs;
    assert.equal(monitor.sampling, true);
    assert.ok(lag.p50 < 10, `a loop nothing held read a median lag of ${lag.p50} ms (the timer's period is 20 ms)`);
  });

  it("keeps sampling while the loop stays busy", async function () {
    monitor = new ProcessMonitor({ checkMs: 50, idleShare: 0.05, idleChecks: 2 });
    monitor.start();
    const ends = performance.now() + 400;
    while (performance.now() < ends) {
      hold(10);
      await sleep(1);
      assert.equal(monitor.sampling, true, "a busy loop is sampled throughout");
    }
  });

  it("stop(): a stopped monitor does not sample and reads no lag; start() begins afresh", async function () {
    monitor = new ProcessMonitor({ checkMs: 20 });
    monitor.start();
    monitor.stop();
    assert.equal(monitor.sampling, false);
    await sleep(60);
    const { p50, p99, max } = monitor.reading().eventLoopLagMs;
    assert.deepEqual({ p50, p99, max }, { p50: 0, p99: 0, max: 0 });
    monitor.start();
    assert.equal(monitor.sampling, true);
  });
});
