import { type IntervalHistogram, monitorEventLoopDelay } from "node:perf_hooks";
import { getHeapStatistics } from "node:v8";

/** A window of event-loop delay is kept at least this long before it starts afresh. */
const WINDOW_MS = 10_000;
const NS_PER_MS = 1e6;

export interface ProcessReading {
  /** How late timers ran over the current window (about the last 10 s or more), in milliseconds. */
  eventLoopLagMs: { p50: number; p99: number; max: number; windowSec: number };
  heap: { usedBytes: number; totalBytes: number; limitBytes: number; usedRatio: number };
  rssBytes: number;
}

/**
 * The process the hub runs in, for health: how late the event loop runs (a hub whose loop lags
 * answers devices and flows late, whatever its components say) and how much heap it holds.
 */
export class ProcessMonitor {
  private histogram: IntervalHistogram | null = null;
  private windowStart = 0;

  start(): void {
    if (this.histogram) return;
    this.histogram = monitorEventLoopDelay({ resolution: 20 });
    this.histogram.enable();
    this.windowStart = Date.now();
  }

  stop(): void {
    this.histogram?.disable();
    this.histogram = null;
  }

  reading(): ProcessReading {
    const h = this.histogram;
    const now = Date.now();
    const ms = (ns: number) => (Number.isFinite(ns) ? Math.round((ns / NS_PER_MS) * 10) / 10 : 0);
    const lag = h && h.count > 0 ? { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) } : { p50: 0, p99: 0, max: 0 };
    const windowSec = Math.round((now - this.windowStart) / 100) / 10;
    if (h && now - this.windowStart >= WINDOW_MS) {
      h.reset();
      this.windowStart = now;
    }
    const memory = process.memoryUsage();
    const limit = getHeapStatistics().heap_size_limit;
    return {
      eventLoopLagMs: { ...lag, windowSec },
      heap: { usedBytes: memory.heapUsed, totalBytes: memory.heapTotal, limitBytes: limit, usedRatio: Math.round((memory.heapUsed / limit) * 1000) / 1000 },
      rssBytes: memory.rss,
    };
  }
}
