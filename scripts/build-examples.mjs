// Writes examples/*.json: short, commented flows for Import > Examples. Each uses the hub of
// the shipped flows (flows/flows.json), so in `npm start` it works as soon as it is imported;
// elsewhere, pick your own Tethral hub in the nodes. Run: node scripts/build-examples.mjs
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createHash } from "node:crypto";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const shipped = JSON.parse(readFileSync(join(root, "flows", "flows.json"), "utf8"));
const HUB = shipped.find((n) => n.type === "tethral-hub").id;

function flow(name, build) {
  const nodes = [];
  const id = (key) => createHash("sha256").update(`${name}/${key}`).digest("hex").slice(0, 16);
  // No tab: Node-RED imports the nodes into the tab the user is looking at.
  const add = (key, type, props, x, y, wires = []) => {
    nodes.push({ id: id(key), type, ...props, x, y, wires: wires.map((out) => out.map(id)) });
  };
  build(add, id);
  return nodes;
}

const comment = (name, info) => ({ name, info });
const debug = (name) => ({ name, active: true, tosidebar: true, console: false, tostatus: true, complete: "true", targetType: "full", statusVal: "", statusType: "auto" });
// Node-RED's inject keeps payload and topic on the node and every other property's value in its
// `props` entry (`v`), as its editor saves them: a property listed without `v` is sent as "".
const inject = (name, payload, payloadType = "json", { topic = "", ...extra } = {}) => ({
  name,
  props: [{ p: "payload" }, ...(topic ? [{ p: "topic", vt: "str" }] : []), ...Object.entries(extra).map(([p, v]) => ({ p, v, vt: "str" }))],
  repeat: "", crontab: "", once: false, onceDelay: 0.1, topic, payload, payloadType,
});

