// Writes flows/flows.json: the REST API of CONTRACT §3 as Node-RED flows (http in → Tethral
// nodes → http response), plus the hub config node the examples use. The file is what `npm start`
// copies into the user dir on first start, so the user edits their own copy. The hub node keeps
// its id and settings across rebuilds. Run: node scripts/build-flows.mjs
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const file = join(root, "flows", "flows.json");
const previous = JSON.parse(readFileSync(file, "utf8"));
const hubNode = previous.find((n) => n.type === "tethral-hub");
const TAB = previous.find((n) => n.type === "tab")?.id ?? "b1f0c2a4d5e6f701";
const HUB = hubNode.id;

const nodes = [];
const id = (key) => createHash("sha256").update(`rest-api/${key}`).digest("hex").slice(0, 16);
const add = (key, type, props, x, y, wires = []) => {
  nodes.push({ id: id(key), type, z: TAB, ...props, x, y, wires: wires.map((out) => out.map(id)) });
};

// ── Node shapes ─────────────────────────────────────────────────────────────────────────────
const httpIn = (method, url) => ({ name: "", url, method, upload: false, skipBodyParsing: false, swaggerDoc: "" });
const response = (statusCode = "") => ({ name: "", statusCode: String(statusCode), headers: {} });
const fn = (name, func, outputs = 1) => ({ name, func, outputs, timeout: 0, noerr: 0, initialize: "", finalize: "", libs: [] });
const setDeviceId = { name: "device id from the path", rules: [{ t: "set", p: "deviceId", pt: "msg", to: "req.params.id", tot: "msg" }], action: "", property: "", from: "", to: "", reg: false };
const setCommandId = { ...setDeviceId, name: "command id from the path", rules: [{ t: "set", p: "commandId", pt: "msg", to: "req.params.id", tot: "msg" }] };
const device = (operation) => ({ name: "", hub: HUB, operation, deviceId: "" });
const state = (operation) => ({ name: "", hub: HUB, operation, deviceId: "", count: 10 });
const info = (operation) => ({ name: "", hub: HUB, operation });
const command = (operation) => ({
  name: "", hub: HUB, operation, deviceId: "", command: "", wait: false, timeout: "", retries: "", priority: "normal", expiresIn: "", supersede: false, expectResponse: true,
});

// ── Function bodies ─────────────────────────────────────────────────────────────────────────
// A request the flow itself refuses goes to the Catch node like the hub's own refusals; the field
// at fault travels as the error's cause, which the Catch node keeps, to be named in error.details.
const refuse = `const refuse = (message, field) => { const e = new Error(message); e.code = "INVALID"; if (field) e.cause = { details: [{ field, message }] }; node.error(e, msg); return null; };`;

const REGISTER = `${refuse}
// The body is the device record; its token comes back once, in this answer.
const body = msg.payload;
if (typeof body !== "object" || body === null || Array.isArray(body)) return refuse("the body must be a JSON object: the device record", "(body)");
// These two paths answer the fleet's statistics and states: a device of that id could never be read.
// "." and ".." would be read as path steps by every HTTP client.
if (["statistics", "states", ".", ".."].includes(body.id)) return refuse(\`id "\${body.id}" is reserved by the REST API\`, "id");
return msg;`;

const CREATED = `msg.statusCode = 201;
const path = msg.req.originalUrl.split("?")[0].replace(/\\/$/, "");
msg.headers = { Location: \`\${path}/\${encodeURIComponent(msg.payload.id)}\` };
return msg;`;

const STATE_REQUEST = `${refuse}
msg.deviceId = msg.req.params.id;
const history = msg.req.query.history;
if (history === undefined || history === "") return msg;
if (typeof history !== "string" || !/^\\d+$/.test(history) || Number(history) > 10000) return refuse("history must be a whole number from 0 to 10000", "history");
msg.history = Number(history);
return msg;`;

const WITH_HISTORY = `// Output 1: the state as it is; output 2: read its history first.
if (msg.history === undefined) return [msg, null];
msg.state = msg.payload;
msg.limit = msg.history;
return [null, msg];`;

