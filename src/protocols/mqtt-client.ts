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
  };
}
