import assert from "node:assert/strict";
import { Hub } from "../../src/core";
import { fingerprintOf } from "../../src/core/cluster/replay";
import { PostgresStore } from "../../src/store/postgres";
import { startProxy, type TestPostgres } from "../store/pg-harness";
import { LocalBroker } from "./local-link";
import { SharedAdapter, clusterPostgres, until } from "./members";

const PARTITIONS = 4;
const LEASE_MS = 1_000;

describe("a cluster member that loses its leases to a database outage and claims them back (engine, PostgreSQL behind a proxy)", function () {
  this.timeout(60_000);
  let db: TestPostgres;

  before(async function () {
    db = await clusterPostgres(this);
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
