import assert from "node:assert/strict";
import { BUSY_NOTE } from "../../src/protocols/intake-hold";
import { type CoapHub, ID, RawClient, block1, reportOptions, startCoapHub } from "./coap-device";

describe("CoAP while the hub's intake is busy", function () {
  let t: CoapHub;
  const raws: RawClient[] = [];

  const busy = (): void => t.hub.intake.backlog(t.hub.intake.highWater);
  const ready = (): void => t.hub.intake.backlog(0);

  beforeEach(async function () {
    t = await startCoapHub();
  });

  afterEach(async function () {
    for (const raw of raws.splice(0)) await raw.close();
    await t.device.close();
    await t.hub.stop();
  });

  it("answers a report 5.03 with Max-Age and takes nothing of it, then 2.04 once ready", async function () {
    busy();
    for (const kind of ["telemetry", "state", "heartbeat", "status"]) {
      const payload = kind === "status" ? "online" : kind === "state" ? { properties: { n: 1 } } : { n: 1 };
      const answer = await t.device.report(ID, kind, t.token, payload);
      assert.equal(answer.code, "5.03", kind);
      assert.equal(answer.options.get(14)?.readUIntBE(0, answer.options.get(14)!.length), t.hub.intake.retryAfterSeconds, "Max-Age");
      assert.equal(JSON.parse(answer.body).error.code, "UNAVAILABLE");
    }
    assert.equal(t.hub.getState(ID).properties.n, undefined, "nothing ingested");
    assert.equal(t.hub.getDevice(ID).status, "unknown", "not even as a sign of life");
    assert.equal(t.coap().messagesIn, 0);
    assert.equal(t.coap().rejected, 0, "a busy answer is no refusal of the device");
    assert.equal(t.adapter.statistics().busyRefused, 4);
    assert.equal(t.adapter.health().status, "ok");
    assert.equal(t.adapter.health().intake, BUSY_NOTE);

    ready();
    assert.equal((await t.device.report(ID, "telemetry", t.token, { n: 2 })).code, "2.04");
    assert.equal(t.hub.getState(ID).properties.n, 2);
    assert.equal(t.adapter.statistics().busyRefused, 4);
    assert.equal(t.adapter.health().intake, undefined);
  });

  it("refuses a block-wise upload from its first block while busy, holding nothing for it", async function () {
    const raw = new RawClient(t.adapter.port!);
    raws.push(raw);
    busy();
    const first = await raw.send({ token: Buffer.of(1), options: [...reportOptions(ID, "telemetry", t.token), [27, block1(0, true, 6)]], payload: Buffer.alloc(1024, 0x20) });
    assert.equal(first.code, "5.03");
    assert.ok(first.options.has(14), "Max-Age");
    assert.equal(t.adapter.statistics().blockTransfers, 0);
    assert.equal(t.adapter.statistics().blockRefusals, 0);
    ready();
    const again = await raw.send({ token: Buffer.of(2), options: [...reportOptions(ID, "telemetry", t.token), [27, block1(0, true, 6)]], payload: Buffer.alloc(1024, 0x20) });
    assert.equal(again.code, "2.31", "the upload goes on once ready");
  });
});
