import { z } from "zod";
import { API_SCHEMAS, type ApiSchemaName, userEventInputSchema } from "./api-schemas";
import { DEFAULT_COMMAND_LIST_LIMIT, MAX_COMMAND_LIST_LIMIT, commandInputSchema } from "./command-input";
import { filterSchema } from "./registry-query";
import { AGGREGATES } from "./ports/store";
import { DEFAULT_TELEMETRY_LIMIT, MAX_TELEMETRY_LIMIT } from "./telemetry-query";
import { DEVICE_STATUSES, PRIORITIES, COMMAND_STATUSES } from "./types";
import { DEVICE_ID_PATTERN, deviceInputSchema, devicePatchSchema, stateSetSchema } from "./validation";

/**
 * The OpenAPI 3.1 document of the REST API (CONTRACT §3), `GET /api/openapi.json`. Bodies and
 * answers are JSON Schema converted from the zod schemas the routes validate with and the
 * answers' own (api-schemas.ts), so the document follows the code. Left out: the routes of
 * parts not built yet, /api/cluster (§8).
 */

type JsonSchema = Record<string, unknown>;

const JSON_TYPE = "application/json";
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

const ref = (name: ApiSchemaName) => ({ $ref: `#/components/schemas/${name}` });

/** A request body's schema: what a caller may send (zod's input side), without the draft's own keys. */
function inputSchema(schema: z.ZodType): JsonSchema {
  return strip(z.toJSONSchema(schema, { target: "draft-2020-12", io: "input", unrepresentable: "any" }) as JsonSchema);
}

function strip(schema: JsonSchema): JsonSchema {
  const { $schema: _s, $id: _i, ...rest } = schema;
  return rest;
}

/** Every named answer, with references between them. */
function componentSchemas(): Record<string, JsonSchema> {
  const registry = z.registry<{ id: string }>();
  for (const [id, schema] of Object.entries(API_SCHEMAS)) registry.add(schema, { id });
  const out = z.toJSONSchema(registry, { target: "draft-2020-12", io: "output", unrepresentable: "any", uri: (id) => `#/components/schemas/${id}` });
  return Object.fromEntries(Object.entries(out.schemas).map(([id, s]) => [id, strip(s as JsonSchema)]));
}

const STATUS_TEXT: Record<number, string> = {
  200: "OK",
  201: "Created",
  202: "Accepted: the command is queued or sent, and has not ended",
  204: "No Content",
  400: "INVALID: a bad path, query or body",
  401: "UNAUTHORIZED: the device's token is missing or wrong",
  404: "NOT_FOUND",
  409: "CONFLICT",
  413: "INVALID: the body is larger than the API takes",
  415: "INVALID: the body is not JSON",
  502: "DEVICE_ERROR: the device answered that the command failed (the command is in the body)",
  503: "UNAVAILABLE: the hub or its database cannot take this now",
  504: "TIMEOUT: no answer in time (the command is in the body)",
};

const errorAnswer = (status: number) => ({ description: STATUS_TEXT[status] ?? "error", content: { [JSON_TYPE]: { schema: ref("Error") } } });
const answer = (status: number, schema: JsonSchema | null, description = STATUS_TEXT[status] ?? "OK") =>
  schema === null ? { description } : { description, content: { [JSON_TYPE]: { schema } } };

/** The answers of an operation: its successes, the errors it names, and 503 (a hub that cannot serve) on every route. */
function responses(ok: Record<number, unknown>, errors: number[], described: Record<number, string> = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [status, value] of Object.entries(ok)) out[status] = value;
  for (const status of [...new Set([...errors, ...Object.keys(described).map(Number), 503])].sort()) {
    out[String(status)] = { ...errorAnswer(status), ...(described[status] && { description: described[status] }) };
  }
  return out;
}

const idParam = (description: string) => ({ name: "id", in: "path", required: true, description, schema: { type: "string", pattern: DEVICE_ID_PATTERN.source } });
const query = (name: string, schema: JsonSchema, description?: string) => ({ name, in: "query", required: false, schema, ...(description && { description }) });
/** A list filter: one value, a comma-separated list, or the parameter repeated. */
const listQuery = (name: string, item: JsonSchema, description?: string) =>
  query(name, { anyOf: [item, { type: "array", items: item }] }, description ?? "one value, a comma-separated list, or the parameter repeated");
const body = (schema: JsonSchema, description?: string) => ({ required: true, ...(description && { description }), content: { [JSON_TYPE]: { schema } } });
const deviceAuth = [{ deviceToken: [] }, { deviceTokenQuery: [] }];

