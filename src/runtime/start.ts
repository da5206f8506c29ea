// The flow runtime (`npm start`): Node-RED, embedded from this package's own node_modules,
// with this package's nodes and the flows of flows/ loaded. CONTRACT §6.
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import path from "node:path";

type Handler = (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => void;

/** Express tells an error handler from a handler by its four parameters. */
type ErrorHandler = (err: { status?: number; statusCode?: number; message?: string }, req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void;

interface ExpressApp extends Handler {
  use(path: string, handler: Handler | ErrorHandler): void;
  disable(setting: string): void;
}

/** The slice of node-red's embedding API used here (node-red/lib/red.js). */
interface NodeRed {
  init(server: Server, settings: Record<string, unknown>): void;
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly httpAdmin: Handler;
  readonly httpNode: Handler;
  readonly log: { info(msg: string): void; error(msg: unknown): void };
  readonly events: {
    on(event: "runtime-event", listener: (event: RuntimeEvent) => void): void;
    off(event: "runtime-event", listener: (event: RuntimeEvent) => void): void;
  };
}

interface RuntimeEvent {
  id: string;
  payload?: { state?: string; error?: string; types?: string[] };
}

/** Where the flows are once Node-RED has started: running, or held back and why. */
export interface FlowsState {
  state: "start" | "stop" | "safe" | "unknown";
  /** e.g. `missing-types`, `missing-modules`. */
  error?: string;
  missingTypes?: string[];
}

// Flows start after RED.start() resolves; a start that takes longer is reported as "unknown".
const FLOWS_START_WAIT_MS = 15_000;

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "off";

export interface RuntimeOptions {
  /** Default 1880; 0 picks a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Node-RED's user dir. Default `.tethral` in the current directory. */
  userDir?: string;
  /** Where Node-RED finds this package's nodes. Default the package root. */
  nodesDir?: string;
  /** Copied to `<userDir>/flows.json` when that file does not exist. Default `flows/flows.json`. */
  flowsTemplate?: string;
  /** Default: Node-RED generates one and keeps it in the user dir. */
  credentialSecret?: string;
  /** Console log level. Default info. */
  logLevel?: LogLevel;
}

export interface RunningRuntime {
  /** The editor, e.g. `http://127.0.0.1:1880/`. */
  url: string;
  /** The REST API root, e.g. `http://127.0.0.1:1880/api/`. */
  apiUrl: string;
  port: number;
  host: string;
  userDir: string;
  flowFile: string;
  flows: FlowsState;
  /** Stops the flows and Node-RED, then closes the server. Idempotent. */
  stop(): Promise<void>;
}

/** A start-up problem the user fixes with a setting: its message is the one line to print. */
export class StartupError extends Error {
  constructor(
    message: string,
    /** The environment variable to change. */
    readonly variable?: string,
  ) {
    super(message);
    this.name = "StartupError";
  }
}

export const PACKAGE_ROOT = path.resolve(__dirname, "..", "..");
export const DEFAULT_PORT = 1880;
export const DEFAULT_HOST = "127.0.0.1";
export const HTTP_ADMIN_ROOT = "/";
export const HTTP_NODE_ROOT = "/api";
/** Largest request body the REST API reads (a device record or report is a few KiB). */
const API_MAX_BODY_BYTES = 1024 * 1024;

/** Runtime options from the environment variables of CONTRACT §6. */
export function optionsFromEnv(env: NodeJS.ProcessEnv = process.env, cwd: string = process.cwd()): RuntimeOptions {
  const options: RuntimeOptions = {
    port: parsePort(env.PORT),
    host: env.HOST?.trim() || DEFAULT_HOST,
    userDir: path.resolve(cwd, env.TETHRAL_USER_DIR?.trim() || ".tethral"),
  };
  // The variable Node-RED's own Docker image and settings template read.
  if (env.NODE_RED_CREDENTIAL_SECRET) options.credentialSecret = env.NODE_RED_CREDENTIAL_SECRET;
  return options;
}

function parsePort(value: string | undefined): number {
  if (value === undefined || value.trim() === "") return DEFAULT_PORT;
  const s = value.trim();
  const port = Number(s);
  if (!/^\d+$/.test(s) || port > 65535) {
    throw new StartupError(`PORT must be a whole number from 0 to 65535, not "${value}": set PORT to a port number`, "PORT");
  }
  return port;
}

// Node-RED keeps its state in module singletons and cannot be started again once stopped.
let started = false;

export async function startRuntime(options: RuntimeOptions = {}): Promise<RunningRuntime> {
  const port = options.port ?? DEFAULT_PORT;
  const host = options.host ?? DEFAULT_HOST;
  const userDir = path.resolve(options.userDir ?? ".tethral");
  const flowFile = path.join(userDir, "flows.json");

  // Resolve express from node-red's own location rather than trusting how npm hoisted it.
  const requireHere = createRequire(__filename);
  const redPath = requireHere.resolve("node-red");
  const RED = requireHere(redPath) as NodeRed;
  const express = createRequire(redPath)("express") as () => ExpressApp;

  const app = express();
  app.disable("x-powered-by");
  const server = createServer(app);
  // Listen before Node-RED loads anything, so a busy port is one clear line and nothing else.
  await listen(server, port, host);
  if (started) {
    await closeServer(server);
    throw new StartupError("Node-RED is already running in this process: it can be started once per process");
  }
  const address = server.address() as AddressInfo;

  let flows: FlowsState;
  try {
    prepareUserDir(userDir, flowFile, options.flowsTemplate ?? path.join(PACKAGE_ROOT, "flows", "flows.json"));
    started = true;
    const settings: Record<string, unknown> = {
      userDir,
      flowFile,
      flowFilePretty: true,
      nodesDir: [path.resolve(options.nodesDir ?? PACKAGE_ROOT)],
      httpAdminRoot: HTTP_ADMIN_ROOT,
      httpNodeRoot: HTTP_NODE_ROOT,
      uiHost: host,
      uiPort: address.port,
      logging: { console: { level: options.logLevel ?? "info", metrics: false, audit: false } },
      // A device hub often runs on a closed network: no update check, no consent prompt.
      telemetry: { enabled: false, updateNotification: false },
      editorTheme: { page: { title: "Tethral" }, header: { title: "Tethral" }, tours: false },
      // The REST API answers a body it cannot read in its own JSON error shape (CONTRACT §1),
      // where Node-RED's http in node would answer 500.
      httpNodeMiddleware: jsonBody(API_MAX_BODY_BYTES),
      apiMaxLength: "1mb",
    };
    if (options.credentialSecret) settings.credentialSecret = options.credentialSecret;
    RED.init(server, settings);
    // The API first: the editor's app, mounted at /, parses every body it sees with its own
    // limits and error pages, and must not see the API's requests.
    app.use(HTTP_NODE_ROOT, RED.httpNode);
    app.use(HTTP_NODE_ROOT, noRoute);
    app.use(HTTP_NODE_ROOT, apiError);
    app.use(HTTP_ADMIN_ROOT, RED.httpAdmin);
    const flowsSettled = flowsState(RED);
    await RED.start();
    flows = await flowsSettled;
  } catch (err) {
    await closeServer(server);
    throw err;
  }

  const base = `http://${urlHost(host)}:${address.port}`;
  let stopping: Promise<void> | null = null;
  return {
    url: `${base}${HTTP_ADMIN_ROOT}`,
    apiUrl: `${base}${HTTP_NODE_ROOT}/`,
    port: address.port,
    host,
    userDir,
    flowFile,
    flows,
    stop() {
      stopping ??= RED.stop().finally(() => closeServer(server));
      return stopping;
    },
  };
}

/** Resolves when Node-RED says whether the flows started (it announces this as a runtime event). */
function flowsState(RED: NodeRed): Promise<FlowsState> {
  return new Promise((resolve) => {
    const done = (state: FlowsState) => {
      clearTimeout(timer);
      RED.events.off("runtime-event", listener);
      resolve(state);
    };
    const listener = (event: RuntimeEvent) => {
      const state = event.id === "runtime-state" ? event.payload?.state : undefined;
      if (state !== "start" && state !== "stop" && state !== "safe") return;
      const result: FlowsState = { state };
      if (event.payload?.error) result.error = event.payload.error;
      if (event.payload?.types) result.missingTypes = event.payload.types;
      done(result);
    };
    // Unref'd: a start that fails before the flows load must not keep the process alive.
    const timer = setTimeout(() => done({ state: "unknown" }), FLOWS_START_WAIT_MS).unref();
    RED.events.on("runtime-event", listener);
  });
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.off("listening", onListening);
      reject(listenError(err, port, host));
    };
    const onListening = () => {
      server.off("error", onError);
      resolve();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen(port, host);
  });
}

