import { type Clock, type TimerHandle, decideAfterCatchUp } from "./clock";
import { DeadlineHeap, type Scheduled } from "./deadline-heap";

export interface AdaptiveTimeoutOptions {
  enabled: boolean;
  /** The learned timeout is `factor` × the median gap between a device's messages. */
  factor: number;
  minSec: number;
  maxSec: number;
  /** Gaps seen before the learned value replaces the hub default. */
  minSamples: number;
}

export interface RetentionOptions {
  enabled: boolean;
  /** A device offline longer than this is removed. */
  offlineForSec: number;
}

export interface HeartbeatOptions {
  defaultTimeoutSec: number;
  /** Expiries are checked at most this late, so one timer serves many deadlines. */
  resolutionMs: number;
  adaptive: AdaptiveTimeoutOptions;
  retention: RetentionOptions;
}

export const DEFAULT_HEARTBEAT_OPTIONS: HeartbeatOptions = {
  defaultTimeoutSec: 60,
  resolutionMs: 250,
  adaptive: { enabled: false, factor: 3, minSec: 10, maxSec: 24 * 3600, minSamples: 5 },
  retention: { enabled: false, offlineForSec: 30 * 24 * 3600 },
};

/** What a store kept of a device's heartbeat bookkeeping (see `track`). */
export interface StoredHeartbeat {
  /** The timeout adaptive timeouts learned, in ms (0 or absent: none). */
  learnedMs?: number;
  /** From when an offline device counts as offline for retention (0 or absent: one timeout after its lastSeen). */
  offlineSince?: number;
}

export interface HeartbeatCallbacks {
  /** A device was silent past its timeout. */
  onExpire(id: string, lastSeen: number, timeoutMs: number): void;
  /** A device has been offline longer than the retention age. */
  onPurge(id: string, offlineSince: number): void;
  /** The adaptive timeout learned a new value for a device (changes under 20% are not told). */
  onTimeoutLearned(id: string, timeoutSec: number): void;
}

const GAP_WINDOW = 16;
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Where the monitor keeps its per-device trackers. The default is a Map; the hub keeps them on
 * the registry's device records instead, which spares a map entry per device and a lookup per
 * heartbeat.
 */
export interface TrackerStore {
  get(id: string): HeartbeatTracker | undefined;
  set(id: string, tracker: HeartbeatTracker): void;
  delete(id: string): void;
}

/** A device's heartbeat bookkeeping, opaque outside the monitor. */
export type HeartbeatTracker = Tracker;

class Tracker implements Scheduled {
  due = 0;
  heapIndex = -1;
  alive = false;
  purge: PurgeEntry | null = null;
  /** Learned cadence; allocated only with adaptive timeouts on. */
  cadence: Cadence | null = null;

  constructor(
    readonly id: string,
    public lastSeen: number,
    /** The device's own timeout in ms, or 0 to use the learned or hub default. */
    public explicitMs: number,
  ) {}
}

class Cadence {
  readonly gaps = new Float64Array(GAP_WINDOW);
  count = 0;
  learnedMs = 0;
  announcedMs = 0;
}

/** Allocated only with retention on, for devices that are offline. */
class PurgeEntry implements Scheduled {
  due = 0;
  heapIndex = -1;
  offlineSince = 0;
  constructor(readonly tracker: Tracker) {}
}

/**
 * Online/offline detection. A heartbeat only stamps `lastSeen` (O(1)); each live device has one
 * entry in a deadline heap, checked lazily: when its deadline comes round, a device that spoke
 * meanwhile is pushed to its new deadline (O(log n)) and a silent one expires. One timer waits
 * for the earliest deadline, so a tick costs only the entries that fall due — never a fleet scan.
 */
