// The runtime as `npm start` runs it, locked down the way Node-RED users lock down Node-RED
// (CONTRACT §6, README "Security"): the user dir's settings.js honoured, foreign Host names and
// foreign Origins refused, no stack traces, and the HTTP device reports it refuses counted.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { connect } from "node:net";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import WebSocket from "ws";
import { until } from "../helpers";
import { type Json, type RuntimeChild, START_LIMIT_MS, call, spawnRuntime } from "./spawn-runtime";

const run = promisify(execFile);
// The hash the way Node-RED's documentation makes one (node-red admin hash-pw uses bcrypt).
const bcrypt = createRequire(require.resolve("node-red"))("bcryptjs") as { hashSync(password: string, rounds: number): string };

const ADMIN = { username: "admin", password: "editor-secret" };
const API = { user: "api", pass: "api-secret" };

/** A raw HTTP request with the headers a test chooses (fetch will not send a Host of its own). */
function raw(url: string, method: string, headers: Record<string, string>, body?: string): Promise<{ status: number; text: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers: { ...headers, ...(body !== undefined && { "content-length": String(Buffer.byteLength(body)) }) } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text, headers: res.headers }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

function basic(user: string, pass: string): string {
  return `Basic ${Buffer.from(`${user}:${pass}`).toString("base64")}`;
}

