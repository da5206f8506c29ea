/**
 * Time as the engine sees it. Everything that waits or reads the time goes through a Clock,
 * so tests drive timeouts at their exact boundaries without sleeping.
 */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
  /**
   * Runs `fn` once the event loop has read what its sockets hold now. A timer that decides a
   * device said nothing in time (its heartbeat deadline, a command's answer) decides there: in a
   * loop held past the deadline (a long task, a collection, a suspended machine) Node runs the
   * expired timers before it reads the sockets, where the device's message may be waiting.
   * Optional: a clock without it (ManualClock) runs `fn` at once.
   */
  afterReads?(fn: () => void): void;
}

export type TimerHandle = unknown;

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    return t;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
  // setImmediate's callbacks run after the poll phase of the same turn, which reads the sockets.
  afterReads: (fn) => void setImmediate(fn),
};

/** `clock.afterReads(fn)`, or `fn()` at once for a clock without it. */
function afterReads(clock: Pick<Clock, "afterReads">, fn: () => void): void {
  if (clock.afterReads) clock.afterReads(fn);
  else fn();
}

/** A timer later than this ran in a loop that was held (timers are otherwise a few ms late). */
const HELD_MS = 50;
/** The longest a decision waits for what came in while the loop was held. */
const MAX_CATCH_UP_MS = 1000;

/**
 * For a timer due at `dueAt` that decides a device said nothing in time: runs `fn` after this
 * turn's socket reads, and when the timer ran late (the loop was held), as long again as it was
 * late (up to a second). A message read in the held turn may reach the hub some turns later:
 * the embedded broker hands a publish to the broker's other subscribers first, a turn each.
 */
export function decideAfterCatchUp(clock: Clock, dueAt: number, fn: () => void): void {
  const late = clock.now() - dueAt;
  if (late > HELD_MS) clock.setTimeout(() => afterReads(clock, fn), Math.min(late, MAX_CATCH_UP_MS));
  else afterReads(clock, fn);
}

interface ManualTimer {
  at: number;
  seq: number;
  fn: () => void;
}

/**
 * A clock that moves only when told to. `advance(ms)` runs every timer that falls due,
 * in time order, with `now()` set to each timer's due time as it runs.
 */
export class ManualClock implements Clock {
  private current: number;
  private seq = 0;
  private readonly timers = new Set<ManualTimer>();

  constructor(start = Date.UTC(2026, 10, 27, 10, 0, 0)) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: ManualTimer = { at: this.current + Math.max(0, ms), seq: this.seq++, fn };
    this.timers.add(timer);
    return timer;
  }

  clearTimeout(handle: TimerHandle): void {
    this.timers.delete(handle as ManualTimer);
  }

  /** Timers scheduled and not yet run or cleared. */
  get pendingTimers(): number {
    return this.timers.size;
  }

  advance(ms: number): void {
    const until = this.current + ms;
    for (;;) {
      let next: ManualTimer | undefined;
      for (const t of this.timers) {
        if (t.at <= until && (!next || t.at < next.at || (t.at === next.at && t.seq < next.seq))) next = t;
      }
      if (!next) break;
      this.timers.delete(next);
      this.current = Math.max(this.current, next.at);
      next.fn();
    }
    this.current = until;
  }

  set(time: number): void {
    this.advance(Math.max(0, time - this.current));
  }
}

/** Waits for `work` until the wall-clock `deadline`: done, failed (with the error), or late. */
export async function beforeDeadline(work: Promise<unknown>, deadline: number): Promise<"done" | "late" | { error: unknown }> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<"late">((resolve) => {
    timer = setTimeout(() => resolve("late"), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([work.then(() => "done" as const, (error: unknown) => ({ error })), late]);
  } finally {
    clearTimeout(timer);
  }
}
