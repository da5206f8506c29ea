import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Validator } from "@seriousme/openapi-schema-validator";
import { checkAnswer } from "./api-document";
import { type RuntimeChild, START_LIMIT_MS, call, spawnRuntime } from "./spawn-runtime";
import { openApiDocument } from "../../src/core/openapi";
import { PACKAGE_ROOT } from "../../src/runtime/start";

/** Every route of CONTRACT §3. */
const CONTRACT_ROUTES = [
  "get /health",
  "get /cluster",
  "get /devices",
  "post /devices",
  "get /devices/statistics",
  "get /devices/states",
  "get /devices/states/statistics",
  "get /devices/{id}",
  "patch /devices/{id}",
  "delete /devices/{id}",
  "get /devices/{id}/state",
  "put /devices/{id}/state",
  "post /devices/{id}/command",
  "get /commands/{id}",
  "get /communication/statistics",
  "get /events",
  "get /events/statistics",
  "get /devices/{id}/commands",
  "delete /commands/{id}",
  "post /devices/{id}/token",
  "post /events",
  "post /devices/{id}/{kind}",
  "get /devices/{id}/desired",
  "get /devices/{id}/telemetry",
  "get /devices/{id}/telemetry/keys",
  "get /metrics",
  "get /openapi.json",
];

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Doc = any;

const operationsOf = (doc: Doc): string[] =>
  Object.entries(doc.paths as Record<string, Record<string, unknown>>).flatMap(([p, item]) =>
    Object.keys(item)
      .filter((k) => ["get", "put", "post", "delete", "patch"].includes(k))
      .map((m) => `${m} ${p}`),
  );

describe("GET /api/openapi.json (OpenAPI 3.1, in the runtime)", function () {
  this.timeout(START_LIMIT_MS + 30_000);
  let scratch = "";
  let rt: RuntimeChild;

  before(async () => {
    scratch = mkdtempSync(path.join(tmpdir(), "tethral-openapi-"));
    rt = await spawnRuntime(path.join(scratch, "user"));
  });

  after(async () => {
    await rt?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it("is a valid OpenAPI 3.1 document, by a validator nobody here wrote", async () => {
    const res = await call(rt.api, "GET", "/openapi.json");
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    const result = await new Validator().validate(res.body);
    assert.equal(result.valid, true, JSON.stringify(result.errors, null, 2));
    assert.equal(res.body.openapi, "3.1.0");
    const pkg = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, "package.json"), "utf8")) as { version: string };
    assert.equal(res.body.info.version, pkg.version);
    // The runtime serves the API under httpNodeRoot /api: the document's server says so.
    assert.deepEqual(res.body.servers, [{ url: "/api" }]);
    // What call() checks every answer against is what the API serves.
    assert.deepEqual(res.body, openApiDocument("/api", pkg.version));
  });

  it("describes every route of CONTRACT §3 built so far, and no other", async () => {
    const doc = (await call(rt.api, "GET", "/openapi.json")).body;
    assert.deepEqual(operationsOf(doc).sort(), [...CONTRACT_ROUTES].sort());
    // Request bodies come from the zod schemas the routes validate with.
    const register = doc.paths["/devices"].post.requestBody.content["application/json"].schema;
    assert.deepEqual(register.required, ["id", "protocol"]);
    assert.equal(register.additionalProperties, false);
    const command = doc.paths["/devices/{id}/command"].post.requestBody.content["application/json"].schema;
    assert.ok(command.properties.wait && command.properties.timeout && !command.properties.expiresAt, "the REST route's command options");
    const filters = (doc.paths["/devices"].get.parameters as Array<{ name: string }>).map((p) => p.name);
    for (const name of ["status", "protocol", "manufacturer", "capability", "tag", "q", "limit", "offset", "capabilityMatch", "tagMatch"]) assert.ok(filters.includes(name), name);
  });

  it("serves the metrics as the document says: text/plain version 0.0.4", async () => {
    const res = await call(rt.api, "GET", "/metrics");
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain;.*version=0\.0\.4/);
    assert.match(res.body as string, /^# HELP /m);
  });
});

