import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { MqttDevice } from "./protocols/mqtt-device";
import { EditorComms } from "./runtime/editor-comms";
import { type Json, type RuntimeChild, START_LIMIT_MS, call, fixedPorts, spawnRuntime } from "./runtime/spawn-runtime";
import { until } from "./helpers";

/**
 * The eight examples of Import > Examples, each imported into the running runtime (`npm start`'s,
 * in a child process) as a user does — a tab of its own, through the editor's admin API — then
 * driven as its comment says: its inject buttons pressed, its endpoints called, devices reporting
 * over the real protocols. What the comment promises is read where the user reads it: the Debug
 * sidebar and the node status lines (the editor's comms websocket), and the REST API.
 */
const ROOT = path.join(__dirname, "..");
const EXAMPLES = path.join(ROOT, "examples");
const files = readdirSync(EXAMPLES).filter((f) => f.endsWith(".json")).sort();
const packageJson = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")) as { "node-red": { nodes: Record<string, string> } };
const shipped = JSON.parse(readFileSync(path.join(ROOT, "flows", "flows.json"), "utf8")) as Array<{ id: string; type: string }>;
const HUB_ID = shipped.find((n) => n.type === "tethral-hub")!.id;

type FlowNode = { id: string; type: string; name?: string; wires?: string[][]; hub?: string; info?: string };

function read(prefix: string): { file: string; nodes: FlowNode[] } {
  const file = files.find((f) => f.startsWith(prefix));
  assert.ok(file, `an example named ${prefix}…`);
  return { file, nodes: JSON.parse(readFileSync(path.join(EXAMPLES, file), "utf8")) as FlowNode[] };
}

/** The example's nodes by type and name, as a user finds them on the canvas. */
class Example {
  constructor(
    readonly file: string,
    readonly nodes: FlowNode[],
  ) {}

  node(type: string, name?: string): string {
    const found = this.nodes.filter((n) => n.type === type && (name === undefined || n.name === name));
    assert.equal(found.length, 1, `one ${type}${name === undefined ? "" : ` named "${name}"`} in ${this.file}`);
    return found[0]!.id;
  }

  get comment(): string {
    return this.nodes.find((n) => n.type === "comment")!.info ?? "";
  }

  get ids(): string[] {
    return this.nodes.map((n) => n.id);
  }
}

