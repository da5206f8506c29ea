import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { until } from "../helpers";
import { Subscriber, needs, run } from "../mosquitto";
import { type Json, type RuntimeChild, START_LIMIT_MS, call, fixedPorts, spawnRuntime } from "./spawn-runtime";

/**
 * MQTT conformance with clients nobody here wrote: Debian's mosquitto_pub and mosquitto_sub
 * against the runtime as `npm start` runs it, its embedded broker on a port of its own, devices
 * registered through the REST API. Each client connects with its own default client id.
 */
describe("MQTT conformance: mosquitto_pub and mosquitto_sub against the runtime", function () {
  this.timeout(START_LIMIT_MS + 60_000);
  let scratch = "";
  let rt: RuntimeChild | null = null;
  let port = "";
  const tokens = new Map<string, string>();
  const subscribers: Subscriber[] = [];

  /** The options every client run gives: the broker, and the device's user name and token. */
  const as = (id: string, token = tokens.get(id)!): string[] => ["-h", "127.0.0.1", "-p", port, "-u", id, "-P", token];
  const topic = (id: string, level: string): string => `tethral/devices/${id}/${level}`;
  const mqttFigures = async (): Promise<Json> => (await call(rt!.api, "GET", "/communication/statistics")).body.protocols.mqtt;

  before(async function () {
    if (!needs(this, ["mosquitto_pub", "mosquitto_sub"], "apt-get install mosquitto-clients")) return;
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-conformance-mqtt-"));
    const env = await fixedPorts();
    port = env.TETHRAL_MQTT_PORT!;
    rt = await spawnRuntime(path.join(scratch, "user"), env);
    for (const id of ["conf-sensor-1", "conf-sensor-2"]) {
      const res = await call(rt.api, "POST", "/devices", { id, protocol: "mqtt" });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      tokens.set(id, res.body.token);
    }
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed" && rt) console.log(`--- the runtime's log ---\n${rt.output().slice(-6000)}`);
  });

  after(async function () {
    for (const s of subscribers.splice(0)) await s.stop();
    await rt?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("takes telemetry from mosquitto_pub with its default client id (-u ID -P TOKEN)", async function () {
    const pub = await run("mosquitto_pub", ["-d", ...as("conf-sensor-1"), "-t", topic("conf-sensor-1", "telemetry"), "-q", "1", "-m", '{"temperature": 21.5}']);
    assert.equal(pub.code, 0, pub.stdout + pub.stderr);
    // mosquitto_pub names the client id it sent in its debug lines: its own default, not the device id.
    const clientId = /Client (\S+) sending CONNECT/.exec(pub.stdout)?.[1];
    assert.ok(clientId && clientId !== "conf-sensor-1", `mosquitto_pub's own client id, not the device id: ${clientId}`);
    const state = await until(async () => {
      const s = (await call(rt!.api, "GET", "/devices/conf-sensor-1/state")).body;
      return s.properties?.temperature === 21.5 ? s : false;
    }, "the telemetry in the device's state");
    assert.equal(state.status, "online");
  });

  it("has a command sent through REST answered by a device made of mosquitto_sub and mosquitto_pub", async function () {
    const id = "conf-sensor-1";
    const sub = Subscriber.start([...as(id), "-t", topic(id, "commands"), "-q", "1"]);
    subscribers.push(sub);
    // Sent with wait: the hub holds it until the device subscribes, then waits for the answer.
    const answered = call(rt!.api, "POST", `/devices/${id}/command`, { command: "set-mode", params: { mode: "eco" }, wait: true, timeout: 15 });
    const line = await until(() => sub.lines[0], `the command at mosquitto_sub (${sub.stderr})`, 15_000);
    const command = JSON.parse(line) as { id: string; command: string; params: unknown };
    assert.equal(command.command, "set-mode");
    assert.deepEqual(command.params, { mode: "eco" });
    const reply = JSON.stringify({ id: command.id, ok: true, result: { mode: "eco", applied: true } });
    const pub = await run("mosquitto_pub", [...as(id), "-t", topic(id, "responses"), "-q", "1", "-m", reply]);
    assert.equal(pub.code, 0, pub.stderr);
    const res = await answered;
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.id, command.id);
    assert.equal(res.body.status, "succeeded");
    assert.deepEqual(res.body.result, { mode: "eco", applied: true });
    assert.ok(sub.running, "mosquitto_pub's connection did not end mosquitto_sub's");
  });

  it("refuses a wrong token at CONNECT, and counts it", async function () {
    const before = (await mqttFigures()).rejected as number;
    const pub = await run("mosquitto_pub", [...as("conf-sensor-2", "not-the-token"), "-t", topic("conf-sensor-2", "telemetry"), "-m", '{"temperature": 99}']);
    assert.notEqual(pub.code, 0);
    assert.match(pub.stderr, /bad user name or password|not authori[sz]ed/i);
    await until(async () => (await mqttFigures()).rejected === before + 1, "the refusal counted");
    const events = (await call(rt!.api, "GET", "/events?type=message.rejected&deviceId=conf-sensor-2")).body.events;
    assert.ok(events.some((e: Json) => e.data.reason === "bad-token"), JSON.stringify(events));
    assert.equal((await call(rt!.api, "GET", "/devices/conf-sensor-2/state")).body.properties.temperature, undefined);
  });

  it("refuses a publish to another device's topic, and counts it", async function () {
    const before = (await mqttFigures()).rejected as number;
    // QoS 0: the broker answers a trespass by closing the connection, which a QoS 1 publish would retry.
    await run("mosquitto_pub", [...as("conf-sensor-1"), "-t", topic("conf-sensor-2", "telemetry"), "-q", "0", "-m", '{"temperature": 99}']);
    await until(async () => (await mqttFigures()).rejected === before + 1, "the refusal counted");
    const events = (await call(rt!.api, "GET", "/events?type=message.rejected&deviceId=conf-sensor-1")).body.events;
    assert.ok(events.some((e: Json) => e.data.reason === "publish-refused"), JSON.stringify(events));
    assert.equal((await call(rt!.api, "GET", "/devices/conf-sensor-2/state")).body.properties.temperature, undefined);
  });
});
