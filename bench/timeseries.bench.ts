/**
 * Time-series benchmark (CONTRACT §7), SQLite and PostgreSQL in one run:
 * - insertPointsPerSec: one year of one-minute points of 10 devices x 3 keys (15.8M points)
 *   loaded through `writeBatch` in batches of 100,000 points, roll-ups included;
 * - query30dHourlyP99Ms, query1yDailyP99Ms, queryLastHourRawP99Ms: p99 of queries for one device,
 *   all 3 keys at once as the hub asks (one `buckets`/`points` call per key), at random offsets,
 *   reading the resolution the hub would (`resolutionFor`, default retention, now = the query's
 *   end); query30dHourlyFrom1hP99Ms reads the same buckets from the 1-hour roll-ups. The four
 *   kinds take turns (10 rounds of 25 runs each), so none is measured alone in the load's wake.
 * PostgreSQL is the server at TETHRAL_BENCH_PG_URL or TETHRAL_TEST_PG_URL (a fresh database is made
 * there and dropped afterwards; `VACUUM (ANALYZE)` runs on it after the load, see `measure`);
 * without either, the PostgreSQL part is skipped.
 * TETHRAL_BENCH_TS_DAYS shortens the data (default 365). Run with `npm run bench:timeseries`;
 * writes bench/results/timeseries.json. Not a test: nothing asserts a time.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ResolutionRetention, resolutionFor } from "../src/core/telemetry-query";
import { DEFAULT_PERSISTENCE_OPTIONS } from "../src/core/write-behind";
import { PostgresStore } from "../src/store/postgres";
import { SqliteStore } from "../src/store/sqlite";
import type { PointRow, Resolution, Store } from "../src/core/ports/store";
import { benchServer, freshDatabase, runSql } from "./pg-database";
import { percentile } from "./stats";
import { targetOf, writeResults } from "./results";

// The issue's targets are the queries'; the load rate is reported for scale (bench:ingest has the ingest targets).
const TARGETS = { queryMs: targetOf("timeseries", "sqlite.query30dHourlyP99Ms"), lastHourMs: targetOf("timeseries", "sqlite.queryLastHourRawP99Ms") };
const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
const DAYS = Number(process.env.TETHRAL_BENCH_TS_DAYS ?? 365);
const DEVICES = Array.from({ length: 10 }, (_, i) => `meter-${i}`);
const KEYS = ["temperature", "humidity", "power"];
const BATCH_POINTS = 100_000;
const RUNS = 250;
/** Turns the query kinds take (see `p99s`). */
const ROUNDS = 10;
/** Data ends at a fixed time, so runs are comparable. */
const END = Date.UTC(2026, 11, 1);
const START = END - DAYS * DAY;

interface Result {
  points: number;
  insertPointsPerSec: number;
  query30dHourlyP99Ms: number;
  query30dHourlySource: Resolution;
  query30dHourlyFrom1hP99Ms: number;
  query1yDailyP99Ms: number;
  query1yDailySource: Resolution;
  queryLastHourRawP99Ms: number;
  /** Whether `VACUUM (ANALYZE)` ran between the load and the queries (PostgreSQL, since 2026-12-06). */
  vacuumed: boolean;
}

const retention = DEFAULT_PERSISTENCE_OPTIONS.retention;
const RETENTION: ResolutionRetention = { raw: retention.pointsMaxAgeMs, "1m": retention.rollups1mMaxAgeMs, "1h": retention.rollups1hMaxAgeMs };

/** Deterministic noise, so both stores get the same values. */
function value(key: number, device: number, minute: number): number {
  const x = Math.sin(minute * 0.0123 + device * 1.7 + key * 0.31) * 10;
  return Math.round((key === 0 ? 21 + x : key === 1 ? 45 + x * 2 : 300 + x * 30) * 100) / 100;
}