const MERGE_HISTORY = `msg.payload = { ...msg.state, history: msg.payload };
delete msg.state;
return msg;`;

const COMMAND_KEYS = ["command", "params", "wait", "timeout", "retries", "expiresIn", "priority", "supersede", "expectResponse"];
const COMMAND_REQUEST = `${refuse}
const body = msg.payload;
if (typeof body !== "object" || body === null || Array.isArray(body)) return refuse("the body must be a JSON object: {command, params, wait, timeout, retries, expiresIn, priority, supersede, expectResponse}", "(body)");
const keys = ${JSON.stringify(COMMAND_KEYS)};
const unknown = Object.keys(body).find((k) => !keys.includes(k));
if (unknown !== undefined) return refuse(\`\${unknown} is no command option (use \${keys.join(", ")})\`, unknown);
if (typeof body.command !== "string" || body.command.trim() === "") return refuse("command must be the command's name", "command");
if (body.wait !== undefined && typeof body.wait !== "boolean") return refuse("wait must be true or false", "wait");
// null stands for no params, as in hub.sendCommand and the tethral-command node.
if (body.params !== undefined && body.params !== null && (typeof body.params !== "object" || Array.isArray(body.params))) return refuse("params must be a JSON object (or absent)", "params");
msg.deviceId = msg.req.params.id;
msg.command = body.command;
msg.payload = body.params === undefined ? {} : body.params;
msg.wait = body.wait === true;
for (const k of ["timeout", "retries", "expiresIn", "priority", "supersede", "expectResponse"]) {
  // null counts as "not given" downstream: refuse it here rather than let it mean the default.
  if (body[k] === null || body[k] === "") return refuse(\`\${k} must not be \${body[k] === null ? "null" : "empty"}\`, k);
  if (body[k] !== undefined) msg[k] = body[k];
}
return msg;`;

const COMMAND_ANSWER = `// Ended (with wait): 200; still queued or sent (no wait, or the device is away): 202.
msg.statusCode = msg.command.completedAt === null ? 202 : 200;
msg.payload = msg.command;
return msg;`;

// A device's own request: its id from the path, its token from Authorization: Bearer TOKEN (or
// ?token= for devices that cannot set headers, and under httpNodeAuth, whose Basic takes the header).
const DEVICE_REQUEST = `const bearer = /^Bearer\\s+(\\S+)\\s*$/i.exec(msg.req.headers.authorization || "");
const query = msg.req.query.token;
msg.token = bearer ? bearer[1] : typeof query === "string" ? query : undefined;
msg.deviceId = msg.req.params.id;`;

const COMMANDS_ANSWER = `msg.payload = { commands: msg.payload };
return msg;`;

const KEYS_ANSWER = `msg.payload = { keys: msg.payload };
return msg;`;

const TOKEN_REQUEST = `${refuse}
// The hub makes the new token: a body (a token of the caller's choosing, say) is refused, not ignored.
const body = msg.payload;
if (body !== undefined && body !== null && body !== "") {
  if (typeof body !== "object" || Array.isArray(body)) return refuse("this request takes no body: the hub makes the new token", "(body)");
  const field = Object.keys(body)[0];
  if (field !== undefined) return refuse(\`\${field} is no field of this request: it takes no body, the hub makes the new token\`, field);
}
msg.deviceId = msg.req.params.id;
return msg;`;

const TOKEN_ANSWER = `// Shown this once: the hub keeps only its hash.
msg.payload = { token: msg.payload.token };
return msg;`;

