import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { until } from "../helpers";
import { curl, needs, program, run } from "../mosquitto";
import { Device as WsDevice } from "../protocols/ws-device";
import { type Json, type RuntimeChild, START_LIMIT_MS, call, fixedPorts, spawnRuntime } from "./spawn-runtime";

const COAP_CLIENT = "coap-client-notls";

/**
 * The device twin, delivered (CONTRACT §2, §3), with the clients devices and their writers use:
 * desired set through the REST API reaches mosquitto_sub on the embedded broker (retained, also
 * for a late subscriber and after a restart), a WebSocket device, libcoap's coap-client observing
 * the desired resource, and curl; the device's report clears the delta and that arrives too.
 */
describe("device twin: desired state reaches the device on every protocol", function () {
  this.timeout(2 * START_LIMIT_MS + 120_000);
  let scratch = "";
  let userDir = "";
  let env: NodeJS.ProcessEnv = {};
  let rt: RuntimeChild | null = null;
  const tokens = new Map<string, string>();
  const children: ChildProcess[] = [];

  const as = (id: string, token = tokens.get(id)!): string[] => ["-h", "127.0.0.1", "-p", env.TETHRAL_MQTT_PORT!, "-u", id, "-P", token];
  const desiredTopic = (id: string) => `tethral/devices/${id}/desired`;
  const setDesired = async (id: string, desired: Json) => {
    const res = await call(rt!.api, "PUT", `/devices/${id}/state`, { desired });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    return res.body;
  };
  /** One message from mosquitto_sub (-C 1), as `topic payload`; exits 27 on its -W timeout. */
  const subscribeOnce = (id: string, topic: string, token?: string) => run("mosquitto_sub", [...as(id, token), "-t", topic, "-q", "1", "-C", "1", "-v", "-W", "5"], 15_000);

  before(async function () {
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-twin-"));
    userDir = path.join(scratch, "user");
    env = await fixedPorts();
    rt = await spawnRuntime(userDir, env);
    for (const [id, protocol] of [
      ["twin-mqtt", "mqtt"],
      ["twin-other", "mqtt"],
      ["twin-ws", "websocket"],
      ["twin-coap", "coap"],
      ["twin-http", "http"],
    ]) {
      const res = await call(rt.api, "POST", "/devices", { id, protocol });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      tokens.set(id!, res.body.token);
    }
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed" && rt) console.log(`--- the runtime's log ---\n${rt.output().slice(-6000)}`);
  });

  after(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await rt?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("MQTT (mosquitto_sub on the embedded broker): retains the twin for a device that subscribes after the change, and sends the cleared delta after its report", async function () {
      if (!needs(this, ["mosquitto_pub", "mosquitto_sub"], "apt-get install mosquitto-clients")) return;
      const set = await setDesired("twin-mqtt", { setpoint: 22 });
      const first = await subscribeOnce("twin-mqtt", desiredTopic("twin-mqtt"));
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.stdout.trim(), `${desiredTopic("twin-mqtt")} ${JSON.stringify({ desired: { setpoint: 22 }, delta: { setpoint: 22 }, version: set.version })}`);

      // Subscribed before the report: the retained twin, then the one with the delta cleared.
      const sub = spawn(program("mosquitto_sub")!, [...as("twin-mqtt"), "-t", desiredTopic("twin-mqtt"), "-q", "1", "-C", "2"], { stdio: ["ignore", "pipe", "pipe"] });
      children.push(sub);
      let out = "";
      sub.stdout!.on("data", (c: Buffer) => (out += c.toString()));
      await until(() => out.includes("\n"), "the retained twin at the subscriber");
      const pub = await run("mosquitto_pub", [...as("twin-mqtt"), "-t", "tethral/devices/twin-mqtt/telemetry", "-q", "1", "-m", '{"setpoint": 22}']);
      assert.equal(pub.code, 0, pub.stderr);
      await until(() => out.trim().split("\n").length === 2, `the cleared twin at the subscriber (${out})`);
      const cleared = JSON.parse(out.trim().split("\n")[1]!);
      assert.deepEqual(cleared.desired, { setpoint: 22 });
      assert.deepEqual(cleared.delta, {});
      assert.ok(cleared.version > set.version);
    });

    it("MQTT: refuses a device's subscription to another device's desired topic, and its publish on its own", async function () {
      if (!needs(this, ["mosquitto_pub", "mosquitto_sub"], "apt-get install mosquitto-clients")) return;
      await setDesired("twin-other", { mode: "eco" });
      const other = await subscribeOnce("twin-mqtt", desiredTopic("twin-other"));
      assert.equal(other.stdout, "", "no message for another device's topic");
      const wildcard = await subscribeOnce("twin-mqtt", "tethral/devices/+/desired");
      assert.equal(wildcard.stdout, "");
      // Its own twin is the hub's to say.
      await run("mosquitto_pub", [...as("twin-mqtt"), "-t", desiredTopic("twin-mqtt"), "-q", "0", "-m", '{"desired":{}}']);
      const own = await subscribeOnce("twin-mqtt", desiredTopic("twin-mqtt"));
      assert.deepEqual(JSON.parse(own.stdout.trim().slice(desiredTopic("twin-mqtt").length + 1)).desired, { setpoint: 22 });
      const events = (await call(rt!.api, "GET", "/events?type=message.rejected&deviceId=twin-mqtt")).body.events;
      assert.ok(events.some((e: Json) => e.data.reason === "subscribe-refused"), JSON.stringify(events));
      assert.ok(events.some((e: Json) => e.data.reason === "publish-refused"), JSON.stringify(events));
    });

  it("WebSocket: a desired frame on connect and on every change, the cleared delta after a report", async () => {
    const set = await setDesired("twin-ws", { brightness: 40 });
    const url = `${rt!.url.replace(/^http/, "ws")}tethral/ws?device=twin-ws&token=${tokens.get("twin-ws")}`;
    const device = await WsDevice.connect(url, { twins: true });
    try {
      const onConnect = await device.next();
      assert.deepEqual(onConnect, { type: "desired", desired: { brightness: 40 }, delta: { brightness: 40 }, version: set.version });
      const changed = await setDesired("twin-ws", { brightness: 80, on: true });
      assert.deepEqual(await device.next(), { type: "desired", desired: { brightness: 80, on: true }, delta: { brightness: 80, on: true }, version: changed.version });
      device.send({ type: "telemetry", data: { brightness: 80 } });
      const partly = await device.next();
      assert.deepEqual([partly.type, partly.delta], ["desired", { on: true }]);
    } finally {
      device.ws.terminate();
    }
    // The broker retains the twins of MQTT devices only: this one's never reaches it.
    if (program("mosquitto_sub")) {
      const retained = await subscribeOnce("twin-ws", desiredTopic("twin-ws"));
      assert.equal(retained.stdout, "", "a WebSocket device's twin is not retained on the broker");
      assert.equal(retained.code, 27, "subscribed, and waited out its -W time (27), not turned away");
    }
    // Nothing desired any more: a device connecting again hears that too, not silence.
    const cleared = await setDesired("twin-ws", { brightness: null, on: null });
    const again = await WsDevice.connect(url, { twins: true });
    try {
      assert.deepEqual(await again.next(), { type: "desired", desired: {}, delta: {}, version: cleared.version });
    } finally {
      again.ws.terminate();
    }
  });

  it("HTTP (curl): GET /api/devices/{id}/desired with the device's token; 401 without it, 404 for no device", async function () {
    if (!needs(this, ["curl"], "apt-get install curl")) return;
    const set = await setDesired("twin-http", { interval: 60 });
    const url = `${rt!.api}/devices/twin-http/desired`;
    const ok = await curl(["-H", `Authorization: Bearer ${tokens.get("twin-http")}`, url]);
    assert.equal(ok.status, 200, ok.body);
    const twin = JSON.parse(ok.body);
    assert.deepEqual(Object.keys(twin), ["desired", "delta", "version"]);
    assert.deepEqual([twin.desired, twin.delta], [{ interval: 60 }, { interval: 60 }]);
    // The read was a sign of life: the device came online, which moved the version past the set's.
    assert.ok(twin.version >= set.version);
    const byQuery = await curl([`${url}?token=${tokens.get("twin-http")}`]);
    assert.equal(byQuery.status, 200);
    const none = await curl([url]);
    assert.equal(none.status, 401, none.body);
    assert.equal(JSON.parse(none.body).error.code, "UNAUTHORIZED");
    assert.equal((await curl(["-H", "Authorization: Bearer wrong-token", url])).status, 401);
    assert.equal((await curl([`${rt!.api}/devices/nobody/desired?token=x`])).status, 404);
    // The report clears the delta, and the next read says so; the read was a sign of life.
    const report = await call(rt!.api, "POST", "/devices/twin-http/telemetry", { interval: 60 }, { authorization: `Bearer ${tokens.get("twin-http")}` });
    assert.equal(report.status, 204);
    assert.deepEqual(JSON.parse((await curl([`${url}?token=${tokens.get("twin-http")}`])).body).delta, {});
    assert.equal((await call(rt!.api, "GET", "/devices/twin-http")).body.status, "online");
  });

  it("CoAP (coap-client -s, observe): the twin at once, then a notification on every change", async function () {
    if (!needs(this, [COAP_CLIENT], "apt-get install libcoap3-bin")) return;
    const set = await setDesired("twin-coap", { rate: 5 });
    const url = `coap://127.0.0.1:${env.TETHRAL_COAP_PORT}/devices/twin-coap/desired?token=${tokens.get("twin-coap")}`;
    // -s 8: observe for 8 s, printing each representation on a line of its own.
    const client = spawn(COAP_CLIENT, ["-B", "10", "-s", "8", "-m", "get", url], { stdio: ["ignore", "pipe", "pipe"] });
    children.push(client);
    let out = "";
    let err = "";
    client.stdout!.on("data", (c: Buffer) => (out += c.toString()));
    client.stderr!.on("data", (c: Buffer) => (err += c.toString()));
    const lines = () => jsonObjects(out);
    await until(() => lines().length >= 1, `the first answer at coap-client (${out} ${err})`, 10_000);
    // The GET was a sign of life: the device came online, which moved the version past the set's.
    const first = lines()[0];
    assert.deepEqual([first.desired, first.delta], [{ rate: 5 }, { rate: 5 }]);
    assert.ok(first.version >= set.version);
    const changed = await setDesired("twin-coap", { rate: 10 });
    await until(() => lines().some((t) => t.version === changed.version), `the notification at coap-client (${out} ${err})`, 10_000);
    const report = await run(COAP_CLIENT, ["-B", "10", "-m", "post", "-t", "json", "-e", '{"rate":10}', `coap://127.0.0.1:${env.TETHRAL_COAP_PORT}/devices/twin-coap/telemetry?token=${tokens.get("twin-coap")}`]);
    assert.equal(report.code, 0, report.stderr);
    await until(() => lines().some((t) => t.desired.rate === 10 && Object.keys(t.delta).length === 0), `the cleared delta at coap-client (${out})`, 10_000);
    const figures = (await call(rt!.api, "GET", "/communication/statistics")).body.protocols.coap;
    assert.equal(figures.observers, 1, JSON.stringify(figures));
  });

  it("after a restart, the embedded broker retains every twin again; removing a device clears its twin", async function () {
    if (!needs(this, ["mosquitto_sub"], "apt-get install mosquitto-clients")) return;
    await rt!.stop();
    rt = await spawnRuntime(userDir, env);
    // The broker starts with the flows, just after the runtime says it is ready.
    const again = await until(async () => {
      const r = await subscribeOnce("twin-mqtt", desiredTopic("twin-mqtt"));
      return r.code === 0 ? r : false;
    }, "the retained twin after the restart");
    assert.deepEqual(JSON.parse(again.stdout.trim().slice(desiredTopic("twin-mqtt").length + 1)).desired, { setpoint: 22 });

    const removed = await call(rt.api, "DELETE", "/devices/twin-other");
    assert.equal(removed.status, 204);
    // Registered again: the old twin must not be waiting for the new device.
    const back = await call(rt.api, "POST", "/devices", { id: "twin-other", protocol: "mqtt" });
    assert.equal(back.status, 201);
    const fresh = await subscribeOnce("twin-other", desiredTopic("twin-other"), back.body.token);
    assert.equal(fresh.stdout, "", "no retained twin after the removal");
    assert.equal(fresh.code, 27, "subscribed with the new token, and waited out its -W time (27), not turned away");
  });
});

/** The JSON objects in coap-client's output, which prints each representation with no separator. */
function jsonObjects(text: string): Json[] {
  const out: Json[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{") {
      if (depth++ === 0) start = i;
    } else if (c === "}" && depth > 0 && --depth === 0) out.push(JSON.parse(text.slice(start, i + 1)));
  }
  return out;
}