async function load(store: Store): Promise<{ points: number; perSec: number }> {
  for (const id of DEVICES) {
    await store.upsertDevice({
      id, name: id, protocol: "mqtt", address: null, manufacturer: null, model: null, firmware: null, capabilities: [],
      tags: [], heartbeatTimeout: null, metadata: {}, status: "online", lastSeen: START, createdAt: START, updatedAt: START,
    });
  }
  const minutes = DAYS * 24 * 60;
  const perMinute = DEVICES.length * KEYS.length;
  let points = 0;
  let writing = 0;
  let lastReport = performance.now();
  for (let m = 0; m < minutes; ) {
    const batch: PointRow[] = [];
    for (; m < minutes && batch.length + perMinute <= BATCH_POINTS; m++) {
      const ts = START + m * MIN;
      for (let d = 0; d < DEVICES.length; d++) for (let k = 0; k < KEYS.length; k++) batch.push({ deviceId: DEVICES[d]!, key: KEYS[k]!, ts, value: value(k, d, m) });
    }
    const started = performance.now();
    await store.writeBatch({ presence: [], states: [], history: [], events: [], points: batch });
    writing += performance.now() - started;
    points += batch.length;
    if (performance.now() - lastReport > 15_000) {
      lastReport = performance.now();
      console.log(`    ${(points / 1e6).toFixed(1)}M points, ${Math.round(points / (writing / 1000)).toLocaleString("en-US")} points/s`);
    }
  }
  return { points, perSec: points / (writing / 1000) };
}

/** A kind of query: `run(to)` over `span` ms ending at `to`. */
interface QueryKind {
  span: number;
  run: (to: number) => Promise<unknown[][]>;
}

/**
 * p99 (ms) of `RUNS` runs of each kind at random query ends in the data's last part. The kinds
 * take turns, ROUNDS rounds of RUNS / ROUNDS runs each (after 10 runs each, not counted), so
 * that what the machine does meanwhile (the load's aftermath first of all: the WAL copied back,
 * the load's garbage collected) falls on every kind alike, not on whichever is measured first.
 */