describe("examples (Import > Examples), imported into the running runtime and driven as their comments say", function () {
  this.timeout(30_000);
  let scratch: string;
  let rt: RuntimeChild;
  let comms: EditorComms;
  let mqttUrl: string;
  const devices: MqttDevice[] = [];
  /** boiler-1's token, from example 01's Debug output (or registered here when 01 did not run). */
  let boilerToken: string | null = null;
  /** Example 03's unanswered command: pressed in its test, its TIMEOUT awaited at the end while the others run. */
  let unanswered: Promise<Json> | null = null;

  before(async function () {
    this.timeout(START_LIMIT_MS + 10_000);
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-examples-"));
    const ports = await fixedPorts();
    mqttUrl = `mqtt://127.0.0.1:${ports.TETHRAL_MQTT_PORT}`;
    rt = await spawnRuntime(path.join(scratch, "user"), ports);
    comms = await EditorComms.open(rt.url);
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed" && rt) console.log(`--- the runtime's log ---\n${rt.output().slice(-6000)}`);
  });

  after(async () => {
    for (const d of devices) await d.end();
    comms?.close();
    await rt?.stop();
    rmSync(scratch, { recursive: true, force: true });
  });

  /** Import into a tab of its own and deploy, as the editor's Import + Deploy does (`POST /flow`). */
  async function importExample(prefix: string): Promise<Example> {
    const { file, nodes } = read(prefix);
    const from = comms.mark();
    const deploys = comms.deployMark();
    const res = await call(rt.url.replace(/\/$/, ""), "POST", "/flow", { label: file.replace(/\.json$/, ""), nodes });
    assert.equal(res.status, 200, `import of ${file}: ${JSON.stringify(res.body)}`);
    const example = new Example(file, nodes);
    // Started, each node with no error of its own (what a node reports just after its start included).
    await comms.started(deploys);
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(comms.problems(example.ids, from), [], `${file} starts without errors`);
    return example;
  }

  /** The inject node's button (the editor's `POST /inject/:id`). */
  async function press(id: string): Promise<void> {
    const res = await fetch(`${rt.url}inject/${id}`, { method: "POST" });
    assert.equal(res.status, 200, `inject ${id}`);
  }

  /** A device registered over the REST API: its token. */
  async function register(record: Record<string, unknown>): Promise<string> {
    const res = await call(rt.api, "POST", "/devices", record);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return res.body.token as string;
  }

  async function connect(id: string, token: string): Promise<MqttDevice> {
    const device = await MqttDevice.connect(mqttUrl, { id, token });
    devices.push(device);
    return device;
  }

  /** An HTTP device's telemetry report. */
  async function report(id: string, token: string, data: object): Promise<void> {
    const res = await call(rt.api, "POST", `/devices/${id}/telemetry`, data, { authorization: `Bearer ${token}` });
    assert.equal(res.status, 204, JSON.stringify(res.body));
  }

  async function boiler(): Promise<string> {
    if (boilerToken) return boilerToken;
    await call(rt.api, "DELETE", "/devices/boiler-1");
    boilerToken = await register({ id: "boiler-1", protocol: "mqtt", capabilities: ["temperature"], tags: ["floor-2"] });
    return boilerToken;
  }

  it("are JSON arrays wired within themselves, use the shipped hub, and together use every Tethral node", () => {
    const used = new Set<string>();
    assert.equal(files.length, 8);
    for (const file of files) {
      const { nodes } = read(file);
      assert.ok(Array.isArray(nodes) && nodes.length > 0, file);
      const ids = new Set(nodes.map((n) => n.id));
      for (const n of nodes) {
        used.add(n.type);
        for (const out of n.wires ?? []) for (const target of out) assert.ok(ids.has(target), `${file}: ${n.id} is wired to a node of the example`);
        if (n.hub !== undefined) assert.equal(n.hub, HUB_ID, `${file}: uses the hub of flows/flows.json`);
      }
      assert.equal(nodes.filter((n) => n.type === "comment").length, 1, `${file} says what it does in one comment`);
    }
    const missing = Object.keys(packageJson["node-red"].nodes).filter((t) => t !== "tethral-hub" && !used.has(t));
    assert.deepEqual(missing, []);
  });

  it("01 registers the two devices, each with its token once; a second registration is CONFLICT at the Catch node; the list by tag", async () => {
    const ex = await importExample("01");
    const registered = ex.node("debug", "registered (with token)");
    let from = comms.mark();
    await press(ex.node("inject", "boiler-1 (MQTT)"));
    await press(ex.node("inject", "valve-7 (CoAP)"));
    const [boilerMsg, valveMsg] = await until(() => {
      const out = comms.outputs(registered, from);
      const both = [out.find((m) => m.payload.id === "boiler-1"), out.find((m) => m.payload.id === "valve-7")];
      return both.every(Boolean) && both;
    }, "both registrations");
    assert.equal(boilerMsg.payload.protocol, "mqtt");
    assert.deepEqual(boilerMsg.payload.tags, ["floor-2"]);
    assert.equal(valveMsg.payload.protocol, "coap");
    assert.equal(valveMsg.payload.address, "coap://127.0.0.1:5690");
    for (const m of [boilerMsg, valveMsg]) assert.match(m.payload.token, /^\S{16,}$/, "the token, once");
    const listed = await call(rt.api, "GET", "/devices?limit=100");
    assert.deepEqual(listed.body.devices.map((d: Json) => d.id).filter((id: string) => ["boiler-1", "valve-7"].includes(id)).sort(), ["boiler-1", "valve-7"]);
    assert.ok(listed.body.devices.every((d: Json) => d.token === undefined), "never shown again");

    // The token is the device's MQTT password.
    boilerToken = boilerMsg.payload.token as string;
    const device = await connect("boiler-1", boilerToken);
    await device.publish("telemetry", { temperature: 19 });
    await until(async () => (await call(rt.api, "GET", "/devices/boiler-1")).body.status === "online", "boiler-1 online with its token");

    from = comms.mark();
    await press(ex.node("inject", "list floor-2"));
    const list = await comms.next(ex.node("debug", "devices"), from, "the floor-2 list");
    assert.deepEqual(list.payload.devices.map((d: Json) => d.id), ["boiler-1"]);
    assert.equal(list.payload.total, 1);

    from = comms.mark();
    await press(ex.node("inject", "boiler-1 (MQTT)"));
    const error = await comms.next(ex.node("debug", "error (msg.error.code)"), from, "the second registration's error");
    assert.equal(error.error.code, "CONFLICT");
    assert.equal(comms.outputs(registered, from).length, 0, "no second token");
    const registering = ex.nodes.find((n) => n.type === "tethral-device" && (n as { operation?: string }).operation === "register")!.id;
    assert.deepEqual(comms.problems(ex.ids, 0).filter((p) => !p.startsWith(registering)), []);
  });

  it("02 passes on device messages over any protocol; a desired setpoint reaches the device and shows in delta until the device reports it; state history", async () => {
    const token = await boiler();
    const device = devices.find((d) => d.id === "boiler-1" && !d.closed) ?? (await connect("boiler-1", token));
    const meterToken = await register({ id: "meter-2", protocol: "http", heartbeatTimeout: 600 });
    const ex = await importExample("02");
    const messages = ex.node("debug", "device messages");

    let from = comms.mark();
    await device.publish("telemetry", { temperature: 21.5 });
    await report("meter-2", meterToken, { power: 5 });
    await device.publish("heartbeat", "");
    const mqttMsg = await comms.next(messages, from, "boiler-1's telemetry", (m) => m.deviceId === "boiler-1");
    assert.deepEqual([mqttMsg.kind, mqttMsg.protocol, mqttMsg.payload], ["telemetry", "mqtt", { temperature: 21.5 }]);
    const httpMsg = await comms.next(messages, from, "meter-2's telemetry", (m) => m.deviceId === "meter-2");
    assert.deepEqual([httpMsg.kind, httpMsg.protocol, httpMsg.payload], ["telemetry", "http", { power: 5 }]);
    assert.ok(comms.outputs(messages, from).every((m) => m.kind !== "heartbeat"), "heartbeats are not ticked");

    await device.subscribe(device.topic("desired"));
    const twins = () => device.messages.filter((m) => m.topic === device.topic("desired")).map((m) => JSON.parse(m.payload));
    from = comms.mark();
    await press(ex.node("inject", "setpoint 22 for boiler-1"));
    const set = await comms.next(ex.node("debug", "state after set"), from, "the state after set");
    assert.equal(set.payload.deviceId, "boiler-1");
    assert.deepEqual(set.payload.desired, { setpoint: 22 });
    assert.deepEqual(set.payload.delta, { setpoint: 22 });
    // The device sees it in delta, on its desired topic.
    const sent = await until(() => twins().find((t) => t.delta.setpoint === 22), "the twin with the setpoint in delta at boiler-1");
    assert.deepEqual(sent, { desired: { setpoint: 22 }, delta: { setpoint: 22 }, version: set.payload.version });
    // The delta holds until the device reports the value; then the device hears it is cleared.
    await device.publish("telemetry", { setpoint: 22 });
    await until(async () => {
      const state = (await call(rt.api, "GET", "/devices/boiler-1/state")).body;
      return state.properties.setpoint === 22 && Object.keys(state.delta).length === 0 && state.desired.setpoint === 22;
    }, "the delta to empty once boiler-1 reports the setpoint");
    const cleared = await until(() => twins().find((t) => t.desired.setpoint === 22 && Object.keys(t.delta).length === 0), "the cleared delta at boiler-1");
    assert.ok(cleared.version > sent.version);

    from = comms.mark();
    await press(ex.node("inject", "history of boiler-1"));
    const history = await comms.next(ex.node("debug", "last 10 changes"), from, "the history");
    assert.ok(Array.isArray(history.payload) && history.payload.length > 0 && history.payload.length <= 10, JSON.stringify(history.payload));
    assert.ok(history.payload.every((h: Json) => h.deviceId === "boiler-1"));
    assert.ok(history.payload.some((h: Json) => h.to.desired?.setpoint === 22), "the setpoint change is in the history");
    assert.deepEqual(comms.problems(ex.ids, 0), []);
  });

  it("03 sends the command and passes on the answer; a failure is DEVICE_ERROR at the Catch node; a device away gets it when it comes back", async () => {
    const token = await boiler();
    for (const d of devices.filter((x) => x.id === "boiler-1")) await d.end();
    let device = await connect("boiler-1", token);
    let behave: "ok" | "fail" | "silent" = "ok";
    // boiler-1 as the example expects it: takes its commands and answers as `behave` says.
    const obey = (d: MqttDevice) =>
      d.client.on("message", (topic, payload) => {
        if (topic !== d.topic("commands") || behave === "silent") return;
        const c = JSON.parse(payload.toString("utf8")) as { id: string; params: { delay: number } };
        const answer = behave === "ok" ? { ok: true, result: { rebooting: true, after: c.params.delay } } : { ok: false, error: "busy updating" };
        d.client.publish(d.topic("responses"), JSON.stringify({ id: c.id, ...answer }), { qos: 1 });
      });
    obey(device);
    await device.subscribe(device.topic("commands"));
    const ex = await importExample("03");
    assert.match(ex.comment, /10 s, one retry/);
    const reboot = ex.node("inject", "reboot boiler-1");
    const answer = ex.node("debug", "answer");

    let from = comms.mark();
    await press(reboot);
    const ok = await comms.next(answer, from, "the answer");
    assert.deepEqual(ok.payload, { rebooting: true, after: 5 });
    assert.equal(ok.command.command, "reboot");
    assert.equal(ok.command.deviceId, "boiler-1");
    assert.equal(ok.command.status, "succeeded");
    assert.deepEqual(ok.command.params, { delay: 5 });

    behave = "fail";
    from = comms.mark();
    await press(reboot);
    const failed = await comms.next(ex.node("debug", "device said no"), from, "the failure");
    assert.equal(failed.error.code, "DEVICE_ERROR");
    assert.match(failed.error.message, /busy updating/);
    assert.equal(failed.command.status, "failed");

    // Away: the command waits in the queue and goes out when the device is back.
    behave = "ok";
    const connected = async () => (await call(rt.api, "GET", "/communication/statistics")).body.protocols.mqtt.connected as number;
    const before = await connected();
    await device.end();
    await until(async () => (await connected()) === before - 1, "the hub to see boiler-1 gone");
    from = comms.mark();
    const queuedEvents = async () => ((await call(rt.api, "GET", "/events?type=command.queued&deviceId=boiler-1&limit=100")).body.events as Json[]).map((e) => e.data.command.id as string);
    const earlier = new Set(await queuedEvents());
    await press(reboot);
    const id = await until(async () => (await queuedEvents()).find((c) => !earlier.has(c)), "the command queued while boiler-1 is away");
    await new Promise((r) => setTimeout(r, 300));
    const queued = (await call(rt.api, "GET", `/commands/${id}`)).body;
    assert.equal(queued.status, "queued");
    assert.equal(comms.outputs(answer, from).length, 0, "no answer while away");
    device = await connect("boiler-1", token);
    obey(device);
    await device.subscribe(device.topic("commands"));
    const late = await comms.next(answer, from, "the answer once back");
    assert.equal(late.command.id, queued.id);
    assert.deepEqual(late.payload, { rebooting: true, after: 5 });

    // No answer at all: its TIMEOUT (10 s and one retry) is awaited at the end, while the other examples run.
    behave = "silent";
    unanswered = timedOut(ex, device);
    unanswered.catch(() => undefined); // a failure is the last test's to report, not an unhandled rejection
    const expected = [ex.node("tethral-command")];
    assert.deepEqual(comms.problems(ex.ids, 0).filter((p) => !expected.some((id) => p.startsWith(id))), []);
  });

  /** Presses 03's inject while boiler-1 stays silent: resolves with what the "no answer in time" debug node shows. */
  async function timedOut(ex: Example, device: MqttDevice): Promise<Json> {
    const from = comms.mark();
    const sent = device.commands().length;
    await press(ex.node("inject", "reboot boiler-1"));
    const msg = await comms.next(ex.node("debug", "no answer in time"), from, "TIMEOUT", () => true, 30_000);
    return { msg, attempts: device.commands().slice(sent), otherOutputs: [...comms.outputs(ex.node("debug", "answer"), from), ...comms.outputs(ex.node("debug", "device said no"), from)] };
  }

  it("04 passes high-priority device events to the first subscription, and the published alarm to the second", async () => {
    const ex = await importExample("04");
    const high = ex.node("debug", "high-priority device events");
    const alarms = ex.node("debug", "alarms");
    let from = comms.mark();
    await press(ex.node("inject", "raise an alarm"));
    const alarm = await comms.next(alarms, from, "the alarm");
    assert.equal(alarm.topic, "alarm.raised");
    assert.equal(alarm.payload.type, "alarm.raised");
    assert.equal(alarm.payload.priority, "critical");
    assert.deepEqual(alarm.payload.data, { zone: "boiler room", level: 3 });
    const history = await call(rt.api, "GET", "/events?type=alarm.raised");
    assert.deepEqual(history.body.events.map((e: Json) => e.id), [alarm.payload.id]);

    // A device registers (normal), reports (online: normal), then falls silent (offline: high).
    from = comms.mark();
    const token = await register({ id: "pump-4", protocol: "http", heartbeatTimeout: 1 });
    await report("pump-4", token, { rpm: 900 });
    const offline = await comms.next(high, from, "pump-4 offline", (m) => m.payload.deviceId === "pump-4", 8000);
    assert.equal(offline.payload.type, "device.offline");
    assert.equal(offline.payload.priority, "high");
    assert.equal(offline.topic, "device.offline");
    const seen = comms.outputs(high, from).filter((m) => m.payload.deviceId === "pump-4");
    assert.deepEqual(seen.map((m) => m.payload.type), ["device.offline"], "nothing below high");
    assert.ok(!comms.outputs(alarms, from).some((m) => m.payload.deviceId === "pump-4"), "the alarm subscription takes alarms only");
    assert.deepEqual(comms.problems(ex.ids, 0), []);
  });

  it("05 publishes alarm.overheat (high) for an online device's temperature above 80, and waits 5 minutes before reporting one offline", async () => {
    const ex = await importExample("05");
    const token = await register({ id: "kiln-5", protocol: "mqtt" });
    const kiln = await connect("kiln-5", token);
    // The first reading sets the baseline (a change from no value is not a change: "ignore unknown").
    for (const temperature of [20, 50, 85]) {
      await kiln.publish("telemetry", { temperature });
      await until(async () => (await call(rt.api, "GET", "/devices/kiln-5/state")).body.properties?.temperature === temperature, `temperature ${temperature}`);
    }
    const events = await until(async () => {
      const list = (await call(rt.api, "GET", "/events?deviceId=kiln-5&limit=100")).body.events as Json[];
      return list.some((e) => e.type === "alarm.overheat") && list;
    }, "alarm.overheat");
    // The user's own events (outside the hub's prefixes): the alarm, under its type, not the device id.
    const alarms = events.filter((e) => !/^(device|state|message|command|hub|store)\./.test(e.type));
    assert.equal(alarms.length, 1, `one alarm: ${JSON.stringify(alarms.map((e) => e.type))}`);
    assert.equal(alarms[0].type, "alarm.overheat");
    assert.equal(alarms[0].priority, "high");
    assert.equal(alarms[0].deviceId, "kiln-5");
    assert.equal(alarms[0].data.properties.temperature, 85);

    // Offline: the second watch starts its 5-minute wait (its status counts it) and reports nothing yet.
    const stillOffline = ex.node("tethral-state-watch", "offline for 5 min");
    const waiting = () => Number(/^(\d+) waiting/.exec(comms.status(stillOffline)?.text ?? "")?.[1] ?? 0);
    const before = waiting();
    const from = comms.mark();
    await kiln.publish("status", "offline");
    await until(() => waiting() === before + 1, "the watch waiting for kiln-5", 5000);
    assert.equal(comms.status(stillOffline)?.fill, "yellow");
    assert.equal(comms.outputs(ex.node("debug", "still offline"), from).length, 0);
    // Back within the 5 minutes: the wait is called off.
    await kiln.publish("status", "online");
    await until(() => waiting() === before, "the wait called off", 5000);
    assert.deepEqual(comms.problems(ex.ids, 0), []);
  });

  it("06 reports a flapping device, a stuck value and an outlier on both outputs; stuck clears with active: false", async () => {
    const ex = await importExample("06");
    const token = await register({ id: "press-6", protocol: "mqtt" });
    const press6 = await connect("press-6", token);
    const watch = ex.node("debug", "anomaly");
    const asEvents = ex.node("debug", "the same, as events");
    const from = comms.mark();
    const both = async (kind: string, active: boolean) => {
      const test = (a: Json) => a?.kind === kind && a.active === active;
      const w = await comms.next(watch, from, `${kind} ${active} from the watch`, (m) => m.deviceId === "press-6" && test(m.change?.anomaly));
      const e = await comms.next(asEvents, from, `${kind} ${active} as an event`, (m) => m.payload.deviceId === "press-6" && test(m.payload.data));
      assert.equal(e.payload.type, "state.anomaly");
      return { w, e };
    };
    const count = (kind: string, active: boolean) =>
      [comms.outputs(watch, from).filter((m) => m.deviceId === "press-6" && m.change?.anomaly?.kind === kind && m.change.anomaly.active === active).length,
        comms.outputs(asEvents, from).filter((m) => m.payload.deviceId === "press-6" && m.payload.data.kind === kind && m.payload.data.active === active).length];

    // Stuck: the same pressure in 30 reports in a row; the flow varies, then one far-off flow reading.
    for (let i = 0; i < 31; i++) await press6.publish("telemetry", { pressure: 3, flow: 10 + (i % 2) });
    await both("stuck", true);
    await press6.publish("telemetry", { pressure: 3, flow: 100 });
    const outlier = await both("outlier", true);
    assert.equal(outlier.e.payload.data.property, "flow");
    assert.equal(outlier.e.payload.data.value, 100);
    await press6.publish("telemetry", { pressure: 3.5, flow: 10 });
    await both("stuck", false);
    assert.deepEqual(count("stuck", true), [1, 1], "stuck fires once when it starts");

    // Flapping: online and offline, again and again.
    for (let i = 0; i < 4; i++) {
      await press6.publish("status", "offline");
      await press6.publish("status", "online");
    }
    const flapping = await both("flapping", true);
    assert.equal(flapping.e.payload.priority, "high");
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(count("flapping", true), [1, 1], "flapping fires once when it starts");
    assert.deepEqual(count("outlier", true), [1, 1]);
    assert.deepEqual(comms.problems(ex.ids, 0), []);
  });

  it("07 answers its own endpoints: a device's last temperature, NOT_FOUND as 404 from the Catch node, the hub's health", async () => {
    const ex = await importExample("07");
    const token = await register({ id: "oven-7", protocol: "http" });
    await report("oven-7", token, { temperature: 180.5 });
    const state = (await call(rt.api, "GET", "/devices/oven-7/state")).body;
    // The example's own endpoints under /api: the user's API, not the one the OpenAPI document describes.
    const own = { outsideApi: "example 07's own endpoint" };
    const ok = await call(rt.api, "GET", "/my/temperature/oven-7", undefined, {}, own);
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body, { deviceId: "oven-7", temperature: 180.5, at: state.reportedAt });
    const missing = await call(rt.api, "GET", "/my/temperature/nobody", undefined, {}, own);
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, "NOT_FOUND");
    assert.match(missing.body.error.message, /nobody/);
    const health = await call(rt.api, "GET", "/my/health", undefined, {}, own);
    assert.equal(health.status, 200);
    assert.equal(health.body.status, (await call(rt.api, "GET", "/health")).body.status);
    assert.ok(health.body.components.store, JSON.stringify(health.body));
    const expected = [ex.node("tethral-state")];
    assert.deepEqual(comms.problems(ex.ids, 0).filter((p) => !expected.some((id) => p.startsWith(id))), []);
  });

  it("08 charts boiler-1's telemetry: 15-minute averages as ui-chart points {x, y, series}, the raw answer", async () => {
    const token = await boiler();
    const device = devices.find((d) => d.id === "boiler-1" && !d.closed) ?? (await connect("boiler-1", token));
    const ex = await importExample("08");
    for (const temperature of [30, 40]) await device.publish("telemetry", { temperature, humidity: 55 });
    await until(async () => (await call(rt.api, "GET", "/devices/boiler-1/state")).body.properties.temperature === 40, "boiler-1's reports");

    let from = comms.mark();
    await press(ex.node("inject", "chart boiler-1"));
    const chart = await comms.next(ex.node("debug", "points for ui-chart"), from, "the chart points");
    assert.equal(chart.action, "replace");
    // The same query over the REST API, in ui-chart's shape: what the example's chart draws.
    const answer = (await call(rt.api, "GET", "/devices/boiler-1/telemetry?interval=15m&agg=avg")).body;
    const expected = Object.entries(answer.series as Record<string, Json[]>).flatMap(([series, points]) =>
      points.filter((p) => typeof p.value === "number").map((p) => ({ x: Date.parse(p.ts), y: p.value, series })),
    );
    assert.deepEqual(chart.payload, expected);
    const series = new Set((chart.payload as Json[]).map((p) => p.series));
    assert.ok(series.has("temperature") && series.has("humidity"), `one line per key: ${[...series].join(", ")}`);
    const last = (chart.payload as Json[]).filter((p) => p.series === "humidity").at(-1);
    assert.equal(last.y, 55);
    assert.ok(Math.abs(last.x - Date.now()) < 15 * 60_000 + 5000, "the current 15 minutes");
    assert.match(comms.status(ex.node("tethral-state", "24 h in 15 min averages"))?.text ?? "", /points of \d+ keys of boiler-1/);

    from = comms.mark();
    await press(ex.node("inject", "last hour, raw"));
    const raw = await comms.next(ex.node("debug", "the answer"), from, "the raw answer");
    assert.equal(raw.payload.deviceId, "boiler-1");
    assert.equal(raw.payload.interval, null);
    assert.ok(Date.parse(raw.payload.to) - Date.parse(raw.payload.from) <= 3_600_000 + 5000, "the last hour");
    assert.deepEqual(raw.payload.series.temperature.slice(-2).map((p: Json) => p.value), [30, 40]);

    assert.deepEqual(comms.problems(ex.ids, 0), []);
  });

  it("03 (continued) hands a command nobody answers to the Catch node as TIMEOUT, after 10 s and one retry", async function () {
    if (!unanswered) this.skip(); // 03 did not get that far: its own failure says why
    const { msg, attempts, otherOutputs } = await unanswered;
    assert.equal(msg.error.code, "TIMEOUT");
    assert.equal(msg.command.status, "timed_out");
    assert.equal(msg.command.attempts, 2);
    const took = Date.parse(msg.command.completedAt) - Date.parse(msg.command.createdAt);
    assert.ok(took >= 20_000 && took < 25_000, `two attempts of 10 s each, not ${took} ms`);
    assert.equal(attempts.length, 2, "sent, then retried once");
    assert.equal(new Set(attempts.map((a: Json) => a.id)).size, 1, "the same command twice");
    assert.deepEqual(otherOutputs, []);
  });
});
