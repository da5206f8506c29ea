import { TethralError } from "../core/errors";
import type { PartitionHost, PartitionedIntake } from "../core/ports/protocol";
import type { Device, DeviceTwin } from "../core/types";
import { EmbeddedBroker } from "./mqtt-broker";
import { ExternalBroker } from "./mqtt-external";
import { TopicScheme } from "./mqtt-topics";
import type { AdapterContext, AdapterStatistics, CommandFrame, ProtocolAdapter, ProtocolHealth, SendOutcome } from "./types";

export { mqttUrlProblem } from "./mqtt-external";

export interface MqttAdapterOptions {
  /** Topic root (CONTRACT §2). Default `tethral`. */
  root?: string;

  // ── Embedded broker (the default: no `url`) ──
  /** Default 1883; 0 takes any free port (read it back from `adapter.port`). */
  port?: number;
  /** Interface to bind. Default 127.0.0.1. */
  host?: string;
  /** A broker account with access to every topic, for Node-RED's own mqtt nodes. Both or neither. */
  serviceUsername?: string;
  servicePassword?: string;
  /** Largest MQTT packet a device may send. Default: the hub's maxPayloadBytes plus 4 KiB of headers. */
  maxPacketBytes?: number;

  // ── External broker (`url` set) ──
  /** `mqtt://`, `mqtts://`, `ws://` or `wss://`. When set, no embedded broker starts. */
  url?: string;
  username?: string;
  password?: string;
  /** Default `tethral-hub-<random>`. */
  clientId?: string;
  /** 4 (MQTT 3.1.1, the default) or 5. */
  protocolVersion?: 4 | 5;
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Default true: a broker certificate that does not verify is refused. */
  rejectUnauthorized?: boolean;
  /** Default true. False keeps the broker session (and QoS 1 messages for the hub) across reconnects; give a fixed clientId. */
  clean?: boolean;
  /** Seconds between pings. Default 30. */
  keepalive?: number;
  /** First delay before reconnecting, in ms; it doubles on each failure up to `maxReconnectPeriod`. Default 1000; 0 never reconnects. */
  reconnectPeriod?: number;
  /** Default 30 000 ms. */
  maxReconnectPeriod?: number;
  /** How long `start()` waits for the first connection before it resolves anyway (and keeps trying). Default 3000 ms. */
  startTimeoutMs?: number;
  /** Subscribe to device streams as `$share/{group}/...`, so hubs in one group split the fleet's messages. */
  sharedGroup?: string;

  /** How long a connection may take: the embedded broker waits this long for CONNECT, the client for CONNACK. Default 10 s. */
  connectTimeoutMs?: number;
}

/** The part of the adapter that differs between an embedded broker and a client of an external one. */
export interface MqttMode {
  /** A port the hub listens on: only the embedded broker's, once started. */
  readonly port: number | null;
  start(context: AdapterContext): Promise<void>;
  stop(): Promise<void>;
  send(deviceId: string, frame: CommandFrame, timeoutMs: number): Promise<SendOutcome>;
  isConnected(deviceId: string): boolean | undefined;
  health(): ProtocolHealth;
  statistics(): AdapterStatistics;
  /** Closes the device's connections; only a broker the hub runs can (an external one's ACLs decide there). */
  disconnect?(deviceId: string, reason: string): void;
  publishTwin(deviceId: string, twin: DeviceTwin | null): void;
}

/**
 * MQTT devices (CONTRACT §2), through an embedded broker by default, or through an external one
 * when `url` is set. With an external broker the broker's own ACLs protect the topics: every
 * message it delivers is taken as authenticated, since device tokens cannot be checked there.
 */
export class MqttAdapter implements ProtocolAdapter {
  readonly name = "mqtt";
  readonly mode: "embedded" | "external";
  private readonly impl: MqttMode;
  private started = false;

  constructor(options: MqttAdapterOptions = {}) {
    const topics = new TopicScheme(options.root);
    if (options.url) {
      this.mode = "external";
      this.impl = new ExternalBroker(options, options.url, topics);
    } else {
      this.mode = "embedded";
      const port = options.port ?? 1883;
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new TethralError("INVALID", `MQTT port ${port}: must be 0-65535`);
      this.impl = new EmbeddedBroker({
        port,
        host: options.host ?? "127.0.0.1",
        topics,
        serviceUsername: options.serviceUsername,
        servicePassword: options.servicePassword,
        maxPacketBytes: options.maxPacketBytes,
        connectTimeoutMs: options.connectTimeoutMs,
      });
    }
  }

  /** The embedded broker's bound port; null before start and with an external broker. */
  get port(): number | null {
    return this.impl.port;
  }

  async start(context: AdapterContext): Promise<void> {
    if (this.started) throw new TethralError("UNAVAILABLE", "the MQTT adapter starts once");
    this.started = true;
    await this.impl.start(context);
  }

  stop(): Promise<void> {
    return this.impl.stop();
  }

  send(device: Device, frame: CommandFrame, timeoutMs: number): Promise<SendOutcome> {
    return this.impl.send(device.id, frame, timeoutMs);
  }

  isConnected(deviceId: string): boolean | undefined {
    return this.impl.isConnected(deviceId);
  }

  /** Embedded broker: closes the device's connection. An external broker's own ACLs decide there. */
  disconnect(deviceId: string, reason: string): void {
    this.impl.disconnect?.(deviceId, reason);
  }

  /** The twin goes to `{root}/devices/{id}/desired`, retained, QoS 1, on either kind of broker. */
  readonly retainsTwins = true;

  /** An external broker gives every cluster member the same device messages (CONTRACT §8). */
  get sharedIntake(): boolean {
    return this.mode === "external";
  }

  /** Cluster mode on an external broker: each partition's messages on a session its owner holds (see `PartitionSessions`). */
  partitioned(host: PartitionHost): PartitionedIntake | null {
    return this.impl instanceof ExternalBroker ? this.impl.partitioned(host) : null;
  }

  deviceAdded(deviceId: string): Promise<void> | null {
    return this.impl instanceof ExternalBroker ? this.impl.deviceAdded(deviceId) : null;
  }

  deviceRemoved(deviceId: string): void {
    if (this.impl instanceof ExternalBroker) this.impl.deviceRemoved(deviceId);
  }

  twinChanged(deviceId: string, twin: DeviceTwin | null): void {
    this.impl.publishTwin(deviceId, twin);
  }

  health(): ProtocolHealth {
    return this.impl.health();
  }

  statistics(): AdapterStatistics {
    return this.impl.statistics();
  }
}
