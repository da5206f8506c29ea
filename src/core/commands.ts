import { ChurnMap } from "./churn-map";
import { type Clock, type TimerHandle, decideAfterCatchUp } from "./clock";
import { CommandDelivery, type CommandHost } from "./command-delivery";
import { type CommandEntry as Entry, MAX_TIMER_MS, newEntry, newestFirst, rowToCommand, toCommand, waitLimitMs } from "./command-entry";
import { type CommandAnswer, type CommandOptions, parseCommandRequest } from "./command-input";
import { CommandWriter } from "./command-writer";
import { TethralError, isTethralError, notFound } from "./errors";
import type { EventBus } from "./events";
import { newTimeId } from "./ids";
import { LatencyWindow } from "./latency";
import { COMMAND_STATUSES, type Command, type CommandEventType, type CommandStatus, type EventMap, type JsonValue } from "./types";
import { plainConstructor } from "./plain";
import type { CommandRow, Store } from "./ports/store";

export type { CommandHost } from "./command-delivery";

export interface CommandStatistics {
  /** Commands that reached each status since the hub started. */
  byStatus: Record<CommandStatus, number>;
  pending: number;
  inFlight: number;
  /** Answers that came after the command had ended, or twice. */
  lateResponses: number;
  /** Answers naming no command the hub knows, or one of another device. */
  unknownResponses: number;
  latencyMs: { p50: number | null; p95: number | null; p99: number | null; samples: number };
  unwritten: number;
}

const FINAL_STATUSES: ReadonlySet<CommandStatus> = new Set(["succeeded", "failed", "timed_out", "expired", "superseded", "cancelled"]);

/**
 * Commands to devices (CONTRACT §1): every command is written to the store before it is
 * acknowledged, waits in its device's queue (highest priority first) until the device is
 * reachable, is sent a few at a time per device, answered or timed out, retried with
 * exponential backoff and jitter, and expires. Every status change is an event and is written
 * behind. Pending commands are loaded again after a restart.
 */
export class CommandTracker {
  private readonly live = new ChurnMap<string, Entry>();
  /** Finished commands, oldest first, for `get` without a database round trip. */
  private readonly finished = new Map<string, Command>();
  private readonly counts = Object.fromEntries(COMMAND_STATUSES.map((s) => [s, 0])) as Record<CommandStatus, number>;
  private readonly latency = new LatencyWindow(4096);
  private lateResponses = 0;
  private unknownResponses = 0;
  private running = false;
  private readonly writer: CommandWriter | null;
  /** Per device, commands accepted and still being written (see submit). */
  private readonly writing = new Map<string, number>();
  private readonly delivery: CommandDelivery;

  constructor(
    private readonly host: CommandHost,
    private readonly events: EventBus,
    private readonly clock: Clock,
    private readonly store: Store | null,
    private readonly options: CommandOptions,
    warn: (message: string) => void,
    /** Told each answered command's round trip (sent to answer), for the metrics. */
    private readonly onRoundTrip: (ms: number) => void = () => undefined,
  ) {
    this.writer = store ? new CommandWriter(store, clock, warn) : null;
    this.delivery = new CommandDelivery(host, clock, options, {
      answered: (e) => this.answered(e),
      setStatus: (e, status) => this.setStatus(e, status),
      finish: (e, status, result, error) => this.finish(e, status, result, error),
    });
  }

  /** Loads the commands a previous run left pending (answers to them match from now on). */
  async load(): Promise<void> {
    if (!this.store) return;
    for (const row of await this.store.pendingCommands()) {
      if (this.host.protocolOf(row.deviceId) !== undefined && !this.live.has(row.id)) this.restore(row);
    }
  }

  /**
   * Cluster mode: loads the pending commands of the devices `mine` selects (a partition this
   * member has just taken over) and sends the queued ones; a `sent` one waits for its answer or
   * times out, as after a restart.
   */
  async loadWhere(mine: (deviceId: string) => boolean): Promise<void> {
    if (!this.store) return;
    const rows = await this.store.pendingCommands();
    for (const row of rows) {
      if (mine(row.deviceId) && this.host.protocolOf(row.deviceId) !== undefined && !this.live.has(row.id)) this.restore(row);
    }
    if (this.running) for (const id of new Set(rows.map((r) => r.deviceId))) if (mine(id)) this.delivery.pump(id);
  }

