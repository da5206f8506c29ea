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
  private readonly total: PurgeResult = { history: 0, events: 0, commands: 0 };

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
    const round: PurgeResult = { history: 0, events: 0, commands: 0 };
    if (this.degraded()) return round;
    const { batchSize, budgetMs } = this.options;
    const started = Date.now();
    try {
      for (;;) {
        const part = await this.store.purge(this.options, this.clock.now(), batchSize);
        round.history += part.history;
        round.events += part.events;
        round.commands += part.commands;
        const more = part.history >= batchSize || part.events >= batchSize || part.commands >= batchSize;
        if (!more || Date.now() - started >= budgetMs) break;
      }
    } catch (err) {
      this.warn(`retention purge failed: ${errorMessage(err)}`);
    }
    this.total.history += round.history;
    this.total.events += round.events;
    this.total.commands += round.commands;
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