const EVENT_KEYS = ["type", "data", "priority", "deviceId", "ttl"];
const EVENT_REQUEST = `${refuse}
const body = msg.payload;
if (typeof body !== "object" || body === null || Array.isArray(body)) return refuse("the body must be a JSON object: {type, data, priority, deviceId, ttl}", "(body)");
const keys = ${JSON.stringify(EVENT_KEYS)};
const unknown = Object.keys(body).find((k) => !keys.includes(k));
if (unknown !== undefined) return refuse(\`\${unknown} is no event field (use \${keys.join(", ")})\`, unknown);
if (typeof body.type !== "string" || body.type.trim() === "") return refuse("type must be the event's type, e.g. alarm.raised", "type");
if (body.priority !== undefined && !["low", "normal", "high", "critical"].includes(body.priority)) return refuse("priority must be low, normal, high or critical", "priority");
if (body.deviceId !== undefined && body.deviceId !== null && typeof body.deviceId !== "string") return refuse("deviceId must be a device id", "deviceId");
if (body.ttl !== undefined && body.ttl !== null && !(typeof body.ttl === "number" && body.ttl > 0 && body.ttl <= 315360000)) return refuse("ttl must be a number of seconds above 0 (at most ten years)", "ttl");
// Nothing the flow brought along may stand in for a field the body leaves out.
for (const k of ["priority", "deviceId", "ttl"]) delete msg[k];
msg.topic = body.type;
msg.payload = body.data === undefined ? null : body.data;
if (body.priority !== undefined) msg.priority = body.priority;
if (typeof body.deviceId === "string") msg.deviceId = body.deviceId;
if (typeof body.ttl === "number") msg.ttl = body.ttl;
return msg;`;

const EVENT_CREATED = `msg.statusCode = 201;
msg.payload = msg.event;
delete msg.event;
return msg;`;

const DESIRED_REQUEST = `${DEVICE_REQUEST}
return msg;`;

const NO_CONTENT = `msg.statusCode = 204;
msg.payload = "";
return msg;`;

const HEALTH_ANSWER = `// ok or degraded: 200 with the components; a hub that cannot run at all: 503.
msg.statusCode = msg.payload.components && msg.payload.components.hub && msg.payload.components.hub.status === "failed" ? 503 : 200;
return msg;`;

const ERROR_ANSWER = `// Every refusal of the API, as the README's "Errors" says: {"error": {"code", "message"}} with its status.
// An error with no request behind it (a node's own start-up), or after the answer went: nothing to answer.
if (!msg.res || msg.res._res.headersSent) return null;
const STATUS = { INVALID: 400, UNAUTHORIZED: 401, NOT_FOUND: 404, CONFLICT: 409, TIMEOUT: 504, DEVICE_ERROR: 502, UNAVAILABLE: 503 };
const known = Object.prototype.hasOwnProperty.call(STATUS, msg.error.code);
// An event about a device that is not registered is a bad body, not a missing route.
const badReference = msg.error.code === "NOT_FOUND" && msg.req.method === "POST" && msg.req.route && msg.req.route.path === "/events";
const code = badReference ? "INVALID" : known ? msg.error.code : "INTERNAL";
// The nodes speak of msg properties; the API's callers sent a path, a query or a body.
const speak = (text) => String(text || "")
  .replace(/^[A-Za-z]*Error: /, "")
  .replace(/msg\\.payload\\./g, "")
  .replace(/msg\\.payload/g, "the request")
  .replace(/msg\\.(deviceId|commandId)/g, "the id in the path");
// A device's report (POST /devices/:id/telemetry, /heartbeat, /state, /status): what the hub calls
// the message's data is the request's body.
const report = msg.req.method === "POST" && /\\/devices\\/:id\\/(telemetry|heartbeat|state|status)$/.test(msg.req.route ? msg.req.route.path : "");
const message = report ? speak(msg.error.message).replace(/^data\\.(?=\\w)/, "").replace(/^data:/, "body:") : speak(msg.error.message);
if (!known) node.warn(\`\${msg.req.method} \${msg.req.originalUrl}: \${message}\`);
msg.statusCode = known ? STATUS[code] : 500;
msg.payload = { error: { code, message: known ? message : "the hub could not answer: see the Node-RED log" } };
// Each bad field, where the hub named them.
const details = msg.error.cause && msg.error.cause.details;
if (known && Array.isArray(details) && details.length > 0) {
  const fieldOf = (field) => {
    const f = speak(field).replace(/^payload\\./, "").replace(/^payload$/, "(body)");
    return report ? f.replace(/^data\\./, "").replace(/^data$/, "(body)") : f;
  };
  msg.payload.error.details = details.map((d) => ({ field: fieldOf(d.field), message: speak(d.message) }));
}
// The unknown device of an event is the body's deviceId.
else if (badReference) msg.payload.error.details = [{ field: "deviceId", message }];
// A command that ended badly while the request waited: the command too.
if (msg.command && typeof msg.command === "object") msg.payload.command = msg.command;
// A busy hub's refusal keeps the Retry-After the node set: when the device may send again.
const retryAfter = code === "UNAVAILABLE" && msg.headers && msg.headers["Retry-After"];
msg.headers = code === "UNAUTHORIZED" ? { "WWW-Authenticate": 'Bearer realm="tethral"' } : retryAfter ? { "Retry-After": retryAfter } : {};
return msg;`;

