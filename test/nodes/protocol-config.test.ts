import assert from "node:assert/strict";
import { parseCommunicationConfig, protocolSettingsFor } from "../../src/nodes/protocol-config";
import { assertCode } from "../helpers";

const settings = (def: Record<string, unknown>, env: NodeJS.ProcessEnv = {}, uiHost?: string) => protocolSettingsFor(parseCommunicationConfig(def), env, uiHost);

describe("tethral-hub communication settings", () => {
  it("defaults: tokens on, embedded broker on 1883, CoAP on 5683, WebSocket on /tethral/ws, bound to 127.0.0.1", () => {
    const s = settings({});
    assert.equal(s.deviceTokens, true);
    assert.equal(s.selfRegistration, false);
    assert.equal(s.host, "127.0.0.1");
    assert.equal(s.maxPayloadBytes, 256 * 1024);
    assert.equal(s.commandTimeoutSec, 10);
    assert.deepEqual(s.mqtt, {
      mode: "embedded",
      port: 1883,
      url: "",
      username: "",
      clientId: "",
      protocolVersion: 4,
      topicRoot: "tethral",
      sharedGroup: "",
      rejectUnauthorized: true,
      serviceUsername: "",
    });
    assert.deepEqual(s.coap, { port: 5683 });
    assert.deepEqual(s.websocket, { path: "/tethral/ws" });
  });

  it("takes the environment of CONTRACT §6 for blank fields, and the fields over it", () => {
    const env = { TETHRAL_MQTT_PORT: "11883", TETHRAL_COAP_PORT: "15683", TETHRAL_DEVICE_TOKENS: "off", HOST: "0.0.0.0" };
    const s = settings({}, env);
    assert.equal(s.mqtt!.port, 11883);
    assert.equal(s.coap!.port, 15683);
    assert.equal(s.deviceTokens, false);
    assert.equal(s.host, "0.0.0.0");
    const fields = settings({ mqttPort: "2883", coapPort: 0, deviceTokens: true }, env);
    assert.equal(fields.mqtt!.port, 2883);
    assert.equal(fields.coap!.port, 0);
    assert.equal(fields.deviceTokens, true);
    assert.equal(settings({}, {}, "10.0.0.2").host, "10.0.0.2", "Node-RED's uiHost when HOST is not set");
  });

  it("TETHRAL_MQTT_URL turns the automatic broker into a client of that broker", () => {
    const s = settings({}, { TETHRAL_MQTT_URL: "mqtt://broker.local:1883" });
    assert.equal(s.mqtt!.mode, "external");
    assert.equal(s.mqtt!.url, "mqtt://broker.local:1883");
    assert.equal(settings({ mqttBroker: "embedded" }, { TETHRAL_MQTT_URL: "mqtt://broker.local" }).mqtt!.mode, "embedded");
    assertCode(() => settings({}, { TETHRAL_MQTT_URL: "http://nope" }), "INVALID", "TETHRAL_MQTT_URL");
  });

  it("turns protocols off", () => {
    const s = settings({ mqttBroker: "off", coap: false, websocket: "false" });
    assert.equal(s.mqtt, null);
    assert.equal(s.coap, null);
    assert.equal(s.websocket, null);
  });

  it("refuses bad values, naming the field or the variable", () => {
    assertCode(() => settings({ mqttPort: 70000 }), "INVALID", "mqttPort");
    assertCode(() => settings({ mqttPort: "http" }), "INVALID", "mqttPort");
    assertCode(() => settings({ mqttBroker: "external" }), "INVALID", "mqttUrl");
    assertCode(() => settings({ mqttBroker: "external", mqttUrl: "ftp://x" }), "INVALID", "mqttUrl");
    assertCode(() => settings({ mqttBroker: "sideways" }), "INVALID", "mqttBroker");
    assertCode(() => settings({ mqttTopicRoot: "a/#" }), "INVALID", "mqttTopicRoot");
    assertCode(() => settings({ mqttSharedGroup: "a/b" }), "INVALID", "mqttSharedGroup");
    assertCode(() => settings({ mqttProtocolVersion: 3 }), "INVALID", "mqttProtocolVersion");
    assertCode(() => settings({ websocketPath: "no-slash" }), "INVALID", "websocketPath");
    assertCode(() => settings({ coapPort: "${COAP_PORT}" }), "INVALID", "coapPort");
    assertCode(() => settings({}, { TETHRAL_MQTT_PORT: "abc" }), "INVALID", "TETHRAL_MQTT_PORT");
    assertCode(() => settings({}, { TETHRAL_DEVICE_TOKENS: "maybe" }), "INVALID", "TETHRAL_DEVICE_TOKENS");
  });
});
