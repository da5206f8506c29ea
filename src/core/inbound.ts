import { invalid } from "./errors";
import { checkProperties } from "./validation";
import type { DeviceStatus, JsonObject } from "./types";

/** What a device sent, after the protocol adapter has decoded it. */
export type InboundKind = "telemetry" | "heartbeat" | "state" | "status";

export interface InboundMessage {
  kind: InboundKind;
  /** telemetry: an object of values; state: `{status?, properties?}`; status: "online" | "offline". */
  data?: unknown;
  protocol?: string | null;
  /** Id of the message, carried into the state history and events as their cause. */
  causeId?: string;
  /** A broker's stored copy replayed on subscribe (see DeviceMessage.retained): values only, no sign of life. */
  retained?: boolean;
}

export interface IngestResult {
  deviceId: string;
  status: DeviceStatus;
  /** True when the message changed the device's state (status or a property). */
  changed: boolean;
  /** The id carried into history and events; null when nothing was recorded and none was given. */
  causeId: string | null;
}

const INBOUND_KINDS: readonly InboundKind[] = ["telemetry", "heartbeat", "state", "status"];
const DEVICE_REPORTABLE: readonly DeviceStatus[] = ["online", "offline", "error"];

/** Checks a device's message and takes out what it reports; throws INVALID before anything changes. */
export function parseInbound(message: InboundMessage): { properties: JsonObject | null; reported: DeviceStatus | null } {
  if (!INBOUND_KINDS.includes(message.kind)) {
    throw invalid("kind", `must be one of ${INBOUND_KINDS.join(", ")}`);
  }
  switch (message.kind) {
    case "heartbeat":
      return { properties: null, reported: null };
    case "telemetry":
      return { properties: checkProperties(message.data, "data"), reported: null };
    case "status": {
      const s = typeof message.data === "string" ? message.data.trim().toLowerCase() : message.data;
      if (s !== "online" && s !== "offline") throw invalid("data", 'a status message must be "online" or "offline"');
      return { properties: null, reported: s };
    }
    case "state": {
      const data = message.data;
      if (data === null || typeof data !== "object" || Array.isArray(data)) throw invalid("data", "must be a JSON object");
      const { status, properties, ...rest } = data as { status?: unknown; properties?: unknown };
      const extra = Object.keys(rest);
      if (extra.length > 0) throw invalid(`data.${extra[0]}`, "is not a state field (status, properties)");
      if (status !== undefined && !DEVICE_REPORTABLE.includes(status as DeviceStatus)) {
        throw invalid("data.status", `must be one of ${DEVICE_REPORTABLE.join(", ")}`);
      }
      return {
        properties: properties === undefined ? null : checkProperties(properties, "data.properties"),
        reported: (status as DeviceStatus | undefined) ?? null,
      };
    }
  }
}
