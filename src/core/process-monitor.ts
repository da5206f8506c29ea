import { type EventLoopUtilization, type IntervalHistogram, monitorEventLoopDelay, performance } from "node:perf_hooks";
import { getHeapStatistics } from "node:v8";

/** A window of event-loop delay is kept at least this long before it starts afresh. */
const WINDOW_MS = 10_000;
const NS_PER_MS = 1e6;
/** How often the lag timer fires while it samples: it is how late this timer runs that is measured. */
const RESOLUTION_MS = 20;

export interface ProcessMonitorOptions {
  /** How often the monitor looks at how busy the loop was, ms. Default 1000. */
  checkMs?: number;
  /**
   * The loop is idle when it was busy less than this share of the time since the last look
   * (the lag timer's own callbacks included), on this many looks in a row. Defaults 0.01 and 3.
   */
  idleShare?: number;
  idleChecks?: number;
}

export interface ProcessReading {
  /**
   * How late timers ran over the current window (about the last 10 s or more), in milliseconds:
   * beyond their due time, so a loop that is never held reads about 0.
   */
  eventLoopLagMs: { p50: number; p99: number; max: number; windowSec: number };
  heap: { usedBytes: number; totalBytes: number; limitBytes: number; usedRatio: number };
  rssBytes: number;
}

/**
 * The process the hub runs in, for health: how late the event loop runs (a hub whose loop lags
 * answers devices and flows late, whatever its components say) and how much heap it holds.
 *
 * The lag is how late a timer firing every 20 ms runs (Node's `monitorEventLoopDelay`). That
 * timer wakes the process 50 times a second, and on an idle hub those wake-ups were most of what
 * it spent: an idle `npm start` took 9–16 CPU ms a second with it, 3 without. So it samples only
 * while the loop has work: once a second the monitor reads how busy the loop was since its last
 * look (`performance.eventLoopUtilization`); after three looks under 1% it stops the timer, and
 * the first look over 1% starts it afresh (the time it was stopped is no lag). A loop busy under
 * 1% of a second (10 ms) cannot have been held 20 ms in it. While the timer is stopped each look
 * measures how late it ran itself, so a hold that begins in an idle spell shows when it reaches
 * the look (a hold of a second or more always does); one shorter than that, in the second in
 * which work begins again, goes unsampled.
 */
export class ProcessMonitor {
  private histogram: IntervalHistogram | null = null;
  /** Whether the histogram's timer runs (it is stopped while the loop is idle). */
  private histogramOn = false;
  private windowStart = 0;
  private checker: NodeJS.Timeout | null = null;
  private lastLook: EventLoopUtilization = performance.eventLoopUtilization();
  /** performance.now() when the next look is due (an interval's next run is due its period after this one began). */
  private lookDue = 0;
  /** The longest a look ran late while the timer was stopped, this window, ns. */
  private lateWhileStopped = 0;
  private idleLooks = 0;
  private readonly checkMs: number;
  private readonly idleShare: number;
  private readonly idleChecks: number;

  constructor(options: ProcessMonitorOptions = {}) {
    this.checkMs = options.checkMs ?? 1000;
    this.idleShare = options.idleShare ?? 0.01;
    this.idleChecks = options.idleChecks ?? 3;
  }

  /** Whether the lag timer runs now (false while the loop is idle). */
  get sampling(): boolean {
    return this.histogramOn;
  }

  start(): void {
    if (this.histogram) return;
    this.histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
    this.histogram.enable();
    this.histogramOn = true;
    this.windowStart = Date.now();
    this.lastLook = performance.eventLoopUtilization();
    this.lookDue = performance.now() + this.checkMs;
    this.lateWhileStopped = 0;
    this.idleLooks = 0;
    this.checker = setInterval(() => this.look(), this.checkMs);
    // The monitor must not keep a process alive that has nothing else to do.
    this.checker.unref();
  }

  stop(): void {
    if (this.checker !== null) clearInterval(this.checker);
    this.checker = null;
    this.histogram?.disable();
    this.histogram = null;
    this.histogramOn = false;
  }

  /** Starts or stops the lag timer by how busy the loop was since the last look. */
  private look(): void {
    const h = this.histogram;
    if (!h) return;
    const at = performance.now();
    if (!this.histogramOn) this.lateWhileStopped = Math.max(this.lateWhileStopped, (at - this.lookDue) * NS_PER_MS);
    this.lookDue = at + this.checkMs;
    const now = performance.eventLoopUtilization();
    const busy = performance.eventLoopUtilization(now, this.lastLook).utilization;
    this.lastLook = now;
    if (busy >= this.idleShare) {
      this.idleLooks = 0;
      if (!this.histogramOn) {
        // Afresh: the histogram would take its first sample's delay from its last one, before it stopped.
        h.reset();
        h.enable();
        this.histogramOn = true;
      }
    } else if (this.histogramOn && ++this.idleLooks >= this.idleChecks) {
      h.disable();
      this.histogramOn = false;
    }
  }

  reading(): ProcessReading {
    const h = this.histogram;
    const now = Date.now();
    const ms = (ns: number) => (Number.isFinite(ns) ? Math.round((ns / NS_PER_MS) * 10) / 10 : 0);
    const late = this.lateWhileStopped;
    // The histogram records the time between its timer's runs: the period itself is no lag.
    const beyond = (ns: number) => Math.max(0, ns - RESOLUTION_MS * NS_PER_MS);
    const lag =
      h && h.count > 0
        ? { p50: ms(beyond(h.percentile(50))), p99: ms(beyond(h.percentile(99))), max: ms(Math.max(beyond(h.max), late)) }
        : { p50: ms(late), p99: ms(late), max: ms(late) };
    const windowSec = Math.round((now - this.windowStart) / 100) / 10;
    if (h && now - this.windowStart >= WINDOW_MS) {
      h.reset();
      this.lateWhileStopped = 0;
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
