import type { Hub } from "../core";
import { TethralError } from "../core/errors";
import type { DeviceFilter } from "../core/registry";
import { presentedToken } from "../core/tokens";
import { HubUse, type Outcome, fromMsg, invalidInput, isPlainObject, flowCause, operationHandler, operationOf, text, deviceSender } from "./node-support";
import { stateListPlan } from "./state-list";
import type { Node, NodeAPI, NodeDef, NodeMessage } from "./types";

const OPERATIONS = ["register", "update", "remove", "get", "list", "statistics", "report", "token"] as const;
/** What a device may report through `report` (its other kinds come over its own protocol). */
const REPORT_KINDS = ["telemetry", "heartbeat", "state", "status"] as const;
type Operation = (typeof OPERATIONS)[number];

interface DeviceDef extends NodeDef {
  hub?: string;
  /** The operation when `msg.operation` gives none. */
  operation?: string;
  /** The device when `msg.deviceId` gives none. */
  deviceId?: string;
}

type Translate = NodeAPI["_"];

/**
 * `tethral-device` (CONTRACT §5): registry operations. `msg.operation` (or the configured one)
 * picks `register`, `update`, `remove`, `get`, `list`, `statistics`, `report` (a device's own
 * report, with `msg.token`: HTTP devices) or `token` (a new token for the device); `msg.deviceId` names the device and `msg.payload`
 * carries the record, patch, filter or report. The result replaces
 * `msg.payload` of the same msg, which goes on.
 */
export default function (RED: NodeAPI): void {
  RED.nodes.registerType("tethral-device", function (this: Node, def: DeviceDef): void {
    RED.nodes.createNode(this, def);
    const use = HubUse.attach(RED, this, def.hub, RED._("tethral-device.errors.no-hub"));

    // Node-RED counts the handler's parameters: operationHandler returns one with three.
    this.on("input", operationHandler(use, RED._("tethral-device.errors.no-hub"), (msg) => planOf(RED._, msg, def)));

    this.on("close", (_removed: boolean, done: () => void) => {
      use?.close();
      done();
    });
  });
};

/**
 * Reads the request from `msg` (and the node's configuration) and returns the hub call it
 * makes. Throws INVALID for a request that cannot be made, before the hub is touched.
 */
