// The runtime's HTTP server around Express: TLS from settings.js, the Host and Origin guard in
// front of every request and upgrade, and answers in the API's error shape.
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { ServerOptions as HttpsOptions } from "node:https";
import type { Socket } from "node:net";
import { type HostPolicy, type OriginAllowed, type Refusal, refusalOf } from "./guard";
import type { ErrorHandler, Handler, NodeRed } from "./node-red";
import { StartupError } from "./options";
import type { NodeRedSettings } from "./settings";
import { errorMessage } from "../core/errors";

/** An error answer in the API's JSON shape (CONTRACT §1). */
export function sendError(res: ServerResponse, status: number, code: string, message: string): void {
  const body = JSON.stringify({ error: { code, message } });
  res.statusCode = status;
  res.setHeader("Content-Type", "application/json; charset=utf-8");
  res.setHeader("Content-Length", Buffer.byteLength(body));
  res.end(body);
}

/** settings.js's `https`: an object, or a function that returns one (or a promise of one), as Node-RED's launcher takes it. */
export async function httpsOptions(settings: NodeRedSettings): Promise<HttpsOptions | null> {
  const https = settings.https;
  if (!https) return null;
  try {
    const value = (await (typeof https === "function" ? (https as () => unknown)() : https)) as HttpsOptions | null | undefined;
    return value && typeof value === "object" ? value : null;
  } catch (err) {
    throw new StartupError(`the https setting in settings.js failed: ${errorMessage(err)}`);
  }
}

/** Node-RED's httpsRefreshInterval (hours): a function `https` is asked again and the new key and certificate used. */
export function refreshHttps(server: Server, settings: NodeRedSettings, RED: NodeRed): NodeJS.Timeout | null {
  if (typeof settings.https !== "function" || !settings.httpsRefreshInterval || !("setSecureContext" in server)) return null;
  const hours = Math.min(596, Number(settings.httpsRefreshInterval) || 12);
  const timer = setInterval(() => {
    Promise.resolve((settings.https as () => unknown)()).then(
      (fresh) => {
        if (fresh && typeof fresh === "object") (server as unknown as { setSecureContext(o: unknown): void }).setSecureContext(fresh);
      },
      (err: unknown) => RED.log.error(`the https settings could not be refreshed: ${errorMessage(err)}`),
    );
  }, hours * 3_600_000);
  timer.unref();
  return timer;
}

/**
 * The Host and Origin rules for one request. A request line with an absolute URL (which HTTP/1.1
 * servers must take) names its host there, in place of the Host header: that host is checked,
 * and the URL is made a path, so that everything after this sees the path it routes by.
 */
export function checkRequest(req: IncomingMessage, policy: HostPolicy, upgrade: boolean, corsFor: (url: string | undefined) => OriginAllowed): Refusal | null {
  const target = req.url ?? "/";
  if (!target.startsWith("/") && target !== "*") {
    let url: URL;
    try {
      url = new URL(target);
    } catch {
      return { status: 400, reason: "foreign-host", message: "the request target is neither a path nor a URL" };
    }
    const refusal = refusalOf({ method: req.method, headers: { ...req.headers, host: url.host }, rawHeaders: req.rawHeaders }, policy, upgrade, corsFor(url.pathname));
    if (refusal) return refusal;
    req.url = `${url.pathname}${url.search}`;
    return null;
  }
  return refusalOf(req, policy, upgrade, corsFor(target));
}

/**
 * Under the API's root while the flows run, `notFound`; while they do not (starting, stopping,
 * between a deploy's stop and start, or held by missing node types), 503 `UNAVAILABLE` with
 * `Retry-After`: the API's own routes are flows, and a device told 404 for its telemetry takes
 * itself for unknown.
 */
export function apiNotFound(flowsRunning: () => boolean): Handler {
  return (req, res, next) => {
    if (flowsRunning()) return notFound(req, res, next);
    res.setHeader("Retry-After", "1");
    sendError(res, 503, "UNAVAILABLE", "the flows are not running (starting, stopping or being deployed): try again shortly");
  };
}

/** A path no flow, editor route or httpStatic folder serves: 404 in the API's error shape rather than an HTML page. */
export const notFound: Handler = (req, res) => {
  const url = (req as IncomingMessage & { originalUrl?: string }).originalUrl ?? req.url ?? "";
  sendError(res, 404, "NOT_FOUND", `no route ${(req.method ?? "GET").slice(0, 16)} ${url.split("?")[0]!.slice(0, 200)}`);
};

/**
 * WebSocket upgrades (the editor's comms, the devices' WebSocket path, a user's websocket nodes)
 * pass the same Host check as requests, and a page of another origin may not open one: Node-RED
 * and the adapters attach their own `upgrade` listeners, so the check sits in front of them all.
 */
export function guardUpgrades(server: Server, policy: HostPolicy, corsFor: (url: string | undefined) => OriginAllowed): void {
  const emit = server.emit.bind(server) as (event: string, ...args: unknown[]) => boolean;
  server.emit = ((event: string, ...args: unknown[]) => {
    if (event === "upgrade") {
      const req = args[0] as IncomingMessage;
      const refusal = checkRequest(req, policy, true, corsFor);
      if (refusal) {
        refuseUpgrade(args[1] as Socket, refusal.status, refusal.message);
        return true;
      }
    }
    return emit(event, ...args);
  }) as Server["emit"];
}

function refuseUpgrade(socket: Socket, status: number, message: string): void {
  const body = JSON.stringify({ error: { code: status === 403 ? "FORBIDDEN" : "INVALID", message } });
  const reason = status === 403 ? "Forbidden" : "Bad Request";
  socket.on("error", () => undefined);
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

/**
 * The last error handler: whatever a route failed with (a malformed body on an admin route, a
 * node's exception) is answered in the API's error shape, never with a page that carries the
 * stack and the paths of the installation. A server-side failure is logged here instead.
 */
export function finalError(RED: NodeRed): ErrorHandler {
  return (err, req, res, next) => {
    if (res.headersSent) return next(err);
    const status = err.status ?? err.statusCode ?? 500;
    if (status >= 400 && status < 500) {
      const first = String(err.message ?? "bad request").split("\n")[0]!.slice(0, 200);
      sendError(res, status, status === 401 ? "UNAUTHORIZED" : status === 404 ? "NOT_FOUND" : "INVALID", `the request cannot be handled: ${first}`);
      return;
    }
    RED.log.error(`${req.method ?? "GET"} ${(req.url ?? "").split("?")[0]} failed: ${err.message ?? String(err)}`);
    sendError(res, 500, "INTERNAL", "the request could not be handled: see the Node-RED log");
  };
}

export function urlHost(host: string): string {
  if (host === "0.0.0.0") return "127.0.0.1";
  if (host === "::") return "localhost";
  return host.includes(":") ? `[${host}]` : host;
}