  /**
   * Cluster mode, before a clean hand-over: nothing more is sent to the devices `gone` selects,
   * and sends already with an adapter are waited for (at most `limitMs`), so their `sent` is
   * among the status writes flushed next and the new owner does not send them again.
   */
  async quiesce(gone: (deviceId: string) => boolean, limitMs: number): Promise<void> {
    const theirs = [...this.live.values()].filter((e) => gone(e.row.deviceId));
    for (const id of new Set(theirs.map((e) => e.row.deviceId))) this.delivery.forgetDevice(id);
    const end = Date.now() + limitMs;
    while (theirs.some((e) => e.phase === "sending") && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 10));
  }

  /**
   * Cluster mode: the devices `gone` selects are another member's now. Their commands leave this
   * tracker as stored (the new owner loads them); whoever waits here is told they moved. Their
   * status writes must have been flushed first (a clean hand-over) or are fenced (a lost lease).
   */
  release(gone: (deviceId: string) => boolean): void {
    const moved = new TethralError("UNAVAILABLE", "the device moved to another cluster member before the command ended");
    for (const e of [...this.live.values()]) {
      if (!gone(e.row.deviceId)) continue;
      this.clearTimers(e);
      this.delivery.forgetDevice(e.row.deviceId);
      this.writer?.forgetDevice(e.row.deviceId);
      this.live.delete(e.row.id);
      for (const w of e.waiters.splice(0)) w.reject(moved);
    }
  }

  /** Starts sending (once the adapters are up). */
  start(): void {
    this.running = true;
    this.delivery.start();
  }

  /**
   * Stops sending and timing, before the adapters stop: a send they abort on the way out is
   * not a failure of the command, which stays as stored (queued or sent) for the next start.
   */
  halt(): void {
    this.running = false;
    this.delivery.halt();
    if (this.live.size === 0) return;
    const stopped = new TethralError("UNAVAILABLE", "the hub stopped before the command ended");
    for (const e of this.live.values()) {
      this.clearTimers(e);
      for (const w of e.waiters.splice(0)) w.reject(stopped);
    }
  }

  /** `halt()`, then writes every status change still waiting. */
  async stop(): Promise<void> {
    this.halt();
    await this.writer?.stop();
  }

  /**
   * Queues a command (written to the store first: once this resolves it is not lost). With
   * `wait`, resolves when it ends; otherwise as soon as it is queued. `id`: the id a cluster
   * member made for it where the request came in (see Hub.sendCommand). `again`: the request is
   * asked again (its first owner's answer lost): a command of that id that is here or stored
   * already is this request, and is answered as it is now.
   */
  async submit(deviceId: string, input: unknown, id?: string, again = false): Promise<Command> {
    if (!this.running) throw new TethralError("UNAVAILABLE", "the hub is not running");
    const now = this.clock.now();
    const request = parseCommandRequest(input, now, this.options);
    if (typeof deviceId !== "string" || this.host.protocolOf(deviceId) === undefined) throw notFound("device", String(deviceId).slice(0, 128));
    if (id !== undefined && again) {
      const before = await this.get(id).catch((err: unknown) => {
        if (isTethralError(err) && err.code === "NOT_FOUND") return null;
        throw err;
      });
      if (before !== null) {
        if (before.deviceId !== deviceId) throw new TethralError("CONFLICT", `command ${id} is another device's`);
        return request.wait ? this.wait(id) : before;
      }
    }
    // Commands being written count as waiting: requests that come together all pass a check made
    // before their writes (until 2026-12-08 64 at a time put 1,011 in a queue of 1,000).
    const writing = this.writing.get(deviceId) ?? 0;
    const waitingNow = (this.delivery.waiting(deviceId)?.length ?? 0) + writing;
    if (waitingNow >= this.options.maxQueuedPerDevice) {
      throw new TethralError("UNAVAILABLE", `device "${deviceId}" already has ${waitingNow} commands waiting`);
    }
    const row: CommandRow = {
      id: id ?? newTimeId(now),
      deviceId,
      command: request.command,
      params: request.params,
      status: "queued",
      attempts: 0,
      priority: request.priority,
      createdAt: now,
      sentAt: 0,
      completedAt: 0,
      expiresAt: request.expiresAt,
      result: null,
      error: null,
      options: { timeoutMs: request.timeoutMs, retries: request.retries, expectResponse: request.expectResponse, failures: 0 },
    };
    // Counted as waiting from the check above (no await between) until it is tracked below.
    this.writing.set(deviceId, writing + 1);
    try {
      await this.store?.putCommand(row);
    } finally {
      const left = (this.writing.get(deviceId) ?? 1) - 1;
      if (left > 0) this.writing.set(deviceId, left);
      else this.writing.delete(deviceId);
    }
    if (this.host.protocolOf(deviceId) === undefined) {
      // Removed while the command was written: its row must not outlive the device.
      await this.store?.deleteCommand(row.id).catch(() => undefined);
      throw notFound("device", deviceId);
    }
    // Stopped while it was written: it is stored as queued, and the next start sends it.
    if (!this.running) throw new TethralError("UNAVAILABLE", "the hub stopped; the command is kept and sent after the next start");
    const e = this.track(row);
    this.counts.queued++;
    this.publish(e, "command.queued");
    const superseded = request.supersede ? this.supersede(e) : [];
    // The commands it superseded are stored so before it is answered, and before it is sent: a
    // crash would otherwise bring them back queued, and send them (until 2026-12-08). The new
    // command is stored and queued already, so a failed write does not refuse it: the rows are
    // written when the database takes them.
    if (superseded.length > 0) await this.writer?.written(superseded);
    // Waiting starts before the first send: an adapter may fail it at once.
    const done = request.wait ? this.whenDone(e, waitLimitMs(e, this.options)) : null;
    // Without wait the caller gets the command as it was acknowledged: queued, no attempt yet
    // (the first send may start at once, below, and finish later).
    const acknowledged = done ? null : toCommand(e);
    this.delivery.pump(deviceId);
    return done ?? acknowledged!;
  }


  /**
   * Resolves with the command once it has ended (at once if it has), or with it as it is after
   * `limitMs` (default: as long as its attempts can take) — a command for a device that stays
   * away keeps waiting in its queue, but its caller does not.
   */
  async wait(id: string, limitMs?: number): Promise<Command> {
    const e = this.live.get(id);
    if (e) return this.whenDone(e, limitMs ?? waitLimitMs(e, this.options));
    return this.get(id);
  }

  /** A command by id, from memory, or from the store for older ones. */
  async get(id: string): Promise<Command> {
    const e = this.live.get(id);
    if (e) return toCommand(e);
    const done = this.finished.get(id);
    if (done) return done;
    const row = typeof id === "string" && id.length <= 128 ? await this.store?.getCommand(id) : null;
    if (!row) throw notFound("command", String(id).slice(0, 128));
    return rowToCommand(row);
  }

  /** Commands not ended yet, of one device or all, oldest first. */
  pending(deviceId?: string): Command[] {
    const out: Command[] = [];
    for (const e of this.live.values()) if (deviceId === undefined || e.row.deviceId === deviceId) out.push(toCommand(e));
    return out;
  }

  /**
   * A device's commands, newest first, at most `limit`, only `statuses` when given: from the
   * store (finished ones kept as long as its retention says), or from memory without one or
   * while it cannot answer. Memory wins over a row whose status is still being written.
   */
  async ofDevice(deviceId: string, statuses: readonly CommandStatus[] | null, limit: number): Promise<Command[]> {
    const wanted = (c: Command) => statuses === null || statuses.includes(c.status);
    if (this.store) {
      try {
        await this.writer?.flush();
        const rows = await this.store.deviceCommands(deviceId, statuses, limit);
        return rows.map((row) => this.latest(row)).filter(wanted);
      } catch {
        // Unreachable: what memory holds is the best answer there is.
      }
    }
    const out: Command[] = [];
    for (const e of this.live.values()) if (e.row.deviceId === deviceId) out.push(toCommand(e));
    for (const c of this.finished.values()) if (c.deviceId === deviceId) out.push(c);
    return out
      .filter(wanted)
      .sort(newestFirst)
      .slice(0, limit);
  }

  private latest(row: CommandRow): Command {
    const e = this.live.get(row.id);
    return e ? toCommand(e) : (this.finished.get(row.id) ?? rowToCommand(row));
  }

  /** Cancels a command that has not ended; a later answer is ignored. CONFLICT once it has ended. */
  async cancel(id: string): Promise<Command> {
    const e = this.live.get(id);
    if (e) {
      const cancelled = this.finish(e, "cancelled", null, "cancelled");
      // Stored before it is answered: a crash would otherwise bring it back queued, and send it.
      // UNAVAILABLE when the database cannot take it yet: it holds here and is written when it can be.
      if (this.writer && !(await this.writer.written([id]))) {
        throw new TethralError("UNAVAILABLE", "the command is cancelled here, but the database could not store that yet: it is written as soon as it can be");
      }
      return cancelled;
    }
    const done = await this.get(id);
    throw new TethralError("CONFLICT", `command ${id} has already ended (${done.status})`);
  }

  /** A device's answer. Returns false when it matched no waiting command (counted). */
  answer(deviceId: string, answer: CommandAnswer): boolean {
    const e = this.live.get(answer.id);
    if (!e || e.row.deviceId !== deviceId) {
      if (this.finished.get(answer.id)?.deviceId === deviceId) this.lateResponses++;
      else this.unknownResponses++;
      return false;
    }
    if (e.row.attempts === 0) {
      // Never sent: the device cannot be answering it.
      this.unknownResponses++;
      return false;
    }
    this.answered(e);
    if (e.row.status === "queued") this.delivery.markSent(e);
    if (answer.ok) this.finish(e, "succeeded", answer.result as JsonValue, null);
    else this.finish(e, "failed", null, answer.error);
    return true;
  }

  /** The device may be reachable now (connected, came online): send what waits for it. */
  kick(deviceId: string): void {
    this.delivery.pump(deviceId);
  }

  /** A protocol's adapter has started: its devices' waiting commands may go. */
  kickProtocol(protocol: string): void {
    this.delivery.pumpProtocol(protocol);
  }

  /** The device was removed (its commands are gone from the store with it). */
  deviceRemoved(deviceId: string): void {
    this.writer?.forgetDevice(deviceId);
    // The queue goes first: finishing one command must not send the next to a device being removed.
    this.delivery.forgetDevice(deviceId);
    for (const e of [...this.live.values()]) {
      if (e.row.deviceId === deviceId) this.finish(e, "cancelled", null, "device removed", false);
    }
  }

  /**
   * Before a device's rows are deleted: its status writes are held back, and the write in
   * flight is waited for, so none lands after the delete. `resume` undoes it when the delete fails.
   */
  async holdDevice(deviceId: string): Promise<{ resume(): void }> {
    if (!this.writer) return { resume: () => undefined };
    return this.writer.holdDevice(deviceId);
  }

  private answered(e: Entry): void {
    const ms = this.clock.now() - e.attemptAt;
    this.latency.add(ms);
    this.onRoundTrip(ms);
  }

  statistics(): CommandStatistics {
    const p = this.latency.percentiles();
    return {
      byStatus: { ...this.counts },
      pending: this.live.size,
      inFlight: this.delivery.inFlight,
      lateResponses: this.lateResponses,
      unknownResponses: this.unknownResponses,
      latencyMs: { p50: p.p50, p95: p.p95, p99: p.p99, samples: p.samples },
      unwritten: this.writer?.pending ?? 0,
    };
  }

  /** Writes every waiting status change now. */
  async flush(): Promise<void> {
    await this.writer?.flush();
  }

  // ── Entries ────────────────────────────────────────────────────────────────────────────

  private track(row: CommandRow): Entry {
    const e = newEntry(row, this.options);
    this.live.set(row.id, e);
    if (row.expiresAt > 0) this.armExpiry(e);
    this.delivery.enqueue(e, false);
    return e;
  }

  /** Timers take at most 2^31-1 ms: a far expiry is reached in steps. */
  private armExpiry(e: Entry): void {
    const left = e.row.expiresAt - this.clock.now();
    e.expiryTimer = this.clock.setTimeout(() => {
      e.expiryTimer = null;
      if (e.phase === "done" || !this.running) return;
      if (this.clock.now() < e.row.expiresAt) this.armExpiry(e);
      else this.finish(e, "expired", null, "expired before it ended");
    }, Math.min(Math.max(0, left), MAX_TIMER_MS));
  }

  /** After a restart: queued ones wait again; sent ones wait for their answer once more. */
  private restore(row: CommandRow): void {
    const e = this.track(row);
    if (row.status !== "queued") this.delivery.resumeSent(e);
  }

  /** Ends the device's queued commands of the same name as superseded by `by`; their ids. */
  private supersede(by: Entry): string[] {
    const waiting = this.delivery.waiting(by.row.deviceId);
    if (!waiting) return [];
    const ids: string[] = [];
    for (const e of [...waiting]) {
      if (e !== by && e.row.command === by.row.command && e.phase === "queued") {
        this.finish(e, "superseded", null, `superseded by ${by.row.id}`, true, by.row.id);
        ids.push(e.row.id);
      }
    }
    return ids;
  }

  // ── Status changes ─────────────────────────────────────────────────────────────────────

  private setStatus(e: Entry, status: CommandStatus): void {
    e.row.status = status;
    this.counts[status]++;
    this.writer?.mark(e.row);
    this.publish(e, `command.${status}`);
  }

  private finish(e: Entry, status: CommandStatus, result: JsonValue | null, error: string | null, write = true, by?: string): Command {
    this.clearTimers(e);
    this.delivery.drop(e);
    e.phase = "done";
    e.row.completedAt = this.clock.now();
    e.row.result = result;
    e.row.error = error;
    this.live.delete(e.row.id);
    const final = FINAL_STATUSES.has(status);
    e.row.status = status;
    // A one-way command ends at sent or delivered, already counted when it got there.
    if (final) this.counts[status]++;
    if (write) this.writer?.mark(e.row);
    const command = toCommand(e);
    this.remember(command);
    if (final) {
      const priority = status === "failed" || status === "timed_out" || status === "expired" ? "high" : "normal";
      const options = { deviceId: e.row.deviceId, source: "commands", priority, causeId: e.row.id } as const;
      if (status === "superseded") this.events.publish("command.superseded", new SupersededData(command, by!), options);
      else this.events.publish(`command.${status}`, new CommandData(command), options);
    }
    for (const w of e.waiters.splice(0)) w.resolve(command);
    if (this.running) this.delivery.pump(e.row.deviceId);
    return command;
  }

  private clearTimers(e: Entry): void {
    if (e.expiryTimer !== null) this.clock.clearTimeout(e.expiryTimer);
    e.expiryTimer = null;
    this.delivery.stopTimers(e);
  }

  private remember(command: Command): void {
    this.finished.set(command.id, command);
    if (this.finished.size > this.options.keepFinished) this.finished.delete(this.finished.keys().next().value!);
  }

  private publish(e: Entry, type: CommandEventType): void {
    this.events.publish(type, new CommandData(toCommand(e)), { deviceId: e.row.deviceId, source: "commands", causeId: e.row.id });
  }

  private whenDone(e: Entry, limitMs: number): Promise<Command> {
    return new Promise((resolve, reject) => {
      let timer: TimerHandle | null = null;
      const waiter = {
        resolve: (c: Command) => {
          if (timer !== null) this.clock.clearTimeout(timer);
          resolve(c);
        },
        reject: (err: Error) => {
          if (timer !== null) this.clock.clearTimeout(timer);
          reject(err);
        },
      };
      e.waiters.push(waiter);
      const waitMs = Math.min(limitMs, MAX_TIMER_MS);
      const dueAt = this.clock.now() + waitMs;
      timer = this.clock.setTimeout(() => {
        timer = null;
        // The command as it stands once what came in time is in (see decideAfterCatchUp).
        decideAfterCatchUp(this.clock, dueAt, () => {
          const i = e.waiters.indexOf(waiter);
          if (i < 0) return;
          e.waiters.splice(i, 1);
          resolve(toCommand(e));
        });
      }, waitMs);
    });
  }
}

/** What command events carry, made by constructors, not literals (see plain.ts). */
const CommandData = plainConstructor(function (this: { command: Command }, command: Command) {
  this.command = command;
});
const SupersededData = plainConstructor(function (this: EventMap["command.superseded"], command: Command, by: string) {
  this.command = command;
  this.by = by;
});