function planOf(_: Translate, msg: NodeMessage, def: DeviceDef): (hub: Hub) => Promise<Outcome> | Outcome {
  const operation = operationOf(msg, def.operation, "get", OPERATIONS, () => _("tethral-device.errors.operation", { operations: OPERATIONS.join(", ") }));
  // A REST route's :id is read for a get and a device's own report only: a msg keeps its request
  // all through a flow, and a register, update, remove or token further on must not act on it.
  const deviceId = deviceIdOf(_, msg, def, operation === "get" || operation === "report");
  // The msg is the cause: the events of the change carry its id.
  const cause = flowCause(msg);
  const needId = (): string => {
    if (deviceId === undefined) throw invalidInput("deviceId", _("tethral-device.errors.no-device", { operation }));
    return deviceId;
  };

  switch (operation) {
    case "register": {
      const record = objectOf(_, msg.payload, "register") ?? {};
      if (deviceId !== undefined) {
        if (Object.hasOwn(record, "id") && record.id !== deviceId) {
          throw invalidInput("id", _("tethral-device.errors.id-mismatch", { deviceId, id: String(record.id) }));
        }
        record.id = deviceId;
      }
      return async (hub) => {
        const device = await hub.registerDevice(record, cause);
        return { payload: device, deviceId: device.id, status: _("tethral-device.status.registered", { id: device.id }) };
      };
    }
    case "update": {
      const id = needId();
      const patch = objectOf(_, msg.payload, "update");
      if (patch === undefined) throw invalidInput("payload", _("tethral-device.errors.payload", { operation }));
      return async (hub) => ({
        payload: await hub.updateDevice(id, patch, cause),
        status: _("tethral-device.status.updated", { id }),
      });
    }
    case "remove": {
      const id = needId();
      return async (hub) => ({
        payload: await hub.removeDevice(id, cause),
        status: _("tethral-device.status.removed", { id }),
      });
    }
    case "get": {
      const id = needId();
      // CONTRACT §3: the REST paths /devices/statistics and /devices/states are never taken for
      // a device id. A `/devices/:id` route that reaches this node with one of them (its path
      // names them, nothing else set the device) answers the fleet's statistics or its states, so
      // the route needs no node in front to sort them out (a function node there cost a GET a
      // tenth of its rate), whatever order Node-RED registers the routes in.
      if (id === "statistics" && devicesRoute(msg, def)) return statisticsPlan(_);
      if (id === "states" && devicesRoute(msg, def)) {
        return stateListPlan(msg.payload, {
          filterKey: (key, keys) => _("tethral-device.errors.state-filter-key", { key, keys }),
          listed: (total) => _("tethral-device.status.states-listed", { total }),
          page: (count, total) => _("tethral-device.status.states-page", { count, total }),
        });
      }
      return (hub) => {
        const device = hub.getDevice(id);
        // A REST read may come thousands of times a second: its status is throttled and made when shown.
        return { payload: device, status: () => _("tethral-device.status.got", { id, status: device.status }), often: true };
      };
    }
    case "list": {
      // A payload that is no filter (an inject node's timestamp) lists everything.
      const filter = isPlainObject(msg.payload) ? msg.payload : {};
      return (hub) => {
        // The registry checks the filter (INVALID names the bad field).
        const list = hub.listDevices(filter as DeviceFilter);
        const status = () =>
          list.devices.length < list.total
            ? _("tethral-device.status.page", { count: list.devices.length, total: list.total })
            : _("tethral-device.status.listed", { total: list.total });
        return { payload: list, status, often: true };
      };
    }
    case "statistics":
      return statisticsPlan(_);
    case "token": {
      // A new token: the old one stops working at once and its connections are dropped.
      const id = needId();
      return async (hub) => ({
        payload: await hub.rotateToken(id),
        status: _("tethral-device.status.token", { id }),
      });
    }
    case "report": {
      // A device's own report (the REST flow's HTTP telemetry): checked like any protocol's.
      const id = needId();
      const req = requestOf(msg);
      const kind = fromMsg(msg, "kind", requestKind(req) ?? "telemetry");
      if (typeof kind !== "string" || !REPORT_KINDS.includes(kind as (typeof REPORT_KINDS)[number])) {
        throw invalidInput("kind", _("tethral-device.errors.kind", { kinds: REPORT_KINDS.join(", ") }));
      }
      const sender = deviceSender(msg, (field) => _(`tethral-device.errors.${field}`));
      const token = sender.token ?? presentedToken(req?.headers?.authorization, req?.query?.token);
      const protocol = sender.protocol;
      // A request without a body is an empty report, refused as an empty MQTT payload is: the
      // http in node's body parser hands on {} for an empty JSON body (until 2026-12-08 that was
      // taken as a report of nothing, 204). A status comes as text (online), a JSON string
      // ("online") or {"status": "online"}.
      const fromBody = req !== undefined && msg.payload === req.body;
      const payload =
        fromBody && withoutBody(req) ? ""
        : kind === "status" && typeof msg.payload === "string" ? msg.payload.trim()
        // A JSON body that is a string ("str") was parsed already: handed on as JSON text, it is
        // refused as what it is (not an object), not parsed a second time as text (until
        // 2026-12-08 "str" was "not valid JSON", and "{\"t\": 1}" was taken as {"t": 1}).
        : fromBody && typeof msg.payload === "string" && jsonRequest(req) ? JSON.stringify(msg.payload)
        : msg.payload;
      // The REST API's parsed JSON body, as it came: its size as sent. A payload a flow made (or
      // copied) is weighed as JSON, so every report is counted and held to the payload limit.
      const size = req !== undefined && msg.payload === req.body && typeof req.bodyBytes === "number" ? req.bodyBytes : jsonSize(payload);
      return (hub) => {
        // The store is behind: nothing is taken, and the answer (the REST flow's 503) says when
        // to send again, as `Retry-After` in msg.headers, which the http response node sends.
        if (hub.intake.busy) {
          const seconds = hub.intake.retryAfterSeconds;
          msg.headers = { ...(msg.headers as Record<string, string> | undefined), "Retry-After": String(seconds) };
          throw new TethralError("UNAVAILABLE", `the hub is busy: send again in ${seconds} s`);
        }
        const result = hub.receive({ protocol, deviceId: id, kind: kind as (typeof REPORT_KINDS)[number], payload, ...(token !== undefined && { token }), ...(size !== undefined && { size }) });
        if (!result.ok) throw result.error;
        const outcome: Outcome = {
          payload: { deviceId: result.deviceId, status: result.status, changed: result.changed },
          status: () => _("tethral-device.status.reported", { id, kind }),
          often: true,
        };
        // A report goes on (the REST flow's 204) once what it changed is stored, so a crash loses
        // nothing acknowledged; a command's answer at once (a command's end is written behind it).
        if (kind === "response") return outcome;
        return hub.stored().then((stored) => {
          if (!stored) throw new TethralError("UNAVAILABLE", "the hub stopped before the report was stored");
          return outcome;
        });
      };
    }
  }
}

