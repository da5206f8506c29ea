// The flow runtime (`npm start`): Node-RED, embedded from this package's own node_modules,
// with this package's nodes and the flows of flows/ loaded. CONTRACT §6.
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import { type ServerOptions as HttpsOptions, createServer as createHttpsServer } from "node:https";
import { createRequire } from "node:module";
import type { AddressInfo, Socket } from "node:net";
import path from "node:path";
import { HTTP_REFUSAL_EVENT, type HttpRefusal, reportOf } from "../nodes/http-refusals";
import { type HostPolicy, type OriginAllowed, type Refusal, corsChooser, corsPolicy, hostPolicy, refusalOf } from "./guard";
import { type NodeRedSettings, SETTINGS_FILE, mergeSettings, readUserSettings, writeSettingsTemplate } from "./settings";

type Handler = (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => void;

/** Express tells an error handler from a handler by its four parameters. */
type ErrorHandler = (err: { status?: number; statusCode?: number; message?: string }, req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void;

interface ExpressApp extends Handler {
  use(path: string, ...handlers: Array<Handler | ErrorHandler>): void;
  set(setting: string, value: unknown): void;
}

interface Express {
  (): ExpressApp;
  static(root: string, options?: unknown): Handler;
}

/** The slice of node-red's embedding API used here (node-red/lib/red.js). */
interface NodeRed {
  init(server: Server, settings: Record<string, unknown>): void;
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly httpAdmin: Handler;
  readonly httpNode: Handler;
  readonly log: { info(msg: string): void; warn(msg: string): void; error(msg: unknown): void };
  readonly events: {
    on(event: "runtime-event", listener: (event: RuntimeEvent) => void): void;
    off(event: "runtime-event", listener: (event: RuntimeEvent) => void): void;
    emit(event: typeof HTTP_REFUSAL_EVENT, refusal: HttpRefusal): boolean;
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
  /** Overrides settings.js's uiPort. Default 1880; 0 picks a free port. */
  port?: number;
  /** Overrides settings.js's uiHost. Default 127.0.0.1. */
  host?: string;
  /** TETHRAL_ALLOWED_HOSTS: further names (comma-separated) the runtime answers to. */
  allowedHosts?: string;
  /** Node-RED's user dir. Default `.tethral` in the current directory. */
  userDir?: string;
  /** Where Node-RED finds this package's nodes. Default the package root. */
  nodesDir?: string;
  /** Copied to `<userDir>/flows.json` when that file does not exist. Default `flows/flows.json`. */
  flowsTemplate?: string;
  /** Overrides settings.js's. Default: Node-RED generates one and keeps it in the user dir. */
  credentialSecret?: string;
  /** Console log level; overrides settings.js's. Default info. */
  logLevel?: LogLevel;
}

export interface RunningRuntime {
  /** The editor, e.g. `http://127.0.0.1:1880/`. */
  url: string;
  /** The REST API root, e.g. `http://127.0.0.1:1880/api/`. */
  apiUrl: string;
  /** Whether settings.js turned on TLS. */
  https: boolean;
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

/**
 * Runtime options from the environment variables of CONTRACT §6. Only variables that are set
 * appear: the rest is settings.js's, then the runtime's defaults.
 */
export function optionsFromEnv(env: NodeJS.ProcessEnv = process.env, cwd: string = process.cwd()): RuntimeOptions {
  const options: RuntimeOptions = { userDir: path.resolve(cwd, env.TETHRAL_USER_DIR?.trim() || ".tethral") };
  const port = parsePort(env.PORT);
  if (port !== undefined) options.port = port;
  if (env.HOST?.trim()) options.host = env.HOST.trim();
  if (env.TETHRAL_ALLOWED_HOSTS?.trim()) options.allowedHosts = env.TETHRAL_ALLOWED_HOSTS.trim();
  // The variable Node-RED's own Docker image and settings template read.
  if (env.NODE_RED_CREDENTIAL_SECRET) options.credentialSecret = env.NODE_RED_CREDENTIAL_SECRET;
  return options;
}

function parsePort(value: string | undefined): number | undefined {
  if (value === undefined || value.trim() === "") return undefined;
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
  const userDir = path.resolve(options.userDir ?? ".tethral");
  const settings = prepareSettings(userDir, options);
  const port = settings.uiPort as number;
  const host = settings.uiHost as string;
  const adminRoot = settings.httpAdminRoot === false ? null : root(settings.httpAdminRoot);
  const nodeRoot = settings.httpNodeRoot === false ? null : root(settings.httpNodeRoot);
  const flowFile = path.resolve(userDir, settings.flowFile as string);

  // Resolve express and the libraries Node-RED's own launcher uses from node-red's location
  // rather than trusting how npm hoisted them.
  const requireHere = createRequire(__filename);
  const redPath = requireHere.resolve("node-red");
  const RED = requireHere(redPath) as NodeRed;
  const fromRed = createRequire(redPath);
  const express = fromRed("express") as Express;

  const app = express();
  // No stack traces in answers (Express shows them outside production), no x-powered-by.
  app.set("env", "production");
  app.set("x-powered-by", false);
  const serverOptions = settings.httpServerOptions;
  if (serverOptions !== null && typeof serverOptions === "object") {
    for (const [name, value] of Object.entries(serverOptions)) app.set(name, value);
  }
  const tls = await httpsOptions(settings);
  const policy = hostPolicy(host, options.allowedHosts);
  const corsFor = corsChooser(nodeRoot, adminRoot, corsPolicy(settings.httpNodeCors), corsPolicy(settings.httpAdminCors));
  // Every request passes the Host and Origin rules before Express sees it (Express reads an
  // absolute request target once, at its start: the check makes it a path first).
  const guarded = (req: IncomingMessage, res: ServerResponse) => {
    const refusal = checkRequest(req, policy, false, corsFor);
    if (refusal) return sendError(res, refusal.status, refusal.status === 403 ? "FORBIDDEN" : "INVALID", refusal.message);
    app(req, res);
  };
  const server = tls ? createHttpsServer(tls, guarded) : createServer(guarded);
  // Listen before Node-RED loads anything, so a busy port is one clear line and nothing else.
  await listen(server, port, host);
  if (started) {
    await closeServer(server);
    throw new StartupError("Node-RED is already running in this process: it can be started once per process");
  }
  const address = server.address() as AddressInfo;
  settings.uiPort = address.port;

  // A device report refused for its body is a device message refused: the hub nodes count it
  // (CONTRACT §4). Refusals of the Host or Origin are not: no device sends those.
  const announce = (url: string | undefined, method: string | undefined, reason: string, message: string) => {
    const report = reportOf(method, url);
    if (report) RED.events.emit(HTTP_REFUSAL_EVENT, { ...report, reason, message });
  };

  let refreshTimer: NodeJS.Timeout | null = null;
  let flows: FlowsState;
  try {
    prepareUserDir(userDir, flowFile, options.flowsTemplate ?? path.join(PACKAGE_ROOT, "flows", "flows.json"));
    started = true;
    guardUpgrades(server, policy, corsFor);
    RED.init(server, settings);
    warnIfOpen(RED, settings, host, tls !== null, userDir);
    if (adminRoot !== null && isCredentials(settings.httpAdminAuth)) {
      // Deprecated by Node-RED in favour of adminAuth, and still honoured by its launcher.
      app.use(adminRoot, basicAuth(fromRed, settings.httpAdminAuth));
    }
    // The API first: the editor's app, mounted at /, parses every body it sees with its own
    // limits and error pages, and must not see the API's requests.
    if (nodeRoot !== null) {
      const nodeAuth = settings.httpNodeAuth;
      if (typeof nodeAuth === "function" || Array.isArray(nodeAuth)) app.use(nodeRoot, ...([nodeAuth].flat() as Handler[]));
      else if (isCredentials(nodeAuth)) app.use(nodeRoot, basicAuth(fromRed, nodeAuth));
      // The REST API answers a body it cannot read in its own JSON error shape (CONTRACT §1),
      // where Node-RED's http in node would answer 500.
      app.use(nodeRoot, jsonBody(API_MAX_BODY_BYTES, (req, reason, message) => announce(req.url, req.method, reason, message)));
      app.use(nodeRoot, RED.httpNode);
      // Under the API's own root a path no flow serves is answered here, before the editor's app.
      if (nodeRoot !== "/" && nodeRoot !== adminRoot) app.use(nodeRoot, notFound);
    }
    if (adminRoot !== null) app.use(adminRoot, RED.httpAdmin);
    serveStatic(app, express, fromRed, settings);
    app.use("/", notFound);
    app.use("/", finalError(RED));
    refreshTimer = refreshHttps(server, settings, RED);
    const flowsSettled = flowsState(RED);
    await RED.start();
    flows = await flowsSettled;
  } catch (err) {
    if (refreshTimer) clearInterval(refreshTimer);
    await closeServer(server);
    throw err;
  }

  const base = `${tls ? "https" : "http"}://${urlHost(host)}:${address.port}`;
  let stopping: Promise<void> | null = null;
  return {
    url: `${base}${adminRoot ?? "/"}`,
    apiUrl: `${base}${nodeRoot ?? HTTP_NODE_ROOT + "/"}`,
    https: tls !== null,
    port: address.port,
    host,
    userDir,
    flowFile,
    flows,
    stop() {
      if (refreshTimer) clearInterval(refreshTimer);
      stopping ??= RED.stop().finally(() => closeServer(server));
      return stopping;
    },
  };
}

/** The user dir's settings.js, with the defaults and overrides (nothing is written: the port may be busy). */
function prepareSettings(userDir: string, options: RuntimeOptions): NodeRedSettings {
  let user: NodeRedSettings | null;
  try {
    user = readUserSettings(userDir);
  } catch (err) {
    throw new StartupError(`${(err as Error).message}: fix it, or move it away to start with the defaults`);
  }
  const settings = mergeSettings(
    user,
    {
      userDir,
      nodesDir: path.resolve(options.nodesDir ?? PACKAGE_ROOT),
      port: DEFAULT_PORT,
      host: DEFAULT_HOST,
      adminRoot: HTTP_ADMIN_ROOT,
      nodeRoot: HTTP_NODE_ROOT,
      logLevel: "info",
    },
    {
      ...(options.port !== undefined && { port: options.port }),
      ...(options.host !== undefined && { host: options.host }),
      ...(options.credentialSecret !== undefined && { credentialSecret: options.credentialSecret }),
      ...(options.logLevel !== undefined && { logLevel: options.logLevel }),
    },
  );
  // Node-RED names the file it was given in its start-up log.
  if (user) settings.settingsFile = path.join(userDir, SETTINGS_FILE);
  const port = Number(settings.uiPort);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new StartupError(`uiPort in settings.js must be a port number, not ${JSON.stringify(settings.uiPort)}: fix it, or set PORT`, "PORT");
  }
  settings.uiPort = port;
  if (typeof settings.uiHost !== "string" || settings.uiHost.trim() === "") {
    throw new StartupError(`uiHost in settings.js must be an address, not ${JSON.stringify(settings.uiHost)}: fix it, or set HOST`, "HOST");
  }
  if (typeof settings.flowFile !== "string") throw new StartupError("flowFile in settings.js must be a file name");
  return settings;
}

/** Served beyond this machine without the settings that lock it: said once, loudly, at start. */
function warnIfOpen(RED: NodeRed, settings: NodeRedSettings, host: string, tls: boolean, userDir: string): void {
  const file = path.join(userDir, SETTINGS_FILE);
  if (settings.https && !tls) RED.log.warn(`the https setting in ${file} gave no key and certificate: serving plain HTTP`);
  if (/^(127\.|localhost$|::1$|\[::1\]$)/i.test(host)) return;
  if (!settings.adminAuth) RED.log.warn(`the editor on ${host} is open to anyone who reaches it, and can run any command on this machine: set adminAuth in ${file} (README, Security)`);
  if (!settings.httpNodeAuth && settings.httpNodeRoot !== false) RED.log.warn(`the REST API on ${host} is open to anyone who reaches it: set httpNodeAuth in ${file} (README, Security)`);
}

/** Node-RED's form of a root path: a leading and a trailing slash. */
function root(value: unknown): string {
  let r = typeof value === "string" && value !== "" ? value : "/";
  if (!r.startsWith("/")) r = `/${r}`;
  if (!r.endsWith("/")) r = `${r}/`;
  return r;
}

/** settings.js's `https`: an object, or a function that returns one (or a promise of one), as Node-RED's launcher takes it. */
async function httpsOptions(settings: NodeRedSettings): Promise<HttpsOptions | null> {
  const https = settings.https;
  if (!https) return null;
  try {
    const value = (await (typeof https === "function" ? (https as () => unknown)() : https)) as HttpsOptions | null | undefined;
    return value && typeof value === "object" ? value : null;
  } catch (err) {
    throw new StartupError(`the https setting in settings.js failed: ${(err as Error).message}`);
  }
}

/** Node-RED's httpsRefreshInterval (hours): a function `https` is asked again and the new key and certificate used. */
function refreshHttps(server: Server, settings: NodeRedSettings, RED: NodeRed): NodeJS.Timeout | null {
  if (typeof settings.https !== "function" || !settings.httpsRefreshInterval || !("setSecureContext" in server)) return null;
  const hours = Math.min(596, Number(settings.httpsRefreshInterval) || 12);
  const timer = setInterval(() => {
    Promise.resolve((settings.https as () => unknown)()).then(
      (fresh) => {
        if (fresh && typeof fresh === "object") (server as unknown as { setSecureContext(o: unknown): void }).setSecureContext(fresh);
      },
      (err: unknown) => RED.log.error(`the https settings could not be refreshed: ${(err as Error).message}`),
    );
  }, hours * 3_600_000);
  timer.unref();
  return timer;
}

interface Credentials {
  user: string;
  pass: string;
}

function isCredentials(value: unknown): value is Credentials {
  return value !== null && typeof value === "object" && typeof (value as Credentials).user === "string" && typeof (value as Credentials).pass === "string";
}

/** Password checks under way at once, past which a request is answered 429 (bcrypt costs milliseconds of CPU each). */
const MAX_PASSWORD_CHECKS = 4;

/**
 * HTTP Basic authentication as Node-RED's launcher applies it for httpNodeAuth, httpAdminAuth and
 * httpStaticAuth: `pass` is a bcrypt hash (or a legacy MD5 hex digest). The last password that
 * matched is remembered, so a client sending it again does not pay for bcrypt on every request.
 * Other passwords are checked off the event loop's hot path (asynchronously), a few at a time:
 * a client guessing passwords cannot stall the devices and flows the runtime serves.
 */
function basicAuth(fromRed: NodeJS.Require, { user, pass }: Credentials): Handler {
  const parse = fromRed("basic-auth") as (req: IncomingMessage) => { name: string; pass: string } | undefined;
  let verify: (password: string) => Promise<boolean>;
  if (pass.length === 32) {
    verify = async (p) => createHash("md5").update(p, "utf8").digest("hex") === pass;
  } else {
    try {
      const native = fromRed("@node-rs/bcrypt") as { verify(password: string, hash: string): Promise<boolean> };
      verify = (p) => native.verify(p, pass);
    } catch {
      const js = fromRed("bcryptjs") as { compare(password: string, hash: string): Promise<boolean> };
      verify = (p) => js.compare(p, pass);
    }
  }
  let remembered: string | null = null;
  let checking = 0;
  const refuse = (res: ServerResponse) => {
    res.setHeader("WWW-Authenticate", 'Basic realm="Authorization Required"');
    sendError(res, 401, "UNAUTHORIZED", "this path needs a user name and password (HTTP Basic authentication)");
  };
  return (req, res, next) => {
    if (req.method === "OPTIONS") return next?.();
    const given = parse(req);
    if (given === undefined || given.name !== user) return refuse(res);
    if (given.pass === remembered) return next?.();
    if (checking >= MAX_PASSWORD_CHECKS) {
      res.setHeader("Retry-After", "1");
      return sendError(res, 429, "UNAVAILABLE", "too many password checks under way: try again in a second");
    }
    checking++;
    verify(given.pass).then(
      (ok) => {
        checking--;
        if (!ok) return refuse(res);
        remembered = given.pass;
        next?.();
      },
      () => {
        checking--;
        refuse(res);
      },
    );
  };
}

/** settings.js's httpStatic (a folder, or a list of {path, root, options, middleware, cors}), served as Node-RED's launcher does. */
function serveStatic(app: ExpressApp, express: Express, fromRed: NodeJS.Require, settings: NodeRedSettings): void {
  const statics = settings.httpStatic;
  if (!statics) return;
  const base = root(settings.httpStaticRoot);
  const cors = fromRed("cors") as (options: unknown) => Handler;
  const seen = new Set<string>();
  for (const entry of Array.isArray(statics) ? statics : [statics]) {
    const spec = typeof entry === "string" ? { path: entry } : (entry as { path?: unknown; root?: unknown; options?: unknown; middleware?: unknown; cors?: unknown });
    if (spec === null || typeof spec !== "object" || typeof spec.path !== "string") continue;
    const at = root(path.posix.join(base, root(spec.root)));
    if (seen.has(`${spec.path}::${at}`)) continue;
    seen.add(`${spec.path}::${at}`);
    const corsOptions = spec.cors ?? settings.httpStaticCors;
    if (corsOptions) app.use(at, cors(corsOptions));
    if (isCredentials(settings.httpStaticAuth)) app.use(at, basicAuth(fromRed, settings.httpStaticAuth));
    if (typeof spec.middleware === "function" || Array.isArray(spec.middleware)) app.use(at, ...([spec.middleware].flat() as Handler[]));
    app.use(at, express.static(spec.path, spec.options));
  }
}

/**
 * The Host and Origin rules for one request. A request line with an absolute URL (which HTTP/1.1
 * servers must take) names its host there, in place of the Host header: that host is checked,
 * and the URL is made a path, so that everything after this sees the path it routes by.
 */
function checkRequest(req: IncomingMessage, policy: HostPolicy, upgrade: boolean, corsFor: (url: string | undefined) => OriginAllowed): Refusal | null {
  const target = req.url ?? "/";
  if (!target.startsWith("/") && target !== "*") {
    let url: URL;
    try {
      url = new URL(target);
    } catch {
      return { status: 400, reason: "foreign-host", message: "the request target is neither a path nor a URL" };
    }
    const refusal = refusalOf({ method: req.method, headers: { ...req.headers, host: url.host } }, policy, upgrade, corsFor(url.pathname));
    if (refusal) return refusal;
    req.url = `${url.pathname}${url.search}`;
    return null;
  }
  return refusalOf(req, policy, upgrade, corsFor(target));
}

/** A path no flow, editor route or httpStatic folder serves: 404 in the API's error shape rather than an HTML page. */
const notFound: Handler = (req, res) => {
  const url = (req as IncomingMessage & { originalUrl?: string }).originalUrl ?? req.url ?? "";
  sendError(res, 404, "NOT_FOUND", `no route ${(req.method ?? "GET").slice(0, 16)} ${url.split("?")[0]!.slice(0, 200)}`);
};

/**
 * WebSocket upgrades (the editor's comms, the devices' WebSocket path, a user's websocket nodes)
 * pass the same Host check as requests, and a page of another origin may not open one: Node-RED
 * and the adapters attach their own `upgrade` listeners, so the check sits in front of them all.
 */
function guardUpgrades(server: Server, policy: HostPolicy, corsFor: (url: string | undefined) => OriginAllowed): void {
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
function finalError(RED: NodeRed): ErrorHandler {
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
    mkdirSync(path.dirname(flowFile), { recursive: true });
    // A settings.js to edit, as Node-RED writes one into a new user dir (it sets nothing).
    writeSettingsTemplate(userDir);
    // The user's copy: edits and deploys go there, never into the package.
    if (!existsSync(flowFile)) copyFileSync(template, flowFile);
  } catch (err) {
    throw unwritable(userDir, err);
  }
}

function unwritable(userDir: string, err: unknown): StartupError {
  const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  return new StartupError(`Cannot prepare the user directory ${userDir} (${reason}): set TETHRAL_USER_DIR to a writable directory`, "TETHRAL_USER_DIR");
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
const CONTRACT_PATHS = /^\/(devices|commands|events|health|communication)(\/|\?|$)/i;
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
function jsonBody(limit: number, refused: (req: IncomingMessage, reason: string, message: string) => void): Handler {
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
    if (!json) {
      if (!CONTRACT_PATHS.test(req.url ?? "")) return next?.();
      // A status report is one word (`online`) and a heartbeat anything, as on MQTT: firmware may
      // send either as plain text.
      const kind = reportOf(req.method, req.url)?.kind;
      if (/^text\/plain\s*(;|$)/.test(type) && (kind === "status" || kind === "heartbeat")) return next?.();
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
        const message = `the request body is not valid JSON: ${(err as Error).message}`;
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
