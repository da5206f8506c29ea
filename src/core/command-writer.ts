import { ChurnMap } from "./churn-map";
import { isFenced } from "./ports/cluster";
import { errorMessage } from "./errors";
import type { Clock, TimerHandle } from "./clock";
import type { CommandRow, Store } from "./ports/store";

const MAX_ROWS_PER_WRITE = 500;
/** Status changes that come close together (sent, then the answer) share one write. */
const COALESCE_MS = 20;

/**
 * Writes command status changes to the store behind the tracker: one transaction at a time, and only
 * a command's newest row (a command that goes queued → sent → succeeded between two writes is
 * written once). A failed write is kept and tried again later, so a finished command is not
 * sent again after a restart merely because the database was briefly away.
 */
export class CommandWriter {
  private readonly dirty = new ChurnMap<string, CommandRow>();
  /** Devices being deleted: their rows wait here instead of being written (see holdDevice). */
  private readonly held = new Map<string, CommandRow[]>();
  private timer: TimerHandle | null = null;
  private running: Promise<void> | null = null;
  private failures = 0;
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly warn: (message: string) => void,
  ) {}

  /** Queues the command's current row (copied now: the tracker keeps changing its own). */
  mark(row: CommandRow): void {
    const held = this.held.get(row.deviceId);
    if (held) {
      held.push({ ...row });
      return;
    }
    this.dirty.set(row.id, { ...row });
    this.schedule(COALESCE_MS);
  }

  /** Drops waiting writes of a device the store has just deleted. */
  forgetDevice(deviceId: string): void {
    this.held.delete(deviceId);
    for (const [id, row] of this.dirty) if (row.deviceId === deviceId) this.dirty.delete(id);
  }

  /**
   * Holds back a device's rows and waits for the write in flight, so nothing of the device is
   * written after the delete that follows. `resume()` writes them after all (the delete failed).
   */
  async holdDevice(deviceId: string): Promise<{ resume(): void }> {
    const rows: CommandRow[] = [];
    for (const [id, row] of this.dirty) {
      if (row.deviceId !== deviceId) continue;
      rows.push(row);
      this.dirty.delete(id);
    }
    this.held.set(deviceId, rows);
    while (this.running) await this.running.catch(() => undefined);
    return {
      resume: () => {
        const back = this.held.get(deviceId);
        this.held.delete(deviceId);
        for (const row of back ?? []) this.dirty.set(row.id, row);
        if (this.dirty.size > 0) this.schedule(COALESCE_MS);
      },
    };
  }

  get pending(): number {
    return this.dirty.size;
  }

  private schedule(delayMs: number): void {
    if (this.stopped || this.timer !== null || this.running) return;
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      void this.flush();
    }, delayMs);
  }

  /**
   * Writes what waits now, and whether the rows of `ids` are stored: false when one is still
   * waiting (its write failed, and is tried again later). For answers that must not be undone by
   * a crash: a cancel, a supersede.
   */
  async written(ids: readonly string[]): Promise<boolean> {
    await this.flush();
    return ids.every((id) => !this.dirty.has(id));
  }

  /** Writes everything waiting now; resolves when done (failures stay queued). */
  async flush(): Promise<void> {
    while (this.running) await this.running;
    if (this.dirty.size === 0) return;
    this.running = this.writeAll();
    try {
      await this.running;
    } finally {
      this.running = null;
    }
    if (this.dirty.size > 0) this.schedule(this.failures > 0 ? Math.min(30_000, 250 * 2 ** Math.min(this.failures, 7)) : COALESCE_MS);
  }

  private async writeAll(): Promise<void> {
    const rows = [...this.dirty.values()];
    this.dirty.clear();
    for (let i = 0; i < rows.length; i += MAX_ROWS_PER_WRITE) {
      const chunk = rows.slice(i, i + MAX_ROWS_PER_WRITE);
      try {
        await this.store.putCommands(chunk);
        this.failures = 0;
      } catch (err) {
        if (isFenced(err) && err.deviceIds.length > 0) {
          // Cluster mode: those devices are another member's now, which loaded their commands as
          // stored; the rest are written again at once.
          const moved = new Set(err.deviceIds);
          for (const row of rows.slice(i)) if (!moved.has(row.deviceId) && !this.dirty.has(row.id)) this.dirty.set(row.id, row);
          return;
        }
        this.failures++;
        // Keep these rows and the unwritten rest, unless a newer row of the same command came meanwhile.
        for (const row of rows.slice(i)) if (!this.dirty.has(row.id)) this.dirty.set(row.id, row);
        if (this.failures === 1) this.warn(`could not write command status: ${errorMessage(err)}`);
        return;
      }
    }
  }

  /** Writes what waits, then stops retrying. */
  async stop(): Promise<void> {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    await this.flush();
    this.stopped = true;
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
  }
}
