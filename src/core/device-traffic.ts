import type { Clock } from "./clock";
import { type TethralError, invalid, notFound } from "./errors";
import type { EventBus } from "./events";
import { newId } from "./ids";
import { type InboundMessage, type IngestResult, parseInbound } from "./inbound";
import type { ProtocolCounters } from "./ports/protocol";
import type { Presence } from "./presence";
import type { Refusals } from "./refusals";
import type { DeviceRegistry } from "./registry";
import type { StateManager } from "./state";
import type { TimeSeries } from "./telemetry";
import type { DeviceStatus, JsonObject } from "./types";

/**
 * What a device sent, taken in: `ingest` checks the message (a bad one is refused through
 * `Refusals` and changes nothing), parses it once, hands its sign of life and status to
 * `Presence` and its values to the state manager, and publishes `message.received`. Counts the
 * messages received.
 */
export class DeviceTraffic {
  private readonly messages = { received: 0, byKind: { telemetry: 0, heartbeat: 0, state: 0, status: 0 } };

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly state: StateManager,
    private readonly presence: Presence,
    private readonly refusals: Refusals,
    private readonly events: EventBus,
    private readonly clock: Clock,
    private readonly series: TimeSeries,
    /** A device whose registration is not durable yet: refused like an unknown one. */
    private readonly pending: (id: string) => boolean = () => false,
  ) {}

  /** See `Hub.ingest`. `counters`: the protocol's, when the message came through the gateway. */
  ingest(deviceId: string, message: InboundMessage, counters?: ProtocolCounters): IngestResult {
    if (typeof message !== "object" || message === null) {
      throw this.refusals.refuse(deviceId, null, undefined, invalid("message", "must be an object with a kind"), "invalid-payload", counters);
    }
    const protocol = message.protocol ?? null;
    if (protocol !== null && (typeof protocol !== "string" || protocol.length > 32)) {
      throw this.refusals.refuse(deviceId, null, message.kind, invalid("protocol", "must be a protocol name"), "invalid-payload", counters);
    }
    if (message.causeId !== undefined && (typeof message.causeId !== "string" || message.causeId.length > 128)) {
      throw this.refusals.refuse(deviceId, protocol, message.kind, invalid("causeId", "must be text of at most 128 characters"), "invalid-payload", counters);
    }
    const record = this.registry.record(deviceId);
    if (!record || this.pending(deviceId)) {
      throw this.refusals.refuse(
        deviceId,
        protocol,
        message.kind,
        notFound("device", typeof deviceId === "string" ? deviceId.slice(0, 128) : String(deviceId)),
        "unknown-device",
        counters,
      );
    }
    let properties: JsonObject | null = null;
    let reported: DeviceStatus | null = null;
    if (message.kind !== "heartbeat") {
      try {
        ({ properties, reported } = parseInbound(message));
        if (properties) this.state.checkCapacity(deviceId, properties);
      } catch (err) {
        throw this.refusals.refuse(deviceId, protocol, message.kind, err as TethralError, "invalid-payload", counters);
      }
    }

    const now = this.clock.now();
    // A cause id is made only when something changes: a plain heartbeat allocates nothing.
    let causeId = message.causeId ?? null;
    const source = protocol ?? "device";
    const retained = message.retained === true;
    let changed = false;
    if (retained) {
      // A broker's stored copy, replayed because the hub (re)subscribed: it may be hours old.
      // Its values are still the best known, but it proves nothing about now: no heartbeat, no
      // online, no error. Only a retained offline counts, as what it is: the broker's record of
      // the device's last will, kept for a hub that was away when the device went. Neither
      // feeds anomaly detection, which would otherwise count each replay again.
      if (properties) {
        changed = this.state.report(deviceId, properties, { causeId: (causeId ??= newId()), source, reason: `retained-${message.kind}`, retained: true });
      }
      if (reported === "offline") {
        changed = this.presence.offline(deviceId, "retained", { causeId: (causeId ??= newId()), source, retained: true }) || changed;
      }
    } else if (reported === "offline") {
      changed = this.presence.offline(deviceId, "reported", { causeId: (causeId ??= newId()), source });
    } else {
      if (this.presence.beat(record, now)) {
        this.presence.online(record, { causeId: (causeId ??= newId()), source });
        changed = true;
      }
      if (properties) {
        const series = message.kind === "telemetry" && this.series.enabled;
        changed = this.state.report(deviceId, properties, { causeId: (causeId ??= newId()), source, reason: message.kind, series }) || changed;
        if (series) this.series.record(record, properties, now);
      }
      if (reported === "error" || reported === "online") {
        changed = this.presence.reported(record, reported, { causeId: (causeId ??= newId()), source }) || changed;
      }
    }
    this.messages.received++;
    this.messages.byKind[message.kind]++;
    if (this.events.hasSubscribers("message.received", deviceId) || this.events.keepsHistoryOf("message.received")) {
      this.events.publish("message.received", { kind: message.kind, protocol, data: message.data ?? null, retained }, {
        deviceId,
        source,
        causeId: (causeId ??= newId()),
        report: { status: reported, properties },
      });
    }
    return { deviceId, status: record.status, changed, causeId };
  }

  /** Messages received and refused so far, by kind (a copy). */
  statistics(): { received: number; rejected: number; byKind: Record<string, number> } {
    return { received: this.messages.received, rejected: this.refusals.rejected, byKind: { ...this.messages.byKind } };
  }
}
