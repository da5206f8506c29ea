// The flow runtime (`npm start`): Node-RED, embedded from this package's own node_modules,
// with this package's nodes and the flows of flows/ loaded. CONTRACT §6.
import { type IncomingMessage, type ServerResponse, createServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createRequire } from "node:module";
import path from "node:path";
import { HTTP_REFUSAL_EVENT, reportOf } from "../nodes/http-refusals";
import { type ListenError, closeServer, listen } from "../protocols/listen";
import { jsonBody } from "./api-body";
import { checkClusterDatabase } from "./cluster-check";
import { basicAuth, isCredentials } from "./basic-auth";
import { corsChooser, corsPolicy, hostPolicy } from "./guard";
import { apiNotFound, checkRequest, finalError, guardUpgrades, httpsOptions, notFound, refreshHttps, sendError, urlHost } from "./http-server";
import type { Express, ExpressApp, Handler, NodeRed, RuntimeEvent } from "./node-red";
import { HTTP_NODE_ROOT, type RuntimeOptions, StartupError, optionsFromEnv, prepareSettings, root, warnIfOpen } from "./options";
import type { NodeRedSettings } from "./settings";
import { watchNpm } from "./npm-parent";
import { prepareUserDir } from "./user-dir";

export { type RuntimeOptions, StartupError, optionsFromEnv } from "./options";

/** Where the flows are once Node-RED has started: running, or held back and why. */
export interface FlowsState {
  state: "start" | "stop" | "safe" | "unknown";
  /** e.g. `missing-types`, `missing-modules`. */
  error?: string;
  missingTypes?: string[];
}

// Flows start after RED.start() resolves; a start that takes longer is reported as "unknown".
const FLOWS_START_WAIT_MS = 15_000;

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

export const PACKAGE_ROOT = path.resolve(__dirname, "..", "..");
/** Largest request body the REST API reads (a device record or report is a few KiB). */
const API_MAX_BODY_BYTES = 1024 * 1024;

// Node-RED keeps its state in module singletons and cannot be started again once stopped.
let started = false;

export async function startRuntime(options: RuntimeOptions = {}): Promise<RunningRuntime> {
  const userDir = path.resolve(options.userDir ?? ".tethral");
  const settings = prepareSettings(userDir, options, PACKAGE_ROOT);
  if (options.cluster) await checkClusterDatabase(options.cluster);
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
  let boundPort: number;
  try {
    boundPort = await listen(server, port, host);
  } catch (err) {
    throw listenError(err as ListenError);
  }
  if (started) {
    await closeServer(server);
    throw new StartupError("Node-RED is already running in this process: it can be started once per process");
  }
  settings.uiPort = boundPort;

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
    // Whether the flows (the API's routes among them) are running: not until they have started.
    let flowsRunning = false;
    RED.events.on("flows:started", () => (flowsRunning = true));
    RED.events.on("flows:stopping", () => (flowsRunning = false));
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
      // Under the API's own root a path no flow serves is answered here, before the editor's app
      // (503 while the flows are not running: the route may be one of theirs).
      if (nodeRoot !== "/" && nodeRoot !== adminRoot) app.use(nodeRoot, apiNotFound(() => flowsRunning));
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

  const base = `${tls ? "https" : "http"}://${urlHost(host)}:${boundPort}`;
  let stopping: Promise<void> | null = null;
  return {
    url: `${base}${adminRoot ?? "/"}`,
    apiUrl: `${base}${nodeRoot ?? HTTP_NODE_ROOT + "/"}`,
    https: tls !== null,
    port: boundPort,
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

/** For each listen() refusal, the variable to change and how: added to the refusal's reason. */
const LISTEN_ADVICE: Readonly<Record<string, { variable: "PORT" | "HOST"; advice: string }>> = {
  EADDRINUSE: { variable: "PORT", advice: "set PORT to another port" },
  EACCES: { variable: "PORT", advice: "set PORT to 1024 or above" },
  EADDRNOTAVAIL: { variable: "HOST", advice: "set HOST to one of its addresses, or 0.0.0.0" },
  ENOTFOUND: { variable: "HOST", advice: "set HOST to an address of this machine" },
  EAI_AGAIN: { variable: "HOST", advice: "set HOST to an address of this machine" },
};

/** A listen() failure as the line to print, naming the variable to change. */
function listenError(err: ListenError): Error {
  const advice = err.code !== undefined ? LISTEN_ADVICE[err.code] : undefined;
  return advice ? new StartupError(`${err.reason}: ${advice.advice}`, advice.variable) : err;
}

/** `npm start`: start from the environment, print where to go, stop cleanly on a signal. */
async function main(): Promise<void> {
  // Who started this, read before Node-RED starts: npm may go meanwhile.
  const npmWatch = watchNpm();
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

  // Why the runtime is stopping: a second signal means "now", a signal after npm went does not.
  let stopping: "signal" | "npm" | null = null;
  const stop = (signal: NodeJS.Signals | null) => {
    if (stopping !== null) {
      if (signal !== null && stopping === "signal") {
        // A second Ctrl-C means "now".
        console.error(`${signal} again: exiting without waiting`);
        process.exit(1);
      }
      if (signal !== null) stopping = "signal";
      return;
    }
    stopping = signal === null ? "npm" : "signal";
    runtime.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        console.error("Node-RED did not stop cleanly:", err);
        process.exit(1);
      },
    );
  };
  // Node-RED's own launcher stops on the same signals: SIGHUP when the terminal closes,
  // SIGUSR2 from nodemon, SIGBREAK for Ctrl-Break on Windows.
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR2", "SIGBREAK"] as const) process.on(signal, () => stop(signal));
  npmWatch?.(() => {
    // A signal to npm's whole group reaches npm, its shell and the runtime at once: npm is then
    // gone while the runtime stops, which is no reason to stop again.
    if (stopping !== null) return;
    console.error("npm, which started this runtime, has exited: stopping");
    stop(null);
  });
}

if (require.main === module) void main();
