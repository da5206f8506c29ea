// What the runtime refuses before Node-RED sees a request (CONTRACT §6, DESIGN "Security model"):
// a Host that is not one of the runtime's own names (DNS rebinding lets any web page reach
// 127.0.0.1 under a name of its own), and a state-changing request, or a WebSocket upgrade,
// from a page of another origin (Origin). Browsers send both headers and pages cannot forge
// them; devices and scripts send a Host and no Origin.
import { hostname, networkInterfaces } from "node:os";

/** The names a Host header may carry, and the names the user allowed explicitly. */
export interface HostPolicy {
  /** Exact names, lower case, without port or brackets (`localhost`, `127.0.0.1`, `::1`). */
  readonly names: ReadonlySet<string>;
  /** `.example.com` entries of TETHRAL_ALLOWED_HOSTS: that name and every name under it. */
  readonly suffixes: readonly string[];
  /** TETHRAL_ALLOWED_HOSTS itself: a page served under one of these may change state here. */
  readonly explicit: ReadonlySet<string>;
}

const LOOPBACK = ["localhost", "127.0.0.1", "::1"];
const WILDCARDS = new Set(["0.0.0.0", "::", ""]);

/**
 * The runtime's own names: loopback, HOST, and TETHRAL_ALLOWED_HOSTS (comma-separated; `*`
 * turns the check off, for a proxy that checks Host itself). Bound to every interface (HOST
 * 0.0.0.0 or ::), the machine's own addresses and host name are its names too: no web page
 * can make a browser send those for a name of its own.
 */
export function hostPolicy(host: string, allowed: string | undefined): HostPolicy {
  const names = new Set(LOOPBACK);
  const explicit = new Set<string>();
  const suffixes: string[] = [];
  const bare = normalise(host);
  if (WILDCARDS.has(bare)) {
    names.add(hostname().toLowerCase());
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) names.add(normalise(a.address));
  } else {
    names.add(bare);
  }
  for (const entry of (allowed ?? "").split(",")) {
    const name = normalise(entry);
    if (name === "") continue;
    if (name.startsWith(".")) suffixes.push(name);
    else names.add(name);
    explicit.add(name);
  }
  return { names, suffixes, explicit };
}

/** Lower case, without a port, brackets, or a trailing dot: `[::1]:1880` → `::1` (for names the runtime is given). */
function normalise(value: string): string {
  return parseHost(value) ?? value.trim().toLowerCase();
}

// A Host header is a bracketed IPv6 address or a name, then an optional port (RFC 9110 §7.2).
const BRACKETED = /^\[([0-9a-f:.]+)\](?::\d{1,5})?$/;
const NAMED = /^([a-z0-9_.-]*[a-z0-9_-])\.?(?::\d{1,5})?$/;

/** The host name of a Host header value, lower case, without port or brackets; null when it is not one. */
function parseHost(value: string): string | null {
  const v = value.trim().toLowerCase();
  const bracketed = BRACKETED.exec(v);
  if (bracketed) return bracketed[1]!;
  // A bare IPv6 address (as HOST may be given) has more than one colon.
  if (/^[0-9a-f:.]+$/.test(v) && v.split(":").length > 2) return v;
  return NAMED.exec(v)?.[1] ?? null;
}

function allowsName(policy: HostPolicy, name: string): boolean {
  if (policy.explicit.has("*") || policy.names.has(name)) return true;
  return policy.suffixes.some((s) => name === s.slice(1) || name.endsWith(s));
}

export interface Refusal {
  /** The answer's status. */
  status: number;
  /** Why, for `message.rejected` and the log. */
  reason: "foreign-host" | "foreign-origin";
  /** The answer's message: what to change to be let in. */
  message: string;
}

export interface GuardedRequest {
  method?: string | undefined;
  headers: Record<string, string | string[] | undefined>;
  /** The headers as sent, names and values in turn (Node keeps only the first of two Host headers in `headers`). */
  rawHeaders?: string[];
}

/** May a page of this origin call here? (A CORS setting of the user's, for their own pages.) */
export type OriginAllowed = (origin: string) => boolean;

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

/**
 * Why a request is refused, or null. `upgrade`: a WebSocket upgrade, which a page of any origin
 * may open and which carries what it says to the server in both directions: its Origin is
 * checked as a state-changing request's is.
 */
