// The runtime's options: the environment variables of CONTRACT §6, then the user dir's
// settings.js with the runtime's defaults, checked before anything listens.
import path from "node:path";
import type { NodeRed } from "./node-red";
import { type NodeRedSettings, SETTINGS_FILE, mergeSettings, readUserSettings } from "./settings";
import { errorMessage } from "../core/errors";
import { type ClusterStart, clusterFromEnvironment } from "./cluster-check";

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
  /** TETHRAL_CLUSTER=on: the database is checked for the partition count before Node-RED starts. */
  cluster?: ClusterStart;
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

export const DEFAULT_PORT = 1880;
export const DEFAULT_HOST = "127.0.0.1";
export const HTTP_ADMIN_ROOT = "/";
export const HTTP_NODE_ROOT = "/api";

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
  const cluster = clusterFromEnvironment(env);
  if (cluster) options.cluster = cluster;
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

/** The user dir's settings.js, with the defaults and overrides (nothing is written: the port may be busy). */
export function prepareSettings(userDir: string, options: RuntimeOptions, packageRoot: string): NodeRedSettings {
  let user: NodeRedSettings | null;
  try {
    user = readUserSettings(userDir);
  } catch (err) {
    throw new StartupError(`${errorMessage(err)}: fix it, or move it away to start with the defaults`);
  }
  const settings = mergeSettings(
    user,
    {
      userDir,
      nodesDir: path.resolve(options.nodesDir ?? packageRoot),
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
export function warnIfOpen(RED: NodeRed, settings: NodeRedSettings, host: string, tls: boolean, userDir: string): void {
  const file = path.join(userDir, SETTINGS_FILE);
  if (settings.https && !tls) RED.log.warn(`the https setting in ${file} gave no key and certificate: serving plain HTTP`);
  if (/^(127\.|localhost$|::1$|\[::1\]$)/i.test(host)) return;
  if (!settings.adminAuth) RED.log.warn(`the editor on ${host} is open to anyone who reaches it, and can run any command on this machine: set adminAuth in ${file} (README, Security)`);
  if (!settings.httpNodeAuth && settings.httpNodeRoot !== false) RED.log.warn(`the REST API on ${host} is open to anyone who reaches it: set httpNodeAuth in ${file} (README, Security)`);
}

/** Node-RED's form of a root path: a leading and a trailing slash. */
export function root(value: unknown): string {
  let r = typeof value === "string" && value !== "" ? value : "/";
  if (!r.startsWith("/")) r = `/${r}`;
  if (!r.endsWith("/")) r = `${r}/`;
  return r;
}
