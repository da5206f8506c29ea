import { ChurnMap } from "./churn-map";
import { type Clock, type TimerHandle, decideAfterCatchUp } from "./clock";
import type { CommandEntry } from "./command-entry";
import type { CommandOptions } from "./command-input";
import { TethralError, errorMessage } from "./errors";
import type { ProtocolAdapter, SendOutcome } from "./ports/protocol";
import { type CommandStatus, type Device, type JsonValue, PRIORITY_RANK } from "./types";
import { checkJsonValue, LIMITS } from "./validation";

/** What the tracker needs from the hub: devices as they are now, and the adapters. */
export interface CommandHost {
  /** The device as adapters see it (a copy: only where it is handed to one). */
  device(id: string): Device | undefined;
  /** The protocol of a device that takes commands, without copying it; undefined for none. */
  protocolOf(id: string): string | undefined;
  adapter(protocol: string): ProtocolAdapter | undefined;
}

/** The tracker's side of a delivery: it owns statuses, events, writes and the round-trip figures. */
export interface DeliveryOwner {
  /** An attempt was answered: its round trip counts. */
  answered(e: CommandEntry): void;
  setStatus(e: CommandEntry, status: CommandStatus): void;
  finish(e: CommandEntry, status: CommandStatus, result: JsonValue | null, error: string | null): void;
}

interface DeviceQueue {
  waiting: CommandEntry[];
  inFlight: number;
}

/**
 * Gets commands to their devices: each device's queue (highest priority first), a few in flight
 * at a time, only while the device is reachable; each attempt bounded, answered or timed out, and
 * retried with exponential backoff and jitter. How a command ends is the tracker's business.
 */
export class CommandDelivery {
  private readonly queues = new ChurnMap<string, DeviceQueue>();
  /** Devices with commands waiting for them to become reachable. */
  private readonly blocked = new Set<string>();
  private sweepTimer: TimerHandle | null = null;
  private running = false;

  constructor(
    private readonly host: CommandHost,
    private readonly clock: Clock,
    private readonly options: CommandOptions,
    private readonly owner: DeliveryOwner,
  ) {}

  /** Starts sending what waits (once the adapters are up). */
  start(): void {
    this.running = true;
    for (const id of [...this.queues.keys()]) this.pump(id);
  }

  /** Stops sending; entries keep their places (their timers are the tracker's to stop). */
  halt(): void {
    this.running = false;
    if (this.sweepTimer !== null) this.clock.clearTimeout(this.sweepTimer);
    this.sweepTimer = null;
  }

  /** A protocol's adapter has started: its devices' waiting commands may go. */
  pumpProtocol(protocol: string): void {
    if (!this.running) return;
    for (const id of [...this.queues.keys()]) if (this.host.protocolOf(id) === protocol) this.pump(id);
  }

  /** The commands waiting for a device, in the order they will go; undefined when none ever did. */
  waiting(deviceId: string): readonly CommandEntry[] | undefined {
    return this.queues.get(deviceId)?.waiting;
  }

  get inFlight(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.inFlight;
    return n;
  }

  /** The device was removed: its queue goes before its commands end, so none is sent on the way. */
  forgetDevice(deviceId: string): void {
    this.queues.delete(deviceId);
    this.blocked.delete(deviceId);
  }