export class HeartbeatMonitor {
  private readonly trackers: TrackerStore;
  private tracked = 0;
  private readonly expiries = new DeadlineHeap<Tracker>();
  private readonly purges = new DeadlineHeap<PurgeEntry>();
  private timer: TimerHandle | null = null;
  /**
   * Set when the fleet is restored at start (see `resumeAfterRestart`): until when the previous
   * run is known to have been up, and when this one started. Retention counts a device's
   * offline time only while a hub was watching it.
   */
  private resumed: { lastAlive: number; startedAt: number } | null = null;
  private timerAt = Number.POSITIVE_INFINITY;
  /** When the timer should run (timerAt, or at once for a deadline already past when armed). */
  private timerFiresAt = 0;
  /** Between a tick and its decision (see tick). */
  private deciding = false;
  private running = false;

  constructor(
    private readonly clock: Clock,
    private readonly options: HeartbeatOptions,
    private readonly callbacks: HeartbeatCallbacks,
    store?: TrackerStore,
  ) {
    this.trackers = store ?? new Map<string, Tracker>();
  }

  start(): void {
    this.running = true;
    this.arm();
  }

  stop(): void {
    this.running = false;
    this.disarm();
  }

  /** Devices with heartbeat bookkeeping (those heard from at least once, or expected to be). */
  get size(): number {
    return this.tracked;
  }

  /** Pending deadlines (live devices) and pending purges, for statistics and tests. */
  get pending(): { expiries: number; purges: number; timerArmed: boolean } {
    return { expiries: this.expiries.size, purges: this.purges.size, timerArmed: this.timer !== null };
  }

  /**
   * Before the stored fleet is tracked at start: the previous run was up at least until
   * `lastAlive` (the latest moment it stamped on a device), and this one starts at `startedAt`.
   * A device's offline time for retention then leaves out the time in between: what the previous
   * run saw of it, and what this one sees.
   */
  resumeAfterRestart(lastAlive: number, startedAt: number): void {
    this.resumed = { lastAlive: Math.min(lastAlive, startedAt), startedAt };
  }

  /**
   * Starts watching a device. With a `lastSeen` from before a restart, the device's deadline is
   * counted from that moment, so a device silent while the hub was down expires on time (a device
   * restored offline went offline one timeout after it).
   */
  track(id: string, timeoutSec: number | undefined, lastSeen = 0, alive = lastSeen > 0, stored: StoredHeartbeat = {}): HeartbeatTracker {
    const previous = this.trackers.get(id);
    if (previous !== undefined) this.untrack(id);
    this.tracked++;
    const t = new Tracker(id, lastSeen, timeoutSec ? timeoutSec * 1000 : 0);
    // A timeout learned before a restart holds until the device's new gaps teach another.
    const learnedMs = stored.learnedMs ?? 0;
    if (learnedMs > 0 && this.options.adaptive.enabled) {
      const c = (t.cadence = new Cadence());
      c.learnedMs = c.announcedMs = this.withinBounds(learnedMs);
    }
    this.trackers.set(id, t);
    if (alive && lastSeen > 0) {
      t.alive = true;
      this.expiries.schedule(t, this.deadline(t));
      this.arm();
    } else if (lastSeen > 0) {
      // Offline since the stored moment; one stored before there was one went one timeout after its last message.
      this.markDead(t, stored.offlineSince || lastSeen + this.timeoutMs(t));
    }
    return t;
  }

  /** When the device counts as offline since for retention (0: online, or retention off): stored with its presence. */
  offlineSinceOf(t: HeartbeatTracker | undefined): number {
    return t !== undefined && !t.alive && t.purge !== null ? t.purge.offlineSince : 0;
  }

  untrack(id: string): void {
    const t = this.trackers.get(id);
    if (!t) return;
    this.tracked--;
    this.trackers.delete(id);
    this.expiries.remove(t);
    if (t.purge) this.purges.remove(t.purge);
    this.arm();
  }

