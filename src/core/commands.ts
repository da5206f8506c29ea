import type { Clock, TimerHandle } from "./clock";
import { type CommandAnswer, type CommandOptions, parseCommandRequest } from "./command-input";
import { CommandWriter } from "./command-writer";
import { TethralError, notFound } from "./errors";
import type { EventBus } from "./events";
import { newId } from "./ids";
import { isoOrNull, iso } from "./json";
import { LatencyWindow } from "./latency";
import { COMMAND_STATUSES, type Command, type CommandEventType, type CommandStatus, type Device, type JsonValue, PRIORITY_RANK } from "./types";
import type { ProtocolAdapter, SendOutcome } from "./ports/protocol";
import type { CommandRow, Store } from "./ports/store";

/** What the tracker needs from the hub: devices as they are now, and the adapters. */
export interface CommandHost {
  /** The device as adapters see it (a copy: only where it is handed to one). */
  device(id: string): Device | undefined;
  /** The protocol of a device that takes commands, without copying it; undefined for none. */
  protocolOf(id: string): string | undefined;
  adapter(protocol: string): ProtocolAdapter | undefined;
}

type Phase = "queued" | "sending" | "awaiting" | "retry-wait" | "done";

interface Entry {
  row: CommandRow;
  timeoutMs: number;
  retries: number;
  expectResponse: boolean;
  /** Attempts that failed while the device was reachable: these use up `retries`. */
  failures: number;
  phase: Phase;
  /** Whether the entry counts against its device's in-flight limit. */
  holdsSlot: boolean;
  /** When the current attempt was handed to the adapter: round-trip latency starts here. */
  attemptAt: number;
  timer: TimerHandle | null;
  expiryTimer: TimerHandle | null;
  /** Bounds an adapter's send that never settles. */
  deadlineTimer: TimerHandle | null;
  /** Counts attempts, so the outcome of an attempt given up on is not taken for a later one's. */
  attemptSeq: number;
  waiters: Array<{ resolve: (c: Command) => void; reject: (e: Error) => void }>;
}

