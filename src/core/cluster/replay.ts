import type { DeviceMessage } from "../ports/protocol";
import type { HeldMessage } from "./recent";

/** Without a matching fingerprint, a kept message newer than its device's stored lastSeen by more than this is replayed. */
const REPLAY_SKEW_MS = 20;
/** A kept message matches the stored fingerprint only this close to the stored lastSeen (a frozen member's backlog is stamped late). */
const MATCH_WINDOW_MS = 30_000;

/** What a takeover's replay reads and does on the member that took the partition. */
export interface ReplayHost {
  /** The device's lastSeen as its previous owner stored it (0 when unknown). */
  lastSeenOf(deviceId: string): number;
  /** The fingerprint of the last message its previous owner applied, stored with its presence. */
  lastMessageOf(deviceId: string): number | undefined;
  /** The member holding the device's connection (a kept forwarded message says). */
  connectedVia(deviceId: string, member: string): void;
  /** Applies a message the previous owner had not. */
  apply(message: DeviceMessage): void;
}

/**
 * Right after the partition became ours: what its previous owner had not written, in order.
 * `skip`: the indexes not to apply (default: those the previous owner applied, `alreadyApplied`).
 */
export function replay(held: HeldMessage[], host: ReplayHost, skip: ReadonlySet<number> = alreadyApplied(held, host)): void {
  for (let i = 0; i < held.length; i++) {
    const e = held[i]!;
    if (e.via !== undefined) host.connectedVia(e.message.deviceId, e.via);
    if (skip.has(i)) continue;
    host.apply(e.message);
  }
}

/**
 * Which kept messages the previous owner applied (by index). Per device: everything up to the
 * kept message whose fingerprint is the one it stored with the device's presence, the one taken
 * nearest its stored lastSeen (within 30 s). A device whose stored message is not among the
 * kept ones (older than the window, or never seen here) goes by time instead: what this member
 * took before the stored lastSeen (and up to 20 ms after, for clocks) was applied.
 */
export function alreadyApplied(held: HeldMessage[], host: Pick<ReplayHost, "lastSeenOf" | "lastMessageOf">): Set<number> {
  const byDevice = new Map<string, number[]>();
  held.forEach((e, i) => {
    const list = byDevice.get(e.message.deviceId);
    if (list) list.push(i);
    else byDevice.set(e.message.deviceId, [i]);
  });
  const skip = new Set<number>();
  for (const [id, indexes] of byDevice) {
    const lastSeen = host.lastSeenOf(id);
    const stored = host.lastMessageOf(id) ?? 0;
    // The match nearest the stored lastSeen: a payload repeated unchanged is then doubled rather than lost.
    let upTo = -1;
    let nearest = MATCH_WINDOW_MS;
    if (stored !== 0) {
      for (let k = indexes.length - 1; k >= 0; k--) {
        const e = held[indexes[k]!]!;
        const distance = Math.abs(e.at - lastSeen);
        if (distance < nearest && fingerprint(e.message.kind, e.message.payload) === stored) {
          upTo = k;
          nearest = distance;
        }
      }
    }
    if (upTo >= 0) for (let k = 0; k <= upTo; k++) skip.add(indexes[k]!);
    else for (const i of indexes) if (held[i]!.at <= lastSeen + REPLAY_SKEW_MS) skip.add(i);
  }
  return skip;
}

/** FNV-1a (32 bits) of a message's kind and payload bytes: what tells one kept message from another. */
export function fingerprint(kind: string, payload: unknown): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < kind.length; i++) h = Math.imul(h ^ kind.charCodeAt(i), 0x01000193);
  if (payload instanceof Uint8Array) {
    for (let i = 0; i < payload.length; i++) h = Math.imul(h ^ payload[i]!, 0x01000193);
  } else if (payload !== null && payload !== undefined) {
    const text = typeof payload === "string" ? payload : JSON.stringify(payload);
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  }
  // 0 means "none".
  return (h >>> 0) || 1;
}

/**
 * The fingerprint of a message as applied: with the packet id it came by on a partition's
 * session (unique among the messages the broker has in flight), so a redelivered message is told
 * from an earlier one with the same payload. 0: not by a session, the payload alone.
 */
export function fingerprintOf(kind: string, payload: unknown, packetId: number): number {
  const h = fingerprint(kind, payload);
  if (packetId === 0) return h;
  return (Math.imul(h ^ packetId, 0x01000193) >>> 0) || 1;
}
