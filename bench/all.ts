/**
 * `npm run bench`: every benchmark in turn (one at a time: they share the machine), then the
 * README's performance table from their results (`bench:readme`). A benchmark that fails is
 * reported and the others still run; the exit code is 1 if any failed. Whether the figures meet
 * their targets is `npm run bench:check`'s to say.
 * Mosquitto: bench:comm, bench:peer and bench:cluster start Mosquittos of their own when mosquitto
 * is installed (bench:comm measures the broker at TETHRAL_BENCH_MQTT_URL instead when it is set).
 * PostgreSQL: TETHRAL_BENCH_PG_URL (or TETHRAL_TEST_PG_URL); without it the PostgreSQL figures
 * come from PGlite (bench:store, bench:ingest, bench:timeseries) or are skipped (bench:cluster).
 */
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { settle } from "./quiet";
import { RESULTS_DIR } from "./results";

const BENCHES = ["core", "store", "ingest", "timeseries", "comm", "rest", "peer", "cluster"];
const ROOT = join(__dirname, "..");

function npm(script: string, env: NodeJS.ProcessEnv = process.env): boolean {
  console.log(`\n━━ npm run ${script}`);
  const res = spawnSync("npm", ["run", "--silent", script], { cwd: ROOT, stdio: "inherit", env });
  return res.status === 0;
}

async function main(): Promise<number> {
  const only = process.env.TETHRAL_BENCH_ONLY?.split(",").map((s) => s.trim());
  const failed: string[] = [];
  if (!npm("build")) return 1;
  for (const b of BENCHES) {
    if (only && !only.includes(b)) continue;
    // A benchmark that skips (no PostgreSQL server, no mosquitto) leaves no result, not an old one.
    rmSync(join(RESULTS_DIR, `${b}.json`), { force: true });
    // Each benchmark starts on a quiet machine: the build's and the last benchmark's aftermath
    // (PostgreSQL's checkpoints and vacuums, the kernel writing files back) done first.
    const settled = await settle();
    if (settled) console.log(`\nmachine ${settled.quiet ? "quiet" : "still busy"} after ${(settled.waitedMs / 1000).toFixed(0)} s (${settled.busyPct}% of its CPU busy over 2 s)`);
    if (!npm(`bench:${b}`, settled ? { ...process.env, TETHRAL_BENCH_SETTLED: JSON.stringify(settled) } : process.env)) failed.push(b);
  }
  if (!npm("bench:readme")) failed.push("readme");
  if (failed.length > 0) console.error(`\nfailed: ${failed.map((b) => `bench:${b}`).join(", ")}`);
  console.log("\nnpm run bench:check says whether each figure meets its target.");
  return failed.length > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
