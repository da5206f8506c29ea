import { z } from "zod";
import type { Clock, TimerHandle } from "./clock";
import { cloneJson, defineValue, jsonEqual } from "./json";
import {
  type AnomalyData,
  type AnomalyKind,
  DEVICE_STATUSES,
  type DeviceState,
  type DeviceStatus,
  type EventMap,
  type JsonObject,
  type JsonValue,
  type StateSnapshot,
  type TethralEvent,
} from "./types";
import { DEVICE_ID_PATTERN, LIMITS, parseInput } from "./validation";

export const ANOMALY_KINDS = ["flapping", "stuck", "outlier"] as const satisfies readonly AnomalyKind[];

/** The longest "for": a week, well inside what one timer can wait (about 24.8 days). */
export const MAX_FOR_SECONDS = 7 * 24 * 3600;
/** Devices or properties one watch may name. */
export const MAX_WATCH_ITEMS = 1000;

/** What a `tethral-state-watch` watches, checked and with defaults filled in. */
export interface StateWatchOptions {
  /** Devices watched; empty = every device. */
  deviceIds: string[];
  /** Without `properties`: fire when the status becomes one of these. With them: the status the device must have. Empty = any. */
  statuses: DeviceStatus[];
  /** Reported or desired keys a change must touch; empty = any. */
  properties: string[];
  /** Fire on `state.changed` (and, without `onlyOnChange`, on reports). */
  changes: boolean;
  /** `state.anomaly` kinds that fire; empty = none. */
  anomalies: AnomalyKind[];
  /** Off: a report that repeats the current value of a watched property or status fires too. */
  onlyOnChange: boolean;
  /** Skip a status change from or to `unknown`, and a property change from or to no value (null). */
  ignoreUnknown: boolean;
  /** Fire only once the matching state has held this long; 0 = at once. */
  forSeconds: number;
  /** Send the current state of every matching device when the node starts watching. */
  outputOnDeploy: boolean;
}

/** What went out for a state change (`msg.change`), as in `state.changed`. */
export interface WatchedChange {
  from: StateSnapshot;
  to: StateSnapshot;
  reason: string;
  version: number;
}

