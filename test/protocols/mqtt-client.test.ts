import assert from "node:assert/strict";
import { hubClientOptions } from "../../src/protocols/mqtt-client";

describe("the hub's mqtt.js clients (src/protocols/mqtt-client.ts)", function () {
  const before = process.env.DEBUG;
  afterEach(function () {
    if (before === undefined) delete process.env.DEBUG;
    else process.env.DEBUG = before;
  });

  it("log nowhere without DEBUG: mqtt.js's disabled debug logger allocates every call's arguments", function () {
    delete process.env.DEBUG;
    const { log } = hubClientOptions({ url: "mqtt://127.0.0.1:1" });
    assert.equal(typeof log, "function");
    assert.equal(log!("packet %o", { cmd: "publish" }), undefined);
  });

  it("keep mqtt.js's own logger when DEBUG is set, so DEBUG=mqttjs* shows the packets as before", function () {
    process.env.DEBUG = "mqttjs*";
    assert.equal(hubClientOptions({ url: "mqtt://127.0.0.1:1" }).log, undefined);
  });
});