async function p99s(kinds: QueryKind[]): Promise<number[]> {
  const times: number[][] = kinds.map(() => []);
  let rng = 12345;
  const random = () => ((rng = (rng * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const runs = async (k: number, n: number, counted: boolean) => {
    const { span, run } = kinds[k]!;
    for (let i = 0; i < n; i++) {
      const earliest = Math.min(END, START + span);
      const to = Math.floor(earliest + random() * (END - earliest));
      const started = performance.now();
      const answers = await run(to);
      if (counted) times[k]!.push(performance.now() - started);
      if (answers.some((a) => a.length === 0)) throw new Error("a query answered nothing: the data is not there");
    }
  };
  for (let k = 0; k < kinds.length; k++) await runs(k, 10, false);
  for (let round = 0; round < ROUNDS; round++) {
    for (let k = 0; k < kinds.length; k++) await runs(k, RUNS / ROUNDS, true);
  }
  return times.map((t) => percentile(t.sort((a, b) => a - b), 99));
}

/**
 * `vacuum` brings the database to the state a year of ingest leaves it in, which a load of a
 * year in minutes does not: on PostgreSQL, autovacuum would have vacuumed and analysed the
 * roll-up tables many times over that year (it does so after every 20% of a table's rows are
 * inserted), so the bench runs `VACUUM (ANALYZE)` once, as autovacuum would a minute or two later.
 * Straight after the load the planner has no statistics and the visibility map is unset, so an
 * index-only scan also reads the table's pages. SQLite needs nothing: its checkpointer thread
 * copies the WAL back on its own.
 */
async function measure(label: string, store: Store, vacuum?: () => Promise<void>): Promise<Result> {
  await store.open();
  console.log(`  ${label}: loading ${DAYS} days of one-minute points, ${DEVICES.length} devices x ${KEYS.length} keys`);
  const { points, perSec } = await load(store);
  if (vacuum) {
    const started = performance.now();
    await vacuum();
    console.log(`  ${label}: VACUUM (ANALYZE) after the load, ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
  const deviceId = DEVICES[3]!;
  const buckets = (to: number, spanMs: number, intervalMs: number, source?: Resolution) => {
    const from = Math.max(START, to - spanMs);
    const q = { keys: KEYS, from, to, interval: null, intervalMs, agg: "avg" as const, limit: 10_000 };
    const s = source ?? resolutionFor(q, RETENTION, to);
    return Promise.all(KEYS.map((key) => store.buckets({ deviceId, key, from, to, limit: 10_000, source: s, intervalMs, agg: "avg" })));
  };
  const sourceOf = (spanMs: number, intervalMs: number) =>
    resolutionFor({ keys: KEYS, from: END - spanMs, to: END, interval: null, intervalMs, agg: "avg", limit: 10_000 }, RETENTION, END);
  console.log(`  ${label}: querying`);
  const [hourly30d, hourly30dFrom1h, daily1y, lastHourRaw] = await p99s([
    { span: 30 * DAY, run: (to) => buckets(to, 30 * DAY, HOUR) },
    { span: 30 * DAY, run: (to) => buckets(to, 30 * DAY, HOUR, "1h") },
    { span: 365 * DAY, run: (to) => buckets(to, 365 * DAY, DAY) },
    { span: HOUR, run: (to) => Promise.all(KEYS.map((key) => store.points({ deviceId, key, from: to - HOUR, to, limit: 1000 }))) },
  ]);
  const result: Result = {
    points,
    insertPointsPerSec: Math.round(perSec),
    query30dHourlyP99Ms: hourly30d!,
    query30dHourlySource: sourceOf(30 * DAY, HOUR),
    query30dHourlyFrom1hP99Ms: hourly30dFrom1h!,
    query1yDailyP99Ms: daily1y!,
    query1yDailySource: sourceOf(365 * DAY, DAY),
    queryLastHourRawP99Ms: lastHourRaw!,
    vacuumed: vacuum !== undefined,
  };
  await store.close();
  for (const k of ["query30dHourlyP99Ms", "query30dHourlyFrom1hP99Ms", "query1yDailyP99Ms", "queryLastHourRawP99Ms"] as const) {
    result[k] = Number(result[k].toFixed(2));
  }
  return result;
}

async function postgres(): Promise<{ store: Store; vacuum: () => Promise<void>; stop: () => Promise<void> } | null> {
  const server = benchServer();
  if (!server) return null;
  const db = await freshDatabase(server, "tethral_bench_ts");
  return { store: new PostgresStore({ url: db.url }), vacuum: () => runSql(db.url, "VACUUM (ANALYZE)"), stop: db.drop };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tethral-bench-ts-"));
  let sqlite: Result;
  try {
    sqlite = await measure("sqlite", new SqliteStore({ path: join(dir, "series.sqlite") }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const server = await postgres();
  let postgresResult: Result | null = null;
  if (server === null) console.log("  postgres: skipped (set TETHRAL_BENCH_PG_URL to a PostgreSQL server)");
  else {
    try {
      postgresResult = await measure("postgres", server.store, server.vacuum);
    } finally {
      await server.stop();
    }
  }

  const fmt = (n: number) => (Number.isInteger(n) ? n.toLocaleString("en-US") : n.toFixed(2));
  const rows: [string, keyof Result][] = [
    ["points loaded", "points"],
    ["insert points/s (load, roll-ups included)", "insertPointsPerSec"],
    ["30 days hourly, 3 keys, p99 ms", "query30dHourlyP99Ms"],
    ["  read from", "query30dHourlySource"],
    ["30 days hourly from 1h roll-ups, p99 ms", "query30dHourlyFrom1hP99Ms"],
    ["1 year daily, 3 keys, p99 ms", "query1yDailyP99Ms"],
    ["  read from", "query1yDailySource"],
    ["last hour raw, 3 keys, p99 ms", "queryLastHourRawP99Ms"],
  ];
  const show = (r: Result | null, k: keyof Result) => (r === null ? "skipped" : typeof r[k] === "number" ? fmt(r[k]) : String(r[k]));
  console.log(`\nTethral time-series benchmark, Node ${process.version}, ${DAYS} days, ${RUNS} runs per query`);
  console.log(`${"".padEnd(44)}${"SQLite".padStart(12)}${"PostgreSQL".padStart(14)}`);
  for (const [label, k] of rows) console.log(`${label.padEnd(44)}${show(sqlite, k).padStart(12)}${show(postgresResult, k).padStart(14)}`);
  console.log(
    `targets: queries p99 ≤ ${TARGETS.queryMs} ms, last hour raw ≤ ${TARGETS.lastHourMs} ms`,
  );
  console.log(`\nwrote ${writeResults("timeseries", { sqlite, postgres: postgresResult, days: DAYS, runs: RUNS })}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
