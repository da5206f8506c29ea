import { TethralError, errorMessage } from "../core/errors";
import type { Device, JsonValue } from "../core/types";
import { busyHealth } from "./intake-hold";
import { type AdapterContext, type AdapterStatistics, type CommandFrame, type ProtocolAdapter, type ProtocolHealth, type SendOutcome, encodeCommand } from "./types";

export interface HttpAdapterOptions {
  /** Largest device answer read, in bytes; a larger one is a failed command. Default 1 MiB. */
  maxResponseBytes?: number;
  /** Extra request headers for every command (an API key the devices expect, say). */
  headers?: Record<string, string>;
}

const DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024;
/** How much of a refusal's body goes into the command's error text. */
const ERROR_BODY_CHARS = 200;

/**
 * Commands to HTTP devices (CONTRACT §2): `POST {address}` with `{"id", "command", "params"}`;
 * the answer is the device's verdict. Device reports come in through the REST flow and the
 * hub, not through this adapter, so it holds no connection and cannot tell who is online.
 */
export class HttpAdapter implements ProtocolAdapter {
  readonly name = "http";
  private context: AdapterContext | null = null;
  private stopped = false;
  private readonly inFlight = new Set<AbortController>();
  private readonly figures = { requests: 0, answered: 0, refusedByDevice: 0, failed: 0, timedOut: 0 };

  constructor(private readonly options: HttpAdapterOptions = {}) {}

  async start(context: AdapterContext): Promise<void> {
    this.context = context;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const controller of this.inFlight) controller.abort(new TethralError("UNAVAILABLE", "the http adapter stopped"));
    this.inFlight.clear();
  }

  async send(device: Device, frame: CommandFrame, timeoutMs: number): Promise<SendOutcome> {
    const context = this.context;
    if (!context || this.stopped) throw new TethralError("UNAVAILABLE", "the http adapter is not running");
    const url = commandUrl(device);
    const body = encodeCommand(frame);
    const controller = new AbortController();
    const timeout = new TethralError("TIMEOUT", `device "${device.id}" did not answer within ${timeoutMs} ms`);
    const timer = setTimeout(() => controller.abort(timeout), Math.max(1, timeoutMs));
    this.inFlight.add(controller);
    this.figures.requests++;
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: {
          ...this.options.headers,
          "Content-Type": "application/json",
          Accept: "application/json",
          // No pooled socket outlives the command: after stop() nothing of ours stays open.
          Connection: "close",
        },
        body,
        signal: controller.signal,
        // A command is not re-posted somewhere else behind the user's back: a 3xx is an answer.
        redirect: "manual",
      });
      context.counters.messagesOut++;
      context.counters.bytesOut += Buffer.byteLength(body);
      const limit = res.ok ? (this.options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES) : ERROR_BODY_CHARS * 4;
      const { text, cut } = await readCapped(res, limit);
      this.figures.answered++;
      if (!res.ok) {
        this.figures.refusedByDevice++;
        const detail = text.trim().slice(0, ERROR_BODY_CHARS);
        return { status: "answered", ok: false, error: `HTTP ${res.status}${detail ? `: ${detail}` : ""}` };
      }
      if (cut) {
        this.figures.refusedByDevice++;
        return { status: "answered", ok: false, error: `HTTP ${res.status}: the answer is larger than ${limit} bytes` };
      }
      return { status: "answered", ok: true, result: resultOf(text) };
    } catch (err) {
      throw this.failure(device, url, controller.signal, err);
    } finally {
      clearTimeout(timer);
      this.inFlight.delete(controller);
    }
  }

  isConnected(): undefined {
    return undefined;
  }

  health(): ProtocolHealth {
    return this.context && !this.stopped ? { status: "ok", inFlight: this.inFlight.size, ...busyHealth(this.context.intake) } : { status: "stopped" };
  }

  statistics(): AdapterStatistics {
    return { connected: 0, inFlight: this.inFlight.size, ...this.figures };
  }

  /** Why a request brought no answer, as the error the hub counts as a failed attempt. */
  private failure(device: Device, url: URL, signal: AbortSignal, err: unknown): TethralError {
    this.context!.counters.errors++;
    if (signal.aborted && signal.reason instanceof TethralError) {
      if (signal.reason.code === "TIMEOUT") this.figures.timedOut++;
      else this.figures.failed++;
      return signal.reason;
    }
    this.figures.failed++;
    // fetch reports a network failure as "fetch failed" with the system error as its cause.
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const reason = cause?.code ?? cause?.message ?? errorMessage(err);
    return new TethralError("UNAVAILABLE", `device "${device.id}" unreachable at ${url.origin}: ${reason}`);
  }
}

/** The device's address as a URL fetch may post to, or INVALID: nothing is sent. */
function commandUrl(device: Device): URL {
  const address = device.address?.trim();
  if (!address) throw new TethralError("INVALID", `device "${device.id}" has no address to send commands to`, [{ field: "address", message: "is required for http devices" }]);
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw new TethralError("INVALID", `device "${device.id}" address is not a URL: "${address}"`, [{ field: "address", message: "must be an http: or https: URL" }]);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TethralError("INVALID", `device "${device.id}" address must be http: or https:, not ${url.protocol}`, [
      { field: "address", message: "must be an http: or https: URL" },
    ]);
  }
  // fetch refuses URLs with credentials anyway; saying so here keeps it a configuration error.
  if (url.username || url.password) {
    throw new TethralError("INVALID", `device "${device.id}" address must not carry a user name or password`, [
      { field: "address", message: "must not include credentials" },
    ]);
  }
  return url;
}

/** Reads at most `limit` bytes of the body, then lets the rest go. */
async function readCapped(res: Response, limit: number): Promise<{ text: string; cut: boolean }> {
  if (!res.body) return { text: "", cut: false };
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  let cut = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const room = limit - size;
    if (value.byteLength > room) {
      chunks.push(value.subarray(0, room));
      cut = true;
      await reader.cancel().catch(() => undefined);
      break;
    }
    chunks.push(value);
    size += value.byteLength;
  }
  return { text: Buffer.concat(chunks).toString("utf8"), cut };
}

/**
 * The result of a 2xx answer: its JSON, null for an empty body. A body that is not JSON is
 * kept as text: the status already says the device did it, and the text may still inform.
 */
function resultOf(text: string): JsonValue {
  if (text.trim() === "") return null;
  try {
    return JSON.parse(text) as JsonValue;
  } catch {
    return text;
  }
}