  /** A device's own timeout changed (undefined: back to the learned or default one). */
  setTimeout(id: string, timeoutSec: number | undefined): void {
    const t = this.trackers.get(id);
    if (!t) return;
    t.explicitMs = timeoutSec ? timeoutSec * 1000 : 0;
    if (t.alive) {
      this.expiries.schedule(t, this.deadline(t));
      this.arm();
    }
  }

  /**
   * Records a message from a device. Returns true when the device was not alive before (first
   * message, or back after a timeout): the caller then brings it online.
   */
  beat(id: string, now: number = this.clock.now()): boolean {
    const t = this.trackers.get(id);
    return t === undefined ? false : this.beatTracker(t, now);
  }

  /** `beat` for a caller that already holds the device's tracker (the hub's ingest path). */
  beatTracker(t: HeartbeatTracker, now: number): boolean {
    if (t.alive) {
      if (this.options.adaptive.enabled && t.explicitMs === 0) this.learn(t, now - t.lastSeen);
      t.lastSeen = now;
      return false;
    }
    // The gap across a timeout counts too, so a device that slowed down teaches a longer
    // timeout; the median keeps a single outage from doing so.
    if (this.options.adaptive.enabled && t.explicitMs === 0 && t.lastSeen > 0) this.learn(t, now - t.lastSeen);
    t.lastSeen = now;
    t.alive = true;
    if (t.purge) {
      this.purges.remove(t.purge);
      t.purge = null;
    }
    this.expiries.schedule(t, this.deadline(t));
    if (t.due < this.timerAt) this.arm();
    return true;
  }

  /**
   * Expects traffic again from now (a user set the status to online by hand): unless the device
   * speaks, it expires one timeout from now.
   */
  revive(id: string, now: number = this.clock.now()): void {
    const t = this.trackers.get(id);
    if (!t || t.alive) return;
    t.alive = true;
    if (t.purge) {
      this.purges.remove(t.purge);
      t.purge = null;
    }
    this.expiries.schedule(t, now + this.timeoutMs(t) + 1);
    this.arm();
  }

  /** The device said it is going away (MQTT last will): offline now, no wait for the timeout. */
  markOffline(id: string, now: number = this.clock.now()): boolean {
    const t = this.trackers.get(id);
    if (!t || !t.alive) return false;
    this.expiries.remove(t);
    this.markDead(t, now);
    this.arm();
    return true;
  }

  isAlive(id: string): boolean {
    return this.trackers.get(id)?.alive ?? false;
  }

  /** The timeout adaptive timeouts learned for a tracked device, in ms (0: none), as the store keeps it. */
  learnedMs(t: HeartbeatTracker | undefined): number {
    return t?.cadence?.learnedMs ?? 0;
  }

  /** The timeout in force for a device, in seconds: its own, else learned, else the default. */
  effectiveTimeoutSec(id: string): number {
    const t = this.trackers.get(id);
    return t ? this.timeoutMs(t) / 1000 : this.options.defaultTimeoutSec;
  }

  private timeoutMs(t: Tracker): number {
    if (t.explicitMs > 0) return t.explicitMs;
    if (t.cadence !== null && t.cadence.learnedMs > 0) return t.cadence.learnedMs;
    return this.options.defaultTimeoutSec * 1000;
  }

  /** The first instant at which the device counts as silent past its timeout. */
  private deadline(t: Tracker): number {
    return t.lastSeen + this.timeoutMs(t) + 1;
  }

  private markDead(t: Tracker, wentOffline: number): void {
    t.alive = false;
    if (this.options.retention.enabled) {
      t.purge ??= new PurgeEntry(t);
      const since = this.offlineSince(wentOffline);
      t.purge.offlineSince = since;
      // Purged once offline for longer than the retention age.
      this.purges.schedule(t.purge, since + this.options.retention.offlineForSec * 1000 + 1);
    }
  }

