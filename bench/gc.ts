/**
 * What a latency figure's tail is made of. A garbage collection that starts while an operation
 * is timed adds its pause to that operation: a scavenge (V8's young-generation collection), or a
 * mark-compact or a step of one. `recordCollections` watches V8's collections while a benchmark
 * times its operations, then tells, for the operations' spans, how many met one of each kind, the
 * scavenges' pauses, and the p99 of the operations that met none: a figure that misses its target
 * only through collections has that p99 under the target.
 */
import { constants, type PerformanceEntry, PerformanceObserver } from "node:perf_hooks";
import { percentile } from "./stats";

export interface Collections {
  /** Operations timed. */
  operations: number;
  /** Operations during which a scavenge started. */
  hit: number;
  /** Operations during which another kind of collection (a mark-compact or a step of one) started. */
  hitByOthers: number;
  scavenges: number;
  /** Collections of other kinds during the recording. */
  others: number;
  scavengeP50Ms: number;
  scavengeMaxMs: number;
  /** p99 of the operations no collection of any kind fell in. */
  p99WithoutMs: number;
}

/** Starts watching collections; `stop` takes the timed operations' [start, end] (performance.now()). */
export function recordCollections(): { stop(spans: readonly (readonly [number, number])[]): Promise<Collections> } {
  const entries: { start: number; ms: number; minor: boolean }[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind;
      entries.push({ start: e.startTime, ms: e.duration, minor: kind === constants.NODE_PERFORMANCE_GC_MINOR });
    }
  });
  observer.observe({ entryTypes: ["gc"] });
  return {
    async stop(spans) {
      // Entries reach the observer a turn of the loop after the collection.
      await new Promise((r) => setTimeout(r, 50));
      observer.disconnect();
      const within = (minor: boolean) => spans.map(([s, e]) => entries.some((g) => g.minor === minor && g.start >= s && g.start < e));
      const hit = within(true);
      const hitByOthers = within(false);
      const others = spans
        .filter((_, i) => !hit[i] && !hitByOthers[i])
        .map(([s, e]) => e - s)
        .sort((a, b) => a - b);
      const pauses = entries
        .filter((g) => g.minor)
        .map((g) => g.ms)
        .sort((a, b) => a - b);
      return {
        operations: spans.length,
        hit: hit.filter(Boolean).length,
        hitByOthers: hitByOthers.filter(Boolean).length,
        scavenges: pauses.length,
        others: entries.length - pauses.length,
        scavengeP50Ms: round2(pauses.length > 0 ? percentile(pauses, 50) : Number.NaN),
        scavengeMaxMs: round2(pauses.at(-1) ?? Number.NaN),
        p99WithoutMs: round2(others.length > 0 ? percentile(others, 99) : Number.NaN),
      };
    },
  };
}

export const round2 = (n: number) => Number(n.toFixed(2));