// ── Routes ──────────────────────────────────────────────────────────────────────────────────
// Columns: http in, request, Tethral node, answer, http response.
const X = [190, 470, 740, 1000, 1190];
let y = 40;
const heading = (key, name, infoText) => {
  y += 40;
  add(key, "comment", { name, info: infoText }, X[0], y);
  y += 50;
};
const row = () => {
  const at = y;
  y += 50;
  return at;
};

add(
  "about",
  "comment",
  {
    name: "Tethral REST API — served under /api",
    info: [
      "The REST API of the Tethral hub, built from Tethral nodes: every route is an **http in** node, the",
      "Tethral node that answers it and an **http response**. Refusals reach the **Catch** node at the",
      "bottom, which answers `{\"error\": {\"code\", \"message\"}}` with the status of its code",
      "(INVALID 400, UNAUTHORIZED 401, NOT_FOUND 404, CONFLICT 409, DEVICE_ERROR 502, UNAVAILABLE 503, TIMEOUT 504).",
      "",
      "The **Tethral hub** configuration node holds the engine: registry, heartbeats, state, events,",
      "commands, the database and the MQTT, CoAP and WebSocket servers. Its settings (and the",
      "environment variables of the README) say where it keeps its data and which ports it serves.",
      "",
      "This file is your own copy, made on the first start in the user directory (`TETHRAL_USER_DIR`,",
      "default `.tethral`): edit and deploy freely. Anyone who can reach the API can manage the",
      "fleet: put it behind your own authentication (Node-RED's `httpNodeAuth` or a proxy) before",
      "serving it beyond this machine.",
    ].join("\n"),
  },
  X[1],
  y,
);

heading(
  "h-health",
  "Health, statistics and events",
  "`GET /api/health`, `GET /api/cluster` (this member, the partition count and each member's partitions; a single runtime is a cluster of one), `GET /api/communication/statistics`, `GET /api/events`, `GET /api/events/statistics`, `POST /api/events` (a user event: `{type, data, priority, deviceId, ttl}`, ttl in seconds), `GET /api/metrics` (Prometheus text format 0.0.4) and `GET /api/openapi.json` (this API's OpenAPI 3.1 document).",
);
let at = row();
add("health-in", "http in", httpIn("get", "/health"), X[0], at, [["health"]]);
add("health", "tethral-hub-info", info("health"), X[2], at, [["health-answer"]]);
add("health-answer", "function", fn("200, or 503 if the hub cannot run", HEALTH_ANSWER), X[3], at, [["health-out"]]);
add("health-out", "http response", response(), X[4], at);
at = row();
add("cluster-in", "http in", httpIn("get", "/cluster"), X[0], at, [["cluster"]]);
add("cluster", "tethral-hub-info", info("cluster"), X[2], at, [["cluster-out"]]);
add("cluster-out", "http response", response(200), X[4], at);
at = row();
add("comm-in", "http in", httpIn("get", "/communication/statistics"), X[0], at, [["comm"]]);
add("comm", "tethral-hub-info", info("communication"), X[2], at, [["comm-out"]]);
add("comm-out", "http response", response(200), X[4], at);
at = row();
add("events-in", "http in", httpIn("get", "/events"), X[0], at, [["events"]]);
add("events", "tethral-hub-info", info("events"), X[2], at, [["events-out"]]);
add("events-out", "http response", response(200), X[4], at);
at = row();
add("evstats-in", "http in", httpIn("get", "/events/statistics"), X[0], at, [["evstats"]]);
add("evstats", "tethral-hub-info", info("event-statistics"), X[2], at, [["evstats-out"]]);
add("evstats-out", "http response", response(200), X[4], at);
at = row();
// The node sets msg.headers' Content-Type (text/plain; version=0.0.4), which the response sends.
add("metrics-in", "http in", httpIn("get", "/metrics"), X[0], at, [["metrics"]]);
add("metrics", "tethral-hub-info", info("metrics"), X[2], at, [["metrics-out"]]);
add("metrics-out", "http response", response(200), X[4], at);
at = row();
add("openapi-in", "http in", httpIn("get", "/openapi.json"), X[0], at, [["openapi"]]);
add("openapi", "tethral-hub-info", info("openapi"), X[2], at, [["openapi-out"]]);
add("openapi-out", "http response", response(200), X[4], at);
at = row();
add("publish-in", "http in", httpIn("post", "/events"), X[0], at, [["publish-request"]]);
add("publish-request", "function", fn("{type, data, priority, deviceId, ttl}", EVENT_REQUEST), X[1], at, [["publish"]]);
add("publish", "tethral-event-out", { name: "", hub: HUB, eventType: "", priority: "normal", deviceId: "", ttl: "" }, X[2], at, [["publish-answer"]]);
add("publish-answer", "function", fn("201 Created", EVENT_CREATED), X[3], at, [["publish-out"]]);
add("publish-out", "http response", response(), X[4], at);