interface DeviceQueue {
  waiting: Entry[];
  inFlight: number;
}

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
  private readonly live = new Map<string, Entry>();
  private readonly queues = new Map<string, DeviceQueue>();
  /** Finished commands, oldest first, for `get` without a database round trip. */
  private readonly finished = new Map<string, Command>();
  /** Devices with commands waiting for them to become reachable. */
  private readonly blocked = new Set<string>();
  private readonly counts = Object.fromEntries(COMMAND_STATUSES.map((s) => [s, 0])) as Record<CommandStatus, number>;
  private readonly latency = new LatencyWindow(4096);
  private lateResponses = 0;
  private unknownResponses = 0;
  private sweepTimer: TimerHandle | null = null;
  private running = false;
  private readonly writer: CommandWriter | null;

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
  }

  /** Loads the commands a previous run left pending (answers to them match from now on). */
  async load(): Promise<void> {
    if (!this.store) return;
    for (const row of await this.store.pendingCommands()) {
      if (this.host.protocolOf(row.deviceId) !== undefined && !this.live.has(row.id)) this.restore(row);
    }
  }

  /** Starts sending (once the adapters are up). */
  start(): void {
    this.running = true;
    for (const id of [...this.queues.keys()]) this.pump(id);
  }

  /**
   * Stops sending and timing, before the adapters stop: a send they abort on the way out is
   * not a failure of the command, which stays as stored (queued or sent) for the next start.
   */
  halt(): void {
    if (!this.running && this.sweepTimer === null && this.live.size === 0) return;
    this.running = false;
    if (this.sweepTimer !== null) this.clock.clearTimeout(this.sweepTimer);
    this.sweepTimer = null;
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
   * `wait`, resolves when it ends; otherwise as soon as it is queued.
   */
  async submit(deviceId: string, input: unknown): Promise<Command> {
    if (!this.running) throw new TethralError("UNAVAILABLE", "the hub is not running");
    const now = this.clock.now();
    const request = parseCommandRequest(input, now, this.options);
    if (typeof deviceId !== "string" || this.host.protocolOf(deviceId) === undefined) throw notFound("device", String(deviceId).slice(0, 128));
    const queue = this.queues.get(deviceId);
    if (queue && queue.waiting.length >= this.options.maxQueuedPerDevice) {
      throw new TethralError("UNAVAILABLE", `device "${deviceId}" already has ${queue.waiting.length} commands waiting`);
    }
    const row: CommandRow = {
      id: newId(),
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
    await this.store?.putCommand(row);
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
    if (request.supersede) this.supersede(e);
    // Waiting starts before the first send: an adapter may fail it at once.
    const done = request.wait ? this.whenDone(e, waitLimitMs(e, this.options)) : null;
    // Without wait the caller gets the command as it was acknowledged: queued, no attempt yet
    // (the first send may start at once, below, and finish later).
    const acknowledged = done ? null : toCommand(e);
    this.pump(deviceId);
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
      .sort((a, b) => descending(a.createdAt, b.createdAt) || descending(a.id, b.id))
      .slice(0, limit);
  }

  private latest(row: CommandRow): Command {
    const e = this.live.get(row.id);
    return e ? toCommand(e) : (this.finished.get(row.id) ?? rowToCommand(row));
  }

  /** Cancels a command that has not ended; a later answer is ignored. CONFLICT once it has ended. */
  async cancel(id: string): Promise<Command> {
    const e = this.live.get(id);
    if (e) return this.finish(e, "cancelled", null, "cancelled");
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
    if (e.row.status === "queued") this.markSent(e);
    if (answer.ok) this.finish(e, "succeeded", answer.result as JsonValue, null);
    else this.finish(e, "failed", null, answer.error);
    return true;
  }

  /** The device may be reachable now (connected, came online): send what waits for it. */
  kick(deviceId: string): void {
    if (this.queues.has(deviceId)) this.pump(deviceId);
  }

  /** A protocol's adapter has started: its devices' waiting commands may go. */
  kickProtocol(protocol: string): void {
    if (!this.running) return;
    for (const id of [...this.queues.keys()]) if (this.host.protocolOf(id) === protocol) this.pump(id);
  }

  /** The device was removed (its commands are gone from the store with it). */
  deviceRemoved(deviceId: string): void {
    this.writer?.forgetDevice(deviceId);
    // The queue goes first: finishing one command must not send the next to a device being removed.
    this.queues.delete(deviceId);
    this.blocked.delete(deviceId);
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
    let inFlight = 0;
    for (const q of this.queues.values()) inFlight += q.inFlight;
    const p = this.latency.percentiles();
    return {
      byStatus: { ...this.counts },
      pending: this.live.size,
      inFlight,
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

  // ── Queue ──────────────────────────────────────────────────────────────────────────────

  private track(row: CommandRow): Entry {
    const o = row.options as { timeoutMs?: number; retries?: number; expectResponse?: boolean; failures?: number };
    const e: Entry = {
      row,
      timeoutMs: o.timeoutMs ?? this.options.defaultTimeoutSec * 1000,
      retries: o.retries ?? 0,
      expectResponse: o.expectResponse ?? true,
      failures: o.failures ?? 0,
      phase: "queued",
      holdsSlot: false,
      attemptAt: 0,
      timer: null,
      expiryTimer: null,
      deadlineTimer: null,
      attemptSeq: 0,
      waiters: [],
    };
    this.live.set(row.id, e);
    if (row.expiresAt > 0) this.armExpiry(e);
    this.enqueue(e, false);
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
    if (row.status === "queued") return;
    const q = this.queues.get(row.deviceId)!;
    q.waiting.splice(q.waiting.indexOf(e), 1);
    q.inFlight++;
    e.holdsSlot = true;
    e.attemptAt = row.sentAt || this.clock.now();
    this.awaitAnswer(e);
  }

  /** Into the device's queue: by priority, then age; `front` puts a retry ahead of its peers. */
  private enqueue(e: Entry, front: boolean): void {
    let q = this.queues.get(e.row.deviceId);
    if (!q) this.queues.set(e.row.deviceId, (q = { waiting: [], inFlight: 0 }));
    e.phase = "queued";
    const rank = PRIORITY_RANK[e.row.priority];
    let i = q.waiting.length;
    while (i > 0) {
      const r = PRIORITY_RANK[q.waiting[i - 1]!.row.priority];
      if (r > rank || (r === rank && !front)) break;
      i--;
    }
    q.waiting.splice(i, 0, e);
  }

  private supersede(by: Entry): void {
    const q = this.queues.get(by.row.deviceId);
    if (!q) return;
    for (const e of [...q.waiting]) {
      if (e !== by && e.row.command === by.row.command && e.phase === "queued") {
        this.finish(e, "superseded", null, `superseded by ${by.row.id}`, true, by.row.id);
      }
    }
  }

  private pump(deviceId: string): void {
    const q = this.queues.get(deviceId);
    if (!q || !this.running) return;
    while (q.inFlight < this.options.maxInFlightPerDevice && q.waiting.length > 0) {
      const device = this.host.device(deviceId);
      if (!device) return;
      const adapter = this.host.adapter(device.protocol);
      if (!adapter || !reachable(device, adapter)) {
        this.block(deviceId);
        return;
      }
      const e = q.waiting.shift()!;
      q.inFlight++;
      e.holdsSlot = true;
      this.attempt(e, device, adapter).catch((err: unknown) => this.attemptFailed(e, err));
    }
    this.blocked.delete(deviceId);
    if (q.waiting.length === 0 && q.inFlight === 0) this.queues.delete(deviceId);
  }

  private release(e: Entry): void {
    if (!e.holdsSlot) return;
    e.holdsSlot = false;
    const q = this.queues.get(e.row.deviceId);
    if (q) q.inFlight--;
  }

  // ── Delivery ───────────────────────────────────────────────────────────────────────────

  private async attempt(e: Entry, device: Device, adapter: ProtocolAdapter): Promise<void> {
    e.phase = "sending";
    e.row.attempts++;
    const seq = ++e.attemptSeq;
    e.attemptAt = this.clock.now();
    const current = () => e.phase === "sending" && e.attemptSeq === seq && this.running;
    let outcome: SendOutcome;
    try {
      const sent = Promise.resolve().then(() => adapter.send(device, { id: e.row.id, command: e.row.command, params: e.row.params }, e.timeoutMs));
      outcome = checkOutcome(await this.withDeadline(e, sent, e.timeoutMs + 1000));
    } catch (err) {
      if (current()) this.attemptFailed(e, err);
      return;
    }
    // Cancelled, expired, answered, given up on or stopped while the adapter was busy.
    if (!current()) return;
    if (outcome.status === "answered") {
      this.answered(e);
      this.markSent(e);
      if (outcome.ok) this.finish(e, "succeeded", outcome.result ?? null, null);
      else this.finish(e, "failed", null, String(outcome.error).slice(0, 1024));
      return;
    }
    this.markSent(e);
    if (outcome.status === "delivered") this.setStatus(e, "delivered");
    if (!e.expectResponse) this.finish(e, e.row.status, null, null);
    else this.awaitAnswer(e);
  }

  /** The adapter's promise, or TIMEOUT after `ms` on the hub's clock (cleared on every path). */
  private withDeadline<T>(e: Entry, work: Promise<T>, ms: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      e.deadlineTimer = this.clock.setTimeout(() => {
        e.deadlineTimer = null;
        reject(new TethralError("TIMEOUT", `the adapter did not hand the command over within ${ms} ms`));
      }, ms);
      work.then(
        (v) => {
          this.clearDeadline(e);
          resolve(v);
        },
        (err: unknown) => {
          this.clearDeadline(e);
          reject(err);
        },
      );
    });
  }

  private clearDeadline(e: Entry): void {
    if (e.deadlineTimer !== null) this.clock.clearTimeout(e.deadlineTimer);
    e.deadlineTimer = null;
  }

  private markSent(e: Entry): void {
    e.row.sentAt = this.clock.now();
    this.setStatus(e, "sent");
  }

  private awaitAnswer(e: Entry): void {
    e.phase = "awaiting";
    e.timer = this.clock.setTimeout(() => {
      e.timer = null;
      if (e.phase !== "awaiting" || !this.running) return;
      if (e.failures < e.retries) this.retryLater(e);
      else this.finish(e, "timed_out", null, `no answer within ${e.timeoutMs / 1000} s`);
    }, e.timeoutMs);
  }

  private attemptFailed(e: Entry, err: unknown): void {
    if (e.phase === "done" || !this.running) return;
    const message = err instanceof Error ? err.message : String(err);
    const device = this.host.device(e.row.deviceId);
    if (!device) return;
    const adapter = this.host.adapter(device.protocol);
    if (!adapter || !reachable(device, adapter)) {
      // The device or its transport went away: wait for it without using up a retry.
      this.release(e);
      this.enqueue(e, true);
      this.block(e.row.deviceId);
      return;
    }
    if (e.failures < e.retries) this.retryLater(e);
    // A request/response protocol that heard nothing back: the device did not answer in time.
    else if ((err as { code?: unknown })?.code === "TIMEOUT") this.finish(e, "timed_out", null, message.slice(0, 1024));
    else this.finish(e, "failed", null, `could not deliver: ${message}`.slice(0, 1024));
  }

  /** Holds the device's slot through an exponential, jittered backoff, then tries again. */
  private retryLater(e: Entry): void {
    e.failures++;
    e.row.options = { ...e.row.options, failures: e.failures };
    e.phase = "retry-wait";
    const base = Math.min(this.options.retryMaxDelayMs, this.options.retryBaseDelayMs * 2 ** (e.failures - 1));
    const delay = base / 2 + Math.random() * (base / 2);
    e.timer = this.clock.setTimeout(() => {
      e.timer = null;
      if (e.phase !== "retry-wait" || !this.running) return;
      this.release(e);
      this.enqueue(e, true);
      this.pump(e.row.deviceId);
    }, delay);
  }

  // ── Status changes ─────────────────────────────────────────────────────────────────────

  private setStatus(e: Entry, status: CommandStatus): void {
    e.row.status = status;
    this.counts[status]++;
    this.writer?.mark(e.row);
    this.publish(e, `command.${status}` as CommandEventType);
  }

  private finish(e: Entry, status: CommandStatus, result: JsonValue | null, error: string | null, write = true, by?: string): Command {
    const wasQueued = e.phase === "queued";
    this.clearTimers(e);
    this.release(e);
    if (wasQueued) {
      const q = this.queues.get(e.row.deviceId);
      const i = q ? q.waiting.indexOf(e) : -1;
      if (i >= 0) q!.waiting.splice(i, 1);
    }
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
      const data = status === "superseded" ? { command, by: by! } : { command };
      this.events.publish(`command.${status}` as "command.failed", data, { deviceId: e.row.deviceId, source: "commands", priority, causeId: e.row.id });
    }
    for (const w of e.waiters.splice(0)) w.resolve(command);
    if (this.running) this.pump(e.row.deviceId);
    return command;
  }

  private clearTimers(e: Entry): void {
    if (e.timer !== null) this.clock.clearTimeout(e.timer);
    if (e.expiryTimer !== null) this.clock.clearTimeout(e.expiryTimer);
    e.timer = e.expiryTimer = null;
    this.clearDeadline(e);
  }

  private remember(command: Command): void {
    this.finished.set(command.id, command);
    if (this.finished.size > this.options.keepFinished) this.finished.delete(this.finished.keys().next().value!);
  }

  private publish(e: Entry, type: CommandEventType): void {
    this.events.publish(type as "command.sent", { command: toCommand(e) }, { deviceId: e.row.deviceId, source: "commands", causeId: e.row.id });
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
      timer = this.clock.setTimeout(() => {
        timer = null;
        const i = e.waiters.indexOf(waiter);
        if (i >= 0) e.waiters.splice(i, 1);
        resolve(toCommand(e));
      }, Math.min(limitMs, MAX_TIMER_MS));
    });
  }

  /**
   * Commands wait for a device that is not reachable. Connections and `device.online` wake it
   * at once; a sweep now and then catches what no event announces (a broker that came back).
   */
  private block(deviceId: string): void {
    this.blocked.add(deviceId);
    if (this.sweepTimer !== null || !this.running) return;
    this.sweepTimer = this.clock.setTimeout(() => {
      this.sweepTimer = null;
      if (!this.running) return;
      for (const id of [...this.blocked]) this.pump(id);
      if (this.blocked.size > 0) this.block(this.blocked.values().next().value!);
    }, this.options.sweepIntervalMs);
  }
}

