import assert from "node:assert/strict";
import type { Hub } from "../../src/core";
import { HubConnection } from "../../src/nodes/hub-connection";
import type { HubLifecycle } from "../../src/nodes/types";

/** Stands in for a Hub: counts starts and stops, and can be told to fail or hold its start. */
class FakeHub {
  isRunning = false;
  starts = 0;
  stops = 0;
  failWith: Error | null = null;
  private release: (() => void) | null = null;
  holdStart = false;

  async start(): Promise<void> {
    this.starts++;
    if (this.holdStart) await new Promise<void>((resolve) => (this.release = resolve));
    if (this.failWith) throw this.failWith;
    this.isRunning = true;
  }

  async stop(): Promise<void> {
    this.stops++;
    this.isRunning = false;
  }

  finishStart(): void {
    this.release?.();
  }
}

function connectionTo(...hubs: FakeHub[]): { connection: HubConnection; states: HubLifecycle[]; made: () => number } {
  let made = 0;
  const connection = new HubConnection(() => hubs[made++] as unknown as Hub);
  const states: HubLifecycle[] = [];
  connection.onChange((s) => states.push(s.state));
  return { connection, states, made: () => made };
}

describe("HubConnection", function () {
  it("makes and starts the hub once for concurrent callers", async () => {
    const fake = new FakeHub();
    const { connection, states, made } = connectionTo(fake);
    const [a, b, c] = await Promise.all([connection.acquire(), connection.acquire(), connection.acquire()]);
    assert.ok(a === b && b === c);
    assert.equal(await connection.acquire(), a);
    assert.equal(made(), 1);
    assert.equal(fake.starts, 1);
    assert.deepEqual(states, ["starting", "running"]);
  });

  it("reports a failed start and tries again on the next call", async () => {
    const broken = new FakeHub();
    broken.failWith = new Error("port 1883 in use");
    const good = new FakeHub();
    const { connection, states } = connectionTo(broken, good);
    await assert.rejects(connection.acquire(), /port 1883 in use/);
    assert.deepEqual(connection.status, { state: "error", error: "port 1883 in use" });
    assert.equal(broken.stops, 1, "the half-started hub was stopped");
    assert.equal(await connection.acquire(), good as unknown as Hub);
    assert.deepEqual(states, ["starting", "error", "starting", "running"]);
  });

  it("stops a hub that was still starting when closed, and refuses it to the waiting caller", async () => {
    const fake = new FakeHub();
    fake.holdStart = true;
    const { connection, states } = connectionTo(fake);
    const pending = connection.acquire();
    const closed = connection.close();
    fake.finishStart();
    await assert.rejects(pending, { code: "UNAVAILABLE" });
    await closed;
    assert.equal(fake.isRunning, false);
    assert.equal(fake.stops, 1);
    assert.deepEqual(states, ["starting", "stopping", "stopped"]);
    await assert.rejects(connection.acquire(), { code: "UNAVAILABLE" });
  });

  it("closes idempotently, without making a hub it never needed", async () => {
    const { connection, made } = connectionTo(new FakeHub());
    await Promise.all([connection.close(), connection.close()]);
    assert.equal(made(), 0);
    assert.equal(connection.status.state, "stopped");
  });
});
