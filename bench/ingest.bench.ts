/**
 * Ingest benchmark: sustained telemetry through the adapters' entry point (`hub.receive`), with
 * the hub's store keeping everything it accepts (CONTRACT §7 points, the latest state).
 * - 10,000 devices, 3 numeric keys per message, for DURATION_S seconds, as fast as the hub takes
 *   them: the generator stops while `hub.intake` is busy (the store is behind), as adapters do;
 * - msgsPerSec counts messages whose points are in the database: the clock runs until the last
 *   batch is written, so a backlog left at the end is paid for;
 * - droppedRows: rows the write-behind dropped (must be 0), maxBacklogRows: the largest backlog
 *   seen; a sample of devices is checked point by point against what was sent.
 * SQLite is a file in a temporary folder; PostgreSQL is the server at TETHRAL_BENCH_PG_URL (a
 * fresh database, dropped afterwards) or PGlite in-process without one (slower, noted).
 * Run with `npm run bench:ingest`; writes bench/results/ingest.json. Not a test: nothing asserts a time.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Hub, type HubOptions } from "../src/core/hub";
import type { Store } from "../src/core/ports/store";
import { PostgresStore } from "../src/store/postgres";
import { SqliteStore } from "../src/store/sqlite";
import { benchServer, freshDatabase, pgliteDatabase } from "./pg-database";
import { targetOf, writeResults } from "./results";

const DEVICES = 10_000;
const KEYS = 3;
const DURATION_S = Number(process.env.TETHRAL_BENCH_INGEST_SECONDS ?? 60);
const TARGETS = { sqlite: targetOf("ingest", "sqlite.msgsPerSec"), postgres: targetOf("ingest", "postgres.msgsPerSec") };
/** Devices whose every point is checked in the database after the run. */
const SAMPLE = 50;

interface Result {
  msgsPerSec: number;
  pointsPerSec: number;
  droppedRows: number;
  maxBacklogRows: number;
  seconds: number;
  messages: number;
  /** Seconds the intake was busy (the generator waited for the store). */
  busySeconds: number;
  /** Sampled devices whose stored points matched what was sent, of SAMPLE. */
  verifiedDevices: number;
}

function payloads(): Buffer[] {
  // A pool of distinct payloads, so values change and every message moves the state.
  return Array.from({ length: 997 }, (_, i) =>
    Buffer.from(JSON.stringify({ temperature: 15 + (i % 200) / 10, humidity: 30 + (i % 500) / 10, pressure: 990 + (i % 300) / 10 })),
  );
}