/**
 * Sendable now: the adapter is up, and the device holds a connection (protocols that can tell)
 * or is not known to be offline (request/response protocols).
 */
function reachable(device: Device, adapter: ProtocolAdapter): boolean {
  if (adapter.health().status !== "ok") return false;
  const connected = adapter.isConnected(device.id);
  if (connected !== undefined) return connected;
  return device.status !== "offline";
}

const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * How long a caller with `wait` waits: every attempt's timeout and the backoffs between them,
 * plus a little. A device that is away longer leaves the command queued and the caller answered.
 */
function waitLimitMs(e: Entry, options: CommandOptions): number {
  const backoffs = Math.min(options.retryMaxDelayMs * e.retries, 5 * 60_000);
  return e.timeoutMs * (e.retries + 1) + backoffs + 1000;
}

/** A plugin's adapter may resolve with anything: only a SendOutcome counts. */
function checkOutcome(outcome: unknown): SendOutcome {
  const o = outcome as Partial<SendOutcome> | null;
  if (o && (o.status === "sent" || o.status === "delivered")) return o as SendOutcome;
  if (o && o.status === "answered" && typeof (o as { ok?: unknown }).ok === "boolean") return o as SendOutcome;
  throw new TethralError("UNAVAILABLE", "the protocol adapter answered the send with something that is not a send outcome");
}

function toCommand(e: Entry): Command {
  return rowToCommand(e.row);
}

export function rowToCommand(row: CommandRow): Command {
  const o = row.options as { timeoutMs?: number; retries?: number; expectResponse?: boolean };
  return {
    id: row.id,
    deviceId: row.deviceId,
    command: row.command,
    params: row.params,
    status: row.status,
    attempts: row.attempts,
    priority: row.priority,
    createdAt: iso(row.createdAt),
    sentAt: isoOrNull(row.sentAt),
    completedAt: isoOrNull(row.completedAt),
    expiresAt: isoOrNull(row.expiresAt),
    result: (row.result ?? null) as JsonValue | null,
    error: row.error,
    expectResponse: o.expectResponse ?? true,
    timeout: (o.timeoutMs ?? 0) / 1000,
    retries: o.retries ?? 0,
  };
}

/** For a newest-first sort of ISO times and ids: compared as the store compares them, not by locale. */
function descending(a: string, b: string): number {
  return a < b ? 1 : a > b ? -1 : 0;
}
