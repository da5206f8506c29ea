// Small pieces the simulator's parts share: its error classes, owned timers, reconnect backoff
// and rate-limited warnings.

/** A problem the user fixes (start the hub, pick another prefix, ...): its message is the one line to print. */
export class SimulationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SimulationError";
  }
}

/** A flag or option with a value the simulator cannot use: the CLI prints it and exits with code 2. */
export class UsageError extends SimulationError {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * The timers of one owner (a device, a transport), so its `stop()` clears every one of them at
 * once and nothing it scheduled fires after it stopped.
 */
export class TimerSet {
  private readonly timers = new Set<NodeJS.Timeout>();

  after(ms: number, fn: () => void): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, Math.max(0, ms));
    this.timers.add(timer);
    return timer;
  }

  cancel(timer: NodeJS.Timeout | null | undefined): void {
    if (!timer) return;
    clearTimeout(timer);
    this.timers.delete(timer);
  }

  clear(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }
}

/**
 * Reconnect delays that double from `firstMs` up to `maxMs`, with ±25 % jitter so a fleet that
 * lost the hub at the same moment does not come back at the same moment.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly firstMs = 500,
    private readonly maxMs = 30_000,
  ) {}

  next(): number {
    const base = Math.min(this.maxMs, this.firstMs * 2 ** Math.min(this.attempt, 16));
    this.attempt++;
    return Math.round(base * (0.75 + Math.random() * 0.5));
  }

  reset(): void {
    this.attempt = 0;
  }
}

/**
 * At most one warning per category per window: a hub that refuses every device's telemetry
 * would otherwise print fifty lines every interval. What it held back is counted in the next one.
 */
export class WarningLimiter {
  private readonly last = new Map<string, { at: number; held: number }>();

  constructor(
    private readonly print: (message: string) => void,
    private readonly windowMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  warn(category: string, message: string): void {
    const now = this.now();
    const entry = this.last.get(category);
    if (entry && now - entry.at < this.windowMs) {
      entry.held++;
      return;
    }
    const more = entry?.held ? ` (and ${entry.held} more like it)` : "";
    this.last.set(category, { at: now, held: 0 });
    this.print(`${message}${more}`);
  }
}

/** A uniformly random number in [min, max]. */
export function between([min, max]: readonly [number, number]): number {
  return min + Math.random() * (max - min);
}

/** A request's or response's body as text, keeping at most `max` bytes; `over` when it had more. */
export function readCapped(stream: NodeJS.ReadableStream, max: number): Promise<{ text: string; over: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= max) chunks.push(chunk);
    });
    stream.on("end", () => resolve({ text: Buffer.concat(chunks).toString("utf8"), over: size > max }));
    stream.on("error", reject);
  });
}
