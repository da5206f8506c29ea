import mqtt, { type MqttClient } from "mqtt";
import type { DeviceSpec } from "./options";
import type { CommandFrame } from "../../protocols/types";
import { type DeviceHost, SimulatedDevice, type Telemetry } from "./device";
import { TopicScheme } from "../../protocols/mqtt-topics";
import { parseCommand } from "./frames";

/** The hub's default topic layout (CONTRACT §2); the simulated devices use its root. */
const TOPICS = new TopicScheme();
const CONNECT_TIMEOUT_MS = 10_000;
/** How long a stopping device waits for its `offline` and DISCONNECT to go out before it cuts the socket. */
const SIGN_OFF_MS = 1000;

/**
 * An MQTT device (CONTRACT §2): user name (and, here, client id) the device id, the token its password;
 * a retained `offline` last will and a retained `online` on connect; commands on QoS 1.
 * mqtt.js's own reconnect is off: the device reconnects with the simulation's backoff instead.
 */
export class MqttDevice extends SimulatedDevice {
  private client: MqttClient | null = null;

  constructor(
    spec: DeviceSpec,
    token: string | undefined,
    host: DeviceHost,
    private readonly url: string,
  ) {
    super(spec, token, host);
  }

  get connected(): boolean {
    return this.client?.connected === true;
  }

  protected override canReport(): boolean {
    return this.connected;
  }

  private topic(level: string): string {
    return `${TOPICS.prefix}${this.id}/${level}`;
  }

  protected open(): void {
    const client = mqtt.connect(this.url, {
      clientId: this.id,
      username: this.id,
      ...(this.token === undefined ? {} : { password: this.token }),
      protocolVersion: 4,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: CONNECT_TIMEOUT_MS,
      will: { topic: this.topic("status"), payload: Buffer.from("offline"), qos: 1, retain: true },
    });
    this.client = client;
    client.on("connect", () => this.online(client));
    client.on("message", (topic, payload) => {
      if (topic === this.topic("commands")) this.command(payload);
    });
    client.on("error", (err) => {
      if (this.client === client) this.host.emit("problem", { deviceId: this.id, category: "mqtt-connection", message: `${this.id}: MQTT ${err.message}` });
    });
    client.on("close", () => {
      if (this.client !== client) return;
      this.client = null;
      client.end(true);
      this.lost("connection closed");
    });
  }

  /** Subscribed before it says `online`, so a command the hub flushes on connect is not missed. */
  private online(client: MqttClient): void {
    client.subscribe(this.topic("commands"), { qos: 1 }, (err) => {
      if (this.client !== client) return;
      if (err) {
        this.host.emit("problem", { deviceId: this.id, category: "mqtt-subscribe", message: `${this.id}: cannot subscribe to its commands: ${err.message}` });
        client.end(true);
        return;
      }
      client.publish(this.topic("status"), "online", { qos: 1, retain: true });
      this.up();
    });
  }

  private command(payload: Buffer): void {
    const frame: CommandFrame | null = parseCommand(payload.toString("utf8"));
    if (!frame) {
      this.host.emit("problem", { deviceId: this.id, category: "bad-command", message: `${this.id}: a command that is not {"id", "command", "params"} JSON` });
      return;
    }
    this.handleCommand(frame, (answer) => {
      // A slow answer goes out on whatever connection the device has by then, or is lost with it.
      this.client?.publish(this.topic("responses"), JSON.stringify({ id: frame.id, ...answer }), { qos: 1 });
    });
  }

  protected report(data: Telemetry): Promise<void> {
    const client = this.client;
    if (!client) return Promise.reject(new Error("not connected"));
    return new Promise((resolve, reject) => {
      client.publish(this.topic("telemetry"), JSON.stringify(data), { qos: 1 }, (err) => (err ? reject(err) : resolve()));
    });
  }

  protected close(how: "drop" | "stop"): Promise<void> {
    const client = this.client;
    this.client = null;
    if (!client) return Promise.resolve();
    if (how === "drop" || !client.connected) return cut(client);
    return signOff(client, this.topic("status"));
  }
}

/** The connection cut without DISCONNECT, as a device losing power: the broker publishes the will. */
function cut(client: MqttClient): Promise<void> {
  return new Promise((resolve) => {
    client.stream?.destroy();
    client.end(true, {}, () => resolve());
  });
}

/** A device switched off properly: a retained `offline`, then DISCONNECT (so the will is not needed). */
function signOff(client: MqttClient, statusTopic: string): Promise<void> {
  return new Promise((resolve) => {
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => client.end(true, {}, finish), SIGN_OFF_MS);
    client.publish(statusTopic, "offline", { qos: 1, retain: true }, () => client.end(false, {}, finish));
  });
}
