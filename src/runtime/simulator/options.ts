import { DEVICE_ID_CHARS, LIMITS } from "../../core/validation";
import { UsageError } from "./support";

export const SIMULATED_PROTOCOLS = ["mqtt", "coap", "websocket", "http"] as const;
export type SimulatedProtocol = (typeof SIMULATED_PROTOCOLS)[number];

export const DEFAULT_API = "http://127.0.0.1:1880/api";
export const DEFAULT_DEVICES = 10;
export const DEFAULT_INTERVAL_SEC = 5;
export const DEFAULT_SUMMARY_SEC = 10;
/** Registrations in flight at once: enough to register a fleet quickly, few enough not to swamp the hub. */
const DEFAULT_REGISTRATION_CONCURRENCY = 8;
const MAX_DEVICES = 10_000;
const DEVICE_ID_MAX = LIMITS.idLength;
const PREFIX_PATTERN = new RegExp(`^${DEVICE_ID_CHARS}*$`);

/** Where a level goes: `info` for the summary and progress, `warn` for problems. */
export type SimulationLog = (level: "info" | "warn", message: string) => void;

/** How to run a simulation. Times are in seconds, as on the command line and in device records. */
export interface SimulationOptions {
  /** The REST API root. Default `http://127.0.0.1:1880/api`. */
  api?: string;
  protocol?: SimulatedProtocol;
  /** How many devices. Default 10. */
  devices?: number;
  /** Seconds between telemetry reports of one device (±20 % jitter). Default 5. */
  interval?: number;
  /** The devices' `heartbeatTimeout`. Default 3 × interval; at least 1.5 × interval. */
  heartbeat?: number;
  /** Fractions (0-1) of the devices that answer commands slowly, with failure, or drop off now and then. */
  slow?: number;
  fail?: number;
  drop?: number;
  /** Device ids are `{prefix}001`, ... Default `sim-{protocol}-`. */
  prefix?: string;
  /** Endpoint overrides; by default they are read from the hub's `GET /health`. */
  mqtt?: string;
  coap?: string;
  websocket?: string;
  /** Interface the CoAP and HTTP command servers bind to; it is part of the devices' address. Default 127.0.0.1. */
  listen?: string;
  /** Seconds between summary lines; 0 prints none. Default 10. */
  summary?: number;
  /** Seconds a slow device takes to answer, [min, max]. Default [2, 5]. */
  slowDelay?: [number, number];
  /** Seconds a dropping device stays up between drops. Default heartbeat × [2, 4]. */
  dropUp?: [number, number];
  /** Seconds a dropping device stays away: longer than its heartbeat timeout. Default heartbeat × [1.5, 2.5]. */
  dropDown?: [number, number];
  registrationConcurrency?: number;
  /** Default: info to stdout, warnings to stderr. */
  log?: SimulationLog;
}

export type ResolvedOptions = Required<Omit<SimulationOptions, "mqtt" | "coap" | "websocket">> &
  Pick<SimulationOptions, "mqtt" | "coap" | "websocket">;

/** What a device does besides reporting: answer slowly, answer with failure, drop off now and then. */
export interface Traits {
  slow: boolean;
  fail: boolean;
  drop: boolean;
}

/** One simulated device before it is registered. */
export interface DeviceSpec {
  id: string;
  /** 1-based, as in the id. */
  number: number;
  traits: Traits;
}

const consoleLog: SimulationLog = (level, message) => (level === "info" ? console.log(message) : console.warn(message));

