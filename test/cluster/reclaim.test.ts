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

  it("drops what it could not write when another member held the partitions in between, so a message that member stored is not stored twice", async () => {
    const proxy = await startProxy(db.url);
    const broker = new LocalBroker();
    const sharedA = new SharedAdapter("mqtt");
    const warnings: string[] = [];
    const a = new Hub({
      store: new PostgresStore({ url: proxy.url, connectTimeoutMs: 500 }),
      protocols: [sharedA],
      deviceTokens: false,
      onWarning: (m) => warnings.push(m),
      // Its failed write is not retried before it claims the partitions back (the default backoff reaches 10 s).
      persistence: { retryBaseMs: 60_000, retryMaxMs: 60_000 },
      cluster: { member: "a", partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() },
    });
    const sharedB = new SharedAdapter("mqtt");
    const b = new Hub({
      store: new PostgresStore({ url: db.url }),
      protocols: [sharedB],
      deviceTokens: false,
      onWarning: () => undefined,
      cluster: { member: "b", partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() },
    });
    const owned = (hub: Hub, member: string) => hub.clusterInfo().members.find((x) => x.id === member)?.partitions.length ?? 0;
    const id = "dev-s";
    const report = (shared: SharedAdapter, step: number) => shared.context.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: Buffer.from(JSON.stringify({ step })) });
    const reader = new PostgresStore({ url: db.url });
    const steps = async () => (await reader.points({ deviceId: id, key: "step", from: 0, to: Date.now() + 60_000, limit: 100 })).map((p) => p.value);
    try {
      await reader.open();
      await a.start();
      await until("a owns every partition", () => owned(a, "a") === PARTITIONS, 20_000);
      await a.registerDevice({ id, protocol: "mqtt" });
      report(sharedA, 1);
      await a.flush();
      proxy.cut();
      // Applied by a while its lease still holds; its write fails, the database being away.
      report(sharedA, 2);
      await until("a's leases are lost", () => owned(a, "a") === 0, 10_000);
      // b takes the partitions over, is given report 2 again (a never acknowledged it), stores it, and stops.
      await b.start();
      await until("b owns every partition", () => owned(b, "b") === PARTITIONS, 20_000);
      report(sharedB, 2);
      await b.flush();
      await b.stop();
      proxy.restore();
      await until("a claims them back", () => owned(a, "a") === PARTITIONS, 20_000);
      await a.flush();
      assert.deepEqual(await steps(), [1, 2], "report 2 once");
      assert.ok(warnings.some((m) => /was another member's since this member last held it: \d+ rows .* were dropped/.test(m)), warnings.join("\n"));
    } finally {
      await b.stop().catch(() => undefined);
      await a.stop().catch(() => undefined);
      await reader.close();
      await proxy.close();
    }
  });
});
