import { z } from "zod";
import { TethralError } from "../core/errors";
import { parseInput } from "../core/validation";
import { setting, toBoolean, toChoice, toNumber, toText, unresolvedEnv } from "./hub-config";
import { mqttUrlProblem } from "../protocols/mqtt";

/**
 * The communication settings of a tethral-hub node: device tokens, MQTT (embedded broker or an
 * external one), CoAP, WebSocket. A blank field means "from the environment, else the default"
 * (CONTRACT §6), so `npm start` with `TETHRAL_MQTT_URL=...` needs no edit of the flow.
 */
export interface CommunicationConfig {
  /** null: TETHRAL_DEVICE_TOKENS, else on. */
  deviceTokens: boolean | null;
  selfRegistration: boolean;
  maxPayloadKb: number;
  commandTimeout: number;
  /** auto: external when TETHRAL_MQTT_URL is set, else embedded. */
  mqttBroker: (typeof MQTT_BROKERS)[number];
  /** null: TETHRAL_MQTT_PORT, else 1883. */
  mqttPort: number | null;
  /** For `external`; with `auto`, TETHRAL_MQTT_URL. */
  mqttUrl: string;
  mqttUsername: string;
  mqttClientId: string;
  mqttProtocolVersion: 4 | 5;
  mqttTopicRoot: string;
  /** Subscribe as `$share/<group>/...` so several hubs split one fleet (external broker). */
  mqttSharedGroup: string;
  mqttRejectUnauthorized: boolean;
  /** A user name for the embedded broker that may use every topic (Node-RED's own mqtt nodes). */
  mqttServiceUsername: string;
  coap: boolean;
  /** null: TETHRAL_COAP_PORT, else 5683. */
  coapPort: number | null;
  websocket: boolean;
  websocketPath: string;
}

/** Secrets of the communication settings, kept as Node-RED credentials. */
export interface CommunicationCredentials {
  mqttPassword?: string;
  mqttServicePassword?: string;
  mqttCa?: string;
  mqttCert?: string;
  mqttKey?: string;
}

export const COMMUNICATION_CREDENTIALS = ["mqttPassword", "mqttServicePassword", "mqttCa", "mqttCert", "mqttKey"] as const;

export const MQTT_BROKERS = ["auto", "embedded", "external", "off"] as const;

/** Settings as the protocol plugins receive them, with the environment applied. */
export interface ProtocolSettings {
  deviceTokens: boolean;
  selfRegistration: boolean;
  maxPayloadBytes: number;
  commandTimeoutSec: number;
  /** Interface servers bind to: HOST, else 127.0.0.1. */
  host: string;
  mqtt: null | {
    mode: "embedded" | "external";
    port: number;
    url: string;
    username: string;
    clientId: string;
    protocolVersion: 4 | 5;
    topicRoot: string;
    sharedGroup: string;
    rejectUnauthorized: boolean;
    serviceUsername: string;
  };
  coap: null | { port: number };
  websocket: null | { path: string };
  http: Record<string, never>;
}

/** A port, or null when blank (the environment's or the default port then). */
const port = z.preprocess(
  toNumber,
  z.number({ error: "must be a port number" }).int("must be a port number").min(0, "must be a port number").max(65535, "must be a port number").nullable().default(null),
);

/** Text with a pattern; a `${VAR}` left unresolved is named rather than taken literally. */
const patterned = (max: number, fallback: string, pattern: RegExp, message: string) =>
  z.preprocess(
    (v, ctx) => (typeof v === "string" && unresolvedEnv(v.trim(), ctx) ? z.NEVER : toText(v)),
    z.string({ error: "must be text" }).max(max, `must be at most ${max} characters`).regex(pattern, message).default(fallback),
  );

