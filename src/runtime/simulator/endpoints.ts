import { DEFAULT_WEBSOCKET_PATH } from "../../protocols/websocket";
import type { ResolvedOptions } from "./options";
import { SimulationError } from "./support";

/** Where the simulated devices talk to the hub, and anything about it worth a warning. */
export interface DeviceEndpoint {
  /** `mqtt://host:port`, `coap://host:port`, `ws://host:port/path`, or the API root for HTTP devices. */
  url: string;
  warnings: string[];
}

interface Component {
  status?: unknown;
  mode?: unknown;
  host?: unknown;
  port?: unknown;
  path?: unknown;
}

const WILDCARD_HOSTS = new Set(["0.0.0.0", "::", "[::]", ""]);

/**
 * The device endpoint of the simulated protocol, from the hub's `GET /health` answer (`components`
 * `protocol:mqtt` etc.) or the user's override. A server bound to every interface is reached at
 * the host the API was reached at; one bound to a specific address, at that address.
 */
export function deviceEndpoint(options: Pick<ResolvedOptions, "api" | "protocol" | "mqtt" | "coap" | "websocket">, health: unknown): DeviceEndpoint {
  const api = new URL(options.api);
  const components = (health as { components?: Record<string, Component> } | undefined)?.components ?? {};
  const name = `protocol:${options.protocol}`;
  const component = Object.hasOwn(components, name) ? components[name] : undefined;
  const warnings: string[] = [];
  if (component && component.status !== "ok") {
    warnings.push(`the hub reports ${options.protocol} as ${String(component.status)}${"error" in component ? ` (${String(component.error)})` : ""}`);
  }
  switch (options.protocol) {
    case "mqtt":
      return { url: options.mqtt ?? mqttUrl(required(component, options.protocol, options.api), api), warnings };
    case "coap":
      return { url: options.coap ?? coapUrl(required(component, options.protocol, options.api), api), warnings };
    case "websocket":
      return { url: options.websocket ?? websocketUrl(required(component, options.protocol, options.api), api), warnings };
    case "http":
      if (!component) warnings.push(`the hub lists no protocol:http in its health: commands to the simulated devices will not reach them`);
      return { url: options.api, warnings };
  }
}

function required(component: Component | undefined, protocol: string, api: string): Component {
  if (component) return component;
  const flag = protocol === "http" ? "" : ` (or give its endpoint with --${protocol})`;
  throw new SimulationError(`the hub at ${api} serves no ${protocol} devices: its health lists no protocol:${protocol}; turn ${protocol} on in the hub${flag}`);
}

function mqttUrl(component: Component, api: URL): string {
  if (component.mode === "external") {
    throw new SimulationError("the hub uses an external MQTT broker: give the broker's URL with --mqtt mqtt://host:port");
  }
  return `mqtt://${hostOf(component, api)}:${portOf(component, "mqtt")}`;
}

function coapUrl(component: Component, api: URL): string {
  return `coap://${hostOf(component, api)}:${portOf(component, "coap")}`;
}

/** On the API's own server (Node-RED's), at the path the hub names. */
function websocketUrl(component: Component, api: URL): string {
  const path = typeof component.path === "string" && component.path.startsWith("/") ? component.path : DEFAULT_WEBSOCKET_PATH;
  return `${api.protocol === "https:" ? "wss:" : "ws:"}//${api.host}${path}`;
}

function hostOf(component: Component, api: URL): string {
  const host = typeof component.host === "string" ? component.host.trim() : "";
  if (WILDCARD_HOSTS.has(host)) return api.hostname;
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

function portOf(component: Component, protocol: string): number {
  const port = component.port;
  if (typeof port !== "number" || !Number.isInteger(port) || port <= 0) {
    throw new SimulationError(`the hub's health names no ${protocol} port: give the endpoint with --${protocol}`);
  }
  return port;
}
