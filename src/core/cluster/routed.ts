import { TethralError } from "../errors";

/** What a member runs for a request routed to it (the hub's own implementations). */
export type LocalRequests = Record<string, (args: Record<string, unknown>) => Promise<unknown>>;

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