const communicationSchema = z
  .object({
    // Blank is "automatic" here (TETHRAL_DEVICE_TOKENS), not "off".
    deviceTokens: z.preprocess((v, ctx) => (toText(v) === undefined ? undefined : toBoolean(v, ctx)), z.boolean({ error: "must be true or false" }).nullable().default(null)),
    selfRegistration: setting.flag(false),
    maxPayloadKb: setting.between(1, 16 * 1024, 256),
    commandTimeout: setting.between(0.1, 3600, 10),
    mqttBroker: z.preprocess(toChoice, z.enum(MQTT_BROKERS, { error: `must be one of ${MQTT_BROKERS.join(", ")}` }).default("auto")),
    mqttPort: port,
    mqttUrl: setting.text(2048, ""),
    mqttUsername: setting.text(256, ""),
    mqttClientId: setting.text(128, ""),
    mqttProtocolVersion: z.preprocess(toNumber, z.union([z.literal(4), z.literal(5)], { error: "must be 4 (MQTT 3.1.1) or 5" }).default(4)),
    mqttTopicRoot: patterned(128, "tethral", /^[^#+/][^#+]*$/, "must be a topic level without #, + or a leading /"),
    mqttSharedGroup: patterned(64, "", /^[^#+/]*$/, "must not contain #, + or /"),
    mqttRejectUnauthorized: setting.flag(true),
    mqttServiceUsername: setting.text(128, ""),
    coap: setting.flag(true),
    coapPort: port,
    websocket: setting.flag(true),
    websocketPath: patterned(256, "/tethral/ws", /^\/[A-Za-z0-9/_.~-]*$/, "must be a path such as /tethral/ws"),
  })
  .superRefine((c, ctx) => {
    if (c.mqttBroker === "external") {
      if (c.mqttUrl === "") ctx.addIssue({ code: "custom", path: ["mqttUrl"], message: "is required for an external broker" });
      else {
        const problem = mqttUrlProblem(c.mqttUrl);
        if (problem) ctx.addIssue({ code: "custom", path: ["mqttUrl"], message: problem });
      }
    }
  });

export function parseCommunicationConfig(def: unknown): CommunicationConfig {
  return parseInput(communicationSchema, def, "Tethral hub settings") as CommunicationConfig;
}

function envError(variable: string, message: string): TethralError {
  return new TethralError("INVALID", `invalid environment variable ${variable}: ${message}`, [{ field: variable, message }]);
}

function envPort(env: NodeJS.ProcessEnv, variable: string, fallback: number): number {
  const raw = env[variable]?.trim();
  if (!raw) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) > 65535) throw envError(variable, "must be a port number (0-65535)");
  return Number(raw);
}

/** The settings with the environment applied (CONTRACT §6); INVALID names a bad variable. */
export function protocolSettingsFor(config: CommunicationConfig, env: NodeJS.ProcessEnv = process.env, uiHost?: string): ProtocolSettings {
  let deviceTokens = config.deviceTokens;
  if (deviceTokens === null) {
    const raw = env.TETHRAL_DEVICE_TOKENS?.trim().toLowerCase();
    if (!raw) deviceTokens = true;
    else if (["on", "true", "yes", "1"].includes(raw)) deviceTokens = true;
    else if (["off", "false", "no", "0"].includes(raw)) deviceTokens = false;
    else throw envError("TETHRAL_DEVICE_TOKENS", "must be on or off");
  }
  const host = env.HOST?.trim() || uiHost || "127.0.0.1";
  let mqtt: ProtocolSettings["mqtt"] = null;
  if (config.mqttBroker !== "off") {
    let mode: "embedded" | "external" = config.mqttBroker === "external" ? "external" : "embedded";
    let url = config.mqttUrl;
    if (config.mqttBroker === "auto") {
      const fromEnv = env.TETHRAL_MQTT_URL?.trim();
      if (fromEnv) {
        const problem = mqttUrlProblem(fromEnv);
        if (problem) throw envError("TETHRAL_MQTT_URL", problem);
        mode = "external";
        url = fromEnv;
      }
    }
    mqtt = {
      mode,
      port: config.mqttPort ?? envPort(env, "TETHRAL_MQTT_PORT", 1883),
      url,
      username: config.mqttUsername,
      clientId: config.mqttClientId,
      protocolVersion: config.mqttProtocolVersion,
      topicRoot: config.mqttTopicRoot,
      sharedGroup: config.mqttSharedGroup,
      rejectUnauthorized: config.mqttRejectUnauthorized,
      serviceUsername: config.mqttServiceUsername,
    };
  }
  return {
    deviceTokens,
    selfRegistration: config.selfRegistration,
    maxPayloadBytes: Math.round(config.maxPayloadKb * 1024),
    commandTimeoutSec: config.commandTimeout,
    host,
    mqtt,
    coap: config.coap ? { port: config.coapPort ?? envPort(env, "TETHRAL_COAP_PORT", 5683) } : null,
    websocket: config.websocket ? { path: config.websocketPath } : null,
    http: {},
  };
}