/** The options with defaults filled in, or a UsageError naming the flag that is wrong. */
export function resolveOptions(options: SimulationOptions): ResolvedOptions {
  const protocol = options.protocol ?? "mqtt";
  if (!SIMULATED_PROTOCOLS.includes(protocol)) throw new UsageError(`--protocol must be one of ${SIMULATED_PROTOCOLS.join(", ")}, not "${protocol}"`);
  const devices = options.devices ?? DEFAULT_DEVICES;
  if (!Number.isInteger(devices) || devices < 1 || devices > MAX_DEVICES) throw new UsageError(`--devices must be a whole number from 1 to ${MAX_DEVICES}, not ${devices}`);
  const interval = positive("--interval", options.interval ?? DEFAULT_INTERVAL_SEC);
  const heartbeat = positive("--heartbeat", options.heartbeat ?? 3 * interval);
  if (heartbeat < 1.5 * interval) {
    throw new UsageError(`--heartbeat ${heartbeat} is too short for --interval ${interval}: devices would go offline between reports; give at least ${1.5 * interval}`);
  }
  const prefix = options.prefix ?? `sim-${protocol}-`;
  checkPrefix(prefix, devices);
  const api = url("--api", options.api ?? DEFAULT_API, ["http:", "https:"]);
  return {
    api: api.replace(/\/+$/, ""),
    protocol,
    devices,
    interval,
    heartbeat,
    slow: fraction("--slow", options.slow ?? 0),
    fail: fraction("--fail", options.fail ?? 0),
    drop: fraction("--drop", options.drop ?? 0),
    prefix,
    mqtt: options.mqtt === undefined ? undefined : url("--mqtt", options.mqtt, ["mqtt:", "mqtts:", "ws:", "wss:"]),
    coap: options.coap === undefined ? undefined : url("--coap", options.coap, ["coap:"]),
    websocket: options.websocket === undefined ? undefined : url("--websocket", options.websocket, ["ws:", "wss:"]),
    listen: host("--listen", options.listen ?? "127.0.0.1"),
    summary: nonNegative("--summary", options.summary ?? DEFAULT_SUMMARY_SEC),
    slowDelay: range("slowDelay", options.slowDelay ?? [2, 5]),
    dropUp: range("dropUp", options.dropUp ?? [2 * heartbeat, 4 * heartbeat]),
    dropDown: range("dropDown", options.dropDown ?? [1.5 * heartbeat, 2.5 * heartbeat]),
    registrationConcurrency: positiveInteger("registrationConcurrency", options.registrationConcurrency ?? DEFAULT_REGISTRATION_CONCURRENCY),
    log: options.log ?? consoleLog,
  };
}

/**
 * The devices to simulate, numbered from 1. Each trait goes to `round(n × fraction)` devices
 * spread evenly over the fleet, each trait shifted by a third of the spacing, so that with
 * small fractions the slow, failing and dropping devices are different ones.
 */
export function deviceSpecs(options: Pick<ResolvedOptions, "devices" | "prefix" | "slow" | "fail" | "drop">): DeviceSpec[] {
  const n = options.devices;
  const slow = spread(n, options.slow, 0);
  const fail = spread(n, options.fail, 1 / 3);
  const drop = spread(n, options.drop, 2 / 3);
  const width = Math.max(3, String(n).length);
  return Array.from({ length: n }, (_, i) => ({
    id: `${options.prefix}${String(i + 1).padStart(width, "0")}`,
    number: i + 1,
    traits: { slow: slow.has(i), fail: fail.has(i), drop: drop.has(i) },
  }));
}

function spread(n: number, fraction: number, phase: number): Set<number> {
  const count = Math.round(n * fraction);
  const picked = new Set<number>();
  for (let j = 0; j < count; j++) picked.add(Math.floor(((j + phase) * n) / count) % n);
  return picked;
}

function positive(flag: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0 || value > 86_400) throw new UsageError(`${flag} must be a number of seconds above 0 (at most 86400), not ${value}`);
  return value;
}

function nonNegative(flag: string, value: number): number {
  if (!Number.isFinite(value) || value < 0) throw new UsageError(`${flag} must be a number of seconds, 0 or more, not ${value}`);
  return value;
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new UsageError(`${name} must be a whole number above 0, not ${value}`);
  return value;
}

function fraction(flag: string, value: number): number {
  if (!Number.isFinite(value) || value < 0 || value > 1) throw new UsageError(`${flag} must be a fraction from 0 to 1 (or a percentage such as 10%), not ${value}`);
  return value;
}

function range(name: string, value: readonly [number, number]): [number, number] {
  const [min, max] = value;
  if (!(Number.isFinite(min) && Number.isFinite(max) && min >= 0 && max >= min)) throw new UsageError(`${name} must be [min, max] seconds with 0 <= min <= max`);
  return [min, max];
}

function url(flag: string, value: string, schemes: string[]): string {
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new UsageError(`${flag} must be a URL (${schemes.map((s) => `${s}//...`).join(" or ")}), not "${value}"`);
  }
  if (!schemes.includes(parsed.protocol) || parsed.hostname === "") {
    throw new UsageError(`${flag} must be a ${schemes.map((s) => s.slice(0, -1)).join(" or ")} URL with a host, not "${value}"`);
  }
  return value;
}

function host(flag: string, value: string): string {
  if (value.trim() === "" || /[\s/?#]/.test(value)) throw new UsageError(`${flag} must be a host name or address of this machine, not "${value}"`);
  return value.trim();
}

function checkPrefix(prefix: string, devices: number): void {
  if (!PREFIX_PATTERN.test(prefix)) throw new UsageError(`--prefix may hold only A-Z a-z 0-9 . _ : - (device id characters), not "${prefix}"`);
  const longest = prefix.length + Math.max(3, String(devices).length);
  if (longest > DEVICE_ID_MAX) throw new UsageError(`--prefix is too long: device ids are at most ${DEVICE_ID_MAX} characters`);
}
