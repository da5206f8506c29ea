import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { type RuntimeChild, START_LIMIT_MS, call, fixedPorts, spawnRuntime } from "./spawn-runtime";
import { until } from "../helpers";
import { needs, run } from "../mosquitto";
import { type Families, parseExposition, sampleValue } from "../prometheus";

/** GET /api/metrics, parsed. */
async function scrape(api: string): Promise<{ families: Families; contentType: string }> {
  const res = await fetch(`${api}/metrics`);
  assert.equal(res.status, 200);
  return { families: parseExposition(await res.text()), contentType: res.headers.get("content-type") ?? "" };
}

function family(families: Families, name: string) {
  const f = families.find((m) => m.name === name);
  assert.ok(f, `${name} is in the exposition`);
  return f;
}

/** A counter's value, 0 for a label set it has not counted yet (for before/after differences). */
function value(families: Families, name: string, labels: Record<string, string> = {}): number {
  family(families, name);
  return sampleValue(families, name, labels) ?? 0;
}

describe("GET /api/metrics (Prometheus text format, in the runtime)", function () {
  this.timeout(START_LIMIT_MS + 60_000);
  let scratch = "";
  let rt: RuntimeChild;
  let mqttPort = "";
  let device: Server;
  let deviceUrl = "";

  before(async () => {
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-metrics-"));
    const env = await fixedPorts();
    mqttPort = env.TETHRAL_MQTT_PORT!;
    rt = await spawnRuntime(path.join(scratch, "user"), env);
    // An HTTP device that answers every command with its params.
    device = createServer((req, res) => {
      let text = "";
      req.on("data", (c: Buffer) => (text += c.toString()));
      req.on("end", () => {
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify({ echoed: (JSON.parse(text) as { params: unknown }).params }));
      });
    });
    await new Promise<void>((r) => device.listen(0, "127.0.0.1", r));
    deviceUrl = `http://127.0.0.1:${(device.address() as AddressInfo).port}/`;
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed" && rt) console.log(`--- the runtime's log ---\n${rt.output().slice(-6000)}`);
  });

  after(async () => {
    await rt?.stop();
    device?.closeAllConnections();
    await new Promise((r) => device?.close(r));
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("answers text/plain version 0.0.4 with the hub's metrics, named and typed by Prometheus' conventions, and the process metrics", async () => {
    const { families, contentType } = await scrape(rt.api);
    // Parameters in any order (Express puts charset first).
    assert.match(contentType, /^text\/plain;/);
    assert.match(contentType, /;\s*version=0\.0\.4(;|$)/);
    const expected: Record<string, string> = {
      tethral_messages_received_total: "COUNTER",
      tethral_messages_sent_total: "COUNTER",
      tethral_received_bytes_total: "COUNTER",
      tethral_sent_bytes_total: "COUNTER",
      tethral_messages_refused_total: "COUNTER",
      tethral_protocol_errors_total: "COUNTER",
      tethral_protocol_connections: "GAUGE",
      tethral_devices: "GAUGE",
      tethral_commands_total: "COUNTER",
      tethral_commands_pending: "GAUGE",
      tethral_command_round_trip_seconds: "HISTOGRAM",
      tethral_events_published_total: "COUNTER",
      tethral_events_delivered_total: "COUNTER",
      tethral_events_dropped_total: "COUNTER",
      tethral_store_batch_duration_seconds: "HISTOGRAM",
      tethral_store_backlog_rows: "GAUGE",
      tethral_store_dropped_rows_total: "COUNTER",
      tethral_event_loop_lag_p99_seconds: "GAUGE",
      tethral_up: "GAUGE",
      // prom-client's default process metrics.
      process_cpu_seconds_total: "COUNTER",
      process_resident_memory_bytes: "GAUGE",
      nodejs_eventloop_lag_seconds: "GAUGE",
      nodejs_heap_size_used_bytes: "GAUGE",
    };
    for (const [name, type] of Object.entries(expected)) assert.equal(family(families, name).type, type, name);
    for (const f of families) {
      if (f.type === "COUNTER") assert.match(f.name, /_total$/, `a counter's name ends in _total: ${f.name}`);
      assert.ok(f.help.length > 0, `${f.name} has help`);
    }
    // Every status is exposed, at 0 when no device has it: a missing series would not read as 0 here.
    for (const status of ["unknown", "online", "offline", "error", "maintenance"]) assert.equal(sampleValue(families, "tethral_devices", { status }), 0, status);
    for (const protocol of ["mqtt", "coap", "websocket"]) assert.ok(family(families, "tethral_messages_received_total").metrics.some((m) => m.labels?.protocol === protocol), protocol);
    assert.deepEqual(family(families, "tethral_store_dropped_rows_total").metrics.map((m) => m.labels?.table).sort(), ["events", "history", "points"]);
  });

  it("moves with traffic: messages and bytes per protocol, a refusal by reason, devices by status, a command and its round trip", async function () {
    if (!needs(this, ["mosquitto_pub"], "apt-get install mosquitto-clients")) return;
    const sensor = await call(rt.api, "POST", "/devices", { id: "m-sensor", protocol: "mqtt" });
    assert.equal(sensor.status, 201);
    const valve = await call(rt.api, "POST", "/devices", { id: "m-valve", protocol: "http", address: deviceUrl });
    assert.equal(valve.status, 201);
    const before = (await scrape(rt.api)).families;
    assert.equal(value(before, "tethral_devices", { status: "unknown" }), 2);

    const telemetry = '{"temperature": 21.5}';
    const pub = await run("mosquitto_pub", ["-h", "127.0.0.1", "-p", mqttPort, "-u", "m-sensor", "-P", sensor.body.token, "-t", "tethral/devices/m-sensor/telemetry", "-q", "1", "-m", telemetry]);
    assert.equal(pub.code, 0, pub.stderr);
    const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
    assert.equal((await call(rt.api, "POST", "/devices/m-valve/telemetry", { open: true }, bearer(valve.body.token))).status, 204);
    assert.equal((await call(rt.api, "POST", "/devices/m-valve/telemetry", { open: false }, bearer("not-the-token"))).status, 401);
    const command = await call(rt.api, "POST", "/devices/m-valve/command", { command: "close", params: { speed: 2 }, wait: true });
    assert.equal(command.status, 200, JSON.stringify(command.body));
    assert.equal(command.body.status, "succeeded");

    // The MQTT message reaches the hub after mosquitto_pub's PUBACK; the store batches on its own beat.
    const after = await until(async () => {
      const { families } = await scrape(rt.api);
      return value(families, "tethral_devices", { status: "online" }) === 2 && value(families, "tethral_store_batch_duration_seconds") > 0 ? families : null;
    }, "both devices online and a store batch written");
    const moved = (name: string, labels: Record<string, string> = {}) => value(after, name, labels) - value(before, name, labels);

    assert.equal(moved("tethral_messages_received_total", { protocol: "mqtt" }), 1);
    assert.equal(moved("tethral_received_bytes_total", { protocol: "mqtt" }), Buffer.byteLength(telemetry));
    // Both HTTP reports reached the hub; the one with the wrong token was refused.
    assert.equal(moved("tethral_messages_received_total", { protocol: "http" }), 2);
    assert.equal(moved("tethral_messages_refused_total", { protocol: "http", reason: "bad-token" }), 1);
    assert.equal(moved("tethral_messages_refused_total", { protocol: "mqtt", reason: "bad-token" }), 0);
    assert.equal(value(after, "tethral_devices", { status: "unknown" }), 0);
    // The command went out over HTTP once and ended well.
    assert.equal(moved("tethral_messages_sent_total", { protocol: "http" }), 1);
    assert.ok(moved("tethral_sent_bytes_total", { protocol: "http" }) > 0);
    assert.equal(moved("tethral_commands_total", { status: "queued" }), 1);
    assert.equal(moved("tethral_commands_total", { status: "succeeded" }), 1);
    assert.equal(moved("tethral_commands_total", { status: "failed" }), 0);
    assert.equal(moved("tethral_command_round_trip_seconds"), 1, "one round trip observed");
    const roundTrip = family(after, "tethral_command_round_trip_seconds").metrics[0]!;
    assert.ok(Number(roundTrip.sum) > 0 && Number(roundTrip.sum) < 10, `round trip in seconds: ${roundTrip.sum}`);
    assert.equal(value(after, "tethral_commands_pending"), 0);
    // Registrations, online, state changes, the refusal and the command's statuses were published.
    assert.ok(moved("tethral_events_published_total") >= 8, `events published: ${moved("tethral_events_published_total")}`);
    assert.equal(value(after, "tethral_events_dropped_total"), 0);
    assert.ok(value(after, "tethral_store_rows_written_total") > 0);
  });

  it("counts a refusal of an unknown device by its protocol and reason", async function () {
    if (!needs(this, ["mosquitto_pub"], "apt-get install mosquitto-clients")) return;
    const before = (await scrape(rt.api)).families;
    // An unknown device is refused at CONNECT by the embedded broker: mosquitto_pub fails.
    const pub = await run("mosquitto_pub", ["-h", "127.0.0.1", "-p", mqttPort, "-u", "nobody", "-P", "x".repeat(32), "-t", "tethral/devices/nobody/telemetry", "-m", "{}"]);
    assert.notEqual(pub.code, 0);
    const after = await until(async () => {
      const { families } = await scrape(rt.api);
      return value(families, "tethral_messages_refused_total", { protocol: "mqtt", reason: "unknown-device" }) > value(before, "tethral_messages_refused_total", { protocol: "mqtt", reason: "unknown-device" }) ? families : null;
    }, "the refusal counted");
    assert.equal(
      value(after, "tethral_messages_refused_total", { protocol: "mqtt", reason: "unknown-device" }) - value(before, "tethral_messages_refused_total", { protocol: "mqtt", reason: "unknown-device" }),
      1,
    );
  });
});
