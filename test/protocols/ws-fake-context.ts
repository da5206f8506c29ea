import { checkProperties } from "../../src/core/validation";
import { TethralError, notFound } from "../../src/core/errors";
import { Intake } from "../../src/core/intake";
import type { DeviceTwin } from "../../src/core/types";
import type { AdapterContext, AuthResult, DeviceMessage, ProtocolCounters, ReceiveResult } from "../../src/protocols/types";

/**
 * A stand-in for the hub's side of an adapter: devices and tokens in a map, every call recorded.
 * It checks telemetry as the hub does (checkProperties in validation.ts), so refusals are real ones.
 */
/** The backlog at which a FakeContext's intake turns busy. */
export const BUSY_AT = 10;

export class FakeContext implements AdapterContext {
  /** id → token (undefined: the device needs none). */
  readonly devices = new Map<string, string | undefined>();
  readonly received: DeviceMessage[] = [];
  readonly connections: string[] = [];
  readonly warnings: string[] = [];
  readonly counters: ProtocolCounters = { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0, rejected: 0, errors: 0 };
  /** Authentication refusals (the hub counts these itself, so the adapter must not). */
  authRefusals = 0;
  selfRegistration = false;
  /** The hub's valve, moved by a test: `intake.backlog(BUSY_AT)` turns it busy, `intake.release()` ready. */
  readonly intake = new Intake(BUSY_AT, 0, 2);
  /** What `stored` answers; a test holds it (a promise of its own) to see what waits for the store. */
  storedAnswer: Promise<boolean> = Promise.resolve(true);

  stored(): Promise<boolean> {
    return this.storedAnswer;
  }

  constructor(readonly maxPayloadBytes = 64 * 1024) {}

  receive(message: DeviceMessage): ReceiveResult {
    this.counters.messagesIn++;
    const token = this.devices.get(message.deviceId);
    if (!this.devices.has(message.deviceId) && message.kind !== "register") return this.refuse(notFound("device", message.deviceId));
    if (!message.authenticated && token !== undefined && message.token !== token) {
      return this.refuse(new TethralError("UNAUTHORIZED", "the device token is wrong"));
    }
    try {
      if (message.kind === "telemetry") checkProperties(message.payload, "data");
    } catch (err) {
      return this.refuse(err as TethralError);
    }
    this.received.push(message);
    return { ok: true, deviceId: message.deviceId, status: "online", changed: true };
  }

  authenticate(_protocol: string, deviceId: string, token: string | undefined): AuthResult {
    if (!this.devices.has(deviceId)) {
      if (this.selfRegistration) return { ok: true, deviceId, known: false };
      this.authRefusals++;
      this.counters.rejected++;
      return { ok: false, error: notFound("device", deviceId) };
    }
    const expected = this.devices.get(deviceId);
    if (expected !== undefined && token !== expected) {
      this.authRefusals++;
      this.counters.rejected++;
      return { ok: false, error: new TethralError("UNAUTHORIZED", "the device token is wrong") };
    }
    return { ok: true, deviceId, known: true };
  }

  /** Twins set by a test; a device without one has none to be told (the adapter sends nothing). */
  readonly twinOf = new Map<string, DeviceTwin>();

  twin(deviceId: string): DeviceTwin | null {
    return this.twinOf.get(deviceId) ?? null;
  }

  twins(): Iterable<[string, DeviceTwin]> {
    return this.twinOf.entries();
  }

  /** Adapter-side refusals, as the hub would count and publish them. */
  readonly refusals: Array<{ deviceId?: string | null; kind?: string; reason: string; message: string }> = [];

  reject(refusal: { deviceId?: string | null; kind?: string; reason: string; message: string }): void {
    this.counters.rejected++;
    this.refusals.push(refusal);
  }

  connected(deviceId: string): void {
    this.connections.push(`+${deviceId}`);
  }

  disconnected(deviceId: string): void {
    this.connections.push(`-${deviceId}`);
  }

  warn(message: string): void {
    this.warnings.push(message);
  }

  private refuse(error: TethralError): ReceiveResult {
    this.counters.rejected++;
    return { ok: false, error };
  }
}

export { until } from "../helpers";
