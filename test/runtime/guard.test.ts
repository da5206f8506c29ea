import assert from "node:assert/strict";
import { networkInterfaces } from "node:os";
import { corsChooser, corsPolicy, hostPolicy, refusalOf } from "../../src/runtime/guard";
import { mergeSettings } from "../../src/runtime/settings";

const get = (host: string | undefined, extra: Record<string, string> = {}) => ({ method: "GET", headers: { ...(host !== undefined && { host }), ...extra } });
const post = (host: string, origin?: string) => ({ method: "POST", headers: { host, ...(origin !== undefined && { origin }) } });

describe("the runtime's Host and Origin rules", () => {
  it("answers loopback names and HOST, with or without a port, and nothing else", () => {
    const policy = hostPolicy("192.168.5.20", undefined);
    for (const host of ["localhost", "LOCALHOST:1880", "127.0.0.1:1880", "[::1]:1880", "[::1]", "192.168.5.20:1880", "localhost."]) {
      assert.equal(refusalOf(get(host), policy, false), null, host);
    }
    for (const host of ["evil.test", "evil.test:1880", "127.0.0.1.nip.io:1880", "localhost.evil.test", "[::2]:1880", "192.168.5.21", "[::1]evil.test", "[::1].evil.test", "localhost..", "localhost:1880:80", "localhost@evil.test", "127.1"]) {
      assert.equal(refusalOf(get(host), policy, false)?.reason, "foreign-host", host);
    }
    assert.equal(refusalOf(get(undefined), policy, false)?.status, 400);
  });

  it("bound to every interface, answers the machine's own addresses; TETHRAL_ALLOWED_HOSTS adds names, .suffix entries and *", () => {
    const all = hostPolicy("0.0.0.0", "hub.lan, .example.net");
    const address = Object.values(networkInterfaces()).flat().find((a) => a && a.family === "IPv4")!.address;
    assert.equal(refusalOf(get(`${address}:1880`), all, false), null);
    for (const host of ["hub.lan", "HUB.LAN:8443", "example.net", "a.b.example.net"]) assert.equal(refusalOf(get(host), all, false), null, host);
    for (const host of ["hub.lan.evil.test", "badexample.net"]) assert.ok(refusalOf(get(host), all, false), host);
    assert.equal(refusalOf(get("anything.test"), hostPolicy("127.0.0.1", "*"), false), null);
  });

  it("refuses a state-changing request or an upgrade from another origin; reads, same-origin pages and clients without Origin pass", () => {
    const policy = hostPolicy("127.0.0.1", "hub.lan");
    assert.equal(refusalOf(post("127.0.0.1:1880"), policy, false), null, "no Origin: a script or a device");
    assert.equal(refusalOf(post("127.0.0.1:1880", "http://127.0.0.1:1880"), policy, false), null);
    assert.equal(refusalOf(post("127.0.0.1:1880", "https://hub.lan"), policy, false), null, "behind a proxy named in TETHRAL_ALLOWED_HOSTS");
    for (const origin of ["https://evil.test", "null", "http://127.0.0.1:3000", "http://localhost:1880", "not a url"]) {
      const refusal = refusalOf(post("127.0.0.1:1880", origin), policy, false);
      assert.equal(refusal?.status, 403, origin);
      assert.equal(refusal?.reason, "foreign-origin");
    }
    assert.equal(refusalOf(get("127.0.0.1:1880", { origin: "https://evil.test" }), policy, false), null);
    assert.equal(refusalOf(get("127.0.0.1:1880", { origin: "https://evil.test" }), policy, true)?.status, 403, "an upgrade is a GET that opens a channel");
  });

  it("TETHRAL_ALLOWED_HOSTS widens the Host check only: *, a .suffix or a listed name on another port lets no other site's page change state", () => {
    const star = hostPolicy("127.0.0.1", "*");
    assert.equal(refusalOf(post("anything.test:1880"), star, false), null);
    assert.equal(refusalOf(post("127.0.0.1:1880", "http://evil.test"), star, false)?.status, 403);
    assert.equal(refusalOf(get("127.0.0.1:1880", { origin: "http://evil.test" }), star, true)?.status, 403);
    const suffix = hostPolicy("127.0.0.1", ".example.net,hub.lan");
    assert.equal(refusalOf(post("127.0.0.1:1880", "https://evil.example.net"), suffix, false)?.status, 403);
    assert.equal(refusalOf(post("iot.example.net:1880", "http://iot.example.net:1880"), suffix, false), null, "its own page, under a suffix name");
    assert.equal(refusalOf(post("127.0.0.1:1880", "http://hub.lan:8080"), suffix, false)?.status, 403, "another service on the listed name");
    assert.equal(refusalOf(post("127.0.0.1:1880", "https://hub.lan"), suffix, false), null, "the proxy's front door");
    assert.equal(refusalOf(post("127.0.0.1:1880", "http://hub.lan:1880"), suffix, false), null, "the listed name on the runtime's own port");
  });

  it("an old browser's cross-site request without Origin is still refused (Sec-Fetch-Site)", () => {
    const policy = hostPolicy("127.0.0.1", undefined);
    assert.equal(refusalOf({ method: "POST", headers: { host: "127.0.0.1:1880", "sec-fetch-site": "cross-site" } }, policy, false)?.status, 403);
    assert.equal(refusalOf({ method: "POST", headers: { host: "127.0.0.1:1880", "sec-fetch-site": "same-origin" } }, policy, false), null);
  });

  it("the admin API's paths answer to httpAdminCors alone, even under an API rooted at /", () => {
    const open = corsPolicy({ origin: "*" });
    const closed = corsPolicy(undefined);
    const choose = corsChooser("/", "/admin/", open, closed);
    assert.equal(choose("/admin/flow")("http://evil.test"), false);
    assert.equal(choose("/ADMIN/flow")("http://evil.test"), false, "Express mounts whatever the case");
    assert.equal(choose("/my-endpoint")("http://evil.test"), true);
    const api = corsChooser("/api/", "/", open, closed);
    assert.equal(api("/api/devices")("http://evil.test"), true);
    assert.equal(api("/flows")("http://evil.test"), false);
    const same = corsChooser("/", "/", open, closed);
    assert.equal(same("/flows")("http://evil.test"), false, "one root for both: both settings must allow it");
  });

  it("lets in the origins the user's httpNodeCors / httpAdminCors names", () => {
    const policy = hostPolicy("127.0.0.1", undefined);
    const cors = corsPolicy({ origin: ["https://dash.example.com", /\.corp\.test$/] });
    assert.equal(refusalOf(post("127.0.0.1:1880", "https://dash.example.com"), policy, false, cors), null);
    assert.equal(refusalOf(post("127.0.0.1:1880", "https://a.corp.test"), policy, false, cors), null);
    assert.ok(refusalOf(post("127.0.0.1:1880", "https://evil.test"), policy, false, cors));
    assert.equal(refusalOf(post("127.0.0.1:1880", "https://evil.test"), policy, false, corsPolicy({ origin: "*" })), null);
    assert.ok(refusalOf(post("127.0.0.1:1880", "https://evil.test"), policy, false, corsPolicy(undefined)));
  });
});

