// Node-RED's settings for `npm start` (CONTRACT §6): the user directory's own `settings.js`, in
// Node-RED's format, is honoured; the runtime's defaults fill in only what it leaves out, and
// the environment variables (PORT, HOST, NODE_RED_CREDENTIAL_SECRET) override it.
import { existsSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { errorMessage } from "../core/errors";

/** What a settings file may hold: Node-RED's settings, read as they are. */
export type NodeRedSettings = Record<string, unknown>;

export const SETTINGS_FILE = "settings.js";

/** The settings the runtime itself needs, which a user's settings.js is merged with. */
export interface RuntimeDefaults {
  userDir: string;
  /** This package's root, added to the user's `nodesDir`. */
  nodesDir: string;
  port: number;
  host: string;
  adminRoot: string;
  nodeRoot: string;
  logLevel: string;
}

/** Overrides from the environment (or a caller): each one set wins over settings.js. */
export interface SettingsOverrides {
  port?: number;
  host?: string;
  credentialSecret?: string;
  logLevel?: string;
}

/**
 * The user directory's settings.js, or null when there is none. A file that cannot be loaded
 * is an error whose message says which file and why (the caller prints it as one line).
 */
export function readUserSettings(userDir: string): NodeRedSettings | null {
  const file = path.join(userDir, SETTINGS_FILE);
  if (!existsSync(file)) return null;
  let loaded: unknown;
  try {
    // A fresh read each start: a long-lived process (a test) may start on several user dirs.
    const load = createRequire(file);
    delete load.cache[file];
    loaded = load(file);
  } catch (err) {
    throw new Error(`${file} cannot be loaded: ${firstLine(err)}`, { cause: err });
  }
  if (loaded === null || typeof loaded !== "object" || Array.isArray(loaded)) {
    throw new Error(`${file} must export an object of Node-RED settings (module.exports = {...})`);
  }
  return loaded as NodeRedSettings;
}

/**
 * Node-RED's settings for this start: the user's, then the runtime's defaults where the user's
 * leave a setting out, then the overrides. Settings that must name this package (nodesDir) or
 * this user directory (userDir) are always the runtime's; the user's nodesDir is kept beside it.
 */
export function mergeSettings(user: NodeRedSettings | null, defaults: RuntimeDefaults, overrides: SettingsOverrides): NodeRedSettings {
  const settings: NodeRedSettings = { ...(user ?? {}) };
  const fill = (key: string, value: unknown) => {
    if (settings[key] === undefined) settings[key] = value;
  };
  settings.userDir = defaults.userDir;
  const theirs = settings.nodesDir;
  const dirs = Array.isArray(theirs) ? theirs.filter((d): d is string => typeof d === "string") : typeof theirs === "string" ? [theirs] : [];
  settings.nodesDir = [...dirs, defaults.nodesDir];
  fill("flowFile", "flows.json");
  fill("flowFilePretty", true);
  fill("httpAdminRoot", defaults.adminRoot);
  fill("httpNodeRoot", defaults.nodeRoot);
  fill("uiPort", defaults.port);
  fill("uiHost", defaults.host);
  fill("logging", { console: { level: defaults.logLevel, metrics: false, audit: false } });
  // A device hub often runs on a closed network: no update check, no consent prompt.
  fill("telemetry", { enabled: false, updateNotification: false });
  settings.editorTheme = fillIn(settings.editorTheme, { page: { title: "Tethral" }, header: { title: "Tethral" }, tours: false });
  fill("apiMaxLength", "1mb");

  if (overrides.port !== undefined) settings.uiPort = overrides.port;
  if (overrides.host !== undefined) settings.uiHost = overrides.host;
  if (overrides.credentialSecret !== undefined) settings.credentialSecret = overrides.credentialSecret;
  if (overrides.logLevel !== undefined) {
    const logging = isObject(settings.logging) ? { ...settings.logging } : {};
    logging.console = { ...(isObject(logging.console) ? logging.console : {}), level: overrides.logLevel };
    settings.logging = logging;
  }
  return settings;
}

/** `theirs` with `ours`'s top-level keys added where it has none (an object only). */
function fillIn(theirs: unknown, ours: Record<string, unknown>): unknown {
  if (theirs === undefined) return ours;
  if (!isObject(theirs)) return theirs;
  return { ...ours, ...theirs };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function firstLine(err: unknown): string {
  const text = errorMessage(err);
  return text.split("\n")[0] ?? text;
}

/**
 * Written into a new user directory, as Node-RED writes its own on first run, so a user finds
 * the file to edit. It sets nothing: every line is an example to uncomment.
 */
export function writeSettingsTemplate(userDir: string): void {
  const file = path.join(userDir, SETTINGS_FILE);
  if (existsSync(file)) return;
  writeFileSync(file, SETTINGS_TEMPLATE, { flag: "wx" });
}

const SETTINGS_TEMPLATE = `// Node-RED's settings for Tethral's \`npm start\` (https://nodered.org/docs/user-guide/runtime/settings-file).
// Everything here is honoured; what this file leaves out takes Tethral's defaults, and the
// environment variables PORT, HOST and NODE_RED_CREDENTIAL_SECRET override it.
// Restart the runtime after a change.
module.exports = {
  // The editor and its admin API (https://nodered.org/docs/user-guide/runtime/securing-node-red).
  // Make a password hash with \`npx node-red admin hash-pw\` in Tethral's folder.
  // adminAuth: {
  //   type: "credentials",
  //   users: [{ username: "admin", password: "$2y$08$...", permissions: "*" }],
  // },

  // The REST API under /api (and every other http in node).
  // httpNodeAuth: { user: "api", pass: "$2y$08$..." },

  // TLS for the editor and the API.
  // https: { key: require("fs").readFileSync("privkey.pem"), cert: require("fs").readFileSync("cert.pem") },

  // Encrypts flows_cred.json; NODE_RED_CREDENTIAL_SECRET overrides it.
  // credentialSecret: "a-long-random-string",
};
`;
