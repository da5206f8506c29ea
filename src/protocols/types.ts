// The adapter port is the engine's (src/core/ports/protocol.ts); what adapters share on the wire is here.
import { type CommandFrame, DEVICE_MESSAGE_KINDS, type DeviceMessageKind } from "../core/ports/protocol";

export * from "../core/ports/protocol";

/** A command as it goes over the wire (CONTRACT §2): `{"id", "command", "params"}`, plus any fields a protocol adds first (WebSocket's `type`). */
export function encodeCommand(frame: CommandFrame, head: Record<string, string> = {}): string {
  return JSON.stringify({ ...head, id: frame.id, command: frame.command, params: frame.params });
}

/**
 * The path step (an MQTT topic level, a CoAP path segment) for each kind a device sends
 * (CONTRACT §2): the kind's own name, but `responses` for answers.
 */
export const KIND_OF_STEP: ReadonlyMap<string, DeviceMessageKind> = new Map(
  DEVICE_MESSAGE_KINDS.map((kind) => [kind === "response" ? "responses" : kind, kind] as const),
);