heading(
  "h-devices",
  "Devices",
  "`GET /api/devices` (query: status, protocol, manufacturer, capability, tag, q, limit, offset), `POST /api/devices`, and one device by id. `GET /api/devices/statistics` and `GET /api/devices/states` come in on the `{id}` route, whatever order Node-RED registers the routes in, and are never taken for a device id: the device node answers a path `:id` of `statistics` or `states` with the fleet's statistics or its states.",
);
at = row();
add("list-in", "http in", httpIn("get", "/devices"), X[0], at, [["list"]]);
add("list", "tethral-device", device("list"), X[2], at, [["list-out"]]);
add("list-out", "http response", response(200), X[4], at);
at = row();
add("register-in", "http in", httpIn("post", "/devices"), X[0], at, [["register-check"]]);
add("register-check", "function", fn("a record, no reserved id", REGISTER), X[1], at, [["register"]]);
add("register", "tethral-device", device("register"), X[2], at, [["register-answer"]]);
add("register-answer", "function", fn("201 Created", CREATED), X[3], at, [["register-out"]]);
add("register-out", "http response", response(), X[4], at);
at = row();
// The device node takes the id from the path (msg.req.params.id) itself, and answers the paths
// /devices/statistics and /devices/states that reach this route with the fleet's statistics and
// states (CONTRACT §3): no node in front to sort them out, whatever order the routes register in.
add("get-in", "http in", httpIn("get", "/devices/:id"), X[0], at, [["get"]]);
add("get", "tethral-device", device("get"), X[2], at, [["get-out"]]);
add("get-out", "http response", response(200), X[4], at);
at = row();
add("patch-in", "http in", httpIn("patch", "/devices/:id"), X[0], at, [["patch-id"]]);
add("patch-id", "change", setDeviceId, X[1], at, [["patch"]]);
add("patch", "tethral-device", device("update"), X[2], at, [["patch-out"]]);
add("patch-out", "http response", response(200), X[4], at);
at = row();
add("delete-in", "http in", httpIn("delete", "/devices/:id"), X[0], at, [["delete-id"]]);
add("delete-id", "change", setDeviceId, X[1], at, [["delete"]]);
add("delete", "tethral-device", device("remove"), X[2], at, [["delete-answer"]]);
add("delete-answer", "function", fn("204 No Content", NO_CONTENT), X[3], at, [["delete-out"]]);
add("delete-out", "http response", response(), X[4], at);

