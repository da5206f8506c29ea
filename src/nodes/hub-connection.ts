import type { Hub } from "../core";
import { TethralError, errorMessage } from "../core";
import type { HubStatus } from "./types";

/**
 * The life of the one hub a tethral-hub node holds, kept apart from Node-RED so it can be
 * reasoned about alone. The hub is made and started on the first `acquire()`; concurrent
 * callers share that start; a failed start is reported and tried again on the next call.
 * After `close()` the hub is stopped and every later `acquire()` is refused.
 */
export class HubConnection {
  private hub: Hub | null = null;
  private starting: Promise<Hub> | null = null;
  private closing: Promise<void> | null = null;
  private current: HubStatus = { state: "idle" };
  private readonly listeners = new Set<(status: HubStatus) => void>();

  /** `create` makes the hub; it may throw (an invalid configuration), which fails `acquire()`. */
  constructor(private readonly create: () => Hub) {}

  get status(): HubStatus {
    return this.current;
  }

  /**
   * The hub while it is running, at once: a status listener told "running" sets up on it before
   * anyone awaiting `acquire()` goes on, so a subscriber misses nothing that call then does.
   */
  get runningHub(): Hub | null {
    return this.current.state === "running" && this.hub?.isRunning ? this.hub : null;
  }

  get closed(): boolean {
    return this.closing !== null;
  }

  acquire(): Promise<Hub> {
    if (this.closing) return Promise.reject(closedError());
    if (this.hub?.isRunning && !this.starting) return Promise.resolve(this.hub);
    this.starting ??= this.start().finally(() => {
      this.starting = null;
    });
    return this.starting;
  }

  /** Calls `listener` on every change of state (not now); returns the function that unsubscribes. */
  onChange(listener: (status: HubStatus) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Stops the hub (after a start in progress settles) and drops every listener. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async start(): Promise<Hub> {
    this.set({ state: "starting" });
    let hub: Hub;
    try {
      // A hub starts once: one that was stopped (by someone else) is replaced by a new one.
      if (this.hub && !this.hub.isRunning) this.hub = null;
      hub = this.hub ??= this.create();
      await hub.start();
    } catch (err) {
      // A hub whose start failed part-way may hold timers: stop it before forgetting it.
      const failed = this.hub;
      this.hub = null;
      await failed?.stop().catch(() => undefined);
      this.set({ state: "error", error: errorMessage(err) });
      throw err;
    }
    // close() was called while the hub started: it stops the hub once this start settles.
    if (this.closing) throw closedError();
    this.set({ state: "running" });
    return hub;
  }

  private async shutdown(): Promise<void> {
    try {
      if (this.starting) await this.starting.catch(() => undefined);
      const hub = this.hub;
      this.hub = null;
      if (hub) {
        this.set({ state: "stopping" });
        await hub.stop();
      }
      this.set({ state: "stopped" });
    } catch (err) {
      this.set({ state: "error", error: errorMessage(err) });
      throw err;
    } finally {
      this.listeners.clear();
    }
  }

  private set(status: HubStatus): void {
    this.current = status;
    for (const listener of [...this.listeners]) listener(status);
  }
}

function closedError(): TethralError {
  return new TethralError("UNAVAILABLE", "the Tethral hub node has been closed (redeployed or removed)");
}
