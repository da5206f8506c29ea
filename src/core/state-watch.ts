import type { Clock, TimerHandle } from "./clock";
import { cloneJson, defineValue, jsonEqual } from "./json";
import type { StateWatchOptions } from "./state-watch-options";
import {
  type AnomalyData,
  type AnomalyKind,
  type DeviceReport,
  type DeviceState,
  type DeviceStatus,
  type EventMap,
  type HubEvent,
  type JsonObject,
  type JsonValue,
  type StateSnapshot,
  isHubOwnEvent,
} from "./types";

export {
  ANOMALY_KINDS,
  MAX_FOR_SECONDS,
  MAX_WATCH_ITEMS,
  type StateWatchOptions,
  parseStateWatchOptions,
} from "./state-watch-options";

/** The events a watcher takes. */
export type WatchedType = "state.changed" | "message.received" | "state.anomaly" | "device.removed";

/** What went out for a state change (`msg.change`), as in `state.changed`. */
export interface WatchedChange {
  from: StateSnapshot;
  to: StateSnapshot;
  reason: string;
  version: number;
}

/** One firing: the node turns it into `msg.payload`, `msg.previous`, `msg.change`, `msg.deviceId`, `msg.causeId`. */
export interface StateWatchOutput {
  deviceId: string;
  state: DeviceState;
  previous: StateSnapshot;
  change: WatchedChange | { anomaly: AnomalyData };
  /** The cause of the event that fired (the latest change of a wait); null on deploy. */
  causeId: string | null;
}

/** Where the current states come from: the hub. */
export interface StateSource {
  getState(id: string): DeviceState;
  listStates(query: { status?: DeviceStatus; limit?: number }): { states: DeviceState[] };
}

export interface StateWatchHooks {
  emit(output: StateWatchOutput): void;
  /** The device's state now, or undefined when it is gone. */
  current(deviceId: string): DeviceState | undefined;
}

// ── The watcher ────────────────────────────────────────────────────────────────────────────

/** A change waiting for its "for" time: what changed since the wait began, merged. */
interface Waiting {
  from: StateSnapshot;
  to: StateSnapshot;
  reason: string;
  version: number;
  causeId: string | null;
  state: DeviceState;
  timer: TimerHandle;
}

/** What one cause (one device message) changed, so a report of it is not taken for a repeat. */
interface CauseChanges {
  causeId: string | null;
  status: boolean;
  keys: Set<string>;
}

type Changed = EventMap["state.changed"];

/**
 * The logic of `tethral-state-watch`, apart from Node-RED: takes the hub's events, decides what
 * fires, and keeps one "for" timer per waiting device on the clock it is given.
 *
 * "For" follows Home Assistant's state trigger: a matching change starts the wait; a later change
 * that leaves the condition (the status filter; with `ignoreUnknown`, a status or watched value
 * becoming unknown) cancels it; a later change that still matches does not restart it, it is
 * merged in, so the output says what changed since the wait began. Anomalies fire at once.
 */
export class StateWatcher {
  private readonly devices: Set<string> | null;
  private readonly statuses: Set<DeviceStatus> | null;
  private readonly properties: Set<string> | null;
  private readonly anomalies: Set<AnomalyKind>;
  private readonly forMs: number;
  private readonly waiting = new Map<string, Waiting>();
  private readonly causes = new Map<string, CauseChanges>();
  private stopped = false;

  constructor(
    readonly options: StateWatchOptions,
    private readonly clock: Pick<Clock, "setTimeout" | "clearTimeout">,
    private readonly hooks: StateWatchHooks,
  ) {
    this.devices = setOrNull(options.deviceIds);
    this.statuses = setOrNull(options.statuses);
    this.properties = setOrNull(options.properties);
    this.anomalies = new Set(options.anomalies);
    this.forMs = Math.round(options.forSeconds * 1000);
  }

  /** The one event subscription the watcher needs (types, and the devices when it names some). */
  subscription(): { types: WatchedType[]; deviceId?: string[] } {
    const o = this.options;
    const types: WatchedType[] = [];
    if (o.changes) types.push("state.changed");
    if (o.changes && !o.onlyOnChange) types.push("message.received");
    if (this.anomalies.size > 0) types.push("state.anomaly");
    if (o.changes && (this.forMs > 0 || !o.onlyOnChange)) types.push("device.removed");
    return this.devices ? { types, deviceId: [...this.devices] } : { types };
  }

  /** Devices waiting out their "for" time. */
  get waitingCount(): number {
    return this.waiting.size;
  }

