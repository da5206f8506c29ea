import assert from "node:assert/strict";
import { type AddressInfo, createServer } from "node:net";
import { TethralError } from "../src/core/errors";

/** A predicate for assert.throws / assert.rejects: a TethralError with `code` (and a detail naming `field`). */
function tethralError(code: TethralError["code"], field: string | undefined, keep: (err: TethralError) => void) {
  return (err: unknown): true => {
    assert.ok(err instanceof TethralError, `expected a TethralError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (field !== undefined) {
      const fields = err.details.map((d) => d.field);
      assert.ok(fields.includes(field), `expected a detail for ${field}, got ${JSON.stringify(fields)}`);
    }
    keep(err);
    return true;
  };
}

/** Asserts `fn` throws a TethralError with `code`, and (when given) a detail naming `field`. */
export function assertCode(fn: () => unknown, code: TethralError["code"], field?: string): TethralError {
  let caught: TethralError | undefined;
  assert.throws(fn, tethralError(code, field, (err) => (caught = err)));
  return caught!;
}

/** `assertCode` for a promise: it rejects with a TethralError with `code` (and `field`). */
export async function assertRejectsCode(fn: () => Promise<unknown>, code: TethralError["code"], field?: string): Promise<TethralError> {
  let caught: TethralError | undefined;
  await assert.rejects(fn, tethralError(code, field, (err) => (caught = err)));
  return caught!;
}

/** Asserts nothing reached Object.prototype (a `__proto__` key copied by assignment would). */
export function assertNoPollution(): void {
  const probe = {} as Record<string, unknown>;
  assert.equal(probe.polluted, undefined);
  assert.equal(Object.prototype.hasOwnProperty.call(Object.prototype, "polluted"), false);
  assert.equal(typeof probe.constructor, "function");
  assert.equal(Object.getPrototypeOf(probe), Object.prototype);
}

/**
 * Polls `check` (sync or async) until it gives something truthy, and returns that; fails with
 * "timed out waiting for <what>" after `ms`. The one polling helper of the tests.
 */
export async function until<T>(check: () => T | Promise<T>, what = "a condition", ms = 8000): Promise<Exclude<T, false | null | undefined | 0 | "">> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value as Exclude<T, false | null | undefined | 0 | "">;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Runs `work` (a device's message going out), then holds this process's event loop until the
 * wall clock reaches `until`, as a long task would: what `work` sent waits unread in the hub's
 * socket while the hub's timers come due. From a setImmediate callback, so the loop's next turn
 * starts with those timers.
 */
export function holdLoopAfter(work: () => void, until: number): Promise<void> {
  return new Promise((resolve) =>
    setImmediate(() => {
      work();
      while (Date.now() < until);
      resolve();
    }),
  );
}

/** A port on 127.0.0.1 that nothing listens on (it was free a moment ago): for "connection refused". */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Whether a TCP port can be listened on right now. */
export async function portIsFree(port: number, host = "127.0.0.1"): Promise<boolean> {
  const server = createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
  } catch {
    return false;
  }
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return true;
}
