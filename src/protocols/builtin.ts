import { TethralError } from "../core/errors";
import { CoapAdapter } from "./coap";
import { HttpAdapter } from "./http";
import { MqttAdapter } from "./mqtt";
import type { ProtocolCreateOptions, ProtocolPlugin } from "./types";
import { WebSocketAdapter } from "./websocket";

const str = (v: unknown): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);

/**
 * The four protocols of CONTRACT §2 as `tethral-protocol` plugins. The plugin module registers
 * them with Node-RED; the hub config node also uses them directly, since Node-RED's test
 * helper (and an embedding without plugins) has no plugin registry.
 */
export const BUILTIN_PROTOCOLS: readonly ProtocolPlugin[] = [
  {
    type: "tethral-protocol",
    protocol: "mqtt",
    create({ settings: s, credentials: c, host }: ProtocolCreateOptions) {
      const external = s.mode === "external";
      if (external && !str(s.url)) throw new TethralError("INVALID", "mqtt: an external broker needs a URL", [{ field: "mqttUrl", message: "is required for an external broker" }]);
      return new MqttAdapter({
        root: str(s.topicRoot),
        ...(external
          ? {
              url: str(s.url),
              username: str(s.username),
              password: str(c.mqttPassword),
              clientId: str(s.clientId),
              protocolVersion: s.protocolVersion === 5 ? 5 : 4,
              ca: str(c.mqttCa),
              cert: str(c.mqttCert),
              key: str(c.mqttKey),
              rejectUnauthorized: s.rejectUnauthorized !== false,
              sharedGroup: str(s.sharedGroup),
            }
          : {
              port: num(s.port),
              host,
              ...(str(s.serviceUsername) && str(c.mqttServicePassword)
                ? { serviceUsername: str(s.serviceUsername), servicePassword: str(c.mqttServicePassword) }
                : {}),
            }),
      });
    },
  },
  {
    type: "tethral-protocol",
    protocol: "coap",
    create({ settings: s, host }: ProtocolCreateOptions) {
      return new CoapAdapter({ port: num(s.port), host });
    },
  },
  {
    type: "tethral-protocol",
    protocol: "websocket",
    create({ settings: s, httpServer }: ProtocolCreateOptions) {
      // Without Node-RED's server there is nothing to attach to (an embedding without HTTP).
      if (!httpServer) return null;
      return new WebSocketAdapter({ server: httpServer, path: str(s.path) });
    },
  },
  {
    type: "tethral-protocol",
    protocol: "http",
    create() {
      return new HttpAdapter();
    },
  },
];
