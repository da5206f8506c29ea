import type { Clock } from "./clock";
import type { EventBus } from "./events";
import { DEFAULT_HEARTBEAT_OPTIONS, HeartbeatMonitor, type HeartbeatOptions } from "./heartbeat";
import { isoOrNull } from "./json";
import { type DeepPartial, merge } from "./options";
import { type DeviceRecord, type DeviceRegistry, toDevice } from "./registry";
import type { ChangeCause, StateManager } from "./state";
import { plainConstructor } from "./plain";
import type { DeviceStatus, EventMap } from "./types";

/** What presence tells the rest of the hub. */
export interface PresenceHooks {
  /** A device's status or lastSeen changed: the write-behind store batches it. */
  presenceChanged(id: string): void;
  /** A device is reachable again: commands waiting for it go out. */
  back(id: string): void;
  /** A device has been offline longer than the retention age: remove it durably. */
  purge(id: string): void;
  /**
   * Cluster mode: whether this member applies the device's changes now. A member that wakes from
   * a freeze past its lease finds its heartbeat deadlines overdue before it learns its partitions
   * are gone: those deadlines are its successor's, and pass here without a word.
   */
  owns?(id: string): boolean;
}

/** A stored device's presence, as the hub loads it at start. */
export interface StoredPresence {
  id: string;
  status: DeviceStatus;
  lastSeen: number;
  heartbeatTimeout: number | null;
  /** When the device record last changed (a moment the hub that stored it was up). */
  updatedAt?: number;
  /** The timeout adaptive timeouts had learned, in ms (0 or absent: none). */
  learnedTimeout?: number;
  /** From when the device counted as offline for retention (0 or absent: not kept). */
  offlineSince?: number;
}

/**
 * The one owner of a device's presence: every status transition (a message, a silence past the
 * timeout, a device saying it is going, a user's change, the restore at start) is decided here,
 * with its `device.online` / `device.offline` event and the heartbeat bookkeeping that goes with
 * it, and the command tracker is told directly when a device is back.
 */