  /** Takes an event of the watcher's subscription; any other is ignored. */
  handle(event: HubEvent): void {
    const id = event.deviceId;
    if (this.stopped || id === null || (this.devices && !this.devices.has(id)) || !isHubOwnEvent(event)) return;
    switch (event.type) {
      case "state.changed":
        if (this.options.changes) this.onChanged(id, event.data, event.causeId);
        break;
      case "message.received":
        if (this.options.changes && !this.options.onlyOnChange && event.report) {
          this.onReport(id, event.report, event.data.kind, event.causeId);
        }
        break;
      case "state.anomaly":
        this.onAnomaly(id, event.data, event.causeId);
        break;
      case "device.removed":
        this.cancel(id);
        this.causes.delete(id);
        break;
    }
  }

  /** The output on deploy for one device's current state, or null when it does not match. */
  initial(state: DeviceState): StateWatchOutput | null {
    if (this.stopped || !this.options.changes) return null;
    if (this.devices && !this.devices.has(state.deviceId)) return null;
    if (!this.holds(state) || (this.options.ignoreUnknown && state.status === "unknown")) return null;
    const props = this.properties;
    if (props && ![...props].some((k) => Object.hasOwn(state.properties, k) || Object.hasOwn(state.desired, k))) return null;
    return output(state, {}, { from: {}, to: {}, reason: "deploy", version: state.version }, null);
  }

  /** Outputs on deploy: the current state of every matching device. */
  initialOutputs(source: StateSource): StateWatchOutput[] {
    let states: DeviceState[];
    if (this.devices) {
      states = [];
      for (const id of this.devices) {
        const s = tryState(source, id);
        if (s) states.push(s);
      }
    } else if (this.statuses) {
      states = [...this.statuses].flatMap((status) => source.listStates({ status, limit: 100_000 }).states);
    } else {
      states = source.listStates({ limit: 100_000 }).states;
    }
    const out: StateWatchOutput[] = [];
    for (const s of states) {
      const o = this.initial(s);
      if (o) out.push(o);
    }
    return out;
  }

  /** Cancels every wait; nothing fires afterwards. */
  stop(): void {
    this.stopped = true;
    for (const w of this.waiting.values()) this.clock.clearTimeout(w.timer);
    this.waiting.clear();
    this.causes.clear();
  }

  // ── Events ────────────────────────────────────────────────────────────────────────────────

  private onChanged(id: string, data: Changed, causeId: string | null): void {
    if (!this.options.onlyOnChange) this.noteCause(id, data, causeId);
    const wait = this.waiting.get(id);
    if (wait) {
      if (!this.holds(data.state) || this.becameUnknown(data.to)) {
        this.cancel(id);
        return;
      }
      wait.state = data.state;
      if (this.matches(data.from, data.to, data.state)) merge(wait, data, causeId);
      return;
    }
    if (this.matches(data.from, data.to, data.state)) this.trigger(id, data.from, data.to, data.reason, data.version, data.state, causeId);
  }

  /** A report that changed nothing in what is watched (onlyOnChange off): a repeat fires too. */
  private onReport(id: string, reported: DeviceReport, kind: string, causeId: string | null): void {
    if (reported.status === null && reported.properties === null) return;
    const changed = this.causes.get(id);
    this.causes.delete(id);
    const sameCause = changed !== undefined && changed.causeId === causeId;
    const state = this.hooks.current(id);
    if (!state) return;
    const repeat: StateSnapshot = {};
    if (reported.status !== null && reported.status === state.status && !(sameCause && changed.status)) {
      repeat.status = reported.status;
    }
    if (reported.properties) {
      for (const key of Object.keys(reported.properties)) {
        if (sameCause && changed.keys.has(key)) continue;
        if (!Object.hasOwn(state.properties, key) || !jsonEqual(state.properties[key], reported.properties[key])) continue;
        defineValue((repeat.properties ??= {}), key, state.properties[key] as JsonValue);
      }
    }
    if (repeat.status === undefined && repeat.properties === undefined) return;
    // A repeat is no change: it neither restarts nor adds to a wait under way.
    if (this.waiting.has(id) || !this.matches(repeat, repeat, state)) return;
    this.trigger(id, repeat, repeat, kind, state.version, state, causeId);
  }

  private onAnomaly(id: string, data: AnomalyData, causeId: string | null): void {
    if (!this.anomalies.has(data.kind)) return;
    // Flapping concerns the status and names no property: a property filter leaves it through.
    if (this.properties && data.property !== undefined && !this.properties.has(data.property)) return;
    const state = this.hooks.current(id);
    if (!state) return;
    this.hooks.emit({ deviceId: id, state: copy(state), previous: {}, change: { anomaly: copy(data) }, causeId });
  }

  // ── Matching ──────────────────────────────────────────────────────────────────────────────

  /** The status filter as a condition on the state a change leaves behind. */
  private holds(state: DeviceState): boolean {
    return this.statuses === null || this.statuses.has(state.status);
  }

