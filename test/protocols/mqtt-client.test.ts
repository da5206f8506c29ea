import assert from "node:assert/strict";
import createDebug from "debug";
import type { AddressInfo } from "node:net";
import mqtt from "mqtt";
import { WebSocketServer } from "ws";
import { MqttClusterLink } from "../../src/cluster/mqtt-link";
import { hubClientOptions, mqttClientLog, noLog } from "../../src/protocols/mqtt-client";
import { until } from "../helpers";

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

  it("ask a WebSocket broker for no permessage-deflate (inflating would hand a packet to mqtt.js a turn after its read), the cluster link's too", async function () {
    createDebug.enable("");
    // A server that would compress, and notes what each client's upgrade asked for.
    const asked: (string | undefined)[] = [];
    const server = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate: true });
    server.on("connection", (socket, req) => {
      asked.push(req.headers["sec-websocket-extensions"]);
      socket.close();
    });
    await new Promise((resolve) => server.once("listening", resolve));
    const url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    const clients: mqtt.MqttClient[] = [];
    try {
      // mqtt.js as it comes asks for it: what the check below would see if the hub's did.
      clients.push(mqtt.connect(url, { reconnectPeriod: 0 }).on("error", () => undefined));
      await until(() => asked.length === 1, "mqtt.js's default upgrade");
      assert.match(String(asked[0]), /permessage-deflate/);
      // The hub's clients (its own external one, the partition sessions) and the cluster link.
      clients.push(mqtt.connect(url, hubClientOptions({ url })).on("error", () => undefined));
      await until(() => asked.length === 2, "the hub client's upgrade");
      const link = new MqttClusterLink({ url, reconnectPeriod: 60_000 });
      const starting = link.start("m1", { call: () => Promise.resolve(null), message: () => undefined });
      await until(() => asked.length === 3, "the cluster link's upgrade");
      // The server closes every connection: the stop ends the start still waiting for the broker.
      await link.stop();
      await assert.rejects(starting);
      assert.deepEqual(asked.slice(1), [undefined, undefined]);
    } finally {
      for (const c of clients) c.end(true);
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
