import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { type RuntimeChild, START_LIMIT_MS, call, fixedPorts, spawnRuntime } from "./spawn-runtime";

/** libcoap's command-line client (Debian libcoap3-bin): a CoAP stack nobody here wrote. */
const CLIENT = "coap-client-notls";
const ID = "libcoap-1";

const installed = () => (process.env.PATH ?? "").split(path.delimiter).some((dir) => dir !== "" && existsSync(path.join(dir, CLIENT)));

/**
 * Runs the client. It prints an answer's payload on stdout, and an error answer's code and body
 * on stderr (exiting 0 all the same). `-B 10`: give up after 10 s rather than its default 90.
 */
function coapClient(args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(CLIENT, ["-B", "10", ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${CLIENT} ${args.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

describe(`conformance: libcoap's ${CLIENT} against the runtime`, function () {
  this.timeout(START_LIMIT_MS + 60_000);
  let scratch = "";
  let rt: RuntimeChild | null = null;
  let port = "";
  let token = "";
  const url = (resource: string, query = `?token=${token}`) => `coap://127.0.0.1:${port}/${resource}${query}`;
  const state = async () => (await call(rt!.api, "GET", `/devices/${ID}/state`)).body;
  const refused = async (): Promise<number> => (await call(rt!.api, "GET", "/communication/statistics")).body.protocols.coap.rejected;

  before(async function () {
    if (!installed()) {
      console.log(`    (skipped: ${CLIENT} is not installed; Debian's libcoap3-bin has it)`);
      this.skip();
    }
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-coap-conformance-"));
    const env = await fixedPorts();
    port = env.TETHRAL_COAP_PORT!;
    rt = await spawnRuntime(path.join(scratch, "user"), env);
    const registered = await call(rt.api, "POST", "/devices", { id: ID, protocol: "coap" });
    assert.equal(registered.status, 201, JSON.stringify(registered.body));
    token = registered.body.token;
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed" && rt) console.log(`--- the runtime's log ---\n${rt.output().slice(-6000)}`);
  });

  after(async () => {
    await rt?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("takes telemetry, and the device's state shows it", async () => {
    const { stderr } = await coapClient(["-m", "post", "-t", "json", "-e", '{"temperature":21.5}', url(`devices/${ID}/telemetry`)]);
    assert.equal(stderr, "", "answered 2.04");
    const s = await state();
    assert.equal(s.properties.temperature, 21.5);
    assert.equal(s.status, "online");
  });

  it("takes a 3 KB report sent block-wise (each block with a new token), whole", async () => {
    const refusedBefore = await refused();
    // 64- and 256-byte blocks: 47 and 12 of them.
    for (const size of [64, 256]) {
      const report = { [`blob${size}`]: `${size}:`.padEnd(3000, "x") };
      const file = path.join(scratch, `report-${size}.json`);
      writeFileSync(file, JSON.stringify(report));
      const { stderr } = await coapClient(["-m", "post", "-t", "json", "-b", String(size), "-f", file, url(`devices/${ID}/telemetry`)]);
      assert.equal(stderr, "", `${size}-byte blocks answered 2.04`);
      assert.equal((await state()).properties[`blob${size}`], report[`blob${size}`]);
    }
    assert.equal(await refused(), refusedBefore);
  });

  it("answers a wrong token with 4.01 and changes nothing", async () => {
    const before = await state();
    const refusedBefore = await refused();
    const { stderr } = await coapClient(["-m", "post", "-t", "json", "-e", '{"temperature":99}', url(`devices/${ID}/telemetry`, "?token=not-the-token")]);
    assert.match(stderr, /^4\.01 /);
    assert.match(stderr, /UNAUTHORIZED/);
    const after = await state();
    assert.equal(after.properties.temperature, 21.5);
    assert.equal(after.version, before.version);
    assert.equal(await refused(), refusedBefore + 1, "counted");
  });

  it("discovers the hub's resources at /.well-known/core in CoRE link format", async () => {
    // -v 7 logs the answer as libcoap decoded it, content-format included.
    const { stdout, stderr } = await coapClient(["-m", "get", "-v", "7", url(".well-known/core", "")]);
    assert.equal(stderr, "");
    assert.match(stdout, /c:2\.05 .*Content-Format:application\/link-format/);
    for (const kind of ["telemetry", "heartbeat", "state", "status", "register", "responses"]) {
      assert.ok(stdout.includes(`</devices/%7Bid%7D/${kind}>;rt="tethral.${kind}";if="tethral.report"`), `${kind} listed:\n${stdout}`);
    }
    // Filtered by resource type (RFC 6690 §4.1), and asked for link-format by Accept.
    const filtered = await coapClient(["-m", "get", "-A", "40", url(".well-known/core", "?rt=tethral.telemetry")]);
    assert.equal(filtered.stdout.trim(), '</devices/%7Bid%7D/telemetry>;rt="tethral.telemetry";if="tethral.report";ct=50');
  });
});
