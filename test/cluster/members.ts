import assert from "node:assert/strict";
import { Hub } from "../../src/core";
import type { ClusterOptions, HubOptions } from "../../src/core/hub-options";
import type { Store } from "../../src/core/ports/store";
import { FakeAdapter } from "../core/fake-adapter";
import { startTestPostgres, type TestPostgres } from "../store/pg-harness";

// What the engine-level cluster tests share: their adapter, their wait, and their database.

/** A shared-intake adapter (an external broker's subscription: every member sees every message). */
export class SharedAdapter extends FakeAdapter {
  readonly sharedIntake = true;
}

/** Waits until `check` holds, polling every 20 ms; fails after `limitMs`. Resolves with the time it took, ms. */
export async function until(what: string, check: () => boolean | Promise<boolean>, limitMs = 15_000): Promise<number> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > limitMs) assert.fail(`timed out waiting until ${what} (${limitMs} ms)`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return Date.now() - start;
}

/**
 * A database of the test's own on the PostgreSQL server at TETHRAL_TEST_PG_URL, for a `before`
 * hook; without one the suite is skipped, saying why in one line (members need concurrent
 * connections, which PGlite does not serve).
 */
export async function clusterPostgres(ctx: Mocha.Context): Promise<TestPostgres> {
  if (!process.env.TETHRAL_TEST_PG_URL) {
    console.log("      (skipped: cluster members need a PostgreSQL server, TETHRAL_TEST_PG_URL; PGlite serves one connection at a time)");
    ctx.skip();
  }
  return startTestPostgres();
}

/** Hooks giving the suite a database of its own (see clusterPostgres) for its tests; the function returned reads it. */
export function clusterDatabase(): () => TestPostgres {
  let db: TestPostgres | undefined;
  before(async function () {
    db = await clusterPostgres(this);
  });
  after(async () => {
    await db?.stop();
  });
  return () => db!;
}

/**
 * A cluster member's hub (not started) on `store`, taking MQTT messages through a shared-intake
 * adapter, device tokens off; `options` adds to or replaces these settings.
 */
export function memberHub(
  store: Store,
  cluster: ClusterOptions,
  options: Omit<HubOptions, "store" | "cluster"> = {},
): { hub: Hub; shared: SharedAdapter } {
  const shared = new SharedAdapter("mqtt");
  const hub = new Hub({ protocols: [shared], deviceTokens: false, onWarning: () => undefined, ...options, store, cluster });
  return { hub, shared };
}

/** The partitions the hub's own member owns, by its last beat. */
export function ownedBy(hub: Hub): number[] {
  return hub.clusterInfo().members.find((m) => m.id === hub.memberId)?.partitions ?? [];
}

/** The fingerprint the hub's member keeps of the last message it applied to the device. */
export function lastMessageOf(hub: Hub, deviceId: string): number | undefined {
  return (hub as unknown as { cluster: { lastMessageOf(id: string): number | undefined } }).cluster.lastMessageOf(deviceId);
}
