import type { Hub } from "../core";
import { errorMessage } from "../core/errors";
import { type StateWatchOptions, type StateWatchOutput, StateWatcher, parseStateWatchOptions } from "../core/state-watch";
import { HubUse, refuseSettings } from "./node-support";
import type { Node, NodeAPI, NodeDef, SendingNode } from "./types";

interface StateWatchDef extends NodeDef {
  hub?: string;
  deviceIds?: unknown;
  statuses?: unknown;
  properties?: unknown;
  changes?: unknown;
  anomalies?: unknown;
  onlyOnChange?: unknown;
  ignoreUnknown?: unknown;
  forSeconds?: unknown;
  outputOnDeploy?: unknown;
}


/**
 * `tethral-state-watch` (CONTRACT §5): sends `msg.payload` (the new state), `msg.previous`,
 * `msg.change`, `msg.deviceId` and `msg.topic` when a state change or an anomaly matches its
 * filters. What matches, and the "for" wait, are `StateWatcher`'s (src/core/state-watch.ts).
 */
export default function (RED: NodeAPI): void {
  RED.nodes.registerType("tethral-state-watch", function (this: Node, def: StateWatchDef): void {
    RED.nodes.createNode(this, def);
    const node = this as SendingNode;

    let options: StateWatchOptions;
    try {
      options = parseStateWatchOptions(def);
    } catch (err) {
      refuseSettings(RED, node, "tethral-state-watch", errorMessage(err));
      return;
    }

    const use = HubUse.attach(RED, node, def.hub, RED._("tethral-state-watch.errors.no-hub"));
    if (!use) return;

    let watcher: StateWatcher | null = null;
    let fired = 0;
    let last = "";
    let shown = "";

    const show = () => {
      const waiting = watcher?.waitingCount ?? 0;
      const key = `${fired}/${waiting}`;
      if (key === shown) return;
      shown = key;
      if (waiting > 0) {
        use.status({ fill: "yellow", shape: "ring", text: RED._("tethral-state-watch.status.waiting", { waiting, count: fired }) });
      } else if (fired > 0) {
        use.ok(RED._("tethral-state-watch.status.fired", { count: fired, last }));
      } else {
        use.status({ fill: "green", shape: "ring", text: RED._("tethral-state-watch.status.watching") });
      }
    };

    const send = (out: StateWatchOutput) => {
      fired++;
      last = `${out.deviceId} ${new Date().toTimeString().slice(0, 8)}`;
      node.send({
        payload: out.state,
        previous: out.previous,
        change: out.change,
        deviceId: out.deviceId,
        topic: out.deviceId,
        causeId: out.causeId,
      });
      show();
    };

    // Subscribes to each hub the config node runs: at deploy, and again if it replaces a hub
    // that failed. A hub that stops takes its bus with it: the waits on it go too.
    use.whileRunning((hub) => {
      const w = new StateWatcher(options, hub.clock, {
        emit: send,
        current: (id) => stateOf(hub, id),
      });
      watcher = w;
      const subscription = hub.subscribe({ ...w.subscription(), name: `tethral-state-watch ${node.id}` }, (event) => {
        w.handle(event);
        show();
      });
      shown = "";
      show();
      if (options.outputOnDeploy) for (const out of w.initialOutputs(hub)) send(out);
      return () => {
        subscription.unsubscribe();
        w.stop();
        if (watcher === w) watcher = null;
      };
    });

    node.on("close", (_removed: boolean, done: () => void) => {
      use.close();
      done();
    });
  });
};

/** The device's state, or undefined once it has been removed. */
function stateOf(hub: Hub, id: string) {
  try {
    return hub.getState(id);
  } catch {
    return undefined;
  }
}