  /**
   * Does this change fire? Without property names, a status filter asks for the status to have
   * become one of its statuses; with them, a change must touch a named property (reported or
   * desired) while the status is one of the filter's. With neither, any change fires.
   */
  private matches(from: StateSnapshot, to: StateSnapshot, state: DeviceState): boolean {
    if (!this.holds(state)) return false;
    const unknown = this.options.ignoreUnknown;
    const statusMoved = to.status !== undefined && !(unknown && (from.status === "unknown" || to.status === "unknown"));
    if (this.properties === null) {
      if (this.statuses !== null) return statusMoved;
      if (statusMoved) return true;
    }
    return this.touches(from.properties, to.properties) || this.touches(from.desired, to.desired);
  }

  private touches(from: JsonObject | undefined, to: JsonObject | undefined): boolean {
    if (!to) return false;
    for (const key of Object.keys(to)) {
      if (this.properties && !this.properties.has(key)) continue;
      if (this.options.ignoreUnknown && (to[key] === null || from === undefined || (from[key] ?? null) === null)) continue;
      return true;
    }
    return false;
  }

  /** With `ignoreUnknown`, a status or a watched value that becomes unknown leaves the condition. */
  private becameUnknown(to: StateSnapshot): boolean {
    if (!this.options.ignoreUnknown) return false;
    if (to.status === "unknown") return true;
    for (const section of [to.properties, to.desired]) {
      if (!section) continue;
      for (const key of Object.keys(section)) {
        if (section[key] === null && (this.properties === null || this.properties.has(key))) return true;
      }
    }
    return false;
  }

  // ── Firing ────────────────────────────────────────────────────────────────────────────────

  private trigger(
    id: string,
    from: StateSnapshot,
    to: StateSnapshot,
    reason: string,
    version: number,
    state: DeviceState,
    causeId: string | null,
  ): void {
    if (this.forMs === 0) {
      this.hooks.emit(output(state, from, { from, to, reason, version }, causeId));
      return;
    }
    const wait: Waiting = { from: shallow(from), to: shallow(to), reason, version, causeId, state, timer: null };
    wait.timer = this.clock.setTimeout(() => {
      if (this.waiting.get(id) !== wait) return;
      this.waiting.delete(id);
      const now = this.hooks.current(id) ?? wait.state;
      if (!this.holds(now)) return;
      this.hooks.emit(output(now, wait.from, { from: wait.from, to: wait.to, reason: wait.reason, version: wait.version }, wait.causeId));
    }, this.forMs);
    this.waiting.set(id, wait);
  }

  private cancel(id: string): void {
    const wait = this.waiting.get(id);
    if (!wait) return;
    this.clock.clearTimeout(wait.timer);
    this.waiting.delete(id);
  }

  private noteCause(id: string, data: Changed, causeId: string | null): void {
    let c = this.causes.get(id);
    if (!c || c.causeId !== causeId) {
      c = { causeId, status: false, keys: new Set() };
      this.causes.set(id, c);
    }
    if (data.to.status !== undefined) c.status = true;
    if (data.to.properties) for (const key of Object.keys(data.to.properties)) c.keys.add(key);
  }
}

function setOrNull<T>(items: readonly T[]): Set<T> | null {
  return items.length === 0 ? null : new Set(items);
}

function tryState(source: StateSource, id: string): DeviceState | undefined {
  try {
    return source.getState(id);
  } catch {
    return undefined;
  }
}

/** Event data is shared by every subscriber: what leaves for a flow is a copy it may change. */
function copy<T>(value: T): T {
  return cloneJson(value as unknown as JsonValue) as unknown as T;
}

function output(state: DeviceState, previous: StateSnapshot, change: WatchedChange, causeId: string | null): StateWatchOutput {
  return { deviceId: state.deviceId, state: copy(state), previous: copy(previous), change: copy(change), causeId };
}

/** A snapshot whose sections can be added to without touching the event's own objects. */
function shallow(s: StateSnapshot): StateSnapshot {
  const out: StateSnapshot = {};
  if (s.status !== undefined) out.status = s.status;
  if (s.properties) out.properties = { ...s.properties };
  if (s.desired) out.desired = { ...s.desired };
  return out;
}

/** Adds a change to a wait: each key keeps its value from before the wait and takes its latest. */
function merge(wait: Waiting, data: Changed, causeId: string | null): void {
  const { from, to } = data;
  if (from.status !== undefined && wait.from.status === undefined) wait.from.status = from.status;
  if (to.status !== undefined) wait.to.status = to.status;
  for (const section of ["properties", "desired"] as const) {
    const f = from[section];
    const t = to[section];
    if (f) {
      const into = (wait.from[section] ??= {});
      for (const key of Object.keys(f)) if (!Object.hasOwn(into, key)) defineValue(into, key, f[key] as JsonValue);
    }
    if (t) {
      const into = (wait.to[section] ??= {});
      for (const key of Object.keys(t)) defineValue(into, key, t[key] as JsonValue);
    }
  }
  wait.reason = data.reason;
  wait.version = data.version;
  wait.causeId = causeId;
}
