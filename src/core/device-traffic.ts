import type { Clock } from "./clock";
import { type TethralError, invalid, notFound } from "./errors";
import type { EventBus } from "./events";
import type { HeartbeatMonitor, HeartbeatTracker } from "./heartbeat";
import { newId } from "./ids";
import { type InboundMessage, type IngestResult, parseInbound } from "./inbound";
import { iso, isoOrNull } from "./json";
import type { DeviceRegistry } from "./registry";
import type { ChangeCause, StateManager } from "./state";
import type { DeviceStatus, JsonObject } from "./types";
import { DEVICE_ID_PATTERN } from "./validation";
import type { Persistence } from "../store/persistence";

const MAX_REFUSAL_KEYS = 256;
const OVERFLOW_KEY = "other\u0000other";

/**
 * A device's traffic and its silence: `ingest` takes in what a device sent, `expire` takes a
 * device offline when the heartbeat monitor has heard nothing for too long. Counts the messages
 * received and refused. The hub owns one and hands it device traffic and heartbeat expiries.
 */
export class DeviceTraffic {
  private readonly messages = { received: 0, rejected: 0, byKind: { telemetry: 0, heartbeat: 0, state: 0, status: 0 } };
  /** Refusals by protocol and reason (a refusal is rare next to the traffic: a map is cheap enough). */
  private readonly refusals = new Map<string, { protocol: string; reason: string; count: number }>();

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly state: StateManager,
    private readonly heartbeat: HeartbeatMonitor,
    private readonly events: EventBus,
    private readonly clock: Clock,
    private readonly persistence: Persistence | null,
    /** A device whose registration is not durable yet: refused like an unknown one. */
    private readonly pending: (id: string) => boolean = () => false,
  ) {}

  /** See `Hub.ingest`. */
  ingest(deviceId: string, message: InboundMessage): IngestResult {
    if (typeof message !== "object" || message === null) {
      throw this.reject(deviceId, null, undefined, invalid("message", "must be an object with a kind"), "invalid-payload");
    }
    const protocol = message.protocol ?? null;
    if (protocol !== null && (typeof protocol !== "string" || protocol.length > 32)) {
      throw this.reject(deviceId, null, message.kind, invalid("protocol", "must be a protocol name"), "invalid-payload");
    }
    if (message.causeId !== undefined && (typeof message.causeId !== "string" || message.causeId.length > 128)) {
      throw this.reject(deviceId, protocol, message.kind, invalid("causeId", "must be text of at most 128 characters"), "invalid-payload");
    }
    const record = this.registry.record(deviceId);
    if (!record || this.pending(deviceId)) {
      throw this.reject(deviceId, protocol, message.kind, notFound("device", typeof deviceId === "string" ? deviceId.slice(0, 128) : String(deviceId)), "unknown-device");
    }
    let properties: JsonObject | null = null;
    let reported: DeviceStatus | null = null;
    if (message.kind !== "heartbeat") {
      try {
        ({ properties, reported } = parseInbound(message));
        if (properties) this.state.checkCapacity(deviceId, properties);
      } catch (err) {
        throw this.reject(deviceId, protocol, message.kind, err as TethralError, "invalid-payload");
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
        changed = this.goOffline(deviceId, record.lastSeen, "retained", { causeId: (causeId ??= newId()), source, retained: true }) || changed;
      }
    } else if (reported === "offline") {
      changed = this.goOffline(deviceId, record.lastSeen, "reported", { causeId: (causeId ??= newId()), source, reason: "reported" });
    } else {
      record.lastSeen = now;
      this.persistence?.markPresence(deviceId);
      // Heartbeat bookkeeping starts with a device's first message: registering costs none.
      const tracker = (record.heartbeat as HeartbeatTracker | undefined) ?? this.heartbeat.track(deviceId, record.heartbeatTimeout);
      if (this.heartbeat.beatTracker(tracker, now) && record.status !== "online" && record.status !== "maintenance") {
        const previous = record.status;
        this.state.setStatus(deviceId, "online", { causeId: (causeId ??= newId()), source, reason: "heartbeat" });
        this.events.publish("device.online", { previous, lastSeen: iso(now) }, { deviceId, source: "heartbeat", causeId });
        changed = true;
      }
      if (properties) {
        changed = this.state.report(deviceId, properties, { causeId: (causeId ??= newId()), source, reason: message.kind }) || changed;
      }
      if ((reported === "error" && record.status !== "maintenance") || (reported === "online" && record.status === "error")) {
        changed = this.state.setStatus(deviceId, reported, { causeId: (causeId ??= newId()), source, reason: "reported" }) || changed;
      }
    }
    this.messages.received++;
    this.messages.byKind[message.kind]++;
    if (this.events.hasSubscribers("message.received", deviceId)) {
      this.events.publish("message.received", { kind: message.kind, protocol, data: message.data ?? null, retained }, {
        deviceId,
        source,
        causeId: (causeId ??= newId()),
        report: { status: reported, properties },
      });
    }
    return { deviceId, status: record.status, changed, causeId };
  }

  /** Counts a refused message and publishes `message.rejected`; returns the error to throw or answer. */
  reject(deviceId: string, protocol: string | null, kind: unknown, error: TethralError, reason: string): TethralError {
    this.messages.rejected++;
    this.countRefusal(protocol ?? "none", reason);
    this.events.publish(
      "message.rejected",
      { reason, protocol, kind: typeof kind === "string" ? kind.slice(0, 32) : undefined, error: error.message },
      { deviceId: typeof deviceId === "string" && DEVICE_ID_PATTERN.test(deviceId) ? deviceId : null, source: protocol ?? "device", priority: "low" },
    );
    return error;
  }

  private countRefusal(protocol: string, reason: string): void {
    const key = `${protocol}\u0000${reason}`;
    let entry = this.refusals.get(key);
    if (!entry) {
      // Reasons come from the hub's and the adapters' own short lists; this bound only guards a
      // plugin that would put a message's content into its reason.
      if (this.refusals.size >= MAX_REFUSAL_KEYS && key !== OVERFLOW_KEY) return this.countRefusal("other", "other");
      this.refusals.set(key, (entry = { protocol, reason, count: 0 }));
    }
    entry.count++;
  }

  /** Refused messages by protocol ("none" for a flow's own report) and reason, as counted so far. */
  refusalCounts(): Iterable<{ protocol: string; reason: string; count: number }> {
    return [...this.refusals.values()].map((r) => ({ ...r }));
  }

  /** The heartbeat monitor's expiry: the device was silent past its timeout. */
  expire(id: string, lastSeen: number, timeoutMs: number): void {
    const record = this.registry.record(id);
    if (!record) return;
    this.goOffline(id, lastSeen, "timeout", { source: "heartbeat" }, timeoutMs);
  }

  /** Offline and its event, unless maintenance (alarms suppressed) or already there. */
  private goOffline(id: string, lastSeen: number, reason: string, cause: ChangeCause, timeoutMs?: number): boolean {
    const record = this.registry.record(id)!;
    this.heartbeat.markOffline(id);
    if (record.status === "maintenance" || record.status === "offline" || record.status === "unknown") return false;
    const previous = record.status;
    this.state.setStatus(id, "offline", { ...cause, reason: reason === "timeout" ? "heartbeat-timeout" : reason });
    this.events.publish(
      "device.offline",
      {
        previous,
        lastSeen: isoOrNull(lastSeen),
        timeout: (timeoutMs ?? this.heartbeat.effectiveTimeoutSec(id) * 1000) / 1000,
        reason,
      },
      { deviceId: id, source: "heartbeat", priority: "high", causeId: cause.causeId ?? null },
    );
    return true;
  }

  /** Messages received and refused so far, by kind (a copy). */
  statistics(): { received: number; rejected: number; byKind: Record<string, number> } {
    return { ...this.messages, byKind: { ...this.messages.byKind } };
  }
}
