import { type IncomingMessage, request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { TethralError, errorMessage } from "../core/errors";
import type { Device, JsonValue } from "../core/types";
import { busyHealth } from "./intake-hold";
import { isDeviceSide } from "./network-errors";
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

  async send(device: Device, frame: CommandFrame, timeoutMs: number, handedOver?: () => void): Promise<SendOutcome> {
    const context = this.context;
    if (!context || this.stopped) throw new TethralError("UNAVAILABLE", "the http adapter is not running");
    const url = commandUrl(device);
    const body = Buffer.from(encodeCommand(frame));
    const controller = new AbortController();
    const timeout = new TethralError("TIMEOUT", `device "${device.id}" did not answer within ${timeoutMs} ms`);
    const timer = setTimeout(() => controller.abort(timeout), Math.max(1, timeoutMs));
    this.inFlight.add(controller);
    this.figures.requests++;
    try {
      const res = await post(url, body, { ...this.options.headers, "Content-Type": "application/json", Accept: "application/json" }, controller.signal, () => {
        // The request has left for the device: the command is sent, whether or not an answer comes.
        context.counters.messagesOut++;
        context.counters.bytesOut += body.byteLength;
        handedOver?.();
      });
      const status = res.statusCode ?? 0;
      const ok = status >= 200 && status < 300;
      const limit = ok ? (this.options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES) : ERROR_BODY_CHARS * 4;
      const { text, cut } = await readCapped(res, limit);
      this.figures.answered++;
      if (!ok) {
        this.figures.refusedByDevice++;
        const detail = text.trim().slice(0, ERROR_BODY_CHARS);
        return { status: "answered", ok: false, error: `HTTP ${status}${detail ? `: ${detail}` : ""}` };
      }
      if (cut) {
        this.figures.refusedByDevice++;
        return { status: "answered", ok: false, error: `HTTP ${status}: the answer is larger than ${limit} bytes` };
      }
      const result = resultOf(text);
      // CONTRACT §2 (HTTP): a 2xx with JSON is success. One labelled JSON whose body is not JSON is a
      // broken answer, not a text result (until 2026-12-07 it ended the command succeeded).
      if (typeof result === "string" && JSON_TYPE.test(String(res.headers["content-type"] ?? ""))) {
        this.figures.refusedByDevice++;
        return { status: "answered", ok: false, error: `HTTP ${status}: the answer is labelled JSON but is not JSON: ${text.trim().slice(0, ERROR_BODY_CHARS)}` };
      }
      return { status: "answered", ok: true, result };
    } catch (err) {
      throw this.failure(device, url, controller.signal, err);
    } finally {
      clearTimeout(timer);
      this.inFlight.delete(controller);
    }
  }

  checkAddress(address: string): string | null {
    const url = urlOf(address);
    return typeof url === "string" ? url : null;
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

  /**
   * Why a request brought no answer, as the error the hub counts as a failed attempt. A device
   * that does not answer, or cannot be reached, is no fault of the hub's: counted in the adapter's
   * figures and the command's status; the protocol's errors count the rest (no free socket, a
   * header the request cannot carry).
   */
  private failure(device: Device, url: URL, signal: AbortSignal, err: unknown): TethralError {
    if (signal.aborted && signal.reason instanceof TethralError) {
      if (signal.reason.code === "TIMEOUT") this.figures.timedOut++;
      else this.figures.failed++;
      return signal.reason;
    }
    this.figures.failed++;
    const reason = (err as { code?: unknown }).code ?? errorMessage(err);
    if (isDeviceSide(err)) return new TethralError("UNAVAILABLE", `device "${device.id}" unreachable at ${url.origin}: ${reason}`);
    this.context!.counters.errors++;
    return new TethralError("UNAVAILABLE", `could not post to device "${device.id}" at ${url.origin}: ${errorMessage(err)}`);
  }
}

/**
 * The URL an HTTP device's commands are posted to, or why `address` cannot be one (the message of
 * `error.details` for `address`). Read for each command and when an address is set.
 */
function urlOf(address: string): URL | string {
  let url: URL;
  try {
    url = new URL(address.trim());
  } catch {
    return "must be an http: or https: URL";
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return "must be an http: or https: URL";
  // A password in the address would be shown by every read of the device.
  if (url.username || url.password) return "must not include a user name or password";
  return url;
}

/** The device's address as a URL to post to, or INVALID: nothing is sent. */
function commandUrl(device: Device): URL {
  const address = device.address?.trim();
  if (!address) throw new TethralError("INVALID", `device "${device.id}" has no address to send commands to`, [{ field: "address", message: "is required for http devices" }]);
  const url = urlOf(address);
  if (typeof url === "string") throw new TethralError("INVALID", `device "${device.id}" address ${url}`, [{ field: "address", message: url }]);
  return url;
}

/**
 * POSTs `body` on a connection of its own (no pooled socket outlives the command: after stop()
 * nothing of ours stays open), following no redirect (a command is not re-posted somewhere else
 * behind the user's back: a 3xx is an answer). `sent` is called once the request has been handed
 * to the connection in full, before any answer.
 */
function post(url: URL, body: Buffer, headers: Record<string, string>, signal: AbortSignal, sent: () => void): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = (url.protocol === "https:" ? httpsRequest : httpRequest)(url, {
      method: "POST",
      headers: { ...headers, "Content-Length": String(body.byteLength), Connection: "close" },
      agent: false,
      signal,
    });
    req.once("finish", sent);
    req.once("response", resolve);
    req.once("error", reject);
    req.end(body);
  });
}

/** Reads at most `limit` bytes of the body, then lets the rest go. */
async function readCapped(res: IncomingMessage, limit: number): Promise<{ text: string; cut: boolean }> {
  const chunks: Buffer[] = [];
  let size = 0;
  let cut = false;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    const room = limit - size;
    if (chunk.byteLength > room) {
      chunks.push(chunk.subarray(0, room));
      cut = true;
      res.destroy();
      break;
    }
    chunks.push(chunk);
    size += chunk.byteLength;
  }
  return { text: Buffer.concat(chunks).toString("utf8"), cut };
}

/** A media type that says JSON: application/json, or a structured +json one (RFC 6839). */
const JSON_TYPE = /^\s*application\/([\w.-]+\+)?json\s*(;|$)/i;

/**
 * The result of a 2xx answer: its JSON, null for an empty body. A body that is not JSON (and is
 * not labelled JSON: see send) is kept as text: the status already says the device did it, and
 * the text may still inform.
 */
function resultOf(text: string): JsonValue {
  if (text.trim() === "") return null;
  try {
    return JSON.parse(text) as JsonValue;
  } catch {
    return text;
  }
}