const examples = {
  "01 Register and list devices": flow("register", (add) => {
    add("c", "comment", comment("Register devices, then list them", "Click the inject nodes. Registering answers the device with its **token** once: give it to the device (MQTT password, `?token=` or `Authorization: Bearer`). Registering the same id twice goes to the Catch node with code CONFLICT."), 200, 40);
    add("i1", "inject", inject("boiler-1 (MQTT)", '{"id":"boiler-1","name":"Boiler room","protocol":"mqtt","capabilities":["temperature"],"tags":["floor-2"],"heartbeatTimeout":60}'), 160, 100, [["d1"]]);
    add("i2", "inject", inject("valve-7 (CoAP)", '{"id":"valve-7","protocol":"coap","address":"coap://127.0.0.1:5690","capabilities":["valve"]}'), 160, 140, [["d1"]]);
    add("d1", "tethral-device", { name: "", hub: HUB, operation: "register", deviceId: "" }, 380, 120, [["o1"]]);
    add("o1", "debug", debug("registered (with token)"), 620, 120);
    add("i3", "inject", inject("list floor-2", '{"tag":"floor-2"}'), 150, 200, [["d2"]]);
    add("d2", "tethral-device", { name: "", hub: HUB, operation: "list", deviceId: "" }, 370, 200, [["o2"]]);
    add("o2", "debug", debug("devices"), 580, 200);
    add("k", "catch", { name: "registry errors", scope: null, uncaught: false }, 160, 260, [["o3"]]);
    add("o3", "debug", debug("error (msg.error.code)"), 400, 260);
  }),
  "02 Telemetry and state": flow("telemetry", (add) => {
    add("c", "comment", comment("Device messages and state", "**tethral-in** passes on what devices report over any protocol. **tethral-state** sets a desired value and reads a device's state and history. The hub sends the device its twin `{desired, delta, version}` at once and on every change (MQTT: retained on `tethral/devices/{id}/desired`; WebSocket: a `desired` frame; CoAP: observe `/devices/{id}/desired`; HTTP: `GET /api/devices/{id}/desired`): the setpoint stays in `delta` until the device reports that value, and the device hears that too."), 200, 40);
    add("in", "tethral-in", { name: "", hub: HUB, deviceId: "", protocol: "", kindTelemetry: true, kindHeartbeat: false, kindState: true, kindStatus: true }, 130, 100, [["o1"]]);
    add("o1", "debug", debug("device messages"), 360, 100);
    add("i1", "inject", inject("setpoint 22 for boiler-1", '{"desired":{"setpoint":22}}', "json", { deviceId: "boiler-1" }), 180, 160, [["s1"]]);
    add("s1", "tethral-state", { name: "", hub: HUB, operation: "set", deviceId: "", count: 10 }, 420, 160, [["o2"]]);
    add("o2", "debug", debug("state after set"), 640, 160);
    add("i2", "inject", inject("history of boiler-1", "", "date", { deviceId: "boiler-1" }), 170, 220, [["s2"]]);
    add("s2", "tethral-state", { name: "", hub: HUB, operation: "history", deviceId: "", count: 10 }, 420, 220, [["o3"]]);
    add("o3", "debug", debug("last 10 changes"), 640, 220);
  }),
  "03 Command, answer and timeout": flow("command", (add, id) => {
    add("c", "comment", comment("Send a command and handle the answer, a failure or a timeout", "The command waits for the device's answer (10 s, one retry). The answer comes out as `msg.payload`, the whole command as `msg.command`. A failure reaches the Catch node with `msg.error.code` **DEVICE_ERROR**, no answer in time with **TIMEOUT**; a device that is away keeps the command queued and it is sent when it comes back."), 260, 40);
    add("i1", "inject", inject("reboot boiler-1", '{"delay":5}', "json", { deviceId: "boiler-1", command: "reboot" }), 160, 100, [["cmd"]]);
    add("cmd", "tethral-command", { name: "", hub: HUB, deviceId: "", command: "", wait: true, timeout: "10", retries: "1", priority: "normal", expiresIn: "3600", supersede: false, expectResponse: true }, 400, 100, [["ok"]]);
    add("ok", "debug", debug("answer"), 620, 100);
    add("k", "catch", { name: "command failed", scope: [id("cmd")], uncaught: false }, 150, 180, [["sw"]]);
    add("sw", "switch", { name: "why?", property: "error.code", propertyType: "msg", rules: [{ t: "eq", v: "TIMEOUT", vt: "str" }, { t: "eq", v: "DEVICE_ERROR", vt: "str" }, { t: "else" }], checkall: "true", repair: false, outputs: 3 }, 340, 180, [["t"], ["f"], ["e"]]);
    add("t", "debug", debug("no answer in time"), 560, 140);
    add("f", "debug", debug("device said no"), 560, 180);
    add("e", "debug", debug("other error"), 560, 220);
  }),
  "04 Events by priority": flow("events", (add) => {
    add("c", "comment", comment("Subscribe to events by type and priority; publish your own", "The first subscription gets every `device.*` event of priority high or above (a device going offline, ...). Click the inject node to publish an event of your own type; the second subscription receives it."), 240, 40);
    add("e1", "tethral-event-in", { name: "", hub: HUB, types: "device.*", minPriority: "high", deviceId: "" }, 150, 100, [["o1"]]);
    add("o1", "debug", debug("high-priority device events"), 400, 100);
    add("i1", "inject", inject("raise an alarm", '{"zone":"boiler room","level":3}', "json", { topic: "alarm.raised" }), 150, 160, [["out"]]);
    add("out", "tethral-event-out", { name: "", hub: HUB, eventType: "", priority: "critical", deviceId: "" }, 380, 160);
    add("e2", "tethral-event-in", { name: "", hub: HUB, types: "alarm.*", minPriority: "low", deviceId: "" }, 140, 220, [["o2"]]);
    add("o2", "debug", debug("alarms"), 360, 220);
  }),
  "05 Watch state, raise an alert": flow("watch", (add) => {
    add("c", "comment", comment("Telemetry in, state watch, alert out", "Fires when an **online** device's **temperature** changes (its first reading only sets the baseline); a switch keeps readings above 80 and publishes an `alarm.overheat` event of priority high about that device (a Type set in the event out node wins over the watch's `msg.topic`, the device id). A second watch reports devices that stay **offline** for 5 minutes; one back sooner is not reported."), 240, 40);
    add("w1", "tethral-state-watch", { name: "temperature changes", hub: HUB, deviceIds: "", changes: true, statuses: "online", properties: "temperature", anomalies: "", onlyOnChange: true, ignoreUnknown: true, forSeconds: "", outputOnDeploy: false }, 160, 100, [["sw"]]);
    add("sw", "switch", { name: "above 80?", property: "payload.properties.temperature", propertyType: "msg", rules: [{ t: "gt", v: "80", vt: "num" }], checkall: "true", repair: false, outputs: 1 }, 380, 100, [["alarm"]]);
    add("alarm", "tethral-event-out", { name: "", hub: HUB, eventType: "alarm.overheat", priority: "high", deviceId: "" }, 590, 100);
    add("w2", "tethral-state-watch", { name: "offline for 5 min", hub: HUB, deviceIds: "", changes: true, statuses: "offline", properties: "", anomalies: "", onlyOnChange: true, ignoreUnknown: true, forSeconds: "300", outputOnDeploy: false }, 160, 160, [["o2"]]);
    add("o2", "debug", debug("still offline"), 400, 160);
  }),
  "06 Anomaly alerts": flow("anomaly", (add) => {
    add("c", "comment", comment("Flapping devices, stuck values and outliers", "The hub watches every device's reports: a device that keeps going online and offline is **flapping**, a value that stops moving is **stuck**, a reading far from its usual range is an **outlier**. Flapping and stuck values fire once when they start and once when they clear (`active: false`; flapping clears once the last 5 minutes hold at most two of them); each outlier fires once."), 240, 40);
    add("w", "tethral-state-watch", { name: "anomalies", hub: HUB, deviceIds: "", changes: false, statuses: "", properties: "", anomalies: "flapping,stuck,outlier", onlyOnChange: true, ignoreUnknown: true, forSeconds: "", outputOnDeploy: false }, 130, 100, [["o1"]]);
    add("o1", "debug", debug("anomaly"), 340, 100);
    add("e", "tethral-event-in", { name: "", hub: HUB, types: "state.anomaly", minPriority: "low", deviceId: "" }, 140, 160, [["o2"]]);
    add("o2", "debug", debug("the same, as events"), 380, 160);
  }),
  "07 A REST endpoint of your own": flow("rest", (add) => {
    add("c", "comment", comment("Build your own HTTP endpoints from Tethral nodes", "The shipped **Tethral REST API** tab serves the whole API under `/api`; this is how it is built, for endpoints of your own. `GET /api/my/temperature/{id}` answers one device's last temperature; `GET /api/my/health` the hub's health. A refusal (an unknown device: NOT_FOUND) reaches the Catch node, which answers it with its status."), 260, 40);
    add("in1", "http in", { name: "", url: "/my/temperature/:id", method: "get", upload: false, skipBodyParsing: false, swaggerDoc: "" }, 170, 100, [["id1"]]);
    add("id1", "change", { name: "device id from the path", rules: [{ t: "set", p: "deviceId", pt: "msg", to: "req.params.id", tot: "msg" }], action: "", property: "", from: "", to: "", reg: false }, 400, 100, [["s1"]]);
    add("s1", "tethral-state", { name: "", hub: HUB, operation: "get", deviceId: "", count: 10 }, 610, 100, [["pick"]]);
    add("pick", "change", { name: "just the temperature", rules: [{ t: "set", p: "payload", pt: "msg", to: '{"deviceId": deviceId, "temperature": payload.properties.temperature, "at": payload.reportedAt}', tot: "jsonata" }], action: "", property: "", from: "", to: "", reg: false }, 820, 100, [["r1"]]);
    add("r1", "http response", { name: "", statusCode: "200", headers: {} }, 1010, 100);
    add("in2", "http in", { name: "", url: "/my/health", method: "get", upload: false, skipBodyParsing: false, swaggerDoc: "" }, 150, 160, [["h"]]);
    add("h", "tethral-hub-info", { name: "", hub: HUB, operation: "health" }, 610, 160, [["r2"]]);
    add("r2", "http response", { name: "", statusCode: "200", headers: {} }, 1010, 160);
    add("k", "catch", { name: "refusals", scope: null, uncaught: false }, 150, 220, [["err"]]);
    add("err", "change", { name: "status from msg.error.code", rules: [{ t: "set", p: "statusCode", pt: "msg", to: '($status := $lookup({"INVALID": 400, "UNAUTHORIZED": 401, "NOT_FOUND": 404, "CONFLICT": 409, "DEVICE_ERROR": 502, "UNAVAILABLE": 503, "TIMEOUT": 504}, error.code); $status ? $status : 500)', tot: "jsonata" }, { t: "set", p: "payload", pt: "msg", to: '{"error": {"code": error.code, "message": error.message}}', tot: "jsonata" }], action: "", property: "", from: "", to: "", reg: false }, 400, 220, [["r3"]]);
    add("r3", "http response", { name: "", statusCode: "", headers: {} }, 1010, 220);
  }),
  "08 Chart a device's telemetry": flow("chart", (add) => {
    add("c", "comment", comment("Chart a device's telemetry", "**tethral-state**'s `telemetry` operation reads a device's time series (kept when the hub has a database: SQLite by default under `npm start`). Press **chart boiler-1** (register it with example 01 and let it report a `temperature`): the node asks for the last 24 hours in 15-minute averages (`msg.payload` `{\"interval\": \"15m\", \"agg\": \"avg\"}`; also `keys`, `from`, `to`, `limit`) and, with *Output* set to *points for Dashboard 2 ui-chart*, sends `msg.payload` as `[{x, y, series}, ...]`: `x` the bucket's start in epoch ms, `y` its average, `series` the key, with `msg.action` `replace`. **last hour, raw** shows the answer as the REST API gives it (`GET /api/devices/boiler-1/telemetry?from=…`).\n\n**To draw it**, install `@flowfuse/node-red-dashboard` (Manage palette), add a **ui-chart** with *Type* Line, *X-axis* Timescale, and under *Properties* *Series* = key `series`, *X* = key `x`, *Y* = key `y`, and wire **chart boiler-1**'s tethral-state node to it in place of (or beside) the debug node: one line per key. Set the inject node to repeat every minute to keep the chart current. A refusal (NOT_FOUND for an unknown device, UNAVAILABLE for a hub without a database) reaches the Catch node."), 190, 40);
    add("i1", "inject", inject("chart boiler-1", '{"interval":"15m","agg":"avg"}', "json", { deviceId: "boiler-1" }), 150, 100, [["s1"]]);
    add("s1", "tethral-state", { name: "24 h in 15 min averages", hub: HUB, operation: "telemetry", deviceId: "", count: 10, output: "chart" }, 390, 100, [["o1"]]);
    add("o1", "debug", debug("points for ui-chart"), 650, 100);
    add("i2", "inject", inject("last hour, raw", '{"from":$millis()-3600000}', "jsonata", { deviceId: "boiler-1" }), 150, 160, [["s2"]]);
    add("s2", "tethral-state", { name: "", hub: HUB, operation: "telemetry", deviceId: "", count: 10, output: "answer" }, 390, 160, [["o2"]]);
    add("o2", "debug", { ...debug("the answer"), tostatus: false }, 630, 160);
    add("k", "catch", { name: "refusals", scope: null, uncaught: false }, 140, 220, [["o3"]]);
    add("o3", "debug", debug("error (msg.error.code)"), 400, 220);
  }),
};

const dir = join(root, "examples");
mkdirSync(dir, { recursive: true });
for (const [name, nodes] of Object.entries(examples)) {
  writeFileSync(join(dir, `${name}.json`), `${JSON.stringify(nodes, null, 2)}\n`);
}
console.log(`wrote ${Object.keys(examples).length} examples; hub ${HUB}`);
