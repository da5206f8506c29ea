import type { TimerHandle } from "./clock";
import type { CommandOptions } from "./command-input";
import { iso, isoOrNull } from "./json";
import { plainConstructor } from "./plain";
import type { CommandRow } from "./ports/store";
import type { Command, JsonValue } from "./types";

/**
 * A command as the tracker holds it while it has not ended (its stored row and how far its
 * delivery got), and the public `Command` made from a row.
 */

export type Phase = "queued" | "sending" | "awaiting" | "retry-wait" | "done";

export interface CommandEntry {
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
  /** Between the answer timer and its decision (see awaitAnswer); cleared with the timers. */
  deciding: boolean;
  /** Counts attempts, so the outcome of an attempt given up on is not taken for a later one's. */
  attemptSeq: number;
  waiters: Array<{ resolve: (c: Command) => void; reject: (e: Error) => void }>;
}

/** What a row's options keep of the request (and, after a restart, of the failures so far). */
interface RowOptions {
  timeoutMs?: number;
  retries?: number;
  expectResponse?: boolean;
  failures?: number;
}

/** A new entry for a stored row, not yet in any queue. */
export function newEntry(row: CommandRow, options: CommandOptions): CommandEntry {
  const o = row.options as RowOptions;
  return {
    row,
    timeoutMs: o.timeoutMs ?? options.defaultTimeoutSec * 1000,
    retries: o.retries ?? 0,
    expectResponse: o.expectResponse ?? true,
    failures: o.failures ?? 0,
    phase: "queued",
    holdsSlot: false,
    attemptAt: 0,
    timer: null,
    expiryTimer: null,
    deadlineTimer: null,
    deciding: false,
    attemptSeq: 0,
    waiters: [],
  };
}

export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * How long a caller with `wait` waits: as long as every attempt and the backoffs between them
 * can take, plus a second. A device that is away longer leaves the command queued and the caller
 * answered.
 */
export function waitLimitMs(e: CommandEntry, options: CommandOptions): number {
  // The k-th retry waits at most min(max, base × 2^(k-1)) (see CommandDelivery.retryLater): one
  // retry costs the caller a second at most by default, not the 30 s it once counted for each.
  let backoffs = 0;
  for (let k = 1; k <= e.retries && backoffs < MAX_BACKOFFS_MS; k++) {
    backoffs += Math.min(options.retryMaxDelayMs, options.retryBaseDelayMs * 2 ** (k - 1));
  }
  // An attempt: the hand-over (a request/response protocol's, up to its timeout and a second),
  // then the wait for an answer, up to the timeout again.
  return (2 * e.timeoutMs + 1000) * (e.retries + 1) + Math.min(backoffs, MAX_BACKOFFS_MS) + 1000;
}

const MAX_BACKOFFS_MS = 5 * 60_000;

export function toCommand(e: CommandEntry): Command {
  return rowToCommand(e.row);
}

export function rowToCommand(row: CommandRow): Command {
  return new CommandCopy(row, row.options as RowOptions);
}

/** A command's public copy, made by a constructor: command events carry one, and the event history keeps them (see plain.ts). */
const CommandCopy = plainConstructor(function (this: Command, row: CommandRow, o: RowOptions) {
  this.id = row.id;
  this.deviceId = row.deviceId;
  this.command = row.command;
  this.params = row.params;
  this.status = row.status;
  this.attempts = row.attempts;
  this.priority = row.priority;
  this.createdAt = iso(row.createdAt);
  this.sentAt = isoOrNull(row.sentAt);
  this.completedAt = isoOrNull(row.completedAt);
  this.expiresAt = isoOrNull(row.expiresAt);
  this.result = (row.result ?? null) as JsonValue | null;
  this.error = row.error;
  this.expectResponse = o.expectResponse ?? true;
  this.timeout = (o.timeoutMs ?? 0) / 1000;
  this.retries = o.retries ?? 0;
});

/** Newest first, as the store lists a device's commands: by creation time, then id. */
export function newestFirst(a: Command, b: Command): number {
  return descending(a.createdAt, b.createdAt) || descending(a.id, b.id);
}

/** For a newest-first sort of ISO times and ids: compared as the store compares them, not by locale. */
function descending(a: string, b: string): number {
  return a < b ? 1 : a > b ? -1 : 0;
}
