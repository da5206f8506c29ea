import { ChurnMap } from "../core/churn-map";
import { TethralError } from "../core/errors";
import type { ProtocolCounters, SendOutcome } from "./types";

/**
 * Command writes an adapter has started and not yet seen through: each ends as `sent` when the
 * transport reports the bytes taken, as UNAVAILABLE when it reports an error, as TIMEOUT when it
 * says nothing in time, or as UNAVAILABLE for all at once when the adapter stops.
 */
export class PendingWrites {
  /** By a number of their own: a Set of them, churning in the old generation, kept them past their time (see ChurnMap). */
  private readonly pending = new ChurnMap<number, (err: Error) => void>();
  private nextKey = 0;

  constructor(private readonly counters: () => ProtocolCounters | null) {}

  /**
   * Starts a write with `write(done)`; `done(err)` is the transport's callback. `bytes` are
   * counted out on success; `timeoutMessage` and `failureMessage(err)` word the rejections.
   */
  write(
    bytes: number,
    timeoutMs: number,
    timeoutMessage: string,
    failureMessage: (err: Error) => string,
    write: (done: (err?: Error | null) => void) => void,
  ): Promise<SendOutcome> {
    return new Promise<SendOutcome>((resolve, reject) => {
      const key = this.nextKey++;
      const fail = (err: Error): void => {
        if (!this.pending.delete(key)) return;
        clearTimeout(timer);
        reject(err);
      };
      this.pending.set(key, fail);
      const timer = setTimeout(() => {
        const c = this.counters();
        if (c) c.errors++;
        fail(new TethralError("TIMEOUT", timeoutMessage));
      }, Math.max(1, timeoutMs));
      write((err) => {
        if (!this.pending.has(key)) return;
        const c = this.counters();
        if (err) {
          if (c) c.errors++;
          fail(new TethralError("UNAVAILABLE", failureMessage(err)));
          return;
        }
        this.pending.delete(key);
        clearTimeout(timer);
        if (c) {
          c.messagesOut++;
          c.bytesOut += bytes;
        }
        resolve({ status: "sent" });
      });
    });
  }

  /** Fails every write still waiting (the adapter stops). */
  rejectAll(message: string): void {
    for (const fail of [...this.pending.values()]) fail(new TethralError("UNAVAILABLE", message));
  }
}
