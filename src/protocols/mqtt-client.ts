import createDebug from "debug";
import type { IClientOptions } from "mqtt";
import type { MqttAdapterOptions } from "./mqtt";

/**
 * What every client the hub makes of an external broker shares (its own, and the cluster's
 * partition sessions): credentials, TLS, keep-alive, and reconnection and subscribing left to
 * the caller, which does them after each connection.
 */
export function hubClientOptions(o: MqttAdapterOptions): IClientOptions {
  return {
    username: o.username,
    password: o.password,
    keepalive: o.keepalive ?? 30,
    connectTimeout: o.connectTimeoutMs ?? 10_000,
    reconnectPeriod: 0,
    resubscribe: false,
    ca: o.ca,
    cert: o.cert,
    key: o.key,
    rejectUnauthorized: o.rejectUnauthorized ?? true,
    log: mqttClientLog(),
    wsOptions: { ...WS_OPTIONS },
  };
}

/**
 * Over a `ws://` or `wss://` broker, no permessage-deflate (which `ws` asks for by default): a
 * compressed frame is inflated on the thread pool and reaches mqtt.js in a later turn than the
 * one that read it, behind that turn's timers and setImmediate callbacks. A takeover's
 * redelivery (mqtt-partitions.ts) and a cluster call's deadline (mqtt-link.ts) rely on a
 * message read in a turn being handled in it. MQTT packets are small and mostly JSON already.
 * mqtt.js still copies the TLS options into it for `wss://`.
 */
export const WS_OPTIONS = { perMessageDeflate: false } as const;

/** The hub's mqtt.js clients' logger when mqtt.js's is not asked for (see `mqttClientLog`). */
export const noLog = (): void => undefined;

/**
 * mqtt.js logs every packet through the `debug` package, whose disabled logger still gathers
 * each call's arguments into an array first (`debug(...args)`): about ten calls a command's
 * round trip, 12% of the bytes the hub allocated under bench:comm's commands, and those
 * allocations are what sets how often minor garbage collections pause the hub. Unless `debug`
 * has mqtt.js's client log enabled (`DEBUG=mqttjs* npm start`: then mqtt.js's own logger, which
 * shows its packets as before), the hub's clients log nowhere. mqtt.js's connection modules and
 * its packet parser keep loggers of their own.
 */
export function mqttClientLog(): IClientOptions["log"] {
  return createDebug.enabled("mqttjs:client") ? undefined : noLog;
}