describe("Node-RED settings for npm start", () => {
  const defaults = { userDir: "/u", nodesDir: "/pkg", port: 1880, host: "127.0.0.1", adminRoot: "/", nodeRoot: "/api", logLevel: "info" };

  it("without settings.js: the runtime's defaults", () => {
    const s = mergeSettings(null, defaults, {});
    assert.equal(s.uiPort, 1880);
    assert.equal(s.uiHost, "127.0.0.1");
    assert.equal(s.httpNodeRoot, "/api");
    assert.deepEqual(s.nodesDir, ["/pkg"]);
    assert.equal(s.flowFile, "flows.json");
    assert.deepEqual((s.telemetry as { enabled: boolean }).enabled, false);
  });

  it("settings.js wins over the defaults, the environment wins over settings.js; userDir and this package's nodes are always the runtime's", () => {
    const user = { uiPort: 1990, uiHost: "0.0.0.0", credentialSecret: "mine", userDir: "/elsewhere", nodesDir: "/my-nodes", editorTheme: { page: { title: "Mine" } }, adminAuth: { type: "credentials", users: [] } };
    const s = mergeSettings(user, defaults, {});
    assert.equal(s.uiPort, 1990);
    assert.equal(s.uiHost, "0.0.0.0");
    assert.equal(s.credentialSecret, "mine");
    assert.equal(s.userDir, "/u");
    assert.deepEqual(s.nodesDir, ["/my-nodes", "/pkg"]);
    assert.deepEqual(s.editorTheme, { page: { title: "Mine" }, header: { title: "Tethral" }, tours: false });
    assert.deepEqual(s.adminAuth, user.adminAuth);
    const env = mergeSettings(user, defaults, { port: 2000, host: "127.0.0.1", credentialSecret: "env", logLevel: "warn" });
    assert.equal(env.uiPort, 2000);
    assert.equal(env.uiHost, "127.0.0.1");
    assert.equal(env.credentialSecret, "env");
    assert.equal((env.logging as { console: { level: string } }).console.level, "warn");
  });
});
