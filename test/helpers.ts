import assert from "node:assert/strict";
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