function statisticsPlan(_: Translate): (hub: Hub) => Outcome {
  return (hub) => {
    const statistics = hub.deviceStatistics();
    return { payload: statistics, status: () => _("tethral-device.status.statistics", { total: statistics.total }), often: true };
  };
}

/** An object or array's size as JSON text, in bytes; undefined for other values (counted as they are) or one that is no JSON. */
function jsonSize(payload: unknown): number | undefined {
  if (payload === null || typeof payload !== "object" || payload instanceof Uint8Array) return undefined;
  try {
    const text = JSON.stringify(payload);
    return text === undefined ? undefined : Buffer.byteLength(text);
  } catch {
    return undefined;
  }
}

/** Whether an `http in` node's request declared a JSON body (application/json, or a +json type). */
function jsonRequest(req: HttpRequest): boolean {
  return /^application\/([a-z0-9.+-]+\+)?json\s*(;|$)/i.test(String(req.headers?.["content-type"] ?? ""));
}

/** Whether an `http in` node's request came with no body: no Transfer-Encoding, and no Content-Length or one of 0. */
function withoutBody(req: HttpRequest): boolean {
  const headers = req.headers ?? {};
  return headers["transfer-encoding"] === undefined && !(Number(headers["content-length"] ?? 0) > 0);
}

/** The request of an `http in` node that a msg came with (`msg.req`), as far as this node reads it. */
interface HttpRequest {
  params?: Record<string, unknown>;
  headers?: Record<string, unknown>;
  query?: Record<string, unknown>;
  route?: { path?: unknown };
  /** The parsed JSON body (the REST API's, see src/runtime/api-body.ts) and its size as sent. */
  body?: unknown;
  bodyBytes?: unknown;
}

function requestOf(msg: NodeMessage): HttpRequest | undefined {
  const req = msg.req as HttpRequest | undefined;
  return req !== null && typeof req === "object" ? req : undefined;
}

/**
 * `msg.deviceId` when set, else the configured one, else (with `fromRequest`) the `:id` of the
 * path of an `http in` request (`msg.req.params.id`): a REST route needs no node of its own to
 * copy it. Undefined when none is given.
 */
function deviceIdOf(_: Translate, msg: NodeMessage, def: DeviceDef, fromRequest: boolean): string | undefined {
  const fromPath = fromRequest ? requestOf(msg)?.params?.id : undefined;
  const id = fromMsg(msg, "deviceId", text(def.deviceId) ?? (typeof fromPath === "string" && fromPath !== "" ? fromPath : undefined));
  if (id === undefined || id === null) return undefined;
  if (typeof id !== "string") throw invalidInput("deviceId", _("tethral-device.errors.device-type"));
  return id;
}

/**
 * True when the device id is the `:id` of a `…/devices/:id` route (the REST API's, under any
 * prefix): neither `msg.deviceId` nor the node names one (see deviceIdOf). A flow's own routes
 * (`/sites/:id`) read any id as a device's.
 */
function devicesRoute(msg: NodeMessage, def: DeviceDef): boolean {
  const path = requestOf(msg)?.route?.path;
  return typeof path === "string" && path.endsWith("/devices/:id") && fromMsg(msg, "deviceId", text(def.deviceId)) === undefined;
}

/** The report kind an `http in` route names as its last step (`/devices/:id/heartbeat`), if any. */
function requestKind(req: HttpRequest | undefined): string | undefined {
  const path = req?.route?.path;
  if (typeof path !== "string") return undefined;
  const last = path.slice(path.lastIndexOf("/") + 1);
  return REPORT_KINDS.includes(last as (typeof REPORT_KINDS)[number]) ? last : undefined;
}

/** A shallow copy of an object payload (the caller's msg is not changed), undefined for none. */
function objectOf(_: Translate, payload: unknown, operation: Operation): Record<string, unknown> | undefined {
  if (payload === undefined || payload === null || payload === "") return undefined;
  if (!isPlainObject(payload)) throw invalidInput("payload", _("tethral-device.errors.payload", { operation }));
  return { ...payload };
}

