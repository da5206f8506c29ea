import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { until } from "../helpers";
import { Subscriber, curl, needs, program, run } from "../mosquitto";
import { type Json, type RuntimeChild, START_LIMIT_MS, assertErrorAnswer, call, fixedPorts, spawnRuntime } from "./spawn-runtime";

const ERROR_SHAPE = (res: { status: number; body: Json }, status: number, code: string) => assertErrorAnswer(res, code, status);

/**
 * The routes of CONTRACT §3 beyond the basics (a device's commands, cancelling, token rotation,
 * user events, HTTP device reports of every kind, filters as users write them), through the
 * runtime as `npm start` runs it, over real HTTP.
 */
describe("REST API: commands, tokens, events, device reports and filters (flows/flows.json over HTTP)", function () {
  this.timeout(START_LIMIT_MS + 60_000);
  let scratch = "";
  let rt: RuntimeChild;
  let api = "";
  let mqttPort = "";
  const get = (route: string) => call(api, "GET", route);
  const register = async (record: Record<string, unknown>): Promise<string> => {
    const res = await call(api, "POST", "/devices", record);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return res.body.token as string;
  };

  before(async () => {
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-rest-more-"));
    const env = await fixedPorts();
    mqttPort = env.TETHRAL_MQTT_PORT!;
    rt = await spawnRuntime(path.join(scratch, "user"), env);
    api = rt.api;
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed" && rt) console.log(`--- the runtime's log ---\n${rt.output().slice(-6000)}`);
  });

  after(async () => {
    await rt?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("GET /api/devices/{id}/commands lists newest first by status and limit; DELETE /api/commands/{id} cancels (200), then 409; 404s", async () => {
    // An MQTT device that never connects: its commands wait queued.
    await register({ id: "away-1", protocol: "mqtt" });
    const ids: string[] = [];
    for (const command of ["first", "second", "third"]) {
      const res = await call(api, "POST", "/devices/away-1/command", { command });
      assert.equal(res.status, 202);
      ids.push(res.body.id);
    }
    const list = await get("/devices/away-1/commands");
    assert.equal(list.status, 200);
    assert.deepEqual(list.body.commands.map((c: Json) => c.command), ["third", "second", "first"]);
    assert.ok(list.body.commands.every((c: Json) => c.deviceId === "away-1" && c.status === "queued"));

    const cancelled = await call(api, "DELETE", `/commands/${ids[0]}`);
    assert.equal(cancelled.status, 200);
    assert.equal(cancelled.body.id, ids[0]);
    assert.equal(cancelled.body.status, "cancelled");
    assert.notEqual(cancelled.body.completedAt, null);
    const events = await get(`/events?type=command.cancelled&deviceId=away-1`);
    assert.equal(events.body.events[0].data.command.id, ids[0]);
    ERROR_SHAPE(await call(api, "DELETE", `/commands/${ids[0]}`), 409, "CONFLICT");
    ERROR_SHAPE(await call(api, "DELETE", "/commands/no-such-command"), 404, "NOT_FOUND");
    assert.equal((await get(`/commands/${ids[0]}`)).body.status, "cancelled");

    // A command waited for (wait) and cancelled meanwhile: the waiting request answers 409 with
    // the command, as the OpenAPI document says (call checks every answer against it).
    const waiting = call(api, "POST", "/devices/away-1/command", { command: "waited", wait: true, timeout: 20 });
    const queued = await until(async () => (await get("/devices/away-1/commands")).body.commands.find((c: Json) => c.command === "waited"), "the waited command queued");
    assert.equal((await call(api, "DELETE", `/commands/${queued.id}`)).status, 200);
    const answered = await waiting;
    ERROR_SHAPE(answered, 409, "CONFLICT");
    assert.equal(answered.body.command.status, "cancelled");

    const names = (res: { body: Json }) => res.body.commands.map((c: Json) => c.command);
    assert.deepEqual(names(await get("/devices/away-1/commands?status=cancelled")), ["waited", "first"]);
    assert.deepEqual(names(await get("/devices/away-1/commands?status=Queued,cancelled&limit=3")), ["waited", "third", "second"]);
    assert.deepEqual(names(await get("/devices/away-1/commands?status=queued&status=cancelled")), ["waited", "third", "second", "first"]);
    assert.deepEqual(names(await get("/devices/away-1/commands?status=succeeded")), []);
    ERROR_SHAPE(await get("/devices/nobody/commands"), 404, "NOT_FOUND");
    for (const [query, field] of [["status=lost", "status"], ["limit=0", "limit"], ["limit=many", "limit"], ["colour=red", "colour"]]) {
      const res = await get(`/devices/away-1/commands?${query}`);
      ERROR_SHAPE(res, 400, "INVALID");
      assert.equal(res.body.error.details[0].field, field, query);
    }
  });

  it("POST /api/devices/{id}/token: 200 {token} once; the old token stops at once, an MQTT session made with it is closed; 404", async function () {
    const old = await register({ id: "rotor-1", protocol: "mqtt" });
    const auth = (token: string) => ({ authorization: `Bearer ${token}` });
    assert.equal((await call(api, "POST", "/devices/rotor-1/heartbeat", undefined, auth(old))).status, 204);

    const hasMqtt = program("mosquitto_sub") !== null && program("mosquitto_pub") !== null;
    if (!hasMqtt) console.log("    (MQTT part skipped: mosquitto_sub/mosquitto_pub not installed; apt-get install mosquitto-clients)");
    const client = (token: string) => ["-h", "127.0.0.1", "-p", mqttPort, "-u", "rotor-1", "-P", token];
    const sub = hasMqtt ? Subscriber.start([...client(old), "-t", "tethral/devices/rotor-1/commands", "-q", "1", "-v"]) : null;
    try {
      if (sub) await until(async () => (await get("/devices/rotor-1")).body.status === "online" && (await get("/communication/statistics")).body.protocols.mqtt.connected >= 1, "the subscriber to connect");

      // The hub makes the token: a body is refused, and the token stays as it was.
      const chosen = await call(api, "POST", "/devices/rotor-1/token", { token: "my-chosen-token-123456" });
      ERROR_SHAPE(chosen, 400, "INVALID");
      assert.deepEqual(chosen.body.error.details.map((d: Json) => d.field), ["token"]);
      ERROR_SHAPE(await call(api, "POST", "/devices/rotor-1/token", [1]), 400, "INVALID");
      assert.equal((await call(api, "POST", "/devices/rotor-1/heartbeat", undefined, auth(old))).status, 204, "the old token still works");
      assert.equal((await call(api, "POST", "/devices/rotor-1/token", {})).status, 200, "an empty object is no body");
      const rotated = await call(api, "POST", "/devices/rotor-1/token");
      assert.equal(rotated.status, 200);
      assert.deepEqual(Object.keys(rotated.body), ["token"]);
      const fresh = rotated.body.token as string;
      assert.notEqual(fresh, old);
      assert.equal((await get("/devices/rotor-1")).body.token, undefined, "shown once only");

      ERROR_SHAPE(await call(api, "POST", "/devices/rotor-1/heartbeat", undefined, auth(old)), 401, "UNAUTHORIZED");
      assert.equal((await call(api, "POST", "/devices/rotor-1/heartbeat", undefined, auth(fresh))).status, 204);
      if (sub) {
        // Dropped by the broker, and refused when it connects again with the old token.
        await until(() => !sub.running, "mosquitto_sub with the old token to be cut off", 15_000);
        const refused = await run("mosquitto_pub", [...client(old), "-t", "tethral/devices/rotor-1/heartbeat", "-m", "x"]);
        assert.notEqual(refused.code, 0, "the old token no longer connects");
        const accepted = await run("mosquitto_pub", [...client(fresh), "-t", "tethral/devices/rotor-1/telemetry", "-m", '{"rpm": 900}']);
        assert.equal(accepted.code, 0, accepted.stderr);
        await until(async () => (await get("/devices/rotor-1/state")).body.properties.rpm === 900, "telemetry with the new token");
      }
    } finally {
      await sub?.stop();
    }
    ERROR_SHAPE(await call(api, "POST", "/devices/nobody/token"), 404, "NOT_FOUND");
  });

  it("POST /api/events: 201 the event with expiresAt from ttl, in the history; 400 for a bad body, a reserved type or an unknown device", async () => {
    await register({ id: "evt-dev", protocol: "mqtt" });
    const res = await call(api, "POST", "/events", { type: "alarm.raised", data: { level: 3 }, priority: "high", deviceId: "evt-dev", ttl: 60 });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const e = res.body;
    assert.equal(e.type, "alarm.raised");
    assert.deepEqual(e.data, { level: 3 });
    assert.equal(e.priority, "high");
    assert.equal(e.deviceId, "evt-dev");
    assert.equal(typeof e.id, "string");
    assert.equal(Date.parse(e.expiresAt) - Date.parse(e.timestamp), 60_000);
    const history = await get("/events?type=alarm.raised");
    assert.equal(history.body.events[0].id, e.id);
    // A priority is an enumeration: any case; a type is a name and matches as written.
    assert.deepEqual((await get("/events?type=alarm.raised&priority=HIGH,Critical")).body.events.map((x: Json) => x.id), [e.id]);

    const plain = await call(api, "POST", "/events", { type: "note.added" });
    assert.equal(plain.status, 201);
    assert.equal(plain.body.priority, "normal");
    assert.equal(plain.body.expiresAt, null);
    assert.equal(plain.body.deviceId, null);
    assert.equal(plain.body.data, null);

    // [body, why, the field error.details names (README: each refusal of a field names it)]
    const bad: Array<[unknown, string, string]> = [
      [{ type: "device.online" }, "reserved", "type"],
      [{ type: "state.fake" }, "reserved", "type"],
      [{ data: 1 }, "no type", "type"],
      [{ type: "has space" }, "bad type", "type"],
      [{ type: "a.b", ttl: 0 }, "ttl 0", "ttl"],
      [{ type: "a.b", ttl: -5 }, "ttl negative", "ttl"],
      [{ type: "a.b", ttl: 1e12 }, "ttl past ten years", "ttl"],
      [{ type: "a.b", ttl: "soon" }, "ttl text", "ttl"],
      [{ type: "a.b", priority: "urgent" }, "priority", "priority"],
      [{ type: "a.b", colour: "red" }, "unknown field", "colour"],
      [{ type: "a.b", deviceId: 7 }, "deviceId not a string", "deviceId"],
      [{ type: "a.b", deviceId: "nobody" }, "unknown device", "deviceId"],
      [[1], "an array", "(body)"],
    ];
    for (const [body, why, field] of bad) {
      const refused = await call(api, "POST", "/events", body);
      assert.equal(refused.status, 400, why);
      ERROR_SHAPE(refused, 400, "INVALID");
      assert.equal(refused.body.error.details?.[0]?.field, field, `${why}: ${JSON.stringify(refused.body)}`);
    }
    assert.equal((await get("/events?type=a.b")).body.events.length, 0, "a refused event is not published");
  });

  it("POST /api/devices/{id}/heartbeat, /state and /status with curl: 204, 400, 401, 404; an unknown kind is no route", async function () {
    if (!needs(this, ["curl"], "apt-get install curl")) return;
    const token = await register({ id: "http-dev", protocol: "http", heartbeatTimeout: 600 });
    const post = async (kind: string, body: string | null, headers: string[] = [`Authorization: Bearer ${token}`], id = "http-dev") => {
      const args = ["-X", "POST", ...headers.flatMap((h) => ["-H", h])];
      if (body !== null) args.push("--data-binary", body);
      const r = await curl([...args, `${api}/devices/${id}/${kind}`]);
      return { status: r.status, body: r.body === "" ? null : (JSON.parse(r.body) as Json) };
    };
    const json = "Content-Type: application/json";
    const bearer = `Authorization: Bearer ${token}`;

    const beat = await post("heartbeat", null);
    assert.equal(beat.status, 204);
    assert.equal((await get("/devices/http-dev")).body.status, "online", "a heartbeat brings the device online");

    // "heartbeat: anything" (the OpenAPI document, MQTT): firmware may post a word as plain text.
    assert.equal((await post("heartbeat", "alive", [bearer, "Content-Type: text/plain"])).status, 204, "a plain-text heartbeat");
    ERROR_SHAPE(await post("heartbeat", "alive", ["Authorization: Bearer wrong", "Content-Type: text/plain"]), 401, "UNAUTHORIZED");
    ERROR_SHAPE(await post("heartbeat", "a=1", [bearer, "Content-Type: application/x-www-form-urlencoded"]), 415, "INVALID");
    assert.equal((await post("state", '{"properties": {"valve": "open"}}', [bearer, json])).status, 204);
    assert.equal((await get("/devices/http-dev/state")).body.properties.valve, "open");

    assert.equal((await post("status", "offline", [bearer, "Content-Type: text/plain"])).status, 204);
    assert.equal((await get("/devices/http-dev")).body.status, "offline", "plain text, as on MQTT");
    assert.equal((await post("status", '"online"', [bearer, json])).status, 204);
    assert.equal((await get("/devices/http-dev")).body.status, "online", "a JSON string");
    assert.equal((await post("status", '{"status": "offline"}', [bearer, json])).status, 204);
    assert.equal((await get("/devices/http-dev")).body.status, "offline", "a JSON object");

    // Each refusal names the body's own field: the device's body, not the hub's message "data".
    for (const [kind, body, type, field] of [
      ["status", "sleepy", "text/plain", "(body)"],
      ["state", '{"status": "sleepy"}', "application/json", "status"],
      ["state", '{"properties": [1]}', "application/json", "properties"],
      ["state", "[1]", "application/json", "(body)"],
      ["telemetry", "[1]", "application/json", "(body)"],
      // A JSON string, though it holds JSON: refused as not an object, not parsed a second time.
      ["telemetry", '"str"', "application/json", "(body)"],
      ["telemetry", '"{\\"t\\": 1}"', "application/json", "(body)"],
      ["state", '"{\\"properties\\": {}}"', "application/json", "(body)"],
    ] as const) {
      const refused = await post(kind, body, [bearer, `Content-Type: ${type}`]);
      ERROR_SHAPE(refused, 400, "INVALID");
      assert.equal(refused.body.error.details?.[0]?.field, field, `${kind} ${body}: ${JSON.stringify(refused.body)}`);
      assert.doesNotMatch(refused.body.error.message, /^data\b/, "the message speaks of the body too");
      assert.doesNotMatch(refused.body.error.message, /not valid JSON/, `${kind} ${body}: it was JSON`);
    }
    ERROR_SHAPE(await post("state", '{"colour": "red"}', [bearer, json]), 400, "INVALID");
    // A report with no body at all is refused as an empty MQTT payload is, not taken as `{}`
    // (until 2026-12-08 it was answered 204: body-parser hands on {} for a request without a body).
    const events = async () => (await get("/events?deviceId=http-dev&type=message.rejected")).body.events.length as number;
    for (const [kind, headers, says] of [
      ["telemetry", [bearer], /is empty/],
      ["telemetry", [bearer, json, "Content-Length: 0"], /is empty/],
      ["state", [bearer, json], /is empty/],
      ["status", [bearer], /must be "online" or "offline"/],
    ] as const) {
      const refusedBefore = await events();
      const refused = await post(kind, headers.includes("Content-Length: 0") ? "" : null, [...headers]);
      ERROR_SHAPE(refused, 400, "INVALID");
      assert.equal(refused.body.error.details?.[0]?.field, "(body)", `${kind} with no body: ${JSON.stringify(refused.body)}`);
      assert.match(refused.body.error.message, says, `the message says what is wrong: ${JSON.stringify(refused.body)}`);
      assert.equal(await events(), refusedBefore + 1, "counted as a refusal, as on every protocol");
    }
    ERROR_SHAPE(await post("heartbeat", null, []), 401, "UNAUTHORIZED");
    ERROR_SHAPE(await post("state", '{"properties": {}}', ["Authorization: Bearer wrong", json]), 401, "UNAUTHORIZED");
    ERROR_SHAPE(await post("heartbeat", null, [bearer], "nobody"), 404, "NOT_FOUND");
    const unknownKind = await post("bogus", "{}", [bearer, json]);
    ERROR_SHAPE(unknownKind, 404, "NOT_FOUND");
    assert.match(unknownKind.body.error.message, /no route/);
    assert.equal((await get("/devices/http-dev")).body.status, "offline", "refused reports change nothing");
    // ?token= for devices that cannot set a header.
    assert.equal((await post(`heartbeat?token=${encodeURIComponent(token)}`, null, [])).status, 204);

    // A JSON report's bytes are counted as sent, and held to the payload limit (256 KiB) as on every protocol.
    const bytesIn = async () => (await get("/communication/statistics")).body.protocols.http.bytesIn as number;
    const before = await bytesIn();
    const report = '{"temperature": 21.5, "note": "Straße"}';
    assert.equal((await post("telemetry", report, [bearer, json])).status, 204);
    assert.equal((await bytesIn()) - before, Buffer.byteLength(report), "the body's bytes");
    const big = JSON.stringify({ blob: "x".repeat(300 * 1024) });
    const sent = await fetch(`${api}/devices/http-dev/telemetry`, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: big });
    const tooBig = { status: sent.status, body: (await sent.json()) as Json };
    ERROR_SHAPE(tooBig, 400, "INVALID");
    assert.match(tooBig.body.error.message, /bytes, more than the 262144 allowed/);
    assert.equal((await get("/devices/http-dev/state")).body.properties.blob, undefined, "nothing of it taken");
  });

  it("refuses, when a device is registered or changed, an address its protocol cannot send commands to (400 naming address), changing nothing", async () => {
    const refusedFor = async (res: { status: number; body: Json }, what: string) => {
      ERROR_SHAPE(res, 400, "INVALID");
      assert.deepEqual(res.body.error.details.map((d: Json) => d.field), ["address"], `${what}: ${JSON.stringify(res.body)}`);
    };
    for (const address of ["file:///etc/passwd", "javascript:alert(1)", "ftp://127.0.0.1/x", "http://user:secret@127.0.0.1/cmd", "not a url"]) {
      await refusedFor(await call(api, "POST", "/devices", { id: "addr-h", protocol: "http", address }), address);
    }
    await refusedFor(await call(api, "POST", "/devices", { id: "addr-c", protocol: "coap", address: "http://127.0.0.1/cmd" }), "coap with http");
    assert.equal((await get("/devices/addr-h")).status, 404, "nothing registered");
    assert.equal((await get("/devices/addr-c")).status, 404, "nothing registered");

    await register({ id: "addr-h", protocol: "http", address: "https://127.0.0.1:8443/cmd?k=1" });
    await register({ id: "addr-c", protocol: "coap", address: "coap://127.0.0.1:5699/valve" });
    await refusedFor(await call(api, "PATCH", "/devices/addr-h", { address: "ftp://u:secret@127.0.0.1/x" }), "patch");
    await refusedFor(await call(api, "PATCH", "/devices/addr-h", { protocol: "coap" }), "a protocol its address does not fit");
    const kept = (await get("/devices/addr-h")).body;
    assert.equal(kept.address, "https://127.0.0.1:8443/cmd?k=1");
    assert.equal(kept.protocol, "http");
    assert.doesNotMatch(JSON.stringify((await get("/devices")).body), /secret/);
    assert.equal((await call(api, "PATCH", "/devices/addr-h", { protocol: "coap", address: "coap://127.0.0.1/v" })).status, 200, "both at once");
    // Protocols whose devices connect to the hub take no address check; a device without an address is not checked.
    await register({ id: "addr-m", protocol: "mqtt", address: "anything://at-all" });
    await register({ id: "addr-n", protocol: "http" });
    // The suite's later tests filter the whole fleet.
    for (const id of ["addr-h", "addr-c", "addr-m", "addr-n"]) assert.equal((await call(api, "DELETE", `/devices/${id}`)).status, 204);
  });

  it("filters as users write them: comma lists, repeated parameters, any case; states by statuses and protocol; 400 names the parameter", async () => {
    await register({ id: "f-1", protocol: "coap", address: "coap://127.0.0.1:5999", manufacturer: "ACME Corp", capabilities: ["Temperature"], tags: ["Roof", "north"] });
    await register({ id: "f-2", protocol: "coap", address: "coap://127.0.0.1:5999", manufacturer: "acme corp", capabilities: ["humidity"], tags: ["roof"] });
    await register({ id: "f-3", protocol: "websocket", manufacturer: "Globex", capabilities: ["temperature", "humidity"], tags: ["north"] });
    assert.equal((await call(api, "PUT", "/devices/f-2/state", { status: "maintenance" })).status, 200);
    const ids = async (query: string) => {
      const res = await get(`/devices?${query}`);
      assert.equal(res.status, 200, `${query}: ${JSON.stringify(res.body)}`);
      return res.body.devices.map((d: Json) => d.id).filter((id: string) => id.startsWith("f-")).sort();
    };
    assert.deepEqual(await ids("manufacturer=Acme%20Corp"), ["f-1", "f-2"]);
    assert.deepEqual(await ids("manufacturer=acme%20corp,GLOBEX"), ["f-1", "f-2", "f-3"]);
    assert.deepEqual(await ids("capability=TEMPERATURE"), ["f-1", "f-3"]);
    assert.deepEqual(await ids("capability=temperature,humidity"), ["f-3"]);
    assert.deepEqual(await ids("capability=temperature&capability=humidity&capabilityMatch=any"), ["f-1", "f-2", "f-3"]);
    assert.deepEqual(await ids("tag=roof&tag=NORTH"), ["f-1"]);
    assert.deepEqual(await ids("tag=roof,north&tagMatch=any"), ["f-1", "f-2", "f-3"]);
    assert.deepEqual(await ids("protocol=COAP,websocket&status=unknown"), ["f-1", "f-3"]);
    assert.deepEqual(await ids("status=maintenance,unknown&protocol=coap"), ["f-1", "f-2"]);
    assert.deepEqual(await ids("q=ACME"), ["f-1", "f-2"]);

    const states = await get("/devices/states?status=maintenance,unknown&protocol=coap");
    assert.equal(states.status, 200);
    assert.deepEqual(states.body.states.map((s: Json) => s.deviceId).sort(), ["f-1", "f-2"]);
    assert.equal(states.body.total, 2);
    const repeated = await get("/devices/states?status=maintenance&status=online&protocol=coap&protocol=websocket");
    assert.deepEqual(repeated.body.states.map((s: Json) => s.deviceId), ["f-2"]);

    for (const [route, field] of [
      ["/devices?status=online,asleep", "status"],
      ["/devices?tagMatch=some", "tagMatch"],
      ["/devices?limit=-1", "limit"],
      ["/devices/states?status=asleep", "status"],
      ["/devices/states?colour=red", "colour"],
    ] as const) {
      const res = await get(route);
      ERROR_SHAPE(res, 400, "INVALID");
      assert.equal(res.body.error.details?.[0]?.field, field, route);
      assert.doesNotMatch(JSON.stringify(res.body), /msg\.|payload/, route);
    }
    // In words, not a message key: the {id} route's device node answers this one.
    assert.equal((await get("/devices/states?colour=red")).body.error.message, "colour is no state filter (use status, protocol, limit, offset)");
  });
});
