import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { isTethralError } from "../../src/core/errors";
import { Hub } from "../../src/core/hub";
import { CoapAdapter } from "../../src/protocols/coap";
import { HttpAdapter } from "../../src/protocols/http";
import { MqttAdapter } from "../../src/protocols/mqtt";
import { WebSocketAdapter } from "../../src/protocols/websocket";
import {
  type SimulationEvents,
  type SimulationOptions,
  Simulation,
  SimulationError,
  UsageError,
  deviceEndpoint,
  deviceSpecs,
  parseArgs,
  resolveOptions,
} from "../../src/runtime/simulate";
import { closedPort, until } from "../helpers";

const ROOT = path.resolve(__dirname, "..", "..");
const PROTOCOLS = ["mqtt", "coap", "websocket", "http"] as const;

// ── A stand-in for the REST flow: exactly the routes the simulator uses ───────────────────

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function send(res: ServerResponse, status: number, body?: unknown): void {
  if (body === undefined) res.writeHead(status).end();
  else res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(body));
}

async function route(hub: Hub, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { pathname } = new URL(req.url ?? "/", "http://front");
  const text = await readBody(req);
  try {
    if (req.method === "GET" && pathname === "/api/health") return send(res, 200, hub.health());
    if (req.method === "POST" && pathname === "/api/devices") return send(res, 201, await hub.registerDevice(JSON.parse(text)));
    const telemetry = /^\/api\/devices\/([^/]+)\/telemetry$/.exec(pathname);
    if (req.method === "POST" && telemetry) {
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
      const result = hub.receive({ protocol: "http", deviceId: decodeURIComponent(telemetry[1]!), kind: "telemetry", payload: text, token });
      return result.ok ? send(res, 204) : send(res, result.error.status, result.error.toJSON());
    }
    const device = /^\/api\/devices\/([^/]+)$/.exec(pathname);
    if (device && req.method === "GET") return send(res, 200, hub.getDevice(decodeURIComponent(device[1]!)));
    if (device && req.method === "DELETE") {
      await hub.removeDevice(decodeURIComponent(device[1]!));
      return send(res, 204);
    }
    send(res, 404, { error: { code: "NOT_FOUND", message: `no route ${req.method} ${pathname}` } });
  } catch (err) {
    if (isTethralError(err)) send(res, err.status, err.toJSON());
    else send(res, 400, { error: { code: "INVALID", message: String(err) } });
  }
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port)));
}


const SOCKET_KINDS = new Set(["TCPSocketWrap", "TCPServerWrap", "UDPWrap"]);

function sockets(): number {
  return process.getActiveResourcesInfo().filter((kind) => SOCKET_KINDS.has(kind)).length;
}

/** CLI processes still running: killed after the suite, whatever happened to the test that started them. */
const cliChildren = new Set<ReturnType<typeof spawn>>();
const CLI_LIMIT_MS = 20_000;

