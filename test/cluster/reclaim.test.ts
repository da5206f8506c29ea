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
      // Its failed write is not tried again before it claims the partitions back (else it is
      // refused, and the next test's case).
      persistence: { retryBaseMs: 60_000, retryMaxMs: 60_000 },
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

  /**
   * Member a applies report 2 while its database is away, loses its leases, b takes the partitions
   * over (and, with `bStoresIt`, is given report 2 again, as a partition session's next holder is,
   * and stores it), then stops; a claims them back. What is stored then, and a's fingerprint.
   */
  async function supersededWhileAway(bStoresIt: boolean): Promise<{ steps: unknown[]; fingerprint: number | undefined; warnings: string[] }> {
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
    const id = bStoresIt ? "dev-s1" : "dev-s2";
    const report = (shared: SharedAdapter, step: number) => shared.context.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: Buffer.from(JSON.stringify({ step })) });
    const reader = new PostgresStore({ url: db.url });
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
      await b.start();
      await until("b owns every partition", () => owned(b, "b") === PARTITIONS, 20_000);
      if (bStoresIt) {
        report(sharedB, 2);
        await b.flush();
      }
      await b.stop();
      proxy.restore();
      await until("a claims them back", () => owned(a, "a") === PARTITIONS, 20_000);
      await a.flush();
      const points = await reader.points({ deviceId: id, key: "step", from: 0, to: Date.now() + 60_000, limit: 100 });
      const fingerprint = (a as unknown as { cluster: { lastMessageOf(id: string): number | undefined } }).cluster.lastMessageOf(id);
      return { steps: points.map((p) => p.value), fingerprint, warnings };
    } finally {
      await b.stop().catch(() => undefined);
      await a.stop().catch(() => undefined);
      await reader.close();
      await proxy.close();
    }
  }

  const fingerprintOfStep = (step: number) => fingerprintOf("telemetry", Buffer.from(JSON.stringify({ step })), 0);

  it("drops what it could not write when another member held the partitions in between, so a message that member stored is not stored twice", async () => {
    const { steps, fingerprint, warnings } = await supersededWhileAway(true);
    assert.deepEqual(steps, [1, 2], "report 2 once");
    assert.equal(fingerprint, fingerprintOfStep(2));
    assert.ok(warnings.some((m) => /was another member's since this member last held it: \d+ rows .* were dropped/.test(m)), warnings.join("\n"));
  });

  it("and takes the database's fingerprint then: a message it applied that the other member never stored is applied again when resent, not skipped", async () => {
    const { steps, fingerprint } = await supersededWhileAway(false);
    assert.deepEqual(steps, [1]);
    assert.equal(fingerprint, fingerprintOfStep(1), "the last message stored, not report 2, which is stored nowhere");
  });

  it("takes the database's fingerprint back when its waiting rows were dropped (refused by the fence before it claimed back): a resent copy is applied, not skipped", async () => {
    const proxy = await startProxy(db.url);
    const shared = new SharedAdapter("mqtt");
    const store = new PostgresStore({ url: proxy.url, connectTimeoutMs: 500 });
    // Its claims wait for the test: the write-behind's retry comes first, and is refused.
    let claims: () => void = () => undefined;
    const claimsMay = new Promise<void>((resolve) => (claims = resolve));
    let holding = false;
    const claim = store.clusterClaim.bind(store);
    store.clusterClaim = async (...args) => {
      if (holding) await claimsMay;
      return claim(...args);
    };
    const hub = new Hub({
      store,
      protocols: [shared],
      deviceTokens: false,
      onWarning: () => undefined,
      persistence: { retryBaseMs: 20, retryMaxMs: 20 },
      cluster: { member: "solo", partitions: PARTITIONS, leaseMs: LEASE_MS, link: new LocalBroker().link() },
    });
    const owned = () => hub.clusterInfo().members.find((x) => x.id === "solo")?.partitions.length ?? 0;
    const id = "dev-f";
    const payload = (step: number) => Buffer.from(JSON.stringify({ step }));
    const lastMessageOf = () => (hub as unknown as { cluster: { lastMessageOf(id: string): number | undefined } }).cluster.lastMessageOf(id);
    const fenced = () => (hub.statistics().store as { fenced: number }).fenced;
    try {
      await hub.start();
      await until("it owns every partition", () => owned() === PARTITIONS, 20_000);
      await hub.registerDevice({ id, protocol: "mqtt" });
      shared.context.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: payload(1) });
      await hub.flush();
      proxy.cut();
      shared.context.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: payload(2) });
      await until("the leases are lost", () => owned() === 0, 10_000);
      holding = true;
      proxy.restore();
      await until("its waiting rows refused (no longer its own)", () => fenced() > 0, 10_000);
      claims();
      await until("claimed back", () => owned() === PARTITIONS, 20_000);
      assert.equal(lastMessageOf(), fingerprintOf("telemetry", payload(1), 0), "the last message stored, not report 2, which is stored nowhere");
    } finally {
      claims();
      await hub.stop().catch(() => undefined);
      await proxy.close();
    }
  });
});
