import { KEEP_EVERY_ROW } from "./keep-every-row";
import assert from "node:assert/strict";
import { Hub } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import { PostgresStore } from "../../src/store/postgres";
import { assertRejectsCode, until } from "../helpers";
import { startProxy, startTestPostgres, type TestPostgres, type TestProxy } from "./pg-harness";


describe("database outage (PostgreSQL through a proxy that can be cut)", function () {
  this.timeout(60_000);
  let db: TestPostgres;
  let proxy: TestProxy;

  before(async () => {
    db = await startTestPostgres();
  });
  after(async () => {
    await db?.stop();
  });
  beforeEach(async () => {
    await db.reset();
    proxy = await startProxy(db.url);
  });
  afterEach(async () => {
    await proxy.close();
  });

  it("keeps ingesting while the database is gone, refuses what it cannot make durable, and loses nothing it acknowledged", async () => {
    const store = new PostgresStore({ url: proxy.url, poolSize: db.poolSize, bulkCopy: db.bulkCopy, onePassPoints: db.onePassPoints, connectTimeoutMs: 500 });
    const hub = new Hub({
      store,
      onWarning: () => undefined,
      state: KEEP_EVERY_ROW.state,
      persistence: { ...KEEP_EVERY_ROW.persistence, flushIntervalMs: 20, retryBaseMs: 20, retryMaxMs: 100, stopTimeoutMs: 5000 },
    });
    await hub.start();
    const storeEvents: TethralEvent[] = [];
    hub.subscribe({ types: "store.*" }, (e) => {
      storeEvents.push(e);
    });
    try {
      const acknowledged: string[] = [];
      for (let i = 0; i < 5; i++) {
        await hub.registerDevice({ id: `d${i}`, protocol: "mqtt" });
        acknowledged.push(`d${i}`);
      }
      let reports = 0;
      const report = (n: number) => {
        for (const id of acknowledged) hub.ingest(id, { kind: "telemetry", data: { n } });
        reports++;
      };
      for (let n = 0; n < 20; n++) report(n);
      await hub.flush();

      proxy.cut();
      for (let n = 20; n < 60; n++) {
        report(n);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      await until(() => storeEvents.some((e) => e.type === "store.degraded"), "store.degraded");
      await assertRejectsCode(() => hub.registerDevice({ id: "late", protocol: "mqtt" }), "UNAVAILABLE");
      assert.equal(hub.registry.has("late"), false);
      assert.equal(hub.health().status, "degraded");
      assert.deepEqual(hub.getState("d3").properties, { n: 59 }, "the hub serves from memory meanwhile");

      proxy.restore();
      for (let n = 60; n < 70; n++) report(n);
      await until(() => storeEvents.some((e) => e.type === "store.recovered"), "store.recovered");
      await hub.flush();
      assert.deepEqual(
        storeEvents.map((e) => e.type),
        ["store.degraded", "store.recovered"],
      );

      // Straight from the database, past the hub: every acknowledged change is there.
      const rows = await db.sql("SELECT device_id, properties, version FROM states ORDER BY device_id");
      assert.deepEqual(
        rows.map((r) => r.device_id),
        acknowledged,
      );
      for (const row of rows) {
        assert.deepEqual(row.properties, { n: 69 });
        assert.equal(Number(row.version), hub.getState(String(row.device_id)).version);
      }
      const [history] = await db.sql("SELECT count(*)::int AS n FROM state_history");
      assert.equal(history!.n, acknowledged.length * (reports + 1), "every report and every online transition is in the history");
      assert.equal(hub.statistics().store!.dropped.history, 0);
    } finally {
      await hub.stop();
    }
  });

  it("a hub that starts while the database is unreachable fails to start, and starts once it is back", async () => {
    proxy.cut();
    const hub = new Hub({ store: new PostgresStore({ url: proxy.url, poolSize: db.poolSize, bulkCopy: db.bulkCopy, onePassPoints: db.onePassPoints, connectTimeoutMs: 300 }), onWarning: () => undefined });
    await assertRejectsCode(() => hub.start(), "UNAVAILABLE");
    assert.equal(hub.isRunning, false);
    proxy.restore();
    const again = new Hub({ store: new PostgresStore({ url: proxy.url, poolSize: db.poolSize, bulkCopy: db.bulkCopy, onePassPoints: db.onePassPoints }), onWarning: () => undefined });
    await again.start();
    await again.registerDevice({ id: "d1", protocol: "mqtt" });
    await again.stop();
  });
});