/** One firing: the node turns it into `msg.payload`, `msg.previous`, `msg.change`, `msg.deviceId`. */
export interface StateWatchOutput {
  deviceId: string;
  state: DeviceState;
  previous: StateSnapshot;
  change: WatchedChange | { anomaly: AnomalyData };
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

// ── Configuration ──────────────────────────────────────────────────────────────────────────

/**
 * Editor fields arrive as text separated by `separator`; flows written by hand may give arrays.
 * Device ids hold no spaces or commas; property keys may hold spaces, so only commas part them.
 */
const toList = (separator: RegExp) => (value: unknown): unknown => {
  if (value === null || value === undefined) return [];
  const items = typeof value === "string" ? value.split(separator) : value;
  if (!Array.isArray(items)) return value;
  const out: unknown[] = [];
  for (const item of items) {
    const v = typeof item === "string" ? item.trim() : item;
    if (v !== "" && !out.includes(v)) out.push(v);
  }
  return out;
};

function toFlag(value: unknown): unknown {
  if (typeof value !== "string") return value;
  const s = value.trim().toLowerCase();
  return s === "true" ? true : s === "false" ? false : value;
}

function toNumber(value: unknown): unknown {
  if (value === null || value === undefined) return 0;
  if (typeof value !== "string") return value;
  const s = value.trim();
  return s === "" ? 0 : /^[+-]?(\d+\.?\d*|\.\d+)$/.test(s) ? Number(s) : s;
}

const list = <T extends z.ZodType>(item: T, separator = /,/) =>
  z.preprocess(toList(separator), z.array(item).max(MAX_WATCH_ITEMS, `must name at most ${MAX_WATCH_ITEMS}`));
const flag = (fallback: boolean) => z.preprocess(toFlag, z.boolean({ error: "must be true or false" }).default(fallback));

const optionsSchema = z
  .object({
    deviceIds: list(z.string().regex(DEVICE_ID_PATTERN, "must be device ids (1-128 characters of A-Z a-z 0-9 . _ : -)"), /[\s,]+/),
    statuses: list(z.enum(DEVICE_STATUSES, { error: `must be among ${DEVICE_STATUSES.join(", ")}` })),
    properties: list(z.string().max(LIMITS.keyLength, `must be keys of at most ${LIMITS.keyLength} characters`)),
    changes: flag(true),
    anomalies: list(z.enum(ANOMALY_KINDS, { error: `must be among ${ANOMALY_KINDS.join(", ")}` })),
    onlyOnChange: flag(true),
    ignoreUnknown: flag(false),
    forSeconds: z.preprocess(
      toNumber,
      z.number({ error: "must be a number of seconds" }).min(0, "must be 0 or more").max(MAX_FOR_SECONDS, `must be at most ${MAX_FOR_SECONDS}`),
    ),
    outputOnDeploy: flag(false),
  })
  .refine((o) => o.changes || o.anomalies.length > 0, {
    message: "watches nothing: choose state changes and/or anomaly kinds",
    path: ["changes"],
  });

/** Checks a node's settings; throws INVALID naming the field. */
export function parseStateWatchOptions(input: unknown): StateWatchOptions {
  return parseInput(optionsSchema, input, "state watch") as StateWatchOptions;
}

// ── The watcher ────────────────────────────────────────────────────────────────────────────

/** A change waiting for its "for" time: what changed since the wait began, merged. */
interface Waiting {
  from: StateSnapshot;
  to: StateSnapshot;
  reason: string;
  version: number;
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
type Received = EventMap["message.received"];

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
  subscription(): { types: string[]; deviceId?: string[] } {
    const o = this.options;
    const types: string[] = [];
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

  handle(event: TethralEvent): void {
    const id = event.deviceId;
    if (this.stopped || id === null || (this.devices && !this.devices.has(id))) return;
    switch (event.type) {
      case "state.changed":
        if (this.options.changes) this.onChanged(id, event.data as Changed, event.causeId);
        break;
      case "message.received":
        if (this.options.changes && !this.options.onlyOnChange) this.onReport(id, event.data as Received, event.causeId);
        break;
      case "state.anomaly":
        this.onAnomaly(id, event.data as AnomalyData);
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
    return output(state, {}, { from: {}, to: {}, reason: "deploy", version: state.version });
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
      if (this.matches(data.from, data.to, data.state)) merge(wait, data);
      return;
    }
    if (this.matches(data.from, data.to, data.state)) this.trigger(id, data.from, data.to, data.reason, data.version, data.state);
  }

  /** A report that changed nothing in what is watched (onlyOnChange off): a repeat fires too. */
  private onReport(id: string, data: Received, causeId: string | null): void {
    const reported = reportedValues(data);
    if (!reported) return;
    const changed = this.causes.get(id);
    this.causes.delete(id);
    const sameCause = changed !== undefined && changed.causeId === causeId;
    const state = this.hooks.current(id);
    if (!state) return;
    const repeat: StateSnapshot = {};
    if (reported.status !== undefined && reported.status === state.status && !(sameCause && changed.status)) {
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
    this.trigger(id, repeat, repeat, data.kind, state.version, state);
  }

  private onAnomaly(id: string, data: AnomalyData): void {
    if (!this.anomalies.has(data.kind)) return;
    // Flapping concerns the status and names no property: a property filter leaves it through.
    if (this.properties && data.property !== undefined && !this.properties.has(data.property)) return;
    const state = this.hooks.current(id);
    if (!state) return;
    this.hooks.emit({ deviceId: id, state: copy(state), previous: {}, change: { anomaly: copy(data) } });
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

  private trigger(id: string, from: StateSnapshot, to: StateSnapshot, reason: string, version: number, state: DeviceState): void {
    if (this.forMs === 0) {
      this.hooks.emit(output(state, from, { from, to, reason, version }));
      return;
    }
    const wait: Waiting = { from: shallow(from), to: shallow(to), reason, version, state, timer: null };
    wait.timer = this.clock.setTimeout(() => {
      if (this.waiting.get(id) !== wait) return;
      this.waiting.delete(id);
      const now = this.hooks.current(id) ?? wait.state;
      if (!this.holds(now)) return;
      this.hooks.emit(output(now, wait.from, { from: wait.from, to: wait.to, reason: wait.reason, version: wait.version }));
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

function output(state: DeviceState, previous: StateSnapshot, change: WatchedChange): StateWatchOutput {
  return { deviceId: state.deviceId, state: copy(state), previous: copy(previous), change: copy(change) };
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
function merge(wait: Waiting, data: Changed): void {
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
}

/** The status and properties a device message reported, or null for one that reports none. */
function reportedValues(data: Received): { status?: DeviceStatus; properties?: JsonObject } | null {
  const d = data.data;
  switch (data.kind) {
    case "telemetry":
      return isObject(d) ? { properties: d } : null;
    case "status": {
      const s = typeof d === "string" ? d.trim().toLowerCase() : null;
      return s === "online" || s === "offline" ? { status: s } : null;
    }
    case "state": {
      if (!isObject(d)) return null;
      const out: { status?: DeviceStatus; properties?: JsonObject } = {};
      if (typeof d.status === "string" && (DEVICE_STATUSES as readonly string[]).includes(d.status)) out.status = d.status as DeviceStatus;
      if (isObject(d.properties)) out.properties = d.properties;
      return out;
    }
    default:
      return null;
  }
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
