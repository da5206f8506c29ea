import assert from "node:assert/strict";
import type { Hub } from "../../src/core";
import { fingerprintOf } from "../../src/core/cluster/replay";
import { PostgresStore } from "../../src/store/postgres";
import { startProxy } from "../store/pg-harness";
import { LocalBroker } from "./local-link";
import { type SharedAdapter, clusterDatabase, lastMessageOf, memberHub, ownedBy, until } from "./members";

const PARTITIONS = 4;
const LEASE_MS = 1_000;

/** Report `step` of a device, as its MQTT telemetry `{"step": n}` (packet id 0). */
const report = (shared: SharedAdapter, deviceId: string, step: number) =>
  shared.context.receive({ protocol: "mqtt", deviceId, kind: "telemetry", payload: Buffer.from(JSON.stringify({ step })) });
/** The fingerprint of report `step`. */
const fingerprintOfStep = (step: number) => fingerprintOf("telemetry", Buffer.from(JSON.stringify({ step })), 0);
const owned = (hub: Hub) => ownedBy(hub).length;

/**
 * The started hub owns every partition; the device reports 1, stored; the proxy to the database
 * is cut; it reports 2, applied while the lease still holds and not stored; the leases are lost.
 */
async function appliedWhileCut(hub: Hub, shared: SharedAdapter, proxy: { cut(): void }, id: string): Promise<void> {
  await until("it owns every partition", () => owned(hub) === PARTITIONS, 20_000);
  await hub.registerDevice({ id, protocol: "mqtt" });
  report(shared, id, 1);
  await hub.flush();
  proxy.cut();
  report(shared, id, 2);
  await until("the leases are lost", () => owned(hub) === 0, 10_000);
}

describe("a cluster member that loses its leases to a database outage and claims them back (engine, PostgreSQL behind a proxy)", function () {
  this.timeout(60_000);
  const database = clusterDatabase();

  it("keeps the fingerprint of the last message it applied (still to be written), not the older one stored, so a resent copy of it is skipped", async () => {
    const proxy = await startProxy(database().url);
    const { hub, shared } = memberHub(
      new PostgresStore({ url: proxy.url, connectTimeoutMs: 500 }),
      { member: "solo", partitions: PARTITIONS, leaseMs: LEASE_MS, link: new LocalBroker().link() },
      // Its failed write is not tried again before it claims the partitions back (else it is
      // refused, and the last test's case).
      { persistence: { retryBaseMs: 60_000, retryMaxMs: 60_000 } },
    );
    await hub.start();
    const id = "dev-r";
    try {
      await appliedWhileCut(hub, shared, proxy, id);
      assert.equal(lastMessageOf(hub, id), fingerprintOfStep(2));
      proxy.restore();
      await until("claimed back", () => owned(hub) === PARTITIONS, 20_000);
      assert.equal(lastMessageOf(hub, id), fingerprintOfStep(2), "what it applied, not the database's older fingerprint");
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
    const proxy = await startProxy(database().url);
    const broker = new LocalBroker();
    const warnings: string[] = [];
    const a = memberHub(
      new PostgresStore({ url: proxy.url, connectTimeoutMs: 500 }),
      { member: "a", partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() },
      // Its failed write is not retried before it claims the partitions back (the default backoff reaches 10 s).
      { onWarning: (m) => warnings.push(m), persistence: { retryBaseMs: 60_000, retryMaxMs: 60_000 } },
    );
    const b = memberHub(new PostgresStore({ url: database().url }), { member: "b", partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() });
    const id = bStoresIt ? "dev-s1" : "dev-s2";
    const reader = new PostgresStore({ url: database().url });
    try {
      await reader.open();
      await a.hub.start();
      await appliedWhileCut(a.hub, a.shared, proxy, id);
      await b.hub.start();
      await until("b owns every partition", () => owned(b.hub) === PARTITIONS, 20_000);
      if (bStoresIt) {
        report(b.shared, id, 2);
        await b.hub.flush();
      }
      await b.hub.stop();
      proxy.restore();
      await until("a claims them back", () => owned(a.hub) === PARTITIONS, 20_000);
      await a.hub.flush();
      const points = await reader.points({ deviceId: id, key: "step", from: 0, to: Date.now() + 60_000, limit: 100 });
      return { steps: points.map((p) => p.value), fingerprint: lastMessageOf(a.hub, id), warnings };
    } finally {
      await b.hub.stop().catch(() => undefined);
      await a.hub.stop().catch(() => undefined);
      await reader.close();
      await proxy.close();
    }
  }

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
    const proxy = await startProxy(database().url);
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
    const { hub, shared } = memberHub(store, { member: "solo", partitions: PARTITIONS, leaseMs: LEASE_MS, link: new LocalBroker().link() }, { persistence: { retryBaseMs: 20, retryMaxMs: 20 } });
    const id = "dev-f";
    const fenced = () => (hub.statistics().store as { fenced: number }).fenced;
    try {
      await hub.start();
      await appliedWhileCut(hub, shared, proxy, id);
      holding = true;
      proxy.restore();
      await until("its waiting rows refused (no longer its own)", () => fenced() > 0, 10_000);
      claims();
      await until("claimed back", () => owned(hub) === PARTITIONS, 20_000);
      assert.equal(lastMessageOf(hub, id), fingerprintOfStep(1), "the last message stored, not report 2, which is stored nowhere");
    } finally {
      claims();
      await hub.stop().catch(() => undefined);
      await proxy.close();
    }
  });
});
