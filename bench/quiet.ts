/**
 * Waiting for a quiet machine between benchmarks (`npm run bench`), so that what one benchmark
 * leaves running (PostgreSQL checkpointing and vacuuming what it wrote, the kernel writing files
 * back) does not load the next; the Done-when asks for a quiet run. Added after a full run whose
 * bench:timeseries SQLite p99s (21.98 and 21.21 ms, straight after bench:ingest) read 3.34 and
 * 5.31 alone on the same code. It is a precaution, not that run's explanation: in the two full
 * runs of 2026-12-05 that followed, every wait was 2–4 s, and those p99s still read 18.62/19.27
 * in one and 7.30/6.29 in the other.
 */
import { readFileSync } from "node:fs";

/** CPU time of the whole machine from /proc/stat, in clock ticks: busy (iowait counted as busy: the disk is at work) and total. */
function cpuTicks(): { busy: number; total: number } | null {
  try {
    const fields = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - fields[3]!, total };
  } catch {
    return null; // not Linux: nothing to read, no wait
  }
}

export interface Settled {
  /** How long it took until a window was quiet (or the limit, when none was). */
  waitedMs: number;
  /** The share of the machine's CPU busy in the last window, %. */
  busyPct: number;
  quiet: boolean;
}

/**
 * Waits until the machine's CPU (all cores, all processes) is at most `maxBusyPct` busy over a
 * `windowMs` window, for at most `limitMs`. Null where /proc/stat cannot be read.
 */
export async function settle(maxBusyPct = 5, windowMs = 2000, limitMs = 120_000): Promise<Settled | null> {
  const started = performance.now();
  for (;;) {
    const a = cpuTicks();
    if (!a) return null;
    await new Promise((r) => setTimeout(r, windowMs));
    const b = cpuTicks()!;
    const busyPct = b.total > a.total ? (100 * (b.busy - a.busy)) / (b.total - a.total) : 0;
    const waitedMs = Math.round(performance.now() - started);
    if (busyPct <= maxBusyPct) return { waitedMs, busyPct: Number(busyPct.toFixed(1)), quiet: true };
    if (waitedMs >= limitMs) return { waitedMs, busyPct: Number(busyPct.toFixed(1)), quiet: false };
  }
}
