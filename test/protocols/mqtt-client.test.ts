import assert from "node:assert/strict";
import { hubClientOptions, mqttClientLog, noLog } from "../../src/protocols/mqtt-client";

describe("the hub's mqtt.js clients (src/protocols/mqtt-client.ts)", function () {
  it("log nowhere unless DEBUG asks for mqtt.js: its disabled debug logger allocates every call's arguments", function () {
    for (const debug of [undefined, "", "express:*", "tethral", "mqttjs:connect", "-mqttjs*"]) assert.equal(mqttClientLog(debug), noLog, String(debug));
  });

  it("keep mqtt.js's own logger when DEBUG names it, so DEBUG=mqttjs* shows the packets as before", function () {
    for (const debug of ["mqttjs*", "mqttjs:client", "express:*,mqttjs*", "*", "mqtt*"]) assert.equal(mqttClientLog(debug), undefined, debug);
  });

  it("give every client made from the hub's options that logger (the hub's own, the partition sessions)", function () {
    const before = process.env.DEBUG;
    try {
      delete process.env.DEBUG;
      assert.equal(hubClientOptions({ url: "mqtt://127.0.0.1:1" }).log, noLog);
      process.env.DEBUG = "mqttjs*";
      assert.equal(hubClientOptions({ url: "mqtt://127.0.0.1:1" }).log, undefined);
    } finally {
      if (before === undefined) delete process.env.DEBUG;
      else process.env.DEBUG = before;
    }
  });
});