/** curl's answer status for its arguments; the test is skipped, saying why in one line, where curl is missing. */
async function curlStatus(test: Mocha.Context): Promise<(...args: string[]) => Promise<string>> {
  try {
    await run("curl", ["--version"]);
  } catch {
    console.log("      curl is not installed: skipping the curl check");
    test.skip();
  }
  return async (...args) => (await run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", ...args])).stdout;
}

/** What the answer must not carry: a stack frame, or a path of this installation. */
function assertNoStack(text: string): void {
  assert.doesNotMatch(text, /\n\s+at /, "no stack frames");
  assert.doesNotMatch(text, /node_modules|\/work\/|\/home\/|\/tmp\//, "no absolute paths");
}

describe("npm start with the user's settings.js (adminAuth, httpNodeAuth)", function () {
  this.timeout(START_LIMIT_MS + 30_000);
  let dir: string;
  let runtime: RuntimeChild;

  before(async function () {
    dir = mkdtempSync(path.join(tmpdir(), "tethral-secure-"));
    // The settings.js a user writes, as the README shows it.
    writeFileSync(
      path.join(dir, "settings.js"),
      `module.exports = {
  adminAuth: {
    type: "credentials",
    users: [{ username: ${JSON.stringify(ADMIN.username)}, password: ${JSON.stringify(bcrypt.hashSync(ADMIN.password, 8))}, permissions: "*" }],
  },
  httpNodeAuth: { user: ${JSON.stringify(API.user)}, pass: ${JSON.stringify(bcrypt.hashSync(API.pass, 8))} },
  editorTheme: { page: { title: "My hub" } },
};
`,
    );
    runtime = await spawnRuntime(dir);
  });

  after(async function () {
    try {
      await runtime?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  async function adminToken(): Promise<string> {
    const res = await fetch(`${runtime.url}auth/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ client_id: "node-red-editor", grant_type: "password", scope: "*", ...ADMIN }),
    });
    assert.equal(res.status, 200, "the editor's login with the settings.js user");
    return ((await res.json()) as { access_token: string }).access_token;
  }

  it("adminAuth: the admin API answers 401 without a login and 200 with one", async () => {
    for (const route of ["flows", "settings", "tethral/hubs", "tethral/hubs/x/devices/y/telemetry", "nodes"]) {
      const res = await fetch(`${runtime.url}${route}`);
      assert.equal(res.status, 401, `GET /${route} without a login`);
    }
    const token = await adminToken();
    const flows = await fetch(`${runtime.url}flows`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(flows.status, 200);
    assert.ok(Array.isArray(await flows.json()));
    const hubs = await fetch(`${runtime.url}tethral/hubs`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(hubs.status, 200);
  });

  it("adminAuth: POST /flows (which could deploy an exec node) is 401 without a login, and nothing is deployed", async () => {
    const token = await adminToken();
    const before = (await (await fetch(`${runtime.url}flows`, { headers: { authorization: `Bearer ${token}` } })).json()) as unknown[];
    const evil = [{ id: "x1", type: "tab", label: "x" }, { id: "x2", type: "exec", z: "x1", command: "touch /tmp/pwned", wires: [] }];
    const res = await fetch(`${runtime.url}flows`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(evil) });
    assert.equal(res.status, 401);
    const after = (await (await fetch(`${runtime.url}flows`, { headers: { authorization: `Bearer ${token}` } })).json()) as unknown[];
    assert.deepEqual(after, before);
  });

  it("httpNodeAuth: the REST API answers 401 without credentials (with WWW-Authenticate), 200 with them", async () => {
    // Node-RED's own Basic authentication answers before the API does: not the API's answer.
    const refused = { outsideApi: "httpNodeAuth refuses before any route of the API" };
    for (const route of ["/health", "/devices", "/devices/statistics"]) {
      const res = await call(runtime.api, "GET", route, undefined, {}, refused);
      assert.equal(res.status, 401, `GET /api${route} without credentials`);
      assert.match(res.headers.get("www-authenticate") ?? "", /^Basic /);
    }
    const wrong = await call(runtime.api, "GET", "/health", undefined, { authorization: basic(API.user, "wrong") }, refused);
    assert.equal(wrong.status, 401);
    const registered = await call(runtime.api, "POST", "/devices", { id: "locked-1", protocol: "http" }, {}, refused);
    assert.equal(registered.status, 401, "no registration without credentials");
    const ok = await call(runtime.api, "GET", "/health", undefined, { authorization: basic(API.user, API.pass) });
    assert.equal(ok.status, 200);
    assert.ok(["ok", "degraded"].includes(ok.body.status));
    const list = await call(runtime.api, "GET", "/devices?q=locked", undefined, { authorization: basic(API.user, API.pass) });
    assert.equal(list.body.total, 0);
    // The API's own description says so: Basic on every route.
    const doc = await call(runtime.api, "GET", "/openapi.json", undefined, { authorization: basic(API.user, API.pass) });
    assert.deepEqual(doc.body.security, [{ nodeAuth: [] }]);
    assert.equal(doc.body.components.securitySchemes.nodeAuth.scheme, "basic");
  });

  it("httpNodeAuth: password checks past four at once are answered 503 UNAVAILABLE with Retry-After (a status and code of the contract's), the rest 401", async () => {
    const answers = await Promise.all(
      Array.from({ length: 30 }, async () => {
        const res = await fetch(`${runtime.api}/health`, { headers: { authorization: basic(API.user, "wrong") } });
        return { status: res.status, retryAfter: res.headers.get("retry-after"), body: (await res.json()) as { error?: { code?: string } } };
      }),
    );
    assert.deepEqual([...new Set(answers.map((a) => a.status))].filter((s) => s !== 401 && s !== 503), [], "401 or 503 only");
    const busy = answers.filter((a) => a.status === 503);
    assert.ok(busy.length > 0, "some found the checks busy");
    for (const a of busy) {
      assert.equal(a.body.error?.code, "UNAVAILABLE");
      assert.equal(a.retryAfter, "1");
    }
  });

  it("curl with -u is let in where curl without it is not", async function () {
    const code = await curlStatus(this);
    assert.equal(await code(`${runtime.api}/health`), "401");
    assert.equal(await code("-u", `${API.user}:${API.pass}`, `${runtime.api}/health`), "200");
  });

  it("the rest of settings.js is Node-RED's too, with the runtime's defaults around it", async () => {
    const token = await adminToken();
    const res = await fetch(`${runtime.url}settings`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(res.status, 200);
    const settings = (await res.json()) as Json;
    assert.equal(settings.httpNodeRoot, "/api", "the runtime's default where settings.js says nothing");
    const editor = await (await fetch(runtime.url)).text();
    assert.match(editor, /<title>My hub<\/title>/, "the user's editorTheme page title");
  });
});

describe("npm start refuses other web pages: Host (DNS rebinding) and Origin", function () {
  this.timeout(START_LIMIT_MS + 30_000);
  let dir: string;
  let runtime: RuntimeChild;
  let port: string;

  before(async function () {
    dir = mkdtempSync(path.join(tmpdir(), "tethral-hosts-"));
    runtime = await spawnRuntime(dir, { TETHRAL_ALLOWED_HOSTS: "hub.lan,.example.net" });
    port = new URL(runtime.url).port;
  });

  after(async function () {
    try {
      await runtime?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("answers its own names and TETHRAL_ALLOWED_HOSTS, and refuses any other Host on the editor, admin and API paths", async () => {
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, `hub.lan:${port}`, "hub.lan", `iot.example.net:${port}`, `example.net`]) {
      const res = await raw(`${runtime.api}/health`, "GET", { host });
      assert.equal(res.status, 200, `Host ${host}`);
    }
    for (const route of ["/", "/flows", "/settings", "/api/health", "/api/devices", "/tethral/hubs", "/api/devices/x/telemetry"]) {
      const res = await raw(`${runtime.url}${route.slice(1)}`, "GET", { host: `rebind.attacker.test:${port}` });
      assert.equal(res.status, 400, `GET ${route} under a foreign Host`);
      const body = JSON.parse(res.text) as Json;
      assert.equal(body.error.code, "INVALID");
      assert.match(body.error.message, /does not answer to the host name "rebind\.attacker\.test".*TETHRAL_ALLOWED_HOSTS/);
    }
    // HTTP/1.0 without a Host header: no name to check, so no answer.
    const noHost = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(port), "127.0.0.1", () => socket.end("GET /api/health HTTP/1.0\r\n\r\n"));
      let text = "";
      socket.on("data", (chunk) => (text += chunk.toString()));
      socket.on("end", () => resolve(text));
      socket.on("error", reject);
    });
    assert.match(noHost, /^HTTP\/1\.1 400 /);
    assert.match(noHost, /has no Host header/);
    // Two Host headers, its own name first: a proxy in front may have read the other (RFC 9112 §3.2).
    for (const target of ["/api/health", `http://127.0.0.1:${port}/api/health`]) {
      const twoHosts = await new Promise<string>((resolve, reject) => {
        const socket = connect(Number(port), "127.0.0.1", () => socket.write(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nHost: evil.test\r\nConnection: close\r\n\r\n`));
        let text = "";
        socket.on("data", (chunk) => (text += chunk.toString()));
        socket.on("end", () => resolve(text));
        socket.on("error", reject);
      });
      assert.match(twoHosts, /^HTTP\/1\.1 400 /, target);
      assert.match(twoHosts, /more than one Host header/);
    }
  });

  it("a rebinding page cannot register a device or deploy flows (the runtime's state is unchanged)", async () => {
    const post = await raw(`${runtime.api}/devices`, "POST", { host: `evil.test:${port}`, "content-type": "application/json" }, JSON.stringify({ id: "rebound", protocol: "mqtt" }));
    assert.equal(post.status, 400);
    const flows = await raw(`${runtime.url}flows`, "POST", { host: `evil.test:${port}`, "content-type": "application/json" }, "[]");
    assert.equal(flows.status, 400);
    assert.equal((await call(runtime.api, "GET", "/devices/rebound")).status, 404);
    const deployed = (await (await fetch(`${runtime.url}flows`)).json()) as unknown[];
    assert.ok(deployed.length > 10, "the shipped flows are still deployed");
  });

  it("curl under a rebound name is refused; under the runtime's own name it is answered", async function () {
    const code = await curlStatus(this);
    assert.equal(await code("--resolve", `rebind.attacker.test:${port}:127.0.0.1`, `http://rebind.attacker.test:${port}/api/health`), "400");
    assert.equal(await code("--resolve", `hub.lan:${port}:127.0.0.1`, `http://hub.lan:${port}/api/health`), "200");
  });

  it("refuses state-changing requests from a page of another origin, on the API and admin paths alike; lets its own pages and plain clients in", async () => {
    const host = `127.0.0.1:${port}`;
    const json = { host, "content-type": "application/json" };
    const foreign = await raw(`${runtime.api}/devices`, "POST", { ...json, origin: "https://evil.test" }, JSON.stringify({ id: "csrf-1", protocol: "mqtt" }));
    assert.equal(foreign.status, 403);
    assert.equal((JSON.parse(foreign.text) as Json).error.code, "FORBIDDEN");
    for (const origin of ["null", `http://127.0.0.1:${Number(port) + 1}`, `http://localhost:${port}`]) {
      const res = await raw(`${runtime.api}/devices`, "POST", { ...json, origin }, JSON.stringify({ id: "csrf-1", protocol: "mqtt" }));
      assert.equal(res.status, 403, `Origin ${origin}`);
    }
    const flows = await raw(`${runtime.url}flows`, "POST", { ...json, origin: "https://evil.test" }, "[]");
    assert.equal(flows.status, 403);
    const inject = await raw(`${runtime.url}inject/anything`, "POST", { ...json, origin: "https://evil.test" }, "{}");
    assert.equal(inject.status, 403);
    assert.equal((await call(runtime.api, "GET", "/devices/csrf-1")).status, 404, "nothing was registered");

    const same = await raw(`${runtime.api}/devices`, "POST", { ...json, origin: `http://${host}` }, JSON.stringify({ id: "own-page-1", protocol: "mqtt" }));
    assert.equal(same.status, 201, "the editor's own page");
    const allowed = await raw(`${runtime.api}/devices`, "POST", { ...json, origin: "https://hub.lan" }, JSON.stringify({ id: "own-page-2", protocol: "mqtt" }));
    assert.equal(allowed.status, 201, "a page under a name of TETHRAL_ALLOWED_HOSTS (a proxy in front)");
    const script = await raw(`${runtime.api}/devices`, "POST", json, JSON.stringify({ id: "script-1", protocol: "mqtt" }));
    assert.equal(script.status, 201, "a client that sends no Origin");
    const read = await raw(`${runtime.api}/devices/script-1`, "GET", { host, origin: "https://evil.test" });
    assert.equal(read.status, 200, "reads are not refused (the browser keeps a foreign page from reading the answer)");
  });

  it("a form post cannot reach the API's own paths by changing the path's case or sending an absolute URL", async () => {
    const host = `127.0.0.1:${port}`;
    const form = { host, "content-type": "application/x-www-form-urlencoded" };
    assert.equal((await raw(`${runtime.url}api/Devices`, "POST", form, "id=form-1&protocol=http")).status, 415);
    assert.equal((await raw(`${runtime.url}API/DEVICES`, "POST", form, "id=form-1&protocol=http")).status, 415);
    assert.equal((await call(runtime.api, "GET", "/devices/form-1")).status, 404);
    // An absolute URL on the request line names the host the request is for (RFC 9112 §3.2.2).
    const absolute = (target: string, headers: Record<string, string>, body: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = connect(Number(port), "127.0.0.1", () =>
          socket.write(`POST ${target} HTTP/1.1\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("")}content-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`),
        );
        let text = "";
        socket.on("data", (chunk) => (text += chunk.toString()));
        socket.on("end", () => resolve(text));
        socket.on("error", reject);
      });
    assert.match(await absolute(`http://127.0.0.1:${port}/api/devices`, form, "id=form-2&protocol=http"), /^HTTP\/1\.1 415 /);
    assert.match(await absolute(`http://evil.test:${port}/api/devices`, { host, "content-type": "application/json" }, '{"id":"abs-1","protocol":"http"}'), /^HTTP\/1\.1 400 /);
    assert.match(await absolute(`http://127.0.0.1:${port}/api/devices`, { host, "content-type": "application/json" }, '{"id":"abs-2","protocol":"http"}'), /^HTTP\/1\.1 201 /);
    assert.equal((await call(runtime.api, "GET", "/devices/form-2")).status, 404);
    assert.equal((await call(runtime.api, "GET", "/devices/abs-1")).status, 404);
  });

  it("WebSocket upgrades follow the Host rule, and a page of another origin cannot open one (editor comms, device path)", async () => {
    const open = (pathname: string, headers: Record<string, string>) =>
      new Promise<number>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}${pathname}`, { headers });
        ws.on("open", () => {
          ws.close();
          resolve(101);
        });
        ws.on("unexpected-response", (_req, res) => {
          resolve(res.statusCode ?? 0);
          res.resume();
        });
        ws.on("error", reject);
      });
    assert.equal(await open("/comms", {}), 101, "the editor's own comms");
    assert.equal(await open("/comms", { host: `rebind.attacker.test:${port}` }), 400);
    assert.equal(await open("/comms", { origin: "https://evil.test" }), 403);
    assert.equal(await open("/tethral/ws?device=nobody&token=x", { host: `rebind.attacker.test:${port}` }), 400);
    assert.equal(await open("/tethral/ws?device=nobody&token=x", { origin: "https://evil.test" }), 403);
    assert.equal(await open("/comms", { origin: `http://127.0.0.1:${port}` }), 101, "the editor's own page");
  });

  it("no answer carries a stack trace: a malformed body on an admin route, on the API, an unknown route", async () => {
    const host = `127.0.0.1:${port}`;
    const cases: Array<[string, string, Record<string, string>, string | undefined]> = [
      [`${runtime.url}flows`, "POST", { host, "content-type": "application/json" }, '{"flows": [}'],
      [`${runtime.url}nodes`, "POST", { host, "content-type": "application/json" }, "{bad"],
      [`${runtime.url}auth/token`, "POST", { host, "content-type": "application/json" }, "{bad"],
      [`${runtime.url}flows`, "POST", { host, "content-type": "application/json" }, '"a string"'],
      [`${runtime.url}context/global/%E0%A4%A`, "GET", { host }, undefined],
      [`${runtime.api}/devices`, "POST", { host, "content-type": "application/json" }, "{bad"],
      [`${runtime.api}/%E0%A4%A`, "GET", { host }, undefined],
      [`${runtime.url}%`, "GET", { host }, undefined],
      [`${runtime.url}no/such/page`, "GET", { host }, undefined],
    ];
    for (const [url, method, headers, body] of cases) {
      const res = await raw(url, method, headers, body);
      assert.ok(res.status >= 400, `${method} ${url}: ${res.status}`);
      assertNoStack(res.text);
      assert.doesNotMatch(String(res.headers["content-type"]), /text\/html/, `${method} ${url} answers no HTML error page`);
    }
  });

  it("counts the HTTP device reports it refuses for their body (400, 413, 415) as refusals of the http protocol and publishes message.rejected; a foreign Host or Origin is no device message", async () => {
    const created = await call(runtime.api, "POST", "/devices", { id: "http-dev-1", protocol: "http" });
    assert.equal(created.status, 201);
    const token = created.body.token as string;
    const rejected = async () => (await call(runtime.api, "GET", "/communication/statistics")).body.protocols.http.rejected as number;
    const before = await rejected();
    const host = `127.0.0.1:${port}`;
    const url = `${runtime.api}/devices/http-dev-1/telemetry`;
    const auth = { host, authorization: `Bearer ${token}` };
    assert.equal((await raw(url, "POST", { ...auth, "content-type": "text/plain" }, "t=1")).status, 415);
    assert.equal((await raw(url, "POST", { ...auth, "content-type": "application/json" }, '{"t":')).status, 400);
    assert.equal((await raw(url, "POST", { ...auth, "content-type": "application/json" }, JSON.stringify({ t: "x".repeat(1_100_000) }))).status, 413);
    assert.equal((await raw(url, "POST", { ...auth, host: `evil.test:${port}`, "content-type": "application/json" }, '{"t":1}')).status, 400);
    assert.equal((await raw(url, "POST", { ...auth, origin: "https://evil.test", "content-type": "application/json" }, '{"t":1}')).status, 403);
    assert.equal((await raw(url.replace("/devices/", "/DEVICES/"), "POST", { ...auth, "content-type": "text/plain" }, "t=1")).status, 415, "whatever the path's case");
    await until(async () => (await rejected()) === before + 4, "four refusals counted");
    const events = await call(runtime.api, "GET", "/events?type=message.rejected&deviceId=http-dev-1&limit=50");
    const reasons = (events.body.events as Json[]).map((e) => e.data.reason).sort();
    assert.deepEqual(reasons, ["invalid-payload", "payload-too-large", "unsupported-media-type", "unsupported-media-type"]);
    for (const e of events.body.events as Json[]) {
      assert.equal(e.data.protocol, "http");
      assert.equal(e.data.kind, "telemetry");
    }
    const state = await call(runtime.api, "GET", "/devices/http-dev-1/state");
    assert.deepEqual(state.body.properties, {}, "nothing refused reached the device's state");
    const good = await raw(url, "POST", { ...auth, "content-type": "application/json" }, '{"t":1}');
    assert.equal(good.status, 204);
  });

  it("health shows the event loop's lag and the heap", async () => {
    const health = await call(runtime.api, "GET", "/health");
    const proc = health.body.components.process;
    assert.equal(proc.status, "ok");
    for (const k of ["p50", "p99", "max"]) assert.equal(typeof proc.eventLoopLagMs[k], "number");
    assert.ok(proc.heap.usedBytes > 0 && proc.heap.usedBytes < proc.heap.limitBytes);
  });
});
