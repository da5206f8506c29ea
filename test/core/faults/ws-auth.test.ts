import assert from "node:assert/strict";
import { Hub } from "../../../src/core/hub";
import { sharedServer, type SharedServer } from "../../protocols/ws-server";
import { Device } from "../../protocols/ws-device";
import { WebSocketAdapter } from "../../../src/protocols/websocket";

describe("websocket, unknown connection with self-registration on", () => {
  let shared: SharedServer;
  let hub: Hub;
  afterEach(async () => {
    await hub.stop();
    await shared.close();
  });

  it("a connection opened under an unregistered id does not get the commands of the device an admin registers later", async () => {
    shared = await sharedServer();
    const adapter = new WebSocketAdapter({ server: shared.server });
    hub = new Hub({ protocols: [adapter], selfRegistration: true, onWarning: () => undefined, commands: { sweepIntervalMs: 20 } });
    await hub.start();
    const intruder = await Device.connect(`${shared.base}/tethral/ws?device=victim-3&token=whatever-the-intruder-likes`);
    await hub.registerDevice({ id: "victim-3", protocol: "websocket" });
    await hub.sendCommand("victim-3", { command: "unlock-door" });
    const got: Record<string, unknown> | null = await intruder.next(500).catch(() => null);
    intruder.ws.terminate();
    assert.equal(got, null, `the intruder received ${JSON.stringify(got)}`);
  });
});