function deviceListParameters(): unknown[] {
  const shape = inputSchema(filterSchema).properties as Record<string, JsonSchema>;
  const whole = { type: "integer", minimum: 0 };
  return Object.entries(shape).map(([name, schema]) => {
    if (name === "limit") return query(name, { ...whole, maximum: 100_000, default: 100 }, "page size");
    if (name === "offset") return query(name, whole, "devices to skip");
    if (name === "q") return query(name, schema, "text in the id, name, manufacturer or model (ignores case)");
    if (name === "capabilityMatch" || name === "tagMatch") return query(name, schema, `whether a device needs all (the default) or any of the ${name.replace("Match", "")} values`);
    return query(name, schema, Array.isArray(schema.anyOf) ? "one value, a comma-separated list, or the parameter repeated" : undefined);
  });
}

function paths(): Record<string, Record<string, unknown>> {
  const device = idParam("the device's id");
  const whole = (max?: number) => ({ type: "integer", minimum: 0, ...(max !== undefined && { maximum: max }) });
  const commandBody = inputSchema(commandInputSchema.omit({ expiresAt: true }));
  const reportKinds = ["heartbeat", "state", "status", "telemetry"];
  return {
    "/health": {
      get: { operationId: "health", summary: "Component health", tags: ["hub"], responses: responses({ 200: answer(200, ref("Health")) }, []) },
    },
    "/cluster": {
      get: { operationId: "cluster", summary: "The cluster's members and the partitions each owns", tags: ["hub"], responses: responses({ 200: answer(200, ref("Cluster")) }, []) },
    },
    "/devices": {
      get: {
        operationId: "listDevices",
        summary: "List devices",
        tags: ["devices"],
        parameters: deviceListParameters(),
        responses: responses({ 200: answer(200, ref("DeviceList")) }, [400]),
      },
      post: {
        operationId: "registerDevice",
        summary: "Register a device; its token is in this answer, and only here",
        tags: ["devices"],
        requestBody: body(inputSchema(deviceInputSchema)),
        responses: responses({ 201: answer(201, ref("RegisteredDevice")) }, [400, 409, 413, 415]),
      },
    },
    "/devices/statistics": {
      get: { operationId: "deviceStatistics", summary: "Device counts by status, protocol, manufacturer, capability and tag", tags: ["devices"], responses: responses({ 200: answer(200, ref("DeviceStatistics")) }, []) },
    },
    "/devices/states": {
      get: {
        operationId: "listStates",
        summary: "Every device's state",
        tags: ["state"],
        parameters: [listQuery("status", { type: "string", enum: [...DEVICE_STATUSES] }), listQuery("protocol", { type: "string" }), query("limit", whole(100_000)), query("offset", whole())],
        responses: responses({ 200: answer(200, ref("StateList")) }, [400]),
      },
    },
    "/devices/states/statistics": {
      get: { operationId: "stateStatistics", summary: "State counts, transitions and anomalies", tags: ["state"], responses: responses({ 200: answer(200, ref("StateStatistics")) }, []) },
    },
    "/devices/{id}": {
      parameters: [device],
      get: { operationId: "getDevice", summary: "One device", tags: ["devices"], responses: responses({ 200: answer(200, ref("Device")) }, [400, 404]) },
      patch: {
        operationId: "updateDevice",
        summary: "Change some of a device's fields (null clears an optional one)",
        tags: ["devices"],
        requestBody: body(inputSchema(devicePatchSchema)),
        responses: responses({ 200: answer(200, ref("Device")) }, [400, 404, 413, 415]),
      },
      delete: { operationId: "removeDevice", summary: "Remove a device with its state and history", tags: ["devices"], responses: responses({ 204: answer(204, null) }, [400, 404]) },
    },
    "/devices/{id}/state": {
      parameters: [device],
      get: {
        operationId: "getState",
        summary: "A device's state",
        tags: ["state"],
        parameters: [query("history", whole(10_000), "adds the last N changes")],
        responses: responses({ 200: answer(200, ref("DeviceState")) }, [400, 404]),
      },
      put: {
        operationId: "setState",
        summary: "Set desired values and/or the status; expectedVersion makes it conditional",
        tags: ["state"],
        requestBody: body(inputSchema(stateSetSchema)),
        responses: responses({ 200: answer(200, ref("DeviceState")) }, [400, 404, 409, 413, 415]),
      },
    },
    "/devices/{id}/desired": {
      parameters: [device],
      get: {
        operationId: "getDesired",
        summary: "An HTTP device reads its desired state (with its token)",
        tags: ["device protocol"],
        security: deviceAuth,
        responses: responses({ 200: answer(200, ref("Desired")) }, [400, 401, 404]),
      },
    },
    // GET only: POST /devices/{id}/telemetry is a device's report, under /devices/{id}/{kind}.
    "/devices/{id}/telemetry": {
      parameters: [device],
      get: {
        operationId: "getTelemetry",
        summary: "A device's telemetry time series: raw points, or buckets of an interval",
        description: "Every telemetry report is kept as series, one per top-level key, when the hub has a database (503 without one).",
        tags: ["telemetry"],
        parameters: [
          listQuery("keys", { type: "string" }, "the keys: a comma-separated list or the parameter repeated; absent, every key"),
          query("from", { type: "string" }, "ISO-8601 time or epoch milliseconds; default 24 hours before to"),
          query("to", { type: "string" }, "ISO-8601 time or epoch milliseconds; default now"),
          query("interval", { type: "string", pattern: "^[1-9][0-9]{0,8}(ms|s|m|h|d|w)$" }, "buckets of this length (30s, 1m, 15m, 1h, 1d), aligned to the epoch; absent, raw points"),
          query("agg", { type: "string", enum: [...AGGREGATES], default: "avg" }, "how each bucket is aggregated (with an interval)"),
          query("limit", { type: "integer", minimum: 1, maximum: MAX_TELEMETRY_LIMIT, default: DEFAULT_TELEMETRY_LIMIT }, "points per key"),
        ],
        responses: responses({ 200: answer(200, ref("TelemetryAnswer")) }, [400, 404]),
      },
    },
    "/devices/{id}/telemetry/keys": {
      parameters: [device],
      get: {
        operationId: "getTelemetryKeys",
        summary: "The keys a device has reported as series",
        tags: ["telemetry"],
        responses: responses({ 200: answer(200, ref("TelemetryKeys")) }, [400, 404]),
      },
    },
    "/devices/{id}/command": {
      parameters: [device],
      post: {
        operationId: "sendCommand",
        summary: "Send a command; with wait, the answer waits for the device",
        tags: ["commands"],
        requestBody: body(commandBody),
        responses: responses(
          { 200: answer(200, ref("Command"), "the command ended (with wait)"), 202: answer(202, ref("Command")) },
          [400, 404, 413, 415, 502, 504],
          { 409: "CONFLICT: the command waited for was cancelled or superseded meanwhile (the command is in the body)" },
        ),
      },
    },
    "/devices/{id}/commands": {
      parameters: [device],
      get: {
        operationId: "listDeviceCommands",
        summary: "A device's commands, newest first",
        tags: ["commands"],
        parameters: [listQuery("status", { type: "string", enum: [...COMMAND_STATUSES] }), query("limit", { type: "integer", minimum: 1, maximum: MAX_COMMAND_LIST_LIMIT, default: DEFAULT_COMMAND_LIST_LIMIT })],
        responses: responses({ 200: answer(200, ref("CommandList")) }, [400, 404]),
      },
    },
    "/devices/{id}/token": {
      parameters: [device],
      post: {
        operationId: "rotateToken",
        summary: "Issue a new token for the device; the old one stops working at once",
        tags: ["devices"],
        responses: responses({ 200: answer(200, ref("Token")) }, [400, 404, 409]),
      },
    },
    "/devices/{id}/{kind}": {
      parameters: [device, { name: "kind", in: "path", required: true, schema: { type: "string", enum: reportKinds } }],
      post: {
        operationId: "deviceReport",
        summary: "An HTTP device's report: telemetry, heartbeat, state or status (with its token)",
        description:
          "telemetry: a JSON object of values; heartbeat: anything (or nothing); state: {status?, properties?}; status: \"online\" or \"offline\" (or {\"status\"}). Every report is a heartbeat.",
        tags: ["device protocol"],
        security: deviceAuth,
        // heartbeat and status may come as plain text, as firmware sends them on MQTT.
        requestBody: { required: false, content: { [JSON_TYPE]: { schema: {} }, "text/plain": { schema: { type: "string" } } } },
        responses: responses({ 204: answer(204, null) }, [400, 401, 404, 413, 415]),
      },
    },
    "/commands/{id}": {
      parameters: [idParam("the command's id")],
      get: { operationId: "getCommand", summary: "A command and its status", tags: ["commands"], responses: responses({ 200: answer(200, ref("Command")) }, [400, 404]) },
      delete: {
        operationId: "cancelCommand",
        summary: "Cancel a command that has not ended",
        tags: ["commands"],
        responses: responses({ 200: answer(200, ref("Command"), "the command, cancelled") }, [400, 404, 409]),
      },
    },
    "/communication/statistics": {
      get: {
        operationId: "communicationStatistics",
        summary: "Per-protocol counts, bytes and errors; commands by status and latency percentiles",
        tags: ["hub"],
        responses: responses({ 200: answer(200, ref("CommunicationStatistics")) }, []),
      },
    },
    "/events": {
      get: {
        operationId: "eventHistory",
        summary: "Event history, newest first",
        tags: ["events"],
        parameters: [
          listQuery("type", { type: "string" }, "event types, with * wildcards; a comma-separated list or repeated"),
          listQuery("priority", { type: "string", enum: [...PRIORITIES] }),
          query("minPriority", { type: "string", enum: [...PRIORITIES] }),
          query("deviceId", { type: "string" }),
          query("source", { type: "string" }),
          query("since", { type: "string" }, "ISO-8601 time or epoch milliseconds"),
          query("limit", { ...whole(10_000), default: 100 }),
        ],
        responses: responses({ 200: answer(200, ref("EventList")) }, [400]),
      },
      post: {
        operationId: "publishEvent",
        summary: "Publish a user event",
        tags: ["events"],
        requestBody: body(inputSchema(userEventInputSchema)),
        responses: responses({ 201: answer(201, ref("Event")) }, [400, 413, 415]),
      },
    },
    "/events/statistics": {
      get: { operationId: "eventStatistics", summary: "Events published, delivered and dropped, by type and priority", tags: ["events"], responses: responses({ 200: answer(200, ref("EventStatistics")) }, []) },
    },
    "/metrics": {
      get: {
        operationId: "metrics",
        summary: "Prometheus metrics, text exposition format 0.0.4",
        tags: ["hub"],
        responses: responses({ 200: { description: "OK", content: { [METRICS_CONTENT_TYPE]: { schema: { type: "string" } } } } }, []),
      },
    },
    "/openapi.json": {
      get: {
        operationId: "openapi",
        summary: "This document",
        tags: ["hub"],
        responses: responses({ 200: answer(200, { type: "object", required: ["openapi", "paths"] }) }, []),
      },
    },
  };
}