export function refusalOf(req: GuardedRequest, policy: HostPolicy, upgrade: boolean, corsAllows: OriginAllowed = () => false): Refusal | null {
  const host = header(req.headers.host);
  if (host === undefined || host.trim() === "") {
    return { status: 400, reason: "foreign-host", message: "the request has no Host header" };
  }
  if (hostHeaders(req.rawHeaders) > 1) {
    // RFC 9112 §3.2: a proxy in front may read the other one; neither can be trusted.
    return { status: 400, reason: "foreign-host", message: "the request has more than one Host header" };
  }
  const name = parseHost(host);
  if (name === null || !allowsName(policy, name)) {
    return {
      status: 400,
      reason: "foreign-host",
      message: `this runtime does not answer to the host name "${(name ?? host).slice(0, 128)}": add it to TETHRAL_ALLOWED_HOSTS if it is one of its names`,
    };
  }
  if (!upgrade && SAFE_METHODS.has((req.method ?? "GET").toUpperCase())) return null;
  const origin = header(req.headers.origin);
  if (origin === undefined) {
    // Browsers old enough to leave Origin out of a cross-site request still say where it came from.
    if (header(req.headers["sec-fetch-site"]) !== "cross-site") return null;
    return { status: 403, reason: "foreign-origin", message: "a page of another site may not change this runtime" };
  }
  if (sameOrigin(origin, host, policy) || corsAllows(origin)) return null;
  return {
    status: 403,
    reason: "foreign-origin",
    message: `a page of ${origin.slice(0, 128)} may not ${upgrade ? "open a WebSocket to" : "change"} this runtime: serve it from this runtime's own address, or name its origin in Node-RED's httpNodeCors or httpAdminCors`,
  };
}

/** How many Host headers the request carried. */
function hostHeaders(raw: string[] | undefined): number {
  let n = 0;
  if (raw) for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === 4 && raw[i]!.toLowerCase() === "host") n++;
  return n;
}

const DEFAULT_PORTS: Record<string, string> = { "http:": "80", "https:": "443", "ws:": "80", "wss:": "443" };

/**
 * The page is this runtime's own: its origin has the request's own host and port, or (behind a
 * proxy that rewrites Host) it is the front door of a name listed exactly in
 * TETHRAL_ALLOWED_HOSTS, on the scheme's default port or the request's port. `*` and
 * `.suffix` entries widen only the Host check: they never let another site's pages in.
 */
function sameOrigin(origin: string, host: string, policy: HostPolicy): boolean {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return false; // "null" (a sandboxed frame, a file) and anything unreadable is foreign
  }
  const requested = host.trim().toLowerCase();
  if (url.host.toLowerCase() === requested) return true;
  const name = normalise(url.hostname);
  if (name === "*" || name.startsWith(".") || !policy.explicit.has(name)) return false;
  const port = url.port || DEFAULT_PORTS[url.protocol] || "";
  const requestPort = /:(\d{1,5})$/.exec(requested)?.[1] ?? "";
  return port === (DEFAULT_PORTS[url.protocol] ?? "") || port === requestPort;
}

function header(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/**
 * The origins a `cors` setting of Node-RED's (httpNodeCors, httpAdminCors: the options of the
 * `cors` package) lets call here. `origin: "*"` or `true` lets every page in, as the user said.
 */
export function corsPolicy(setting: unknown): OriginAllowed {
  if (setting === null || typeof setting !== "object") return () => false;
  const origin = (setting as { origin?: unknown }).origin;
  const matches = (o: string, rule: unknown): boolean => {
    if (rule === true || rule === "*") return true;
    if (typeof rule === "string") return rule === o;
    if (rule instanceof RegExp) return rule.test(o);
    if (Array.isArray(rule)) return rule.some((r) => matches(o, r));
    return false;
  };
  return (o) => matches(o, origin);
}

/**
 * Which CORS setting of the user's lets other origins change what a path serves: the admin
 * API's (httpAdminCors) for its paths, the API's (httpNodeCors) for the API's. When one root
 * holds the other (the API at `/` and the editor at `/admin/`, say), the longer one decides; when
 * both are the same, both settings must allow the origin.
 */
export function corsChooser(nodeRoot: string | null, adminRoot: string | null, nodeCors: OriginAllowed, adminCors: OriginAllowed): (url: string | undefined) => OriginAllowed {
  const none: OriginAllowed = () => false;
  const both: OriginAllowed = (o) => nodeCors(o) && adminCors(o);
  return (url) => {
    const inNode = nodeRoot !== null && under(url, nodeRoot);
    const inAdmin = adminRoot !== null && under(url, adminRoot);
    if (inNode && inAdmin) return nodeRoot!.length === adminRoot!.length ? both : nodeRoot!.length > adminRoot!.length ? nodeCors : adminCors;
    return inNode ? nodeCors : inAdmin ? adminCors : none;
  };
}

/** Whether a request URL is at or under a root such as `/api/` (Express matches mount paths whatever their case). */
export function under(url: string | undefined, rootPath: string): boolean {
  const u = (url ?? "/").toLowerCase();
  rootPath = rootPath.toLowerCase();
  return rootPath === "/" || u.startsWith(rootPath) || u === rootPath.slice(0, -1) || u.startsWith(`${rootPath.slice(0, -1)}?`);
}
