import type { IncomingMessage } from "coap";
import { encodeTwin } from "../core/twin";
import type { DeviceTwin } from "../core/types";
import { CoapObservers, type ObserveLimits } from "./coap-observe";
import { type Answer, CODE_OF, refusal } from "./coap-intake";
import { JSON_FORMAT } from "./coap-wire";
import type { AdapterContext } from "./types";

/**
 * `GET /devices/{id}/desired?token=…` (CONTRACT §2): the device's twin, 2.05 JSON, and with
 * Observe = 0 (RFC 7641) a notification on every change until the client deregisters, resets,
 * stops acknowledging, or the device is removed or its token replaced.
 */
export class CoapTwinResource {
  private context: AdapterContext | null = null;
  readonly observers: CoapObservers;

  constructor(private readonly protocol: string, limits: ObserveLimits) {
    this.observers = new CoapObservers(limits);
  }

  start(context: AdapterContext, send: (datagram: Buffer, to: { address: string; port: number }) => void): void {
    this.context = context;
    this.observers.start(send);
  }

  stop(): void {
    this.observers.stop();
    this.context = null;
  }

  /** A request for the resource; `observe` is the request's Observe value (undefined without one). */
  answer(req: IncomingMessage, target: { deviceId: string; token: string | undefined }, observe: number | undefined): Answer {
    const context = this.context!;
    const { deviceId } = target;
    if (req.code !== "0.01") {
      context.reject({ deviceId, kind: "desired", reason: "wrong-method", message: `${req.method ?? req.code} is not allowed: use GET` });
      return refusal("4.05", "INVALID", `${req.method ?? req.code} is not allowed on desired: use GET`);
    }
    // Checked as any message of the device (its token), and a sign of life like one.
    const result = context.receive({ protocol: this.protocol, deviceId, kind: "heartbeat", payload: null, token: target.token });
    if (!result.ok) return { code: CODE_OF[result.error.code] ?? "5.00", error: result.error };
    const twin = context.twin(deviceId);
    if (!twin) return refusal("4.04", "NOT_FOUND", `no device "${deviceId}"`);
    const token = req._packet.token ?? Buffer.alloc(0);
    let sequence: number | null = null;
    if (observe === 0) sequence = this.observers.register(deviceId, req.rsinfo, token);
    else if (observe === 1) this.observers.deregister(req.rsinfo, token);
    const answer: Answer = { code: "2.05", body: { format: JSON_FORMAT, payload: Buffer.from(encodeTwin(twin), "utf8") } };
    if (sequence !== null) answer.observe = sequence;
    return answer;
  }

  /** The device's twin changed (null: the device was removed, which ends its observations with 4.04). */
  changed(deviceId: string, twin: DeviceTwin | null): void {
    if (!this.context) return;
    if (twin === null) {
      this.observers.end(deviceId, "4.04", `device "${deviceId}" was removed`);
      return;
    }
    if (!this.observers.has(deviceId)) return;
    const payload = Buffer.from(encodeTwin(twin), "utf8");
    const sent = this.observers.notify(deviceId, payload);
    this.context.counters.messagesOut += sent;
    this.context.counters.bytesOut += sent * payload.length;
  }

  /** The device's token was replaced: observations made with the old one end with 4.01. */
  revoke(deviceId: string, reason: string): void {
    this.observers.end(deviceId, "4.01", reason);
  }
}
