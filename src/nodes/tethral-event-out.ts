import { PRIORITIES, type Priority } from "../core/types";
import { MAX_EVENT_TTL_SECONDS } from "../core/events";
import { HubUse, errorLabel, flowCause, fromMsg, invalidInput, noHubError, text, toError } from "./node-support";
import type { Node, NodeAPI, NodeDef, NodeMessage } from "./types";

interface EventOutDef extends NodeDef {
  hub?: string;
  /** The event type; when blank, `msg.topic` gives it. */
  eventType?: string;
  priority?: string;
  deviceId?: string;
  /** Seconds the event lives when `msg.ttl` gives none; blank: until the history lets it go. */
  ttl?: string | number;
}

/**
 * `tethral-event-out` (CONTRACT §5): publishes `msg.payload` as a user event of the configured
 * type, or of type `msg.topic` when the node has none, with `msg.priority`, `msg.deviceId` and
 * `msg.ttl` (seconds; the node's own `ttl` when absent). The msg goes on with `msg.event`, the
 * event as published (its id, timestamp and expiresAt), for flows that answer with it.
 *
 * The configured type wins over `msg.topic`, as a configured topic does in Node-RED's own mqtt
 * out node: many nodes set `msg.topic` for their own ends (a state watch sends the device id, an
 * mqtt in node its topic), and a type chosen in the editor must not be replaced by it unseen.
 * `msg.priority` and `msg.deviceId` are this node's own properties and do override the editor.
 */
export default function (RED: NodeAPI): void {
  RED.nodes.registerType("tethral-event-out", function (this: Node, def: EventOutDef): void {
    RED.nodes.createNode(this, def);
    const use = HubUse.attach(RED, this, def.hub, RED._("tethral-event-out.errors.no-hub"));
    let published = 0;
    const configuredType = text(def.eventType);

    // A flow file may hold the Time to live as a number as well as the editor's text.
    const configuredTtl = typeof def.ttl === "number" ? def.ttl : text(def.ttl);
    this.on("input", (msg: NodeMessage, send, done) => {
      if (!use) return done(noHubError(RED._("tethral-event-out.errors.no-hub")));
      const type = configuredType ?? fromMsg(msg, "topic", undefined);
      const priority = fromMsg(msg, "priority", text(def.priority) ?? "normal");
      const deviceId = fromMsg(msg, "deviceId", text(def.deviceId));
      const ttl = secondsOf(fromMsg(msg, "ttl", configuredTtl));
      // Checked before the hub is touched (the bus would refuse some of these too, in its own words).
      const refuse = (field: string, key: string, vars: Record<string, string> = {}) => {
        const err = invalidInput(field, RED._(`tethral-event-out.errors.${key}`, vars));
        use.failed(errorLabel(err));
        done(toError(err));
      };
      if (type === undefined) return refuse("topic", "no-type");
      if (typeof priority !== "string" || !PRIORITIES.includes(priority as Priority)) {
        return refuse("priority", "priority", { priorities: PRIORITIES.join(", ") });
      }
      if (ttl === null) return refuse("ttl", "ttl");
      use
        .hub()
        .then((hub) =>
          // A device's event goes to the cluster member that owns the device (CONTRACT §8).
          hub.publishEvent(type as string, msg.payload, {
            priority: priority as Priority,
            ...(deviceId !== undefined && { deviceId: deviceId as string }),
            ...(ttl !== undefined && { ttlMs: ttl * 1000 }),
            ...flowCause(msg),
          }),
        )
        .then((event) => {
          published++;
          use.ok(RED._("tethral-event-out.status.published", { count: published, type: event.type }));
          msg.event = event;
          send(msg);
          done();
        })
        .catch((err: unknown) => {
          use.failed(errorLabel(err));
          done(toError(err));
        });
    });

    this.on("close", (_removed: boolean, done: () => void) => {
      use?.close();
      done();
    });
  });
};

/** `msg.ttl`: seconds, a number or its text, above 0; undefined when absent, null when unusable. */
function secondsOf(value: unknown): number | undefined | null {
  if (value === undefined) return undefined;
  const n = typeof value === "number" ? value : typeof value === "string" && /^\s*(\d+\.?\d*|\.\d+)\s*$/.test(value) ? Number(value) : NaN;
  return Number.isFinite(n) && n > 0 && n <= MAX_EVENT_TTL_SECONDS ? n : null;
}
