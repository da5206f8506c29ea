import { type Clock, type TimerHandle, beforeDeadline } from "./clock";
import { errorMessage } from "./errors";
import type { PurgeResult, RetentionPolicy, Store } from "./ports/store";

export interface RetentionOptions extends RetentionPolicy {
  /** A round of purges this often; 0 for none. */
  intervalMs: number;
  /** Rows of each kind removed per statement. */
  batchSize: number;
  /** A round stops after this long even if more is left (the next round goes on). */
  budgetMs: number;
}

/**
 * The store's retention: every `intervalMs`, bounded rounds of `Store.purge` until nothing is
 * left or the round's time budget is spent, so a big backlog never holds the database long.
 */
export class Retention {
  private timer: TimerHandle | null = null;
  private purging: Promise<unknown> | null = null;
  private running = false;
  private readonly total: PurgeResult = emptyPurge();

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly options: RetentionOptions,
    /** True while the database is unreachable: no purge then. */
    private readonly degraded: () => boolean,
    private readonly warn: (message: string) => void,
  ) {}

  start(): void {
    this.running = true;
    this.arm();
  }

  /** Stops the timer and waits, until `deadline` at most, for a round under way. */
  async stop(deadline: number): Promise<void> {
    this.running = false;
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    if (this.purging) await beforeDeadline(this.purging, deadline);
  }

  /** One round: what it removed. */
  async purge(): Promise<PurgeResult> {
    const round: PurgeResult = emptyPurge();
    if (this.degraded()) return round;
    const { batchSize, budgetMs } = this.options;
    const started = Date.now();
    try {
      for (;;) {
        const part = await this.store.purge(this.options, this.clock.now(), batchSize);
        add(round, part);
        // A kind that filled its batch has more to remove (roll-ups count both resolutions).
        const more = part.history >= batchSize || part.events >= batchSize || part.commands >= batchSize || part.points >= batchSize || part.rollups >= batchSize;
        if (!more || Date.now() - started >= budgetMs) break;
      }
    } catch (err) {
      this.warn(`retention purge failed: ${errorMessage(err)}`);
    }
    add(this.total, round);
    return round;
  }

  /** Rows removed since the hub started. */
  purged(): PurgeResult {
    return { ...this.total };
  }

  private arm(): void {
    if (!this.running || this.options.intervalMs <= 0) return;
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.purging = this.purge().finally(() => {
        this.purging = null;
        this.arm();
      });
    }, this.options.intervalMs);
  }
}

function emptyPurge(): PurgeResult {
  return { history: 0, events: 0, commands: 0, points: 0, rollups: 0 };
}

function add(to: PurgeResult, part: PurgeResult): void {
  to.history += part.history;
  to.events += part.events;
  to.commands += part.commands;
  to.points += part.points ?? 0;
  to.rollups += part.rollups ?? 0;
}
