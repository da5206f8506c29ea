import { isUtf8 } from "node:buffer";
import type { IncomingMessage } from "node:http";
import { reportOf } from "../nodes/http-refusals";
import { sendError } from "./http-server";
import type { Handler } from "./node-red";
import { errorMessage } from "../core/errors";

type ApiRequest = IncomingMessage & { body?: unknown; _body?: boolean; bodyBytes?: number };

/** The REST API's own paths (CONTRACT §3): JSON only. Other flows' endpoints under /api take what they like. */
const CONTRACT_PATHS = /^\/(devices|commands|events|health|communication)(\/|\?|$)/i;
/** The charset parameter of a Content-Type, lower case (the type is lower-cased before). */
const CHARSET = /;\s*charset\s*=\s*"?([^";\s]*)/;
/** Character sets a JSON body may declare: UTF-8, and ASCII, which is UTF-8 too. */
const UTF8_CHARSETS = new Set(["utf-8", "utf8", "us-ascii", "ascii"]);
/** How much of an oversized upload is read (and dropped) so its client can read the 413. */
const DRAIN_LIMIT_BYTES = 16 * 1024 * 1024;
/** Deeper JSON is refused: Node-RED deep-copies a message on its way to a Catch node, recursively. */
const API_MAX_DEPTH = 64;

/**
 * Reads a JSON request body for the REST flows: malformed JSON is a 400, a body over `limit` a
 * 413 and, on the contract's paths, a body that is not JSON (a form post: the way a hostile web
 * page would try to reach the API from a browser) a 415, all as `{"error": {"code": "INVALID",
 * ...}}`, before any flow sees the request. A parsed body is handed on as `req.body`
 * (body-parser, which the http in node runs next, leaves a request it finds marked `_body`
 * alone). Bodies of other types on other paths go on untouched.
 */
export function jsonBody(limit: number, refused: (req: IncomingMessage, reason: string, message: string) => void): Handler {
  return (req: ApiRequest, res, next) => {
    const type = String(req.headers["content-type"] ?? "").toLowerCase();
    const declared = Number(req.headers["content-length"] ?? 0);
    const hasBody = req.headers["transfer-encoding"] !== undefined || declared > 0;
    if (!hasBody || req._body) return next?.();
    let failed = false;
    // Answer at once, then read and drop the rest of the upload, so the client finishes sending
    // and reads the answer (closing on it mid-upload would reset its connection); an upload past
    // DRAIN_LIMIT_BYTES is cut off.
    const refuse = (status: number, message: string) => {
      failed = true;
      if (declared > DRAIN_LIMIT_BYTES) res.setHeader("Connection", "close");
      sendError(res, status, "INVALID", message);
      refused(req, status === 413 ? "payload-too-large" : "unsupported-media-type", message);
      let dropped = 0;
      req.on("data", (chunk: Buffer) => {
        dropped += chunk.length;
        if (dropped > DRAIN_LIMIT_BYTES) req.socket.destroy();
      });
      req.resume();
    };
    const tooLarge = () => refuse(413, `the request body is larger than ${limit} bytes`);
    const json = /^application\/([a-z0-9.+-]+\+)?json\s*(;|$)/.test(type);
    const contract = CONTRACT_PATHS.test(req.url ?? "");
    if (!json) {
      if (!contract) return next?.();
      // A status report is one word (`online`) and a heartbeat anything, as on MQTT: firmware may
      // send either as plain text.
      const kind = reportOf(req.method, req.url)?.kind;
      if (/^text\/plain\s*(;|$)/.test(type) && (kind === "status" || kind === "heartbeat")) return next?.();
      return refuse(415, `the request body must be JSON, sent as Content-Type: application/json (not ${type || "untyped"})`);
    }
    // JSON is UTF-8 (RFC 8259 §8.1): on the contract's paths a body declared in another character
    // set would be read wrong, and is refused; other flows' endpoints get it as body-parser reads it.
    const charset = CHARSET.exec(type)?.[1];
    if (charset !== undefined && charset !== "" && !UTF8_CHARSETS.has(charset)) {
      if (!contract) return next?.();
      return refuse(415, `the request body must be JSON in UTF-8 (charset=utf-8), not charset=${charset.slice(0, 40)}`);
    }
    if (declared > limit) return tooLarge();
    const chunks: Buffer[] = [];
    let size = 0;
    const collect = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) return void chunks.push(chunk);
      req.off("data", collect);
      chunks.length = 0;
      tooLarge();
    };
    req.on("data", collect);
    req.on("error", () => {
      failed = true;
    });
    req.on("end", () => {
      if (failed) return;
      const bytes = Buffer.concat(chunks);
      // Bytes that are not UTF-8 would be stored as U+FFFD, changed for good: refused instead.
      if (contract && !isUtf8(bytes)) {
        const message = "the request body is not valid UTF-8: JSON must be sent as UTF-8";
        sendError(res, 400, "INVALID", message);
        refused(req, "invalid-payload", message);
        return;
      }
      const text = bytes.toString("utf8");
      let body: unknown;
      try {
        body = text.trim() === "" ? {} : (JSON.parse(text) as unknown);
      } catch (err) {
        const message = `the request body is not valid JSON: ${errorMessage(err)}`;
        sendError(res, 400, "INVALID", message);
        refused(req, "invalid-payload", message);
        return;
      }
      if (depthOf(body, API_MAX_DEPTH) > API_MAX_DEPTH) {
        const message = `the request body nests deeper than ${API_MAX_DEPTH} levels`;
        sendError(res, 400, "INVALID", message);
        refused(req, "invalid-payload", message);
        return;
      }
      req.body = body;
      req._body = true;
      // What the body weighed as sent: a device's report is counted, and held to the payload limit, by it.
      req.bodyBytes = bytes.byteLength;
      next?.();
    });
  };
}

/** How deep a parsed JSON value nests, counted without recursion and no further than `stop` + 1. */
function depthOf(value: unknown, stop: number): number {
  let deepest = 0;
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== "object") continue;
    if (depth > deepest) deepest = depth;
    if (deepest > stop) return deepest;
    for (const child of Object.values(v)) if (child !== null && typeof child === "object") stack.push([child, depth + 1]);
  }
  return deepest;
}