  /** Into the device's queue: by priority, then age; `front` puts a retry ahead of its peers. */
  enqueue(e: CommandEntry, front: boolean): void {
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

  /** After a restart, a command that was sent (and is queued again): it waits for its answer once more. */
  resumeSent(e: CommandEntry): void {
    const q = this.queues.get(e.row.deviceId)!;
    q.waiting.splice(q.waiting.indexOf(e), 1);
    q.inFlight++;
    e.holdsSlot = true;
    e.attemptAt = e.row.sentAt || this.clock.now();
    this.awaitAnswer(e);
  }

  /** The command ends: out of its queue, its slot free (its timers are stopped first). */
  drop(e: CommandEntry): void {
    const wasQueued = e.phase === "queued";
    this.release(e);
    if (wasQueued) {
      const q = this.queues.get(e.row.deviceId);
      const i = q ? q.waiting.indexOf(e) : -1;
      if (i >= 0) q!.waiting.splice(i, 1);
    }
  }

  /** Stops the answer, retry and hand-over timers (the expiry is the tracker's). */
  stopTimers(e: CommandEntry): void {
    if (e.timer !== null) this.clock.clearTimeout(e.timer);
    e.timer = null;
    // A decision under way is called off too (the entry finished, moved to another member, or stopped).
    e.deciding = false;
    this.clearDeadline(e);
  }

  /** Sends what the device's in-flight limit allows, or leaves the queue blocked until it is reachable. */
  pump(deviceId: string): void {
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

  markSent(e: CommandEntry): void {
    e.row.sentAt = this.clock.now();
    this.owner.setStatus(e, "sent");
  }

  private release(e: CommandEntry): void {
    if (!e.holdsSlot) return;
    e.holdsSlot = false;
    const q = this.queues.get(e.row.deviceId);
    if (q) q.inFlight--;
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

  private async attempt(e: CommandEntry, device: Device, adapter: ProtocolAdapter): Promise<void> {
    e.phase = "sending";
    e.row.attempts++;
    const seq = ++e.attemptSeq;
    e.attemptAt = this.clock.now();
    const current = () => e.phase === "sending" && e.attemptSeq === seq && this.running;
    let outcome: SendOutcome;
    let handed = false;
    let slotKept = false;
    try {
      // A request/response adapter says when the request has left, before the answer comes.
      // Called from the adapter's socket events: a throw here would reach no caller and end
      // the process. Marked again, as before there was this callback, when the send resolves.
      const handedOver = () => {
        if (handed || !current()) return;
        try {
          this.markSent(e);
          handed = true;
          // A one-way command ends once sent (CONTRACT: the device need not answer, an answer is
          // ignored): the request's answer, or its lack, is not waited for (until 2026-12-08 an
          // HTTP or CoAP device's silence timed it out, and an error answer failed it).
          // Its request is still open, so it keeps its place among the device's requests in
          // flight until the adapter is done with it (a queue of one-way commands must not open
          // them all at once on a small device).
          if (!e.expectResponse) {
            slotKept = e.holdsSlot;
            e.holdsSlot = false;
            this.owner.finish(e, "sent", null, null);
          }
        } catch {
          // Left unmarked: marked when the send resolves, where a throw is caught.
        }
      };
      const sent = Promise.resolve().then(() => adapter.send(device, { id: e.row.id, command: e.row.command, params: e.row.params }, e.timeoutMs, handedOver));
      if (!e.expectResponse) {
        void sent.then(
          () => this.slotFreed(e, slotKept),
          () => this.slotFreed(e, slotKept),
        );
      }
      outcome = checkOutcome(await this.withDeadline(e, sent, e.timeoutMs + 1000));
    } catch (err) {
      if (current()) this.attemptFailed(e, err);
      return;
    }
    // Cancelled, expired, answered, given up on or stopped while the adapter was busy.
    if (!current()) return;
    if (outcome.status === "answered") {
      this.owner.answered(e);
      if (!handed) this.markSent(e);
      if (outcome.ok) this.owner.finish(e, "succeeded", outcome.result ?? null, null);
      else this.owner.finish(e, "failed", null, String(outcome.error).slice(0, 1024));
      return;
    }
    if (!handed) this.markSent(e);
    if (outcome.status === "delivered") this.owner.setStatus(e, "delivered");
    if (!e.expectResponse) this.owner.finish(e, e.row.status, null, null);
    else this.awaitAnswer(e);
  }

  /** A one-way command's request has settled: the place it kept among the device's requests in flight is free (see attempt). */
  private slotFreed(e: CommandEntry, kept: boolean): void {
    if (!kept) return;
    const q = this.queues.get(e.row.deviceId);
    if (q && q.inFlight > 0) q.inFlight--;
    this.pump(e.row.deviceId);
  }

  /** The adapter's promise, or TIMEOUT after `ms` on the hub's clock (cleared on every path). */
  private withDeadline<T>(e: CommandEntry, work: Promise<T>, ms: number): Promise<T> {
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

  private clearDeadline(e: CommandEntry): void {
    if (e.deadlineTimer !== null) this.clock.clearTimeout(e.deadlineTimer);
    e.deadlineTimer = null;
  }

  private awaitAnswer(e: CommandEntry): void {
    e.phase = "awaiting";
    const dueAt = this.clock.now() + e.timeoutMs;
    e.timer = this.clock.setTimeout(() => {
      e.timer = null;
      e.deciding = true;
      // An answer that came in time, waiting in a loop held past the timeout, ends the command
      // first (see decideAfterCatchUp).
      decideAfterCatchUp(this.clock, dueAt, () => {
        if (!e.deciding) return;
        e.deciding = false;
        if (e.phase !== "awaiting" || !this.running || e.timer !== null) return;
        if (e.failures < e.retries) this.retryLater(e);
        else this.owner.finish(e, "timed_out", null, `no answer within ${e.timeoutMs / 1000} s`);
      });
    }, e.timeoutMs);
  }

  private attemptFailed(e: CommandEntry, err: unknown): void {
    if (e.phase === "done" || !this.running) return;
    const message = errorMessage(err);
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
    else if ((err as { code?: unknown })?.code === "TIMEOUT") this.owner.finish(e, "timed_out", null, message.slice(0, 1024));
    else this.owner.finish(e, "failed", null, `could not deliver: ${message}`.slice(0, 1024));
  }

  /** Holds the device's slot through an exponential, jittered backoff, then tries again. */
  private retryLater(e: CommandEntry): void {
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
}

/**
 * Sendable now: the adapter is up, and the device holds a connection (protocols that can tell)
 * or is not known to be offline (request/response protocols). A plugin's adapter that throws
 * here counts as unreachable: the throw must not reach whoever woke the queue (a device's
 * message, a flow's state change, an adapter's connect).
 */
function reachable(device: Device, adapter: ProtocolAdapter): boolean {
  try {
    if (adapter.health().status !== "ok") return false;
    const connected = adapter.isConnected(device.id);
    if (connected !== undefined) return connected;
    return device.status !== "offline";
  } catch {
    return false;
  }
}

/** A plugin's adapter may resolve with anything: only a SendOutcome counts. */
function checkOutcome(outcome: unknown): SendOutcome {
  const o = outcome as Partial<SendOutcome> | null;
  if (o && (o.status === "sent" || o.status === "delivered")) return o as SendOutcome;
  if (o && o.status === "answered" && typeof (o as { ok?: unknown }).ok === "boolean") {
    const answered = o as SendOutcome & { status: "answered" };
    if (!answered.ok) return answered;
    // A result is held to what a device's answer may carry on every protocol (256 KiB of JSON,
    // as an MQTT or WebSocket answer is): until 2026-12-08 an HTTP or CoAP device's larger answer
    // was stored whole.
    const problem = checkJsonValue(answered.result ?? null, "result", LIMITS.propertiesBytes);
    return problem ? { status: "answered", ok: false, error: `the device's answer was refused: ${problem.field} ${problem.message}` } : answered;
  }
  throw new TethralError("UNAVAILABLE", "the protocol adapter answered the send with something that is not a send outcome");
}