let cached: { paths: ReturnType<typeof paths>; schemas: Record<string, JsonSchema> } | null = null;

/**
 * The document for an API served under `root` (Node-RED's httpNodeRoot, `/api` for `npm start`).
 * The server URL is relative, so it holds for whatever host and scheme the document was read through.
 */
export function openApiDocument(root: string, version: string, access: { basicAuth?: boolean } = {}): Record<string, unknown> {
  cached ??= { paths: paths(), schemas: componentSchemas() };
  const base = `/${root.replace(/^\/+|\/+$/g, "")}`;
  const document = {
    openapi: "3.1.0",
    info: {
      title: "Tethral REST API",
      version,
      description:
        "The REST API of the Tethral IoT device hub (Node-RED flows). Errors answer {\"error\": {\"code\", \"message\", \"details\"}}. " +
        "Not described yet: /cluster, whose part is not built.",
      license: { name: "MIT", identifier: "MIT" },
    },
    servers: [{ url: base === "/" ? "/" : base }],
    paths: structuredClone(cached.paths),
    components: {
      schemas: structuredClone(cached.schemas),
      securitySchemes: {
        deviceToken: { type: "http", scheme: "bearer", description: "the device's token" },
        deviceTokenQuery: { type: "apiKey", in: "query", name: "token", description: "the device's token, for devices that cannot set a header" },
      } as Record<string, unknown>,
    },
  };
  if (access.basicAuth) lockedWithBasic(document);
  return document;
}

/**
 * Node-RED's `httpNodeAuth` puts Basic authentication in front of every route: every operation
 * needs it and may answer 401 before the API does. A device then sends Basic in the
 * Authorization header, so its own token can only travel as `?token=`.
 */
function lockedWithBasic(document: { paths: unknown; components: { securitySchemes: Record<string, unknown> } } & Record<string, unknown>): void {
  document.components.securitySchemes.nodeAuth = { type: "http", scheme: "basic", description: "Node-RED's httpNodeAuth (settings.js)" };
  document.security = [{ nodeAuth: [] }];
  for (const item of Object.values(document.paths as Record<string, Record<string, { security?: unknown; responses?: Record<string, unknown> }>>)) {
    for (const [method, operation] of Object.entries(item)) {
      if (!["get", "put", "post", "delete", "patch"].includes(method)) continue;
      if (operation.security) operation.security = [{ nodeAuth: [], deviceTokenQuery: [] }];
      if (operation.responses && !operation.responses["401"]) operation.responses["401"] = { ...errorAnswer(401), description: "UNAUTHORIZED: no or wrong Basic credentials (httpNodeAuth)" };
    }
  }
}
