import { TethralError, invalid } from "./errors";
import { cloneJson, defineValue, isEmptyObject, jsonEqual } from "./json";
import type { DeviceRecord } from "./registry";
import { EMPTY_PROPERTIES } from "./state-record";
import { type TransitionRules, checkTransition } from "./transitions";
import type { JsonObject, JsonValue, StateRow, StateSnapshot } from "./types";
import { LIMITS, parseInput, stateSetSchema } from "./validation";

/** A `set` worked out but not applied (see `planSet`). */
export interface StatePlan {
  deviceId: string;
  changed: boolean;
  from: StateSnapshot;
  to: StateSnapshot;
  desired: JsonObject;
  at: number;
  /** The state as it will be stored once applied. */
  row: StateRow;
}

/**
 * Checks a set of desired values and/or the status (one change; `null` in `desired` removes
 * that key) against the device's state and the transition rules, and works out its result
 * without changing anything. With `expectedVersion`, a stale version is a CONFLICT.
 */
export function planStateSet(record: DeviceRecord, input: unknown, rules: TransitionRules, now: number): StatePlan {
  const deviceId = record.id;
  const data = parseInput(stateSetSchema, input, "state");
  const s = record.state;
  const version = s?.version ?? 0;
  if (data.expectedVersion !== undefined && data.expectedVersion !== version) {
    throw new TethralError("CONFLICT", `state of "${deviceId}" is at version ${version}, not ${data.expectedVersion}`, [
      { field: "expectedVersion", message: `is stale: the current version is ${version}` },
    ]);
  }
  if (data.status !== undefined) checkTransition(rules, record.status, data.status);

  const from: StateSnapshot = {};
  const to: StateSnapshot = {};
  const current = s?.desired ?? EMPTY_PROPERTIES;
  const desired: JsonObject = { ...current };
  if (data.desired !== undefined) {
    // As in a report: a key must name a property the device can report (until 2026-12-08 an
    // empty one was taken, and stayed in the delta, since no report may name it; one kept from
    // then can still be removed, with null).
    if (Object.hasOwn(data.desired, "") && data.desired[""] !== null) throw invalid("desired", "an empty key names no property");
    const before: JsonObject = {};
    const after: JsonObject = {};
    for (const key of Object.keys(data.desired)) {
      const value = data.desired[key] as JsonValue;
      const had = Object.hasOwn(current, key);
      if (value === null ? !had : had && jsonEqual(current[key], value)) continue;
      defineValue(before, key, had ? cloneJson(current[key] as JsonValue) : null);
      defineValue(after, key, cloneJson(value));
      if (value === null) delete desired[key];
      else defineValue(desired, key, after[key] as JsonValue);
    }
    if (!isEmptyObject(after)) {
      from.desired = before;
      to.desired = after;
      checkDesiredTotal(current, desired, after);
    }
  }
  if (data.status !== undefined && data.status !== record.status) {
    from.status = record.status;
    to.status = data.status;
  }
  const changed = from.desired !== undefined || from.status !== undefined;
  return {
    deviceId,
    changed,
    from,
    to,
    desired,
    at: now,
    row: {
      deviceId,
      properties: s?.properties ? { ...s.properties } : {},
      desired,
      version: version + (changed ? 1 : 0),
      changedAt: to.status !== undefined ? now : (s?.changedAt ?? 0),
      updatedAt: changed ? now : (s?.updatedAt ?? 0),
      reportedAt: s?.reportedAt ?? 0,
      pointTs: s?.pointTs ?? 0,
      rev: (s?.rev ?? 0) + 1,
    },
  };
}

/**
 * Each set's desired is checked on its own, but sets merge: without a bound on the whole, desired
 * could grow set by set without end, and every change of it goes to the device whole (the twin,
 * with its delta, on MQTT, WebSocket and CoAP). A set that only changes or removes keys within
 * the bounds passes; one that would take desired past them is INVALID.
 */
function checkDesiredTotal(current: JsonObject, desired: JsonObject, after: JsonObject): void {
  const keys = Object.keys(desired).length;
  if (keys > LIMITS.propertyKeys && keys > Object.keys(current).length) {
    throw invalid("desired", `a device keeps at most ${LIMITS.propertyKeys} desired keys; this would make ${keys}`);
  }
  if (Object.values(after).every((v) => v === null)) return;
  const bytes = Buffer.byteLength(JSON.stringify(desired));
  // Desired kept from before the bound (or a smaller bound) may still shrink.
  if (bytes > LIMITS.propertiesBytes && bytes > Buffer.byteLength(JSON.stringify(current))) {
    throw invalid("desired", `would be ${bytes} bytes of JSON in all, more than the ${LIMITS.propertiesBytes} a device's desired state may hold`);
  }
}
