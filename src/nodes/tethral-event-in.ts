import type { Priority } from "../core/types";
import { SUBSCRIBED_TYPE_PATTERN } from "../core/event-options";
import { DEVICE_ID_PATTERN } from "../core/validation";
import { HubUse, names, refuseSettings, text, throttled } from "./node-support";
import type { Node, NodeAPI, NodeDef, SendingNode } from "./types";

/** An input-less node sends from its event handler (types.ts lists only what the others use). */

interface EventInDef extends NodeDef {
  hub?: string;
  /** Type patterns separated by commas: `device.online`, `device.*`, `*`; blank: `*`. */
  types?: string;
  minPriority?: string;
  /** Device ids separated by commas or white space; blank: events of any device or none. */
  deviceId?: string;
}

/**
 * `tethral-event-in` (CONTRACT §5): one message per event on the hub's bus that matches the
 * node's type patterns, minimum priority and devices; `msg.payload` is the event, `msg.topic`
 * its type. The bus checks the filters; the node only turns events into messages.
 */
export default function (RED: NodeAPI): void {
  RED.nodes.registerType("tethral-event-in", function (this: Node, def: EventInDef): void {
    RED.nodes.createNode(this, def);
    const node = this as SendingNode;
    const types = names(def.types, /\s*,\s*/);
    const deviceIds = names(def.deviceId);
    const problem = types.some((t) => !SUBSCRIBED_TYPE_PATTERN.test(t))
      ? RED._("tethral-event-in.errors.types")
      : deviceIds.some((id) => !DEVICE_ID_PATTERN.test(id))
        ? RED._("tethral-event-in.errors.deviceId")
        : null;
    if (refuseSettings(RED, node, "tethral-event-in", problem)) return;
    const use = HubUse.attach(RED, node, def.hub, RED._("tethral-event-in.errors.no-hub"));
    if (!use) return;
    const minPriority = text(def.minPriority) as Priority | undefined;
    let received = 0;
    let lastType = "";
    const status = throttled(() => use.ok(RED._("tethral-event-in.status.received", { count: received, type: lastType })));

    // Subscribed on every hub that runs: a first start that failed, or a restart, is followed.
    use.whileRunning((hub) => {
      // A pattern or priority the bus refuses (INVALID) throws here: HubUse shows and logs it.
      const handle = hub.subscribe(
        {
          types: types.length > 0 ? types : "*",
          ...(minPriority !== undefined && { minPriority }),
          ...(deviceIds.length > 0 && { deviceId: deviceIds }),
          owner: `tethral-event-in:${node.id}`,
          name: `tethral-event-in ${node.id}`,
        },
        (event) => {
          received++;
          lastType = event.type;
          status.request();
          // Every subscriber and the history share one event object: the flow gets its own copy.
          // `causeId`: what the flow does about the event names the event's cause as its parent.
          node.send({ payload: structuredClone(event), topic: event.type, causeId: event.causeId });
        },
      );
      use.status({ fill: "green", shape: "ring", text: RED._("tethral-event-in.status.listening") });
      return () => handle.unsubscribe();
    });

    node.on("close", (_removed: boolean, done: () => void) => {
      status.cancel();
      use.close();
      done();
    });
  });
};