async function run(label: string, store: Store): Promise<Result> {
  // TETHRAL_BENCH_PERSISTENCE: write-behind settings to try (JSON), for tuning; the defaults otherwise.
  const persistence = process.env.TETHRAL_BENCH_PERSISTENCE ? (JSON.parse(process.env.TETHRAL_BENCH_PERSISTENCE) as HubOptions["persistence"]) : undefined;
  const hub = new Hub({ store, deviceTokens: false, onWarning: (m) => console.warn(`  [${label}] ${m}`), heartbeat: { defaultTimeoutSec: 3600 }, persistence });
  await hub.start();
  const ids = Array.from({ length: DEVICES }, (_, i) => `ingest-${String(i).padStart(5, "0")}`);
  for (let i = 0; i < ids.length; i += 500) {
    await Promise.all(ids.slice(i, i + 500).map((id) => hub.registerDevice({ id, protocol: "mqtt" })));
  }
  await hub.flush();
  const pool = payloads();
  const sent = new Map<string, number>();
  const sample = new Set(ids.filter((_, i) => i % (DEVICES / SAMPLE) === 0));
  let messages = 0;
  let maxBacklog = 0;
  let busyMs = 0;
  const started = performance.now();
  const end = started + DURATION_S * 1000;
  let refused = 0;
  let slices = 0;
  while (performance.now() < end) {
    // A slice of messages, then the event loop: the store's answers and timers run between slices.
    for (let n = 0; n < 500; n++) {
      const deviceId = ids[messages % DEVICES]!;
      const result = hub.receive({ protocol: "mqtt", deviceId, kind: "telemetry", payload: pool[messages % pool.length]!, authenticated: true });
      if (!result.ok) refused++;
      else if (sample.has(deviceId)) sent.set(deviceId, (sent.get(deviceId) ?? 0) + 1);
      messages++;
    }
    // Sampled every 20 slices (10,000 messages) and whenever the intake turns busy: the
    // statistics are the hub's whole picture, too dear to read per slice.
    if (++slices % 20 === 0 || hub.intake.busy) {
      const backlog = hub.statistics().store!.backlog.rows;
      if (backlog > maxBacklog) maxBacklog = backlog;
    }
    if (hub.intake.busy) {
      const waitStarted = performance.now();
      await new Promise<void>((resolve) => {
        const off = hub.intake.onChange((busy) => {
          if (!busy) {
            off();
            resolve();
          }
        });
      });
      busyMs += performance.now() - waitStarted;
    } else {
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  await hub.flush();
  const seconds = (performance.now() - started) / 1000;
  const stats = hub.statistics().store!;
  const droppedRows = stats.dropped.events + stats.dropped.history + stats.dropped.points;
  let verified = 0;
  for (const id of sample) {
    const counts = await Promise.all(
      ["temperature", "humidity", "pressure"].map((key) =>
        store.buckets({ deviceId: id, key, from: 0, to: Date.now(), limit: 10, source: "1h", intervalMs: 3_600_000 * 24 * 366, agg: "count" }),
      ),
    );
    const want = sent.get(id) ?? 0;
    if (counts.every((c) => (c[0]?.value ?? 0) === want)) verified++;
    else console.warn(`  [${label}] ${id}: sent ${want}, stored ${counts.map((c) => c[0]?.value ?? 0).join("/")}`);
  }
  await hub.stop();
  if (refused > 0) console.warn(`  [${label}] ${refused} messages refused`);
  const accepted = messages - refused;
  return {
    msgsPerSec: Math.round(accepted / seconds),
    pointsPerSec: Math.round((accepted * KEYS) / seconds),
    droppedRows,
    maxBacklogRows: maxBacklog,
    seconds: Number(seconds.toFixed(1)),
    messages: accepted,
    busySeconds: Number((busyMs / 1000).toFixed(1)),
    verifiedDevices: verified,
  };
}

async function postgres(): Promise<{ kind: "server" | "pglite"; store: Store; stop: () => Promise<void> }> {
  const server = benchServer();
  if (server) {
    const db = await freshDatabase(server, "tethral_ingest");
    return { kind: "server", store: new PostgresStore({ url: db.url }), stop: db.drop };
  }
  const lite = await pgliteDatabase();
  return { kind: "pglite", store: new PostgresStore({ url: lite.url, poolSize: 1, bulkCopy: false }), stop: lite.stop };
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

async function main(): Promise<void> {
  const only = process.env.TETHRAL_BENCH_INGEST_ONLY;
  const dir = mkdtempSync(join(tmpdir(), "tethral-ingest-"));
  let sqlite: Result | null = null;
  try {
    if (only !== "postgres") sqlite = await run("sqlite", new SqliteStore({ path: join(dir, "ingest.sqlite") }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  let postgresResult: (Result & { server: string }) | null = null;
  if (only !== "sqlite") {
    const server = await postgres();
    try {
      postgresResult = { ...(await run("postgres", server.store)), server: server.kind };
    } finally {
      await server.stop();
    }
  }
  const results = { sqlite, postgres: postgresResult, devices: DEVICES, keysPerMessage: KEYS, durationSeconds: DURATION_S };
  console.log(`\nTethral ingest benchmark, Node ${process.version}: ${fmt(DEVICES)} devices, ${KEYS} numeric keys per message, ${DURATION_S} s`);
  const rows: [string, (r: Result) => string][] = [
    ["messages/s (stored)", (r) => fmt(r.msgsPerSec)],
    ["points/s", (r) => fmt(r.pointsPerSec)],
    ["rows dropped", (r) => fmt(r.droppedRows)],
    ["largest backlog (rows)", (r) => fmt(r.maxBacklogRows)],
    ["seconds (with the final flush)", (r) => String(r.seconds)],
    ["seconds the intake was busy", (r) => String(r.busySeconds)],
    [`sampled devices verified (of ${SAMPLE})`, (r) => String(r.verifiedDevices)],
  ];
  console.log(`${"".padEnd(36)}${"SQLite".padStart(12)}${"PostgreSQL".padStart(14)}`);
  for (const [label, show] of rows) {
    console.log(`${label.padEnd(36)}${(sqlite ? show(sqlite) : "-").padStart(12)}${(postgresResult ? show(postgresResult) : "-").padStart(14)}`);
  }
  console.log(`targets: ≥ ${fmt(TARGETS.sqlite)} msg/s (SQLite), ≥ ${fmt(TARGETS.postgres)} msg/s (PostgreSQL), 0 rows dropped`);
  console.log(`\nwrote ${writeResults("ingest", results)}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
