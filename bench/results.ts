/**
 * What every benchmark shares about its results: where they are written, the machine they were
 * measured on, and the targets they are checked against (bench/targets.json, the one place a
 * target is written down).
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";

export const RESULTS_DIR = join(__dirname, "results");

export interface Target {
  bench: string;
  path: string;
  label: string;
  op: ">=" | "<=" | ">" | "<";
  target: number;
  issue: number;
  anchor: string;
  /** Where the anchor's value is in the same results, when it is measured in the same run. */
  anchorPath?: string;
}

export interface Machine {
  cpu: string;
  cores: number;
  memoryGiB: number;
  node: string;
  platform: string;
  /**
   * What the first touch of a fresh 4 KiB page of memory costs this process, in µs (see
   * `pageFaultMicros`): every figure that grows the heap pays it for each page it grows by.
   */
  pageFaultUs?: number;
  /** The code measured: as the package's build compiles it (bench/run.mjs), or the TypeScript sources through tsx (before 2026-12-06, or a benchmark run with `node --import tsx`). */
  code: "build" | "sources";
  /** Under `npm run bench`: how long the machine took to fall quiet before this benchmark began (bench/quiet.ts). */
  settled?: { waitedMs: number; busyPct: number; quiet: boolean };
}

export function machine(): Machine {
  const cpu = cpus();
  return {
    cpu: (cpu[0]?.model ?? "unknown").replace(/\s+/g, " ").trim(),
    cores: cpu.length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    code: __filename.endsWith(".ts") ? "sources" : "build",
    pageFaultUs: pageFaultMicros(),
    ...(process.env.TETHRAL_BENCH_SETTLED ? { settled: JSON.parse(process.env.TETHRAL_BENCH_SETTLED) as Machine["settled"] } : {}),
  };
}

/**
 * Times the first write to each page of 32 MiB fresh from the kernel, per page fault counted.
 * On a usual machine that is well under a microsecond; on the VM this project was measured on
 * (a Firecracker microVM) it was 11–18 µs, which made a million-device registry pay seconds for
 * its memory alone. Named beside the figures so that they can be read against another machine.
 * The faults are the whole process's: a thread still at work meanwhile makes the figure low.
 */
function pageFaultMicros(): number | undefined {
  const bytes = 32 * 2 ** 20;
  const before = process.resourceUsage().minorPageFault;
  const started = performance.now();
  // allocUnsafeSlow: not from Node's pool, so large enough to be a fresh mapping of its own.
  const block = Buffer.allocUnsafeSlow(bytes);
  for (let i = 0; i < bytes; i += 4096) block[i] = 1;
  const micros = (performance.now() - started) * 1000;
  const faults = process.resourceUsage().minorPageFault - before;
  // Fewer faults than pages: the memory was not fresh (or huge pages backed it), so no figure.
  return faults >= bytes / 4096 / 2 ? Number((micros / faults).toFixed(1)) : undefined;
}

let targets: Target[] | null = null;
export function loadTargets(): Target[] {
  targets ??= (JSON.parse(readFileSync(join(__dirname, "targets.json"), "utf8")) as { figures: Target[] }).figures;
  return targets;
}

/** "≥ 250,000", "< 2,000": a target as people read it. */
export function showTarget(t: Target): string {
  return `${{ ">=": "≥", "<=": "≤", ">": ">", "<": "<" }[t.op]} ${fmtFigure(t.target)}`;
}

/** The target of one figure of `bench` (throws when targets.json has none: a benchmark prints only real targets). */
export function targetOf(bench: string, path: string): number {
  return targetEntry(bench, path).target;
}

export function targetEntry(bench: string, path: string): Target {
  const t = loadTargets().find((f) => f.bench === bench && f.path === path);
  if (!t) throw new Error(`bench/targets.json has no target for ${bench} ${path}`);
  return t;
}

/** Writes bench/results/<bench>.json with the machine and the time it was measured. */
export function writeResults(bench: string, results: object): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, `${bench}.json`);
  writeFileSync(file, `${JSON.stringify({ ...results, machine: machine(), measuredAt: new Date().toISOString() }, null, 2)}\n`);
  return file;
}

/** A figure of a result by its dotted path (`postgres.batchedRowsPerSec`); undefined when absent. */
export function figureAt(results: unknown, path: string): number | undefined {
  let at: unknown = results;
  for (const key of path.split(".")) {
    if (at === null || typeof at !== "object") return undefined;
    at = (at as Record<string, unknown>)[key];
  }
  return typeof at === "number" && Number.isFinite(at) ? at : undefined;
}

export function meets(t: Target, value: number): boolean {
  switch (t.op) {
    case ">=":
      return value >= t.target;
    case ">":
      return value > t.target;
    case "<=":
      return value <= t.target;
    case "<":
      return value < t.target;
  }
}

export interface Checked {
  target: Target;
  value: number | undefined;
  pass: boolean;
  /** How far from the target, as a share of it (positive: better than the target). */
  margin: number | undefined;
  /** The anchor's value in the same run (see `Target.anchorPath`). */
  anchorValue: number | undefined;
  machine: Machine | undefined;
  measuredAt: string | undefined;
}

/** bench/results/<bench>.json as the benchmark wrote it; null when there is none (or it is unreadable). */
export function readResults(bench: string): Record<string, unknown> | null {
  try {
    return JSON.parse(readFileSync(join(RESULTS_DIR, `${bench}.json`), "utf8")) as Record<string, unknown>;
  } catch {
    return null;
  }
}

/** Every target against the latest results (a figure with no result is a miss: it was not measured). */
export function checkAll(): Checked[] {
  const cache = new Map<string, Record<string, unknown> | null>();
  const results = (bench: string) => {
    if (!cache.has(bench)) cache.set(bench, readResults(bench));
    return cache.get(bench)!;
  };
  return loadTargets().map((target) => {
    const r = results(target.bench);
    const value = r ? figureAt(r, target.path) : undefined;
    const pass = value !== undefined && meets(target, value);
    const margin =
      value === undefined ? undefined : target.target === 0 ? (value === 0 ? 0 : -value) : target.op.startsWith(">") ? value / target.target - 1 : 1 - value / target.target;
    const anchorValue = r && target.anchorPath ? figureAt(r, target.anchorPath) : undefined;
    return { target, value, pass, margin, anchorValue, machine: r?.machine as Machine | undefined, measuredAt: r?.measuredAt as string | undefined };
  });
}

export function fmtFigure(n: number): string {
  if (Number.isInteger(n)) return n.toLocaleString("en-US");
  return Math.abs(n) >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(2);
}

/** How far a missed figure is from its target, in words: "46% short" (at least) or "12% over" (at most). */
export function missBy(r: Checked): string {
  if (r.value === undefined) return "not measured";
  if (r.target.target === 0) return `${fmtFigure(r.value)} instead of 0`;
  const pct = Math.abs(r.margin! * 100);
  const shown = pct < 1 ? pct.toFixed(1) : String(Math.round(pct));
  return `${shown}% ${r.target.op.startsWith(">") ? "short" : "over"}`;
}