  /**
   * From when a device that went offline at `wentOffline` counts as offline for retention: then,
   * unless that was before this run started, when the time no hub was up is left out (a hub off
   * for longer than the retention age must not remove its fleet as it starts, before any device
   * could speak; a restart must not bring a removal forward).
   */
  private offlineSince(wentOffline: number): number {
    const r = this.resumed;
    if (r === null || wentOffline >= r.startedAt) return wentOffline;
    return r.startedAt - Math.max(0, r.lastAlive - wentOffline);
  }

  /** A learned timeout within the adaptive bounds (minSec to maxSec). */
  private withinBounds(ms: number): number {
    const a = this.options.adaptive;
    return Math.min(a.maxSec * 1000, Math.max(a.minSec * 1000, ms));
  }

  private learn(t: Tracker, gap: number): void {
    if (gap <= 0) return;
    const c = (t.cadence ??= new Cadence());
    c.gaps[c.count % GAP_WINDOW] = gap;
    c.count++;
    const a = this.options.adaptive;
    // The median is refreshed every fourth gap once there are enough: cheap on the hot path.
    if (c.count < a.minSamples || (c.count !== a.minSamples && c.count % 4 !== 0)) return;
    const n = Math.min(c.count, GAP_WINDOW);
    const sorted = c.gaps.slice(0, n).sort();
    const median = n % 2 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2;
    const learned = this.withinBounds(Math.round(a.factor * median));
    if (learned !== c.learnedMs) {
      c.learnedMs = learned;
      // A shorter timeout must not wait for the old, later deadline.
      if (t.alive && t.heapIndex >= 0 && this.deadline(t) < t.due) {
        this.expiries.schedule(t, this.deadline(t));
        this.arm();
      }
    }
    if (c.announcedMs === 0 || Math.abs(learned - c.announcedMs) > 0.2 * c.announcedMs) {
      c.announcedMs = learned;
      this.callbacks.onTimeoutLearned(t.id, learned / 1000);
    }
  }

  private tick(): void {
    const due = this.timerFiresAt;
    this.timer = null;
    this.timerAt = Number.POSITIVE_INFINITY;
    // Who is silent is decided once the messages that came in time are in: a device whose
    // message waited in a held loop is not taken offline (see decideAfterCatchUp). No timer is
    // armed meanwhile; the decision arms the next.
    this.deciding = true;
    decideAfterCatchUp(this.clock, due, () => {
      this.deciding = false;
      this.expireDue();
    });
  }

  private expireDue(): void {
    if (!this.running) return;
    const now = this.clock.now();
    for (let t = this.expiries.popDue(now); t !== undefined; t = this.expiries.popDue(now)) {
      const due = this.deadline(t);
      if (due > now) {
        this.expiries.schedule(t, due);
        continue;
      }
      this.markDead(t, t.lastSeen + this.timeoutMs(t));
      this.callbacks.onExpire(t.id, t.lastSeen, this.timeoutMs(t));
    }
    for (let p = this.purges.popDue(now); p !== undefined; p = this.purges.popDue(now)) {
      p.tracker.purge = null;
      if (!p.tracker.alive && this.trackers.get(p.tracker.id) === p.tracker) {
        this.callbacks.onPurge(p.tracker.id, p.offlineSince);
      }
    }
    this.arm();
  }

  /** Points the one timer at the earliest deadline (rounded up to the resolution). */
  private arm(): void {
    if (!this.running || this.deciding) return;
    const next = Math.min(this.expiries.peek()?.due ?? Infinity, this.purges.peek()?.due ?? Infinity);
    if (next === Infinity) {
      this.disarm();
      return;
    }
    const res = this.options.resolutionMs;
    const at = res > 0 ? Math.ceil(next / res) * res : next;
    if (this.timer !== null && this.timerAt <= at) return;
    this.disarm();
    this.timerAt = at;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, at - this.clock.now()));
    this.timerFiresAt = this.clock.now() + delay;
    this.timer = this.clock.setTimeout(() => this.tick(), delay);
  }

  private disarm(): void {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = Number.POSITIVE_INFINITY;
  }
}
