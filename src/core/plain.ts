import type { JsonObject } from "./types";

/**
 * Plain objects made without an object literal, for objects made in numbers while many of their
 * kind are still held: what the event history keeps (events, their data, and the device copies,
 * command copies and state views inside them) and the points of a time-series answer, all alive
 * until its last is made (store/series.ts).
 *
 * Why: V8 decides for each object literal in the code (its allocation site) whether to allocate
 * the objects it makes straight into the old generation ("pretenuring"), once most of those it
 * sampled survived a young collection. The event history keeps the last 1,000 events, so when a
 * young collection comes during a burst of registrations or first reports, nearly every event it
 * samples, and what the event carries, is still held there. V8 then allocates every later one of
 * them in the old generation, where they die at once and leave it fragmented. Measured with
 * bench:core (1,000,000 devices) on 2026-12-06, same machine, same hour:
 * - with literals (four runs): old generation 2,317–2,650 MB at the filter, which every young
 *   collection visits; filter p99 12.1–16.0 ms; registrations 184,640–194,706/s;
 * - with these constructors (three runs): 1,523–1,529 MB, 11.5–12.5 ms, 203,644–212,196/s; the
 *   same as the literals with V8's pretenuring switched off (1,465–1,471 MB, 11.8–11.9 ms,
 *   208,845–209,641/s).
 *
 * A constructor call has no allocation site, so it is never pretenured. Each constructor here has
 * `Object.prototype` as its prototype: what it makes is a plain object with its own keys in the
 * order set, which JSON, structuredClone, `isPlainObject`, Node-RED's message cloning and a
 * flow's code cannot tell from a literal's.
 *
 * Each constructor assigns its fields one by one, in the contract's order: a generic one looping
 * over field names would make keyed stores, slower, and give no fixed shape to build on.
 *
 * Long-lived objects (registry records, state records) keep their literals or classes: for them
 * the old generation is the right place.
 */
export function plainConstructor<A extends unknown[], T extends object>(init: (this: T, ...args: A) => void): new (...args: A) => T {
  (init as unknown as { prototype: object }).prototype = Object.prototype;
  return init as unknown as new (...args: A) => T;
}

/** An empty plain object, made without a literal (see above); keys are added to it as to `{}`. */
export function emptyObject<T extends object = JsonObject>(): T {
  return Object.create(Object.prototype) as T;
}