function listenError(err: NodeJS.ErrnoException, port: number, host: string): Error {
  switch (err.code) {
    case "EADDRINUSE":
      return new StartupError(`Port ${port} on ${host} is in use: set PORT to another port`, "PORT");
    case "EACCES":
      return new StartupError(`Port ${port} on ${host} needs privileges this user lacks: set PORT to 1024 or above`, "PORT");
    case "EADDRNOTAVAIL":
      return new StartupError(`${host} is not an address of this machine: set HOST to one of its addresses, or 0.0.0.0`, "HOST");
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return new StartupError(`Host name ${host} cannot be resolved: set HOST to an address of this machine`, "HOST");
    default:
      return err;
  }
}

function prepareUserDir(userDir: string, flowFile: string, template: string): void {
  try {
    mkdirSync(userDir, { recursive: true });
    // The user's copy: edits and deploys go there, never into the package.
    if (!existsSync(flowFile)) copyFileSync(template, flowFile);
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new StartupError(
      `Cannot prepare the user directory ${userDir} (${reason}): set TETHRAL_USER_DIR to a writable directory`,
      "TETHRAL_USER_DIR",
    );
  }
}

type ApiRequest = IncomingMessage & { body?: unknown; _body?: boolean };

function sendError(res: ServerResponse, status: number, code: string, message: string): void {
  const body = JSON.stringify({ error: { code, message } });
  res.statusCode = status;
  res.setHeader("Content-Type", "application/json; charset=utf-8");
  res.setHeader("Content-Length", Buffer.byteLength(body));
  res.end(body);
}

