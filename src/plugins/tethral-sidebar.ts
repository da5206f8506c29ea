import type { NodeAPI } from "../nodes/types";

/**
 * The editor's Devices sidebar. Its editor side (tethral-sidebar.html beside this file) reads
 * the tethral-hub nodes' admin endpoints and follows their `tethral/devices/<hub>` comms
 * updates; this runtime side only makes Node-RED load it.
 */
export default function (RED: NodeAPI): void {
  RED.plugins?.registerPlugin("tethral-devices-sidebar", { type: "tethral-editor" });
};
