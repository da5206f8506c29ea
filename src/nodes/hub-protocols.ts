import { errorMessage } from "../core/errors";
import { PROTOCOL_PATTERN } from "../core/validation";
import { BUILTIN_PROTOCOLS } from "../protocols/builtin";
import type { ProtocolAdapter, ProtocolPlugin } from "../protocols/types";
import type { CommunicationCredentials, ProtocolSettings } from "./protocol-config";
import type { NodeAPI } from "./types";


function isProtocolPlugin(p: unknown): p is ProtocolPlugin {
  const plugin = p as Partial<ProtocolPlugin> | null;
  return (
    typeof plugin === "object" &&
    plugin !== null &&
    plugin.type === "tethral-protocol" &&
    typeof plugin.protocol === "string" &&
    PROTOCOL_PATTERN.test(plugin.protocol) &&
    typeof plugin.create === "function"
  );
}

/**
 * The protocol plugins this hub uses: the built-ins, and every `tethral-protocol` plugin
 * installed in Node-RED (a plugin of the same protocol name replaces the built-in one).
 */
export function protocolPlugins(RED: NodeAPI, warn: (message: string) => void): ProtocolPlugin[] {
  const byName = new Map<string, ProtocolPlugin>();
  for (const p of BUILTIN_PROTOCOLS) byName.set(p.protocol, p);
  let installed: unknown[];
  try {
    installed = RED.plugins?.getByType?.("tethral-protocol") ?? [];
  } catch {
    // An older runtime without plugin lookup by type: the built-ins only.
    installed = [];
  }
  for (const p of installed) {
    if (isProtocolPlugin(p)) byName.set(p.protocol, p);
    else warn(`ignored a tethral-protocol plugin without a valid protocol name and create()`);
  }
  return [...byName.values()];
}

/** One adapter per enabled protocol, made from the hub's settings. */
export function adaptersFor(
  plugins: ProtocolPlugin[],
  settings: ProtocolSettings,
  credentials: CommunicationCredentials,
  httpServer: import("node:http").Server | undefined,
  warn: (message: string) => void,
): ProtocolAdapter[] {
  const adapters: ProtocolAdapter[] = [];
  const sections = settings as unknown as Record<string, unknown>;
  for (const plugin of plugins) {
    const section = Object.hasOwn(sections, plugin.protocol) ? sections[plugin.protocol] : {};
    // A built-in protocol turned off in the settings.
    if (section === null) continue;
    try {
      const adapter = plugin.create({
        settings: (section ?? {}) as Record<string, unknown>,
        credentials: credentials as Record<string, string>,
        host: settings.host,
        ...(httpServer && { httpServer }),
      });
      if (adapter) adapters.push(adapter);
    } catch (err) {
      warn(`protocol ${plugin.protocol} could not be set up: ${errorMessage(err)}`);
    }
  }
  return adapters;
}
