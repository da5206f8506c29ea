import assert from "node:assert/strict";
import createDebug from "debug";
import { hubClientOptions, mqttClientLog, noLog } from "../../src/protocols/mqtt-client";

describe("the hub's mqtt.js clients (src/protocols/mqtt-client.ts)", function () {
  // What DEBUG asked for when the debug package loaded; each test enables its own patterns.
  const asLoaded = createDebug.disable();
  after(() => createDebug.enable(asLoaded));

  it("log nowhere unless mqtt.js's client log is enabled: its disabled debug logger allocates every call's arguments", function () {
    for (const patterns of ["", "express:*", "tethral", "mqttjs:connect", "*,-mqttjs*"]) {
      createDebug.enable(patterns);
      assert.equal(mqttClientLog(), noLog, patterns);
    }
  });

  it("keep mqtt.js's own logger when DEBUG enables it, so DEBUG=mqttjs* shows the packets as before", function () {
    for (const patterns of ["mqttjs*", "mqttjs:client", "express:*,mqttjs*", "*", "mqtt*"]) {
      createDebug.enable(patterns);
      assert.equal(mqttClientLog(), undefined, patterns);
    }
  });

  it("give every client made from the hub's options that logger (the hub's own, the partition sessions)", function () {
    createDebug.enable("");
    assert.equal(hubClientOptions({ url: "mqtt://127.0.0.1:1" }).log, noLog);
    createDebug.enable("mqttjs*");
    assert.equal(hubClientOptions({ url: "mqtt://127.0.0.1:1" }).log, undefined);
  });
});