heading("h-state", "Device state", "`GET /api/devices/{id}/state` (`?history=N` adds the last N changes), `PUT /api/devices/{id}/state` (`{desired, status, expectedVersion}`), `GET /api/devices/states/statistics`, and `GET /api/devices/{id}/desired`: an HTTP device reads its twin `{desired, delta, version}` with its token.");
at = row();
add("state-in", "http in", httpIn("get", "/devices/:id/state"), X[0], at, [["state-request"]]);
add("state-request", "function", fn("device id, ?history", STATE_REQUEST), X[1], at, [["state-get"]]);
add("state-get", "tethral-state", state("get"), X[2], at, [["state-history?"]]);
add("state-history?", "function", fn("with history?", WITH_HISTORY, 2), X[3], at, [["state-out"], ["state-history"]]);
add("state-out", "http response", response(200), X[4], at);
at = row();
add("state-history", "tethral-state", state("history"), X[2], at, [["state-merge"]]);
add("state-merge", "function", fn("state + history", MERGE_HISTORY), X[3], at, [["state-out"]]);
at = row();
add("put-in", "http in", httpIn("put", "/devices/:id/state"), X[0], at, [["put-id"]]);
add("put-id", "change", setDeviceId, X[1], at, [["put"]]);
add("put", "tethral-state", state("set"), X[2], at, [["put-out"]]);
add("put-out", "http response", response(200), X[4], at);
at = row();
add("sstats-in", "http in", httpIn("get", "/devices/states/statistics"), X[0], at, [["sstats"]]);
add("sstats", "tethral-state", state("statistics"), X[2], at, [["sstats-out"]]);
add("sstats-out", "http response", response(200), X[4], at);
at = row();
add("desired-in", "http in", httpIn("get", "/devices/:id/desired"), X[0], at, [["desired-request"]]);
add("desired-request", "function", fn("device id, token", DESIRED_REQUEST), X[1], at, [["desired"]]);
add("desired", "tethral-state", state("desired"), X[2], at, [["desired-out"]]);
add("desired-out", "http response", response(200), X[4], at);

heading(
  "h-telemetry",
  "Telemetry time series",
  "`GET /api/devices/{id}/telemetry` (query: `keys`, `from`, `to`, `interval`, `agg`, `limit`): a device's raw points or buckets, `{deviceId, from, to, interval, agg, series: {key: [{ts, value}]}}`; `GET /api/devices/{id}/telemetry/keys`: `{keys}`, the keys it has reported. The hub keeps series only with a database (SQLite or PostgreSQL). `POST /api/devices/{id}/telemetry`, an HTTP device's report, is further down.",
);
at = row();
// msg.payload is the query, as http in leaves it: the node refuses a parameter it does not know.
add("series-in", "http in", httpIn("get", "/devices/:id/telemetry"), X[0], at, [["series-id"]]);
add("series-id", "change", setDeviceId, X[1], at, [["series"]]);
add("series", "tethral-state", { ...state("telemetry"), output: "answer" }, X[2], at, [["series-out"]]);
add("series-out", "http response", response(200), X[4], at);
at = row();
add("serieskeys-in", "http in", httpIn("get", "/devices/:id/telemetry/keys"), X[0], at, [["serieskeys-id"]]);
add("serieskeys-id", "change", setDeviceId, X[1], at, [["serieskeys"]]);
add("serieskeys", "tethral-state", state("telemetry-keys"), X[2], at, [["serieskeys-answer"]]);
add("serieskeys-answer", "function", fn("{keys}", KEYS_ANSWER), X[3], at, [["serieskeys-out"]]);
add("serieskeys-out", "http response", response(200), X[4], at);

