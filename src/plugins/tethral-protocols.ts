import { BUILTIN_PROTOCOLS } from "../protocols/builtin";
import type { NodeAPI } from "../nodes/types";

/**
 * Registers the built-in protocols as Node-RED plugins of type `tethral-protocol`. Another
 * package adds a protocol the same way: `RED.plugins.registerPlugin(id, {type:
 * "tethral-protocol", protocol, create})`; every tethral-hub node picks up each one it finds.
 */
export default function (RED: NodeAPI): void {
  for (const plugin of BUILTIN_PROTOCOLS) RED.plugins?.registerPlugin(`tethral-protocol-${plugin.protocol}`, plugin);
};