export class Presence {
  readonly heartbeat: HeartbeatMonitor;

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly state: StateManager,
    private readonly events: EventBus,
    clock: Clock,
    options: DeepPartial<HeartbeatOptions> | undefined,
    private readonly hooks: PresenceHooks,
  ) {
    this.heartbeat = new HeartbeatMonitor(
      clock,
      merge(DEFAULT_HEARTBEAT_OPTIONS, options),
      {
        onExpire: (id, lastSeen, timeoutMs) => this.expire(id, lastSeen, timeoutMs),
        onPurge: (id) => {
          if (this.registry.record(id)?.status === "offline") this.hooks.purge(id);
        },
        onTimeoutLearned: (id, sec) => this.timeoutLearned(id, sec),
      },
      // The trackers live on the device records: no map entry per device, no lookup per heartbeat.
      {
        get: (id) => registry.record(id)?.heartbeat,
        set: (id, tracker) => {
          const record = registry.record(id);
          if (record) record.heartbeat = tracker;
        },
        delete: (id) => {
          const record = registry.record(id);
          if (record) record.heartbeat = undefined;
        },
      },
    );
  }

  start(): void {
    this.heartbeat.start();
  }

  stop(): void {
    this.heartbeat.stop();
  }

  /**
   * Heartbeats resume from the stored lastSeen: a device silent while the hub was down goes
   * offline as soon as its timeout has passed. Retention counts its offline time only while a hub
   * was up (see `HeartbeatMonitor.resumeAfterRestart`).
   */
  restore(rows: readonly StoredPresence[], now: number, lastEventAt = 0): void {
    // The previous run was up at least until the latest moment it stamped on a device or an event.
    let lastAlive = lastEventAt;
    for (const row of rows) lastAlive = Math.max(lastAlive, row.lastSeen, row.updatedAt ?? 0);
    this.heartbeat.resumeAfterRestart(lastAlive, now);
    for (const row of rows) {
      const alive = row.status === "online" || row.status === "error";
      if (row.lastSeen > 0) {
        const t = this.heartbeat.track(row.id, row.heartbeatTimeout ?? undefined, row.lastSeen, alive, { learnedMs: row.learnedTimeout, offlineSince: row.offlineSince });
        // Its offline time with this downtime left out, stored at once: the next restart counts from it.
        const since = this.heartbeat.offlineSinceOf(t);
        if (since !== 0 && since !== row.offlineSince) this.hooks.presenceChanged(row.id);
      } else if (alive) {
        // Set online by hand and never heard from: it gets one timeout from now, as before the restart.
        this.heartbeat.track(row.id, row.heartbeatTimeout ?? undefined);
        this.heartbeat.revive(row.id);
      }
      // A device never heard from otherwise gets its heartbeat bookkeeping with its first message.
    }
  }

  /**
   * A sign of life from a device (any message but an offline report or a broker's replay):
   * stamps lastSeen. True when it brings the device online; the caller then calls `online` with
   * the message's cause (made only then, so a plain heartbeat allocates nothing).
   */
  beat(record: DeviceRecord, now: number): boolean {
    record.lastSeen = now;
    this.hooks.presenceChanged(record.id);
    // Heartbeat bookkeeping starts with a device's first message: registering costs none.
    const tracker = record.heartbeat ?? this.heartbeat.track(record.id, record.heartbeatTimeout);
    return this.heartbeat.beatTracker(tracker, now) && record.status !== "online" && record.status !== "maintenance";
  }

  /** Brings a device online after `beat` said so. */
  online(record: DeviceRecord, cause: ChangeCause): void {
    const previous = record.status;
    this.state.setStatus(record.id, "online", { ...cause, reason: "heartbeat" });
    this.announceOnline(record, previous, cause, "heartbeat");
  }

  /** A status the device reports about itself (error, or online again after an error). */
  reported(record: DeviceRecord, status: "online" | "error", cause: ChangeCause): boolean {
    if (status === "error" ? record.status === "maintenance" : record.status !== "error") return false;
    return this.state.setStatus(record.id, status, { ...cause, reason: "reported" });
  }

  /**
   * Offline and its event, unless maintenance (alarms suppressed) or already there. `reason`:
   * `reported` (the device said so), `retained` (a broker's record of its last will) or `timeout`.
   */
  offline(id: string, reason: "reported" | "retained" | "timeout", cause: ChangeCause, timeoutMs?: number, lastSeen?: number): boolean {
    const record = this.registry.record(id);
    if (!record) return false;
    this.heartbeat.markOffline(id);
    if (record.status === "maintenance" || record.status === "offline" || record.status === "unknown") return false;
    const previous = record.status;
    this.state.setStatus(id, "offline", { ...cause, reason: reason === "timeout" ? "heartbeat-timeout" : reason });
    this.announceOffline(record, previous, reason, cause, "heartbeat", timeoutMs, lastSeen);
    return true;
  }

  /**
   * A user's status change has been applied (the state manager recorded it): the heartbeat
   * follows it and the change is announced as any other. `online` starts a fresh timeout,
   * `offline` or `unknown` stops expecting traffic (the next message brings the device online).
   */
  userChanged(id: string, previous: DeviceStatus, cause: ChangeCause): void {
    const record = this.registry.record(id);
    if (!record || record.status === previous) return;
    if (record.heartbeat === undefined) this.heartbeat.track(id, record.heartbeatTimeout);
    if (record.status === "online") {
      this.heartbeat.revive(id);
      this.announceOnline(record, previous, cause, cause.source ?? "user");
    } else if (record.status === "offline" || record.status === "unknown") {
      this.heartbeat.markOffline(id);
      if (record.status === "offline" && (previous === "online" || previous === "error")) {
        this.announceOffline(record, previous, "user", cause, cause.source ?? "user");
      }
    }
  }

  /** A device's own timeout changed (undefined: back to the learned or hub default). */
  timeoutChanged(id: string, timeoutSec: number | undefined): void {
    this.heartbeat.setTimeout(id, timeoutSec);
  }

  /** A device is being removed. */
  forget(id: string): void {
    this.heartbeat.untrack(id);
  }

  private expire(id: string, lastSeen: number, timeoutMs: number): void {
    if (this.hooks.owns && !this.hooks.owns(id)) return;
    this.offline(id, "timeout", { source: "heartbeat" }, timeoutMs, lastSeen);
  }

  private announceOnline(record: DeviceRecord, previous: DeviceStatus, cause: ChangeCause, source: string): void {
    // A device set online by hand may never have been heard from: its lastSeen stays null.
    this.events.publish("device.online", new OnlineData(previous, isoOrNull(record.lastSeen)), { deviceId: record.id, source, ...causesOf(cause) });
    this.hooks.back(record.id);
  }

  private announceOffline(
    record: DeviceRecord,
    previous: DeviceStatus,
    reason: string,
    cause: ChangeCause,
    source: string,
    timeoutMs?: number,
    lastSeen = record.lastSeen,
  ): void {
    this.events.publish(
      "device.offline",
      new OfflineData(previous, isoOrNull(lastSeen), (timeoutMs ?? this.heartbeat.effectiveTimeoutSec(record.id) * 1000) / 1000, reason),
      { deviceId: record.id, source, priority: "high", ...causesOf(cause) },
    );
  }

  private timeoutLearned(id: string, sec: number): void {
    const record = this.registry.record(id);
    if (!record) return;
    this.events.publish(
      "device.updated",
      { device: toDevice(record), changes: ["effectiveTimeout"], reason: "adaptive-timeout", effectiveTimeout: sec },
      { deviceId: id, source: "heartbeat", priority: "low" },
    );
  }
}

/** The cause of a presence event, and the one behind it (a flow's reaction to an event). */
function causesOf(cause: ChangeCause): { causeId: string | null; parentCauseId: string | null } {
  return { causeId: cause.causeId ?? null, parentCauseId: cause.parentCauseId ?? null };
}

/** The data of device.online and device.offline, made by constructors (see plain.ts). */
const OnlineData = plainConstructor(function (this: EventMap["device.online"], previous: DeviceStatus, lastSeen: string | null) {
  this.previous = previous;
  this.lastSeen = lastSeen;
});
const OfflineData = plainConstructor(function (this: EventMap["device.offline"], previous: DeviceStatus, lastSeen: string | null, timeout: number, reason: string) {
  this.previous = previous;
  this.lastSeen = lastSeen;
  this.timeout = timeout;
  this.reason = reason;
});