heading(
  "h-commands",
  "Commands and device reports",
  "`POST /api/devices/{id}/command` (`{command, params, wait, timeout, retries, expiresIn, priority, supersede, expectResponse}`; with `wait` the answer waits for the device: 200, or 502/504 with the command), `GET /api/commands/{id}`, `DELETE /api/commands/{id}` (cancel), `GET /api/devices/{id}/commands` (newest first; `status`, `limit`), `POST /api/devices/{id}/token` (a new token, shown once), and `POST /api/devices/{id}/telemetry`, `/heartbeat`, `/state`, `/status`: how devices that speak HTTP report, with `Authorization: Bearer TOKEN`.",
);
at = row();
add("cmd-in", "http in", httpIn("post", "/devices/:id/command"), X[0], at, [["cmd-request"]]);
add("cmd-request", "function", fn("command options", COMMAND_REQUEST), X[1], at, [["cmd"]]);
add("cmd", "tethral-command", command("send"), X[2], at, [["cmd-answer"]]);
add("cmd-answer", "function", fn("200 ended, 202 pending", COMMAND_ANSWER), X[3], at, [["cmd-out"]]);
add("cmd-out", "http response", response(), X[4], at);
at = row();
add("cmdget-in", "http in", httpIn("get", "/commands/:id"), X[0], at, [["cmdget-id"]]);
add("cmdget-id", "change", setCommandId, X[1], at, [["cmdget"]]);
add("cmdget", "tethral-command", command("get"), X[2], at, [["cmdget-out"]]);
add("cmdget-out", "http response", response(200), X[4], at);
at = row();
add("cmdcancel-in", "http in", httpIn("delete", "/commands/:id"), X[0], at, [["cmdcancel-id"]]);
add("cmdcancel-id", "change", setCommandId, X[1], at, [["cmdcancel"]]);
add("cmdcancel", "tethral-command", command("cancel"), X[2], at, [["cmdcancel-out"]]);
add("cmdcancel-out", "http response", response(200), X[4], at);
at = row();
add("cmdlist-in", "http in", httpIn("get", "/devices/:id/commands"), X[0], at, [["cmdlist-id"]]);
// msg.payload is the query (status: one, a comma list or repeated; limit), as http in leaves it.
add("cmdlist-id", "change", setDeviceId, X[1], at, [["cmdlist"]]);
add("cmdlist", "tethral-command", command("list"), X[2], at, [["cmdlist-answer"]]);
add("cmdlist-answer", "function", fn("{commands}", COMMANDS_ANSWER), X[3], at, [["cmdlist-out"]]);
add("cmdlist-out", "http response", response(200), X[4], at);
at = row();
add("token-in", "http in", httpIn("post", "/devices/:id/token"), X[0], at, [["token-id"]]);
add("token-id", "function", fn("device id, no body", TOKEN_REQUEST), X[1], at, [["token"]]);
add("token", "tethral-device", device("token"), X[2], at, [["token-answer"]]);
add("token-answer", "function", fn("{token}, once", TOKEN_ANSWER), X[3], at, [["token-out"]]);
add("token-out", "http response", response(200), X[4], at);
// One route per kind: any other kind is a path no route serves (404 NOT_FOUND from the runtime).
const REPORT_KINDS = ["telemetry", "heartbeat", "state", "status"];
for (const kind of REPORT_KINDS) {
  at = row();
  add(kind === "telemetry" ? "report-in" : `report-${kind}-in`, "http in", httpIn("post", `/devices/:id/${kind}`), X[0], at, [["report"]]);
}
at = row();
// The device node reads the id (the path's :id), the kind (the path's last step) and the token
// (Authorization: Bearer, else ?token=) from the request itself: a function node for them cost a
// report a fifth of its rate (bench:rest).
// 204 from the http response node itself: a function node to set it cost a report a tenth of its rate (bench:rest).
add("report", "tethral-device", device("report"), X[2], at, [["report-out"]]);
add("report-out", "http response", response(204), X[4], at);

heading("h-errors", "Refusals", "Every error in this tab: the hub's (`msg.error.code`) and the flow's own checks. An error with no request behind it is dropped.");
at = row();
add("catch", "catch", { name: "every refusal", scope: null, uncaught: false }, X[0], at, [["error-answer"]]);
add("error-answer", "function", fn("error body and status", ERROR_ANSWER), X[1], at, [["error-out"]]);
add("error-out", "http response", response(), X[4], at);

const tab = {
  id: TAB,
  type: "tab",
  label: "Tethral REST API",
  disabled: false,
  info: "The REST API of the Tethral hub under `/api` (see the README for every route), and the hub itself.",
};
const out = [tab, ...nodes, hubNode];
writeFileSync(file, `${JSON.stringify(out, null, 4)}\n`);
console.log(`wrote ${nodes.filter((n) => n.type === "http in").length} routes to flows/flows.json; hub ${HUB}`);
