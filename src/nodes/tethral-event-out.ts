import { PRIORITIES, type Priority } from "../core/types";
import { HubUse, errorLabel, flowCause, fromMsg, invalidInput, text, toError } from "./node-support";
import type { Node, NodeAPI, NodeDef, NodeMessage } from "./types";

interface EventOutDef extends NodeDef {
  hub?: string;
  /** The event type when `msg.topic` gives none. */
  eventType?: string;
  priority?: string;
  deviceId?: string;
}

/**
 * `tethral-event-out` (CONTRACT §5): publishes `msg.payload` as a user event of type
 * `msg.topic` (or the configured type), with `msg.priority` and `msg.deviceId`.
 */
export = function (RED: NodeAPI): void {
  RED.nodes.registerType("tethral-event-out", function (this: Node, def: EventOutDef): void {
    RED.nodes.createNode(this, def);
    const use = HubUse.attach(RED, this, def.hub, RED._("tethral-event-out.errors.no-hub"));
    let published = 0;

    // An output node, as Node-RED's own: nothing goes on, so `send` is unused.
    this.on("input", (msg: NodeMessage, _send, done) => {
      if (!use) return done(new Error(RED._("tethral-event-out.errors.no-hub")));
      const type = fromMsg(msg, "topic", text(def.eventType));
      const priority = fromMsg(msg, "priority", text(def.priority) ?? "normal");
      const deviceId = fromMsg(msg, "deviceId", text(def.deviceId));
      // Checked before the hub is touched (the bus would refuse it too, in its own words).
      if (typeof priority !== "string" || !PRIORITIES.includes(priority as Priority)) {
        const err = invalidInput("priority", RED._("tethral-event-out.errors.priority", { priorities: PRIORITIES.join(", ") }));
        use.failed(errorLabel(err));
        return done(toError(err));
      }
      use
        .hub()
        .then((hub) => {
          const event = hub.publish(type as string, msg.payload, {
            priority: priority as Priority,
            ...(deviceId !== undefined && { deviceId: deviceId as string }),
            ...flowCause(msg),
          });
          published++;
          use.ok(RED._("tethral-event-out.status.published", { count: published, type: event.type }));
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
