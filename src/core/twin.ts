import type { DeviceRecord } from "./registry";
import { delta } from "./state-record";
import type { DeviceTwin } from "./types";

/**
 * A device's twin as adapters send it. `desired` is the stored object itself: a change of desired
 * replaces it rather than changing it in place, so sharing it with a send in progress is safe;
 * readers must not modify it.
 */
export function twinOf(record: DeviceRecord): DeviceTwin {
  const s = record.state;
  if (!s?.desired) return { desired: {}, delta: {}, version: s?.version ?? 0 };
  return { desired: s.desired, delta: delta(s), version: s.version };
}

/** The twin as a caller may keep it: its desired values copied, not the device's own. */
export function twinCopy(record: DeviceRecord): DeviceTwin {
  const twin = twinOf(record);
  return { desired: structuredClone(twin.desired), delta: twin.delta, version: twin.version };
}

/** The twin as JSON text (CONTRACT §2), with the fields a protocol puts first (WebSocket's `type`). */
export function encodeTwin(twin: DeviceTwin, head: Record<string, string> = {}): string {
  return JSON.stringify({ ...head, desired: twin.desired, delta: twin.delta, version: twin.version });
}

/** Whether the device has anything desired of it: only those have a twin kept on a broker across restarts. */
export function hasDesired(record: DeviceRecord): boolean {
  return record.state?.desired != null;
}

/**
 * Told when a device's twin changed: its desired state was set, or a report moved a desired key
 * into or out of the delta (a report that matches desired clears it, and the device hears so).
 */
export interface TwinListener {
  /** `stored`: the state that holds this twin's version is in the database already (a PUT of desired state is written first). */
  onTwinChanged(deviceId: string, stored: boolean): void;
}
