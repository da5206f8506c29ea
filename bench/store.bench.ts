/**
 * Store benchmark: SQLite and PostgreSQL side by side, in one run.
 * - batchedRowsPerSec: state-history rows written through the hub's write-behind batcher
 *   (multi-row statements, one transaction per batch);
 * - naiveRowsPerSec: the same kind of rows written one INSERT (and one commit) per row — the baseline;
 * - load100kDevicesMs: a hub starting on a store that holds 100,000 devices and their states;
 * - SQLite's loadLargeStatesMs (no target): the states of 1,000 devices whose properties are
 *   250,000 characters each read at start, a load's pages bounded by characters, not by rows.
 * PostgreSQL is the server at TETHRAL_BENCH_PG_URL or TETHRAL_TEST_PG_URL (a fresh database is
 * made there and dropped afterwards); without either, PGlite in-process stands in (slower, noted).
 * Run with `npm run bench:store`; writes bench/results/store.json. Not a test: nothing asserts a time.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { systemClock } from "../src/core/clock";
import { Hub } from "../src/core/hub";
import { newId, newTimeId } from "../src/core/ids";
import type { DeviceRow, HistoryRow, StateRow } from "../src/core/types";
import { DEFAULT_PERSISTENCE_OPTIONS, Persistence } from "../src/core/write-behind";
import { PostgresStore } from "../src/store/postgres";
import { SqliteStore } from "../src/store/sqlite";
import type { Store } from "../src/core/ports/store";
import { benchServer, freshDatabase, pgliteDatabase, runSql } from "./pg-database";
import { targetOf, writeResults } from "./results";

const TARGETS = { sqlite: targetOf("store", "sqlite.batchedRowsPerSec"), postgres: targetOf("store", "postgres.batchedRowsPerSec"), ratio: targetOf("store", "sqlite.ratioToNaive"), sqliteLoadMs: targetOf("store", "sqlite.load100kDevicesMs"), postgresLoadMs: targetOf("store", "postgres.load100kDevicesMs") };

interface Result {
  batchedRowsPerSec: number;
  naiveRowsPerSec: number;
  ratioToNaive: number;
  load100kDevicesMs: number;
}

function historyRows(n: number, devices: number): HistoryRow[] {
  const at = Date.now();
  return Array.from({ length: n }, (_, i) => ({
    id: newTimeId(at + i),
    deviceId: `dev-${i % devices}`,
    at: at + i,
    version: i + 1,
    from: { properties: { temperature: 20 + (i % 10) } },
    to: { properties: { temperature: 21 + (i % 10) } },
    reason: "telemetry",
    causeId: newId(),
  }));
}

async function batched(store: Store, rows: HistoryRow[]): Promise<number> {
  const persistence = new Persistence(
    store,
    systemClock,
    { presence: () => null, state: () => null, degraded: () => undefined, recovered: () => undefined, warn: (m) => console.warn(m) },
    // All rows are queued before the first flush: let the buffer hold them.
    { ...DEFAULT_PERSISTENCE_OPTIONS, maxBufferedRows: rows.length, retention: { ...DEFAULT_PERSISTENCE_OPTIONS.retention, intervalMs: 0 } },
  );
  const started = performance.now();
  for (const row of rows) persistence.addHistory(row);
  await persistence.flushAll();
  return rows.length / ((performance.now() - started) / 1000);
}

async function naive(store: Store, rows: HistoryRow[]): Promise<number> {
  const started = performance.now();
  for (const row of rows) await store.writeBatch({ presence: [], states: [], history: [row], events: [] });
  return rows.length / ((performance.now() - started) / 1000);
}

async function loadTime(makeStore: () => Store, count: number): Promise<number> {
  const seed = makeStore();
  await seed.open();
  const now = Date.now();
  for (let start = 0; start < count; start += 5000) {
    const devices: DeviceRow[] = [];
    const states: StateRow[] = [];
    for (let i = start; i < Math.min(count, start + 5000); i++) {
      const id = `fleet-${i}`;
      devices.push({
        id,
        name: `Sensor ${i}`,
        protocol: i % 2 ? "mqtt" : "coap",
        address: null,
        manufacturer: `maker-${i % 50}`,
        model: "T-100",
        firmware: "1.2.0",
        capabilities: ["temperature", "humidity"],
        tags: [`floor-${i % 10}`],
        // An hour: seeding 100,000 devices one upsert at a time takes about a minute on PostgreSQL
        // here, and with 60 s the first devices were overdue by the start, which then also
        // marked the fleet offline (2.1–2.3 s instead of 1.0–1.3): a different measurement.
        heartbeatTimeout: 3600,
        metadata: { site: "north", rack: i % 40 },
        status: "online",
        lastSeen: now,
        createdAt: now - count + i,
        updatedAt: now,
      });
      states.push({ deviceId: id, properties: { temperature: 21.5, humidity: 40 }, desired: {}, version: 3, changedAt: now, updatedAt: now, reportedAt: now, rev: 3 });
    }
    for (const d of devices) await seed.upsertDevice(d);
    await seed.writeBatch({ presence: [], states, history: [], events: [] });
  }
  await seed.close();
  const hub = new Hub({ store: makeStore() });
  const started = performance.now();
  await hub.start();
  const ms = performance.now() - started;
  if (hub.registry.size < count) throw new Error(`loaded ${hub.registry.size} of ${count}`);
  await hub.stop();
  return ms;
}

/** SQLite's `loadStates` of 1,000 states of about 250,000 characters each (see loadLargeStatesMs above). */
async function loadLargeStates(path: string): Promise<number> {
  const seed = new SqliteStore({ path });
  await seed.open();
  const now = Date.now();
  for (let start = 0; start < 1000; start += 20) {
    const states: StateRow[] = Array.from({ length: 20 }, (_, j) => ({
      deviceId: `large-${String(start + j).padStart(4, "0")}`,
      properties: { reading: String.fromCharCode(97 + ((start + j) % 26)).repeat(250_000), n: start + j },
      desired: {}, version: 1, changedAt: now, updatedAt: now, reportedAt: now, rev: 1,
    }));
    await seed.writeBatch({ presence: [], states, history: [], events: [] });
  }
  await seed.close();
  const store = new SqliteStore({ path });
  await store.open();
  const started = performance.now();
  const loaded = await store.loadStates();
  const ms = performance.now() - started;
  await store.close();
  if (loaded.length !== 1000) throw new Error(`loaded ${loaded.length} of 1000 large states`);
  return ms;
}

