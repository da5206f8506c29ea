import { z } from "zod";
import { TethralError, invalid } from "./errors";
import { COMMAND_STATUSES, type CommandStatus, PRIORITIES, type JsonObject, type Priority } from "./types";
import { type FilterValues, listFilter } from "./registry-query";
import { checkJsonObject, checkJsonValue, issueToDetail, LIMITS, parseInput, spokenIssues, toEpoch } from "./validation";

/** How commands are delivered, unless a command says otherwise. */
export interface CommandOptions {
  /** Seconds to wait for a device's answer (per attempt). */
  defaultTimeoutSec: number;
  /** Commands sent to one device at a time; the rest wait in its queue, highest priority first. */
  maxInFlightPerDevice: number;
  /** Commands waiting per device; more is refused (UNAVAILABLE) rather than grown without bound. */
  maxQueuedPerDevice: number;
  /** First retry delay; doubles each retry (with jitter), up to `retryMaxDelayMs`. */
  retryBaseDelayMs: number;
  retryMaxDelayMs: number;
  /** Finished commands kept in memory for `getCommand` (older ones are read from the store). */
  keepFinished: number;
  /** How often devices with waiting commands are looked at again (a broker that came back, ...). */
  sweepIntervalMs: number;
}

export const DEFAULT_COMMAND_OPTIONS: CommandOptions = {
  defaultTimeoutSec: 10,
  maxInFlightPerDevice: 1,
  maxQueuedPerDevice: 1000,
  retryBaseDelayMs: 500,
  retryMaxDelayMs: 30_000,
  keepFinished: 10_000,
  sweepIntervalMs: 1000,
};

export const COMMAND_NAME_PATTERN = /^[A-Za-z0-9_.:/-]{1,128}$/;
const MAX_TIMEOUT_SEC = 3600;
const MAX_RETRIES = 10;
/** Ten years: longer than any command should wait, short enough to stay a safe integer. */
const MAX_EXPIRES_IN_SEC = 10 * 365 * 24 * 3600;
const LIMIT_TEXT = { error: "must be a whole number from 1 to 1000" };

export const commandInputSchema = z.strictObject({
  command: z.string().regex(COMMAND_NAME_PATTERN, "must be 1-128 characters of A-Z a-z 0-9 _ . : / -"),
  params: z.unknown().optional(),
  /** The caller waits for the end (REST `wait`); the command itself does not change. */
  wait: z.boolean().optional(),
  timeout: z.number().min(0.01, "must be at least 0.01 (10 ms)").max(MAX_TIMEOUT_SEC).optional(),
  retries: z.number().int().min(0).max(MAX_RETRIES).optional(),
  expiresIn: z.number().positive().max(MAX_EXPIRES_IN_SEC).optional(),
  expiresAt: z.union([z.string(), z.number(), z.date()]).nullable().optional(),
  priority: z.enum(PRIORITIES).optional(),
  /** Queued, unsent commands of the same name to the same device are superseded by this one. */
  supersede: z.boolean().optional(),
  /** False for a one-way command: done once sent (or delivered), no answer awaited. */
  expectResponse: z.boolean().optional(),
});

export interface CommandRequest {
  command: string;
  params: JsonObject;
  wait: boolean;
  timeoutMs: number;
  retries: number;
  /** 0 when it does not expire. */
  expiresAt: number;
  priority: Priority;
  supersede: boolean;
  expectResponse: boolean;
}