/** The REST API's own paths (CONTRACT §3): JSON only. Other flows' endpoints under /api take what they like. */
const CONTRACT_PATHS = /^\/(devices|commands|events|health|communication)(\/|\?|$)/;
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
function jsonBody(limit: number): Handler {
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
      let dropped = 0;
      req.on("data", (chunk: Buffer) => {
        dropped += chunk.length;
        if (dropped > DRAIN_LIMIT_BYTES) req.socket.destroy();
      });
      req.resume();
    };
    const tooLarge = () => refuse(413, `the request body is larger than ${limit} bytes`);
    const json = /^application\/([a-z0-9.+-]+\+)?json\s*(;|$)/.test(type);
    if (!json) {
      if (!CONTRACT_PATHS.test(req.url ?? "")) return next?.();
      return refuse(415, `the request body must be JSON, sent as Content-Type: application/json (not ${type || "untyped"})`);
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
      const text = Buffer.concat(chunks).toString("utf8");
      let body: unknown;
      try {
        body = text.trim() === "" ? {} : (JSON.parse(text) as unknown);
      } catch (err) {
        sendError(res, 400, "INVALID", `the request body is not valid JSON: ${(err as Error).message}`);
        return;
      }
      if (depthOf(body, API_MAX_DEPTH) > API_MAX_DEPTH) {
        sendError(res, 400, "INVALID", `the request body nests deeper than ${API_MAX_DEPTH} levels`);
        return;
      }
      req.body = body;
      req._body = true;
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

/** Under /api, a path no flow serves: 404 in the API's error shape rather than an HTML page. */
const noRoute: Handler = (req, res) => {
  const path = (req.url ?? "").split("?")[0];
  sendError(res, 404, "NOT_FOUND", `no route ${req.method ?? "GET"} ${HTTP_NODE_ROOT}${path}`);
};

/**
 * Under /api, what Express itself refuses (a path with a malformed %-escape, a body a parser
 * chokes on): its status in the API's error shape, never an HTML page with a stack trace.
 */
const apiError: ErrorHandler = (err, _req, res, next) => {
  if (res.headersSent) return next(err);
  const status = err.status ?? err.statusCode ?? 500;
  if (status >= 400 && status < 500) sendError(res, status, "INVALID", `the request cannot be read: ${err.message ?? "bad request"}`);
  else sendError(res, 500, "INTERNAL", "the request could not be handled: see the Node-RED log");
};

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
    // Keep-alive connections would hold close() open until they time out.
    server.closeAllConnections();
  });
}

function urlHost(host: string): string {
  if (host === "0.0.0.0") return "127.0.0.1";
  if (host === "::") return "localhost";
  return host.includes(":") ? `[${host}]` : host;
}

/** `npm start`: start from the environment, print where to go, stop cleanly on a signal. */
async function main(): Promise<void> {
  let runtime: RunningRuntime;
  try {
    runtime = await startRuntime(optionsFromEnv());
  } catch (err) {
    console.error(err instanceof StartupError ? err.message : err);
    process.exit(1);
  }
  console.log(`Tethral editor:   ${runtime.url}`);
  console.log(`Tethral REST API: ${runtime.apiUrl}`);
  if (runtime.flows.missingTypes?.length) {
    console.error(`The flows are stopped: missing node types ${runtime.flows.missingTypes.join(", ")}`);
  }

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      // A second Ctrl-C means "now".
      console.error(`${signal} again: exiting without waiting`);
      process.exit(1);
    }
    stopping = true;
    runtime.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        console.error("Node-RED did not stop cleanly:", err);
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

if (require.main === module) void main();