async function measure(label: string, makeStore: () => Store, batchRows: number, naiveRows: number, reset: () => Promise<void>): Promise<Result> {
  const store = makeStore();
  await store.open();
  const batchedRowsPerSec = await batched(store, historyRows(batchRows, 1000));
  const naiveRowsPerSec = await naive(store, historyRows(naiveRows, 1000));
  await store.close();
  await reset();
  const load100kDevicesMs = await loadTime(makeStore, 100_000);
  console.log(`  ${label}: done`);
  return {
    batchedRowsPerSec: Math.round(batchedRowsPerSec),
    naiveRowsPerSec: Math.round(naiveRowsPerSec),
    ratioToNaive: Number((batchedRowsPerSec / naiveRowsPerSec).toFixed(1)),
    load100kDevicesMs: Math.round(load100kDevicesMs),
  };
}

async function postgres(): Promise<{ kind: "server" | "pglite"; makeStore: () => Store; reset: () => Promise<void>; stop: () => Promise<void> }> {
  const server = benchServer();
  const tables = "tethral_migrations, devices, device_tokens, states, state_history, events, commands, ts_keys, ts_series, ts_points, ts_rollup_1m, ts_rollup_1h, cluster_meta, cluster_members, cluster_leases, removed_devices";
  if (server) {
    const db = await freshDatabase(server, "tethral_bench");
    return {
      kind: "server",
      makeStore: () => new PostgresStore({ url: db.url }),
      reset: () => runSql(db.url, `DROP TABLE IF EXISTS ${tables}`),
      stop: db.drop,
    };
  }
  const lite = await pgliteDatabase();
  return {
    kind: "pglite",
    makeStore: () => new PostgresStore({ url: lite.url, poolSize: 1, bulkCopy: false }),
    reset: async () => {
      await lite.exec(`DROP TABLE IF EXISTS ${tables}`);
    },
    stop: lite.stop,
  };
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tethral-bench-"));
  let file = 0;
  let current = join(dir, "bench-0.sqlite");
  const sqlite = await measure(
    "sqlite",
    () => new SqliteStore({ path: current }),
    300_000,
    20_000,
    async () => {
      current = join(dir, `bench-${++file}.sqlite`);
    },
  );
  const loadLargeStatesMs = Math.round(await loadLargeStates(join(dir, "large.sqlite")));
  rmSync(dir, { recursive: true, force: true });

  const server = await postgres();
  let postgresResult: Result;
  try {
    postgresResult = await measure("postgres", server.makeStore, server.kind === "server" ? 200_000 : 50_000, server.kind === "server" ? 5_000 : 2_000, server.reset);
  } finally {
    await server.stop();
  }

  const results = { sqlite: { ...sqlite, loadLargeStatesMs }, postgres: { ...postgresResult, server: server.kind } };
  const rows: [string, keyof Result, (r: Result) => string][] = [
    ["history rows/s, batched", "batchedRowsPerSec", (r) => fmt(r.batchedRowsPerSec)],
    ["history rows/s, one INSERT per row", "naiveRowsPerSec", (r) => fmt(r.naiveRowsPerSec)],
    ["batched / naive", "ratioToNaive", (r) => `${r.ratioToNaive}×`],
    ["load 100k devices at start (ms)", "load100kDevicesMs", (r) => fmt(r.load100kDevicesMs)],
  ];
  console.log(`\nTethral store benchmark, Node ${process.version} (PostgreSQL: ${server.kind === "server" ? "server" : "PGlite in-process"})`);
  console.log(`${"".padEnd(38)}${"SQLite".padStart(12)}${"PostgreSQL".padStart(14)}`);
  for (const [label, , show] of rows) console.log(`${label.padEnd(38)}${show(sqlite).padStart(12)}${show(postgresResult).padStart(14)}`);
  console.log(
    `targets: batched ≥ ${fmt(TARGETS.sqlite)} (SQLite) / ${fmt(TARGETS.postgres)} (PostgreSQL), ≥ ${TARGETS.ratio}× naive, load ≤ ${fmt(TARGETS.sqliteLoadMs)} ms (SQLite) / < ${fmt(TARGETS.postgresLoadMs)} ms (PostgreSQL)`,
  );
  console.log(`SQLite, 1,000 states of 250,000 characters loaded: ${fmt(loadLargeStatesMs)} ms (no target)`);
  console.log(`\nwrote ${writeResults("store", results)}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