/** Checks what a flow or REST caller asked for; INVALID names the field, and nothing is queued. */
export function parseCommandRequest(input: unknown, now: number, options: CommandOptions): CommandRequest {
  const parsed = commandInputSchema.safeParse(input);
  if (!parsed.success) {
    const details = spokenIssues(commandInputSchema, input, parsed.error.issues).map((i) => issueToDetail(i, "command"));
    throw new TethralError("INVALID", `${details[0]!.field}: ${details[0]!.message}`, details);
  }
  const v = parsed.data;
  const params = v.params === undefined || v.params === null ? {} : v.params;
  const problem = checkJsonObject(params, "params", LIMITS.propertiesBytes);
  if (problem) throw invalid(problem.field, problem.message);
  let expiresAt = 0;
  if (v.expiresIn !== undefined && v.expiresAt !== undefined && v.expiresAt !== null) {
    throw new TethralError("INVALID", "expiresIn: give expiresIn or expiresAt, not both", [{ field: "expiresIn", message: "give expiresIn or expiresAt, not both" }]);
  }
  if (v.expiresIn !== undefined) expiresAt = now + Math.round(v.expiresIn * 1000);
  else if (v.expiresAt !== undefined && v.expiresAt !== null) {
    const at = toEpoch(v.expiresAt, "expiresAt");
    if (at <= now) throw new TethralError("INVALID", "expiresAt: is in the past", [{ field: "expiresAt", message: "is in the past" }]);
    expiresAt = at;
  }
  return {
    command: v.command,
    params: params as JsonObject,
    wait: v.wait ?? false,
    timeoutMs: Math.round((v.timeout ?? options.defaultTimeoutSec) * 1000),
    retries: v.retries ?? 0,
    expiresAt,
    priority: v.priority ?? "normal",
    supersede: v.supersede ?? false,
    expectResponse: v.expectResponse ?? true,
  };
}

/** A device's answer to a command: `{"id", "ok": true, "result"}` or `{"id", "ok": false, "error"}`. */
export interface CommandAnswer {
  id: string;
  ok: boolean;
  result: unknown;
  error: string | null;
}

export function parseCommandAnswer(data: unknown): CommandAnswer {
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new TethralError("INVALID", "response: must be a JSON object {id, ok, result | error}", [{ field: "response", message: "must be a JSON object" }]);
  }
  const r = data as { id?: unknown; ok?: unknown; result?: unknown; error?: unknown };
  if (typeof r.id !== "string" || r.id.length === 0 || r.id.length > 128) {
    throw new TethralError("INVALID", "id: must be the command's id", [{ field: "id", message: "must be the command's id" }]);
  }
  if (typeof r.ok !== "boolean") {
    throw new TethralError("INVALID", "ok: must be true or false", [{ field: "ok", message: "must be true or false" }]);
  }
  const result = r.result === undefined ? null : r.result;
  const problem = checkJsonValue(result, "result", LIMITS.propertiesBytes);
  if (problem) throw invalid(problem.field, problem.message);
  let error: string | null = null;
  if (!r.ok) {
    error = typeof r.error === "string" ? r.error.slice(0, 1024) : r.error === undefined || r.error === null ? "device reported failure" : JSON.stringify(r.error).slice(0, 1024);
    // Blank text says nothing: the 502 a waiting caller gets must still say what happened.
    if (!error.isWellFormed() || error.includes("\u0000") || error.trim() === "") error = "device reported failure";
  }
  return { id: r.id, ok: r.ok, result, error };
}

/** A device's command list: `status` (one, a comma-separated list or a list) and `limit`. */
export interface CommandListQuery {
  status?: FilterValues;
  limit?: number | string | null;
}

export const DEFAULT_COMMAND_LIST_LIMIT = 100;
export const MAX_COMMAND_LIST_LIMIT = 1000;

const listQuerySchema = z.strictObject({
  status: listFilter(32, COMMAND_STATUSES),
  limit: z.preprocess(
    (v) => (v === null || v === undefined || (typeof v === "string" && v.trim() === "") ? undefined : typeof v === "string" && /^\s*\d+\s*$/.test(v) ? Number(v) : v),
    z.number(LIMIT_TEXT).int(LIMIT_TEXT).min(1, LIMIT_TEXT).max(MAX_COMMAND_LIST_LIMIT, LIMIT_TEXT).optional(),
  ),
});

/** The list query checked: INVALID names `status` or `limit` (or the unknown key). */
export function parseCommandListQuery(query: unknown): { statuses: CommandStatus[] | null; limit: number } {
  const q = parseInput(listQuerySchema, query ?? {}, "command query");
  return { statuses: (q.status as CommandStatus[] | undefined) ?? null, limit: q.limit ?? DEFAULT_COMMAND_LIST_LIMIT };
}
