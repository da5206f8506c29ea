import assert from "node:assert/strict";
import { Hub } from "../../src/core";
import { fingerprintOf } from "../../src/core/cluster/replay";
import { PostgresStore } from "../../src/store/postgres";
import { FakeAdapter } from "../core/fake-adapter";
import { startProxy, startTestPostgres, type TestPostgres } from "../store/pg-harness";
import { LocalBroker } from "./local-link";

const PARTITIONS = 4;
const LEASE_MS = 1_000;

/** A shared-intake adapter (an external broker's subscription: every member sees every message). */
class SharedAdapter extends FakeAdapter {
  readonly sharedIntake = true;
}

async function until(what: string, check: () => boolean, limitMs: number): Promise<void> {
  const end = Date.now() + limitMs;
  while (!check()) {
    if (Date.now() > end) assert.fail(`not within ${limitMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("a cluster member that loses its leases to a database outage and claims them back (engine, PostgreSQL behind a proxy)", function () {
  this.timeout(60_000);
  let db: TestPostgres;

  before(async function () {
    if (!process.env.TETHRAL_TEST_PG_URL) {
      console.log("      (skipped: cluster members need a PostgreSQL server, TETHRAL_TEST_PG_URL; PGlite serves one connection at a time)");
      this.skip();
    }
    db = await startTestPostgres();
  });

  after(async () => {
    await db?.stop();
  });

  it("keeps the fingerprint of the last message it applied (still to be written), not the older one stored, so a resent copy of it is skipped", async () => {
    const proxy = await startProxy(db.url);
    const shared = new SharedAdapter("mqtt");
    const hub = new Hub({
      store: new PostgresStore({ url: proxy.url, connectTimeoutMs: 500 }),
      protocols: [shared],
      deviceTokens: false,
      onWarning: () => undefined,
      cluster: { member: "solo", partitions: PARTITIONS, leaseMs: LEASE_MS, link: new LocalBroker().link() },
    });
    await hub.start();
    const owned = () => hub.clusterInfo().members.find((x) => x.id === "solo")?.partitions.length ?? 0;
    const id = "dev-r";
    const payload = (step: number) => Buffer.from(JSON.stringify({ step }));
    const send = (step: number) => shared.context.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: payload(step) });
    const lastMessageOf = () => (hub as unknown as { cluster: { lastMessageOf(id: string): number | undefined } }).cluster.lastMessageOf(id);
    try {
      await until("it owns every partition", () => owned() === PARTITIONS, 20_000);
      await hub.registerDevice({ id, protocol: "mqtt" });
      send(1);
      await hub.flush();
      proxy.cut();
      // Applied while the lease still holds; not stored, the database being away.
      send(2);
      assert.equal(lastMessageOf(), fingerprintOf("telemetry", payload(2), 0));
      await until("the leases are lost", () => owned() === 0, 10_000);
      proxy.restore();
      await until("claimed back", () => owned() === PARTITIONS, 20_000);
      assert.equal(lastMessageOf(), fingerprintOf("telemetry", payload(2), 0), "what it applied, not the database's older fingerprint");
    } finally {
      await hub.stop().catch(() => undefined);
      await proxy.close();
    }
  });
});
