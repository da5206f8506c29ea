import { TethralError } from "./errors";
import type { DeviceStatus } from "./types";

/** Which status may follow which. Setting the current status again is not a transition. */
export type TransitionRules = Record<DeviceStatus, readonly DeviceStatus[]>;

/**
 * The default rules: `unknown` is where a device starts and only maintenance can lead back
 * to it (a cleared maintenance whose device has not been heard from since).
 */
export const DEFAULT_TRANSITIONS: TransitionRules = {
  unknown: ["online", "offline", "error", "maintenance"],
  online: ["offline", "error", "maintenance"],
  offline: ["online", "error", "maintenance"],
  error: ["online", "offline", "maintenance"],
  maintenance: ["unknown", "online", "offline", "error"],
};

export function allowsTransition(rules: TransitionRules, from: DeviceStatus, to: DeviceStatus): boolean {
  return from === to || rules[from].includes(to);
}

/** Throws INVALID, naming the statuses `rules` allow, when they do not let `from` change to `to`. */
export function checkTransition(rules: TransitionRules, from: DeviceStatus, to: DeviceStatus): void {
  if (!allowsTransition(rules, from, to)) {
    throw new TethralError("INVALID", `status cannot change from ${from} to ${to}`, [
      { field: "status", message: `cannot change from ${from} to ${to}; allowed: ${rules[from].join(", ")}` },
    ]);
  }
}
