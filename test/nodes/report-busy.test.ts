import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import helper from "node-red-node-test-helper";
import tethralDevice from "../../src/nodes/tethral-device";
import tethralHub from "../../src/nodes/tethral-hub";
import { type FlowEntry, type Loaded, type Msg, loadWithCatch, withCatalogue } from "./harness";

helper.init(require.resolve("node-red"));

const report: FlowEntry = { id: "dev1", type: "tethral-device", z: "tab1", hub: "hub1", operation: "report", wires: [["out"]] };

/** The REST flow's function that turns every caught refusal into the API's answer (flows/flows.json). */
function errorAnswer(): (msg: Msg) => Msg | null {
  const flows = JSON.parse(readFileSync(path.join(__dirname, "../../flows/flows.json"), "utf8")) as Array<{ name?: string; func?: string }>;
  const body = flows.find((n) => n.name === "error body and status")!.func!;
  const run = new Function("msg", "node", body) as (msg: Msg, node: { warn(m: string): void }) => Msg | null;
  return (msg) => run(msg, { warn: () => undefined });
}

describe("tethral-device report while the hub's intake is busy (HTTP device reports)", function () {
  let t: Loaded;
  let token: string;

  beforeEach(async () => {
    await helper.startServer();
    t = await loadWithCatch([tethralHub, withCatalogue(tethralDevice, "tethral-device")], [report]);
    token = (await t.hub.registerDevice({ id: "meter-1", protocol: "http" })).token!;
  });

  afterEach(async () => {
    await helper.unload();
    await helper.stopServer();
  });

  it("refuses a report UNAVAILABLE with Retry-After and takes nothing of it; takes it again once ready", async () => {
    t.hub.intake.backlog(t.hub.intake.highWater);
    const caught = await t.caught("dev1", { deviceId: "meter-1", token, kind: "telemetry", payload: { power: 1 } });
    assert.equal((caught.error as { code?: string }).code, "UNAVAILABLE");
    assert.deepEqual(caught.headers, { "Retry-After": String(t.hub.intake.retryAfterSeconds) });
    assert.equal(t.hub.getState("meter-1").properties.power, undefined, "nothing ingested");
    assert.equal(t.hub.getDevice("meter-1").status, "unknown", "not even a sign of life");
    assert.equal(t.hub.communicationStatistics().protocols.http!.messagesIn, 0);

    // What the REST flow answers the device: 503, Retry-After, the CONTRACT §1 body.
    const answer = errorAnswer()({ ...caught, req: { method: "POST", originalUrl: "/api/devices/meter-1/telemetry" }, res: { _res: { headersSent: false } } })!;
    assert.equal(answer.statusCode, 503);
    assert.deepEqual(answer.headers, { "Retry-After": "1" });
    assert.equal((answer.payload as { error: { code: string } }).error.code, "UNAVAILABLE");
    assert.match((answer.payload as { error: { message: string } }).error.message, /busy/);

    t.hub.intake.backlog(0);
    const ok = await t.ok("dev1", { deviceId: "meter-1", token, kind: "telemetry", payload: { power: 2 } });
    assert.equal((ok.payload as { status: string }).status, "online");
    assert.equal(t.hub.getState("meter-1").properties.power, 2);
  });

  it("keeps other refusals' headers as they were", () => {
    const answer = errorAnswer()({
      error: { code: "UNAUTHORIZED", message: "bad token" },
      kind: "telemetry",
      req: { method: "POST", originalUrl: "/api/devices/meter-1/telemetry" },
      res: { _res: { headersSent: false } },
    })!;
    assert.equal(answer.statusCode, 401);
    assert.deepEqual(answer.headers, { "WWW-Authenticate": 'Bearer realm="tethral"' });
  });
});