/** Runs the CLI from source; with `signalWhen`, sends SIGTERM once its output matches. Killed past CLI_LIMIT_MS. */
function runCli(args: string[], signalWhen?: RegExp): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["-r", "tsx/cjs", "src/runtime/simulate.ts", ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    cliChildren.add(child);
    const deadline = setTimeout(() => child.kill("SIGKILL"), CLI_LIMIT_MS);
    child.on("close", () => {
      clearTimeout(deadline);
      cliChildren.delete(child);
    });
    let stdout = "";
    let stderr = "";
    let signalled = false;
    child.stdout.on("data", (c: Buffer) => {
      stdout += c.toString();
      if (signalWhen && !signalled && signalWhen.test(stdout)) {
        signalled = true;
        child.kill("SIGTERM");
      }
    });
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

describe("device simulator (npm run simulate)", function () {
  after(() => {
    for (const child of cliChildren) child.kill("SIGKILL");
  });

  let hub: Hub;
  let mqttAdapter: MqttAdapter;
  let wsAdapter: WebSocketAdapter;
  let front: Server;
  let api: string;
  const sims: Simulation[] = [];
  const log: string[] = [];

  before(async function () {
    front = createServer((req, res) => void route(hub, req, res));
    const port = await listen(front);
    api = `http://127.0.0.1:${port}/api`;
    mqttAdapter = new MqttAdapter({ port: 0 });
    wsAdapter = new WebSocketAdapter({ server: front });
    hub = new Hub({
      protocols: [mqttAdapter, new CoapAdapter({ port: 0 }), wsAdapter, new HttpAdapter()],
      heartbeat: { resolutionMs: 50 },
      commands: { sweepIntervalMs: 50 },
      onWarning: () => undefined,
    });
    await hub.start();
  });

  after(async function () {
    await hub?.stop();
    front.closeAllConnections();
    await new Promise((resolve) => front.close(resolve));
  });

  afterEach(async function () {
    await Promise.all(sims.splice(0).map((s) => s.stop()));
    log.length = 0;
  });

  /** A simulation against the test hub with fast timings: reports every 0.2 s, 1 s heartbeat. */
  function simulate(options: SimulationOptions): Simulation {
    const sim = new Simulation({ api, interval: 0.2, heartbeat: 1, summary: 0, log: (level, message) => log.push(`${level} ${message}`), ...options });
    sims.push(sim);
    return sim;
  }

  const reported = (id: string) => typeof hub.getState(id).properties.temperature === "number";

  for (const protocol of PROTOCOLS) {
    it(`${protocol}: registers the devices, reports telemetry, answers commands; a --fail device's commands fail`, async function () {
      const sim = simulate({ protocol, devices: 2, fail: 0.5, prefix: `t-${protocol}-` });
      const answered: SimulationEvents["command"][] = [];
      sim.on("command", (e) => answered.push(e));
      await sim.start();

      const list = sim.deviceList();
      assert.deepEqual(list.map((d) => d.id).sort(), [`t-${protocol}-001`, `t-${protocol}-002`]);
      const failing = list.find((d) => d.traits.fail)!;
      const healthy = list.find((d) => !d.traits.fail)!;
      const record = hub.getDevice(healthy.id);
      assert.equal(record.protocol, protocol);
      assert.equal(record.manufacturer, "Tethral Simulator");
      assert.deepEqual(record.tags, ["simulated"]);
      assert.equal(record.metadata.simulated, true);
      assert.equal(record.heartbeatTimeout, 1);
      if (protocol === "coap" || protocol === "http") assert.match(record.address ?? "", new RegExp(`^${protocol}://127\\.0\\.0\\.1:\\d+/sim/${healthy.id}$`));

      await until(() => reported(healthy.id) && reported(failing.id), "telemetry from both devices");
      assert.equal(hub.getDevice(healthy.id).status, "online");
      const props = hub.getState(healthy.id).properties;
      assert.equal(typeof props.humidity, "number");
      assert.equal(typeof props.battery, "number");

      const ok = await hub.sendCommand(healthy.id, { command: "ping", wait: true, timeout: 5 });
      assert.equal(ok.status, "succeeded", ok.error ?? "");
      assert.equal((ok.result as { pong?: unknown }).pong, true);
      const failed = await hub.sendCommand(failing.id, { command: "ping", wait: true, timeout: 5 });
      assert.equal(failed.status, "failed");
      assert.match(failed.error ?? "", /simulated failure/);
      assert.deepEqual(answered.map((a) => [a.deviceId, a.command, a.ok]), [
        [healthy.id, "ping", true],
        [failing.id, "ping", false],
      ]);

      const stats = sim.stats();
      assert.equal(stats.registered, 2);
      assert.equal(stats.connected, 2);
      assert.ok(stats.telemetrySent >= 2);
      assert.deepEqual([stats.commandsOk, stats.commandsFailed, stats.telemetryRefused, stats.errors], [1, 1, 0, 0], JSON.stringify(log));
      assert.match(sim.summary(), new RegExp(`^${protocol}: 2/2 registered, 2 connected · telemetry \\d+ sent, 0 refused · commands 1 ok, 1 failed`));
    });
  }

  it("a slow device answers after its delay (a separate CoAP response)", async function () {
    const sim = simulate({ protocol: "coap", devices: 1, slow: 1, slowDelay: [0.4, 0.4], prefix: "slow-" });
    await sim.start();
    await until(() => reported("slow-001"), "telemetry");
    const started = Date.now();
    const done = await hub.sendCommand("slow-001", { command: "read", wait: true, timeout: 5 });
    assert.equal(done.status, "succeeded", done.error ?? "");
    assert.ok(Date.now() - started >= 390, `answered after ${Date.now() - started} ms`);
    assert.equal(typeof (done.result as { temperature?: unknown }).temperature, "number");
  });

  it("a second run with the same prefix replaces the devices of the first (new tokens) and works", async function () {
    const first = simulate({ protocol: "mqtt", devices: 2, prefix: "again-" });
    await first.start();
    await until(() => reported("again-001") && reported("again-002"), "first run's telemetry");
    await first.stop();
    // A stopping MQTT device signs off with a retained `offline`.
    await until(() => hub.getDevice("again-001").status === "offline" && hub.getDevice("again-002").status === "offline", "signed off");

    const second = simulate({ protocol: "mqtt", devices: 2, prefix: "again-" });
    const registered: SimulationEvents["registered"][] = [];
    second.on("registered", (e) => registered.push(e));
    await second.start();
    assert.deepEqual(registered.map((e) => e.replaced), [true, true]);
    assert.equal(second.stats().replaced, 2);
    // Only the new tokens can bring them back online.
    await until(() => hub.getDevice("again-001").status === "online" && hub.getDevice("again-002").status === "online", "back online");
    await until(() => reported("again-001") && reported("again-002"), "second run's telemetry");
    const done = await hub.sendCommand("again-002", { command: "ping", wait: true, timeout: 5 });
    assert.equal(done.status, "succeeded", done.error ?? "");
    assert.equal(second.stats().errors, 0, JSON.stringify(log));
  });

  it("refuses to replace a device it did not make, and says to choose another --prefix", async function () {
    await hub.registerDevice({ id: "taken-001", protocol: "mqtt", name: "a real boiler" });
    const sim = simulate({ protocol: "mqtt", devices: 1, prefix: "taken-" });
    await assert.rejects(sim.start(), (err: unknown) => {
      assert.ok(err instanceof SimulationError);
      assert.match(err.message, /"taken-001" already exists and was not made by the simulator: choose another --prefix/);
      return true;
    });
    assert.equal(hub.getDevice("taken-001").name, "a real boiler");
  });

  it("a dropping device goes offline (MQTT at once by its will; CoAP, WebSocket by their heartbeat) and comes back", async function () {
    const drop = { devices: 1, drop: 1, dropUp: [0.3, 0.3] as [number, number], dropDown: [1.8, 1.8] as [number, number] };
    const protocols = ["mqtt", "coap", "websocket"] as const;
    const all = protocols.map((protocol) => simulate({ protocol, prefix: `drop-${protocol}-`, ...drop }));
    const dropped = new Map<string, number>();
    const restored: string[] = [];
    for (const sim of all) {
      sim.on("dropped", (e) => dropped.set(e.deviceId, Date.now()));
      sim.on("restored", (e) => restored.push(e.deviceId));
    }
    await Promise.all(all.map((s) => s.start()));
    const offlineAfter = new Map<string, number>();
    const cycle = async (id: string) => {
      await until(() => hub.getDevice(id).status === "online", `${id} online`, 3000);
      await until(() => hub.getDevice(id).status === "offline", `${id} offline`, 3000);
      offlineAfter.set(id, Date.now() - dropped.get(id)!);
      await until(() => hub.getDevice(id).status === "online", `${id} back online`, 4000);
    };
    await Promise.all(protocols.map((p) => cycle(`drop-${p}-001`)));
    assert.deepEqual(restored.sort(), ["drop-coap-001", "drop-mqtt-001", "drop-websocket-001"]);
    assert.ok(offlineAfter.get("drop-mqtt-001")! < 500, `the will, not the 1 s heartbeat: offline after ${offlineAfter.get("drop-mqtt-001")} ms`);
    assert.deepEqual(all.map((s) => s.stats().drops), [1, 1, 1]);
    assert.equal(all.reduce((n, s) => n + s.stats().errors, 0), 0, JSON.stringify(log));
  });

  it("a connection the hub cuts is made again after a backoff delay (MQTT, WebSocket)", async function () {
    const mqtt = simulate({ protocol: "mqtt", devices: 1, prefix: "cut-mqtt-" });
    const ws = simulate({ protocol: "websocket", devices: 1, prefix: "cut-ws-" });
    const reconnected: string[] = [];
    for (const sim of [mqtt, ws]) sim.on("connected", (e) => reconnected.push(e.deviceId));
    await Promise.all([mqtt.start(), ws.start()]);
    await until(() => mqtt.stats().connected === 1 && ws.stats().connected === 1, "connected");
    mqttAdapter.disconnect("cut-mqtt-001", "test");
    wsAdapter.disconnect("cut-ws-001", "test");
    await until(() => mqtt.stats().disconnects === 1 && ws.stats().disconnects === 1, "the cut noticed");
    await until(() => reconnected.length === 4 && mqtt.stats().connected === 1 && ws.stats().connected === 1, "connected again", 3000);
    const done = await hub.sendCommand("cut-ws-001", { command: "ping", wait: true, timeout: 5 });
    assert.equal(done.status, "succeeded", done.error ?? "");
  });

  it("telemetry the hub refuses is counted and warned about once per period, without stopping the device", async function () {
    const sim = simulate({ protocol: "http", devices: 1, prefix: "gone-" });
    await sim.start();
    await until(() => reported("gone-001"), "telemetry");
    await hub.removeDevice("gone-001");
    await until(() => sim.stats().telemetryRefused >= 4, "refusals");
    const warnings = log.filter((line) => line.startsWith("warn telemetry of gone-001 refused"));
    assert.equal(warnings.length, 1, JSON.stringify(log));
    assert.match(warnings[0]!, /HTTP 404 NOT_FOUND: device "gone-001" not found/);
    assert.equal(sim.stats().connected, 0);
  });

  it("stop() closes every socket and server it opened", async function () {
    const before = sockets();
    const all = PROTOCOLS.map((protocol) => simulate({ protocol, devices: 2, prefix: `clean-${protocol}-` }));
    await Promise.all(all.map((s) => s.start()));
    await until(() => all.every((s) => s.stats().connected === 2), "every device connected");
    assert.ok(sockets() > before);
    await Promise.all(all.map((s) => s.stop()));
    await until(() => sockets() <= before, `sockets back to ${before} (now ${sockets()})`);
  });

  it("stop() during start ends the registration early and leaves nothing running", async function () {
    const before = sockets();
    const sim = simulate({ protocol: "http", devices: 20, registrationConcurrency: 1, prefix: "early-" });
    sim.on("registered", () => void sim.stop());
    await sim.start();
    await sim.stop();
    assert.ok(sim.stats().registered < 20, `registered ${sim.stats().registered}`);
    await until(() => sockets() <= before, `sockets back to ${before} (now ${sockets()})`);
    await assert.rejects(sim.start(), /starts once/);
  });

  it("a hub that cannot be reached is one clear error", async function () {
    const sim = new Simulation({ api: `http://127.0.0.1:${await closedPort()}/api`, summary: 0, log: () => undefined });
    await assert.rejects(sim.start(), /cannot reach the Tethral API .*ECONNREFUSED.*npm start.*--api/);
  });

  it("reads the endpoint from /health: wildcard hosts mean the API host; an external broker needs --mqtt", function () {
    const options = (o: SimulationOptions) => resolveOptions({ api: "http://10.1.2.3:1880/api", ...o });
    const health = {
      components: {
        "protocol:mqtt": { status: "ok", mode: "embedded", host: "0.0.0.0", port: 1884 },
        "protocol:coap": { status: "ok", host: "192.168.1.9", port: 5684 },
        "protocol:websocket": { status: "ok", path: "/tethral/ws" },
      },
    };
    assert.equal(deviceEndpoint(options({ protocol: "mqtt" }), health).url, "mqtt://10.1.2.3:1884");
    assert.equal(deviceEndpoint(options({ protocol: "coap" }), health).url, "coap://192.168.1.9:5684");
    assert.equal(deviceEndpoint(options({ protocol: "websocket" }), health).url, "ws://10.1.2.3:1880/tethral/ws");
    assert.equal(deviceEndpoint(options({ protocol: "http" }), health).url, "http://10.1.2.3:1880/api");
    const external = { components: { "protocol:mqtt": { status: "ok", mode: "external", url: "mqtt://broker" } } };
    assert.throws(() => deviceEndpoint(options({ protocol: "mqtt" }), external), /external MQTT broker: give the broker's URL with --mqtt/);
    assert.equal(deviceEndpoint(options({ protocol: "mqtt", mqtt: "mqtt://broker:1883" }), external).url, "mqtt://broker:1883");
    assert.throws(() => deviceEndpoint(options({ protocol: "coap" }), { components: {} }), /serves no coap devices/);
  });

  it("spreads slow, failing and dropping devices over the fleet, each trait on different devices", function () {
    const specs = deviceSpecs(resolveOptions({ devices: 50, slow: 0.1, fail: 0.1, drop: 0.1 }));
    assert.equal(specs[0]!.id, "sim-mqtt-001");
    assert.equal(specs[49]!.id, "sim-mqtt-050");
    const having = (t: "slow" | "fail" | "drop") => specs.filter((s) => s.traits[t]).map((s) => s.number);
    assert.deepEqual([having("slow").length, having("fail").length, having("drop").length], [5, 5, 5]);
    assert.equal(new Set([...having("slow"), ...having("fail"), ...having("drop")]).size, 15);
    assert.ok(deviceSpecs(resolveOptions({ devices: 3, fail: 1 })).every((s) => s.traits.fail));
  });

  describe("command line", function () {
    it("parses flags (--flag value and --flag=value, fractions as percentages)", function () {
      assert.deepEqual(parseArgs([]), { help: false, options: {}, duration: null });
      assert.deepEqual(parseArgs(["--help"]), { help: true });
      const parsed = parseArgs(["--devices", "50", "--protocol=coap", "--fail", "10%", "--slow=0.2", "--interval", "2", "--duration", "30", "--prefix", "lab-"]);
      assert.deepEqual(parsed, {
        help: false,
        options: { devices: 50, protocol: "coap", fail: 0.1, slow: 0.2, interval: 2, prefix: "lab-" },
        duration: 30,
      });
    });

    it("refuses bad flags with one line naming the flag", function () {
      const cases: [string[], RegExp][] = [
        [["--devices", "0"], /--devices must be a whole number from 1/],
        [["--devices", "many"], /--devices must be a whole number/],
        [["--protocol", "zigbee"], /--protocol must be one of mqtt, coap, websocket, http/],
        [["--fail", "1.5"], /--fail must be a fraction from 0 to 1/],
        [["--drop", "half"], /--drop must be a fraction/],
        [["--bogus", "1"], /unknown flag --bogus/],
        [["--interval"], /--interval needs a value/],
        [["--interval", "--devices", "3"], /--interval needs a value/],
        [["50"], /unexpected argument "50"/],
        [["--interval", "5", "--heartbeat", "5"], /--heartbeat 5 is too short for --interval 5/],
        [["--prefix", "my devices "], /--prefix may hold only/],
        [["--api", "ftp://hub/api"], /--api must be a http or https URL/],
        [["--mqtt", "http://broker"], /--mqtt must be a mqtt or mqtts or ws or wss URL/],
        [["--duration", "0"], /--duration must be a number of seconds above 0/],
      ];
      for (const [argv, message] of cases) {
        assert.throws(() => parseArgs(argv), (err: unknown) => {
          assert.ok(err instanceof UsageError, `${argv.join(" ")}: ${String(err)}`);
          assert.match(err.message, message);
          assert.doesNotMatch(err.message, /\n/);
          return true;
        });
      }
    });

    it("runs: --help, a bad flag (exit code 2), a timed run and a SIGTERM'd run that both end with exit code 0", async function () {
      const [help, bad, run, term] = await Promise.all([
        runCli(["--help"]),
        runCli(["--devices", "none"]),
        runCli(["--protocol", "http", "--devices", "2", "--api", api, "--interval", "0.2", "--heartbeat", "1", "--duration", "1.5", "--summary", "0.5", "--prefix", "cli-"]),
        runCli(["--protocol", "websocket", "--devices", "1", "--api", api, "--interval", "0.2", "--heartbeat", "1", "--prefix", "term-"], /Ctrl-C to stop/),
      ]);
      assert.equal(help.code, 0, help.stderr);
      assert.match(help.stdout, /^Usage: npm run simulate -- \[flags\]/);
      assert.match(help.stdout, /--drop <fraction>/);

      assert.equal(bad.code, 2);
      assert.equal(bad.stderr.trim(), '--devices must be a whole number, not "none" (see --help)');

      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout, /2 http devices running against http:\/\/127\.0\.0\.1:\d+\/api; Ctrl-C to stop/);
      assert.match(run.stdout, /http: 2\/2 registered, 2 connected · telemetry \d+ sent, 0 refused/);
      assert.match(run.stdout, /1\.5 s passed: stopping \(the devices stay registered\)/);
      assert.ok(reported("cli-001") && reported("cli-002"));
      assert.equal(hub.getDevice("cli-001").metadata.simulated, true);

      assert.equal(term.code, 0, term.stderr);
      assert.match(term.stdout, /SIGTERM: stopping/);
      assert.equal(hub.getDevice("term-001").metadata.simulated, true, "the devices stay registered");
    });
  });
});
