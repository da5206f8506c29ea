import type { RawData } from "ws";
import { DEVICE_MESSAGE_KINDS, type DeviceMessageKind } from "./types";

/** A device's JSON frame (CONTRACT §2): an object with a `type`. */
export type Frame = Record<string, unknown>;

export const FRAME_KINDS: ReadonlySet<string> = new Set(DEVICE_MESSAGE_KINDS);

/** The decoded field a frame kind carries, as `DeviceMessage.payload` expects it. */
export function payloadOf(kind: DeviceMessageKind, frame: Frame): unknown {
  switch (kind) {
    case "telemetry":
      return frame.data;
    case "heartbeat":
      return null;
    case "status":
      return frame.status;
    case "state": {
      // Only the keys the device sent: an absent status must not read as `status: undefined`.
      const state: Frame = {};
      if (frame.status !== undefined) state.status = frame.status;
      if (frame.properties !== undefined) state.properties = frame.properties;
      return state;
    }
    case "response":
      return { id: frame.id, ok: frame.ok, result: frame.result, error: frame.error };
    case "register": {
      // The device record is the frame itself, less its type. Spread defines own keys, so a
      // `__proto__` key stays data for the hub's validation to refuse.
      const { type: _type, ...record } = frame;
      return record;
    }
  }
}

/** ws hands a Buffer with the default binaryType; the other shapes only for other settings. */
export function asBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  return Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
}