describe("the OpenAPI document's check of every answer (test/runtime/api-document.ts)", () => {
  const device = {
    id: "d1",
    name: "d1",
    protocol: "mqtt",
    capabilities: [],
    tags: [],
    metadata: {},
    status: "online",
    lastSeen: "2026-11-27T10:00:00.000Z",
    createdAt: "2026-11-27T10:00:00.000Z",
    updatedAt: "2026-11-27T10:00:00.000Z",
  };
  const json = "application/json; charset=utf-8";
  const answer = (route: string, status: number, body: unknown, type: string | null = json, method = "GET") =>
    checkAnswer(`http://127.0.0.1:1880/api${route}`, method, status, type, body === null ? "" : JSON.stringify(body), body);

  it("passes an answer as documented", () => {
    answer("/devices/d1", 200, device);
    answer("/devices/statistics", 200, { total: 0, byStatus: {}, byProtocol: {}, byManufacturer: {}, byCapability: {}, byTag: {} });
    answer("/devices/d1", 204, null, null, "DELETE");
    answer("/devices/d1/heartbeat", 204, null, null, "POST");
  });

  it("fails an answer whose body drifted from the document, naming the field", () => {
    const { status: _, ...noStatus } = device;
    assert.throws(() => answer("/devices/d1", 200, noStatus), /does not match[\s\S]*status/);
    assert.throws(() => answer("/devices/d1", 200, { ...device, status: "asleep" }), /\/status must be equal to one of the allowed values/);
    assert.throws(() => answer("/devices/d1", 200, { ...device, secret: 1 }), /additional properties/);
    assert.throws(() => answer("/devices/d1", 200, { ...device, lastSeen: "yesterday" }), /\/lastSeen/);
  });

  it("fails a status, content type, method or path the document does not list", () => {
    assert.throws(() => answer("/devices/d1", 418, { error: { code: "INVALID", message: "x" } }), /status the OpenAPI document does not list/);
    assert.throws(() => answer("/devices/d1", 200, "<html>", "text/html"), /text\/html, where the OpenAPI document says application\/json/);
    assert.throws(() => answer("/devices/d1", 200, device, json, "PUT"), /no PUT/);
    assert.throws(() => answer("/nothing", 200, {}), /no path for \/nothing/);
    assert.throws(() => answer("/devices/d1/unknown", 204, null, null, "POST"), /takes kind only as/);
    assert.throws(() => answer("/devices/d1", 204, device, json, "DELETE"), /with a body/);
  });

  it("leaves what is outside the API root alone (the admin API)", () => {
    checkAnswer("http://127.0.0.1:1880/flows", "GET", 200, "text/html", "<html>", "<html>");
  });

  it("says what httpNodeAuth asks: Basic on every route, and the device's token then as ?token=", async () => {
    const doc: Doc = openApiDocument("/api", "1.0.0", { basicAuth: true });
    const result = await new Validator().validate(doc);
    assert.equal(result.valid, true, JSON.stringify(result.errors, null, 2));
    assert.deepEqual(doc.components.securitySchemes.nodeAuth, { type: "http", scheme: "basic", description: "Node-RED's httpNodeAuth (settings.js)" });
    assert.deepEqual(doc.security, [{ nodeAuth: [] }]);
    for (const op of operationsOf(doc)) {
      const [method, route] = op.split(" ") as [string, string];
      assert.ok(doc.paths[route][method].responses["401"], `${op} may answer 401`);
    }
    assert.deepEqual(doc.paths["/devices/{id}/desired"].get.security, [{ nodeAuth: [], deviceTokenQuery: [] }]);
    // Without httpNodeAuth nothing of it.
    const open: Doc = openApiDocument("/api", "1.0.0");
    assert.equal(open.security, undefined);
    assert.equal(open.components.securitySchemes.nodeAuth, undefined);
    assert.equal(open.paths["/health"].get.responses["401"], undefined);
  });

  it("builds the document under any httpNodeRoot", () => {
    assert.deepEqual(openApiDocument("/rest/", "1.0.0").servers, [{ url: "/rest" }]);
    assert.deepEqual(openApiDocument("/", "1.0.0").servers, [{ url: "/" }]);
  });
});
