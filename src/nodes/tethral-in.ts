import type { Device } from "../core/types";
import { DEVICE_ID_PATTERN, PROTOCOL_PATTERN } from "../core/validation";
import { HubUse, names, refuseSettings, throttled } from "./node-support";
import type { Node, NodeAPI, NodeDef, SendingNode } from "./types";

/** An input-less node sends from its event handler (types.ts lists only what the others use). */

/** Each kind's editor flag and whether a node without the flag takes it (heartbeats are noisy). */
const KINDS = [
  { kind: "telemetry", flag: "kindTelemetry", byDefault: true },
  { kind: "heartbeat", flag: "kindHeartbeat", byDefault: false },
  { kind: "state", flag: "kindState", byDefault: true },
  { kind: "status", flag: "kindStatus", byDefault: true },
] as const;

interface InDef extends NodeDef {
  hub?: string;
  /** Device ids, separated by commas or white space; blank: every device. */
  deviceId?: string;
  /** Protocol names, separated by commas or white space; blank: every protocol. */
  protocol?: string;
  kindTelemetry?: boolean;
  kindHeartbeat?: boolean;
  kindState?: boolean;
  kindStatus?: boolean;
}

/**
 * `tethral-in` (CONTRACT §5): one message per device message the hub accepted, over any
 * protocol, filtered by device, protocol and kind. The hub publishes `message.received` only
 * while someone subscribes, so a fleet without tethral-in nodes pays nothing for it.
 */
export default function (RED: NodeAPI): void {
  RED.nodes.registerType("tethral-in", function (this: Node, def: InDef): void {
    RED.nodes.createNode(this, def);
    const node = this as SendingNode;
    const deviceIds = names(def.deviceId);
    const protocols = names(def.protocol);
    const kinds = new Set<string>(KINDS.filter((k) => (typeof def[k.flag] === "boolean" ? def[k.flag] : k.byDefault)).map((k) => k.kind));
    const problem = deviceIds.some((id) => !DEVICE_ID_PATTERN.test(id))
      ? RED._("tethral-in.errors.deviceId")
      : protocols.some((p) => !PROTOCOL_PATTERN.test(p))
        ? RED._("tethral-in.errors.protocol")
        : kinds.size === 0
          ? RED._("tethral-in.errors.kinds")
          : null;
    if (refuseSettings(RED, node, "tethral-in", problem)) return;
    const use = HubUse.attach(RED, node, def.hub, RED._("tethral-in.errors.no-hub"));
    if (!use) return;
    let received = 0;
    let lastTopic = "";
    const status = throttled(() => use.ok(RED._("tethral-in.status.received", { count: received, topic: lastTopic })));

    // Subscribed on every hub that runs: a first start that failed, or a restart, is followed.
    use.whileRunning((hub) => {
        const handle = hub.subscribe(
          {
            types: "message.received",
            ...(deviceIds.length > 0 && { deviceId: deviceIds }),
            filter: (event) => {
              const { kind, protocol } = event.data;
              return kinds.has(kind) && (protocols.length === 0 || (protocol !== null && protocols.includes(protocol)));
            },
            owner: `tethral-in:${node.id}`,
            name: `tethral-in ${node.id}`,
          },
          (event) => {
            const { kind, protocol, data, retained } = event.data;
            const deviceId = event.deviceId as string;
            let device: Device | null = null;
            try {
              device = hub.getDevice(deviceId);
            } catch {
              // Removed between its message and this delivery: the message still happened.
            }
            received++;
            lastTopic = `${deviceId}/${kind}`;
            status.request();
            // The bus hands every subscriber the same objects: the flow gets its own copy. The
            // cause goes along, so what the flow does about the message names it as its parent.
            node.send({
              payload: structuredClone(data),
              topic: `${deviceId}/${kind}`,
              deviceId,
              device,
              kind,
              protocol,
              retained: retained === true,
              causeId: event.causeId,
            });
          },
        );
        use.status({ fill: "green", shape: "ring", text: RED._("tethral-in.status.listening") });
        return () => handle.unsubscribe();
    });

    node.on("close", (_removed: boolean, done: () => void) => {
      status.cancel();
      use.close();
      done();
    });
  });
};
