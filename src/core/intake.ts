import type { IntakeSignal } from "./ports/protocol";

/**
 * The hub's intake valve: busy while the store's backlog is past its high-water mark, ready
 * again once it has fallen to the low-water mark (hysteresis, so adapters do not flap between
 * paused and reading on every batch). Nothing is refused here: adapters read `busy` and slow
 * their devices (see `AdapterContext.intake`); the write-behind store moves the valve.
 */
export class Intake implements IntakeSignal {
  private isBusy = false;
  private busySince = 0;
  private readonly listeners = new Set<(busy: boolean) => void>();
  private readonly stats = { pauses: 0, busyMs: 0 };

  constructor(
    /** Backlog rows at which the intake turns busy. */
    readonly highWater: number,
    /** Backlog rows at which it is ready again. */
    readonly lowWater: number,
    /** Seconds a busy answer asks a device to wait. */
    readonly retryAfterSeconds = 1,
  ) {}

  get busy(): boolean {
    return this.isBusy;
  }

  /** The store's backlog now (rows waiting to be written): moves the valve when it crosses a mark. */
  backlog(rows: number): void {
    if (!this.isBusy && rows >= this.highWater) this.set(true);
    else if (this.isBusy && rows <= this.lowWater) this.set(false);
  }

  /** Ready again whatever the backlog (the store stopped, or cannot be written: see `Persistence`). */
  release(): void {
    if (this.isBusy) this.set(false);
  }

  onChange(listener: (busy: boolean) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** How long the intake has been busy without a break (0 when it is not). */
  busyForMs(): number {
    return this.isBusy ? Date.now() - this.busySince : 0;
  }

  /** Times the intake turned busy, and for how long in all (ms, the current spell included). */
  statistics(): { busy: boolean; pauses: number; busyMs: number; highWater: number; lowWater: number } {
    const current = this.isBusy ? Date.now() - this.busySince : 0;
    return { busy: this.isBusy, pauses: this.stats.pauses, busyMs: this.stats.busyMs + current, highWater: this.highWater, lowWater: this.lowWater };
  }

  private set(busy: boolean): void {
    this.isBusy = busy;
    if (busy) {
      this.stats.pauses++;
      this.busySince = Date.now();
    } else {
      this.stats.busyMs += Date.now() - this.busySince;
    }
    for (const listener of [...this.listeners]) {
      try {
        listener(busy);
      } catch {
        // A listener's failure must not stop the others, nor the write that moved the valve.
      }
    }
  }
}
