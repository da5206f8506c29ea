import type { CommandTracker } from "../commands";
import type { DurableWrites, RemoveCause } from "../durable-writes";
import { TethralError } from "../errors";
import type { PublishOptions } from "../events";
import type { ChangeCause } from "../state";
import type { TethralEvent } from "../types";

/** What a member runs for a request routed to it (the hub's own implementations). */
export type LocalRequests = Record<string, (args: Record<string, unknown>) => Promise<unknown>>;

/** The hub's own implementations of the requests routed to a device's owner (read when called). */
export function localRequests(
  writes: () => DurableWrites,
  commands: () => CommandTracker,
  publish: (type: string, data: unknown, options: PublishOptions) => TethralEvent,
): LocalRequests {
  return {
    // The token and the command id come made by the member that took the request (see Hub.registerDevice, Hub.sendCommand).
    register: (a) => writes().register(a.input, a.cause as ChangeCause, undefined, typeof a.token === "string" ? a.token : undefined),
    rotateToken: (a) => writes().rotateToken(a.id as string),
    update: (a) => writes().update(a.id as string, a.patch, a.cause as ChangeCause),
    remove: (a) => writes().remove(a.id as string, a.cause as RemoveCause),
    setState: (a) => writes().setState(a.id as string, a.input, a.cause as ChangeCause),
    command: (a) => commands().submit(a.deviceId as string, a.input, typeof a.id === "string" ? a.id : undefined, a.again === true),
    cancel: (a) => commands().cancel(a.id as string),
    wait: (a) => commands().wait(a.id as string, a.limitMs as number | undefined),
    publish: async (a) => publish(a.type as string, a.data, a.options as PublishOptions),
  };
}

/** Runs a routed request; an unknown method is a fault of the member that sent it. */
export function routedRequest(local: LocalRequests, method: string, args: Record<string, unknown>): Promise<unknown> {
  const run = Object.hasOwn(local, method) ? local[method] : undefined;
  if (!run) return Promise.reject(new TethralError("INVALID", `no cluster request "${method}"`));
  return run(args);
}

/**
 * The id a registration is routed by. Null for input without one: it is refused where it is, in
 * the registry's own words.
 */
export function registrationId(input: unknown): string | null {
  if (input === null || typeof input !== "object" || Array.isArray(input)) return null;
  const id = (input as { id?: unknown }).id;
  return typeof id === "string" ? id : null;
}

/** How long a routed command may take to answer: with `wait`, as long as all its attempts may (0 without). */
export function commandWaitMs(input: unknown, defaultTimeoutMs: number): number {
  const i = input as { wait?: unknown; timeout?: unknown; retries?: unknown } | null;
  if (i?.wait !== true) return 0;
  const attempts = (typeof i.retries === "number" ? i.retries : 0) + 1;
  return (typeof i.timeout === "number" ? i.timeout * 1000 : defaultTimeoutMs) * attempts;
}
