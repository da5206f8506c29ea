import { readFileSync } from "node:fs";
import path from "node:path";
import type { Hub } from "../core";
import { errorMessage } from "../core/errors";
import { openApiDocument } from "../core/openapi";
import type { HistoryQuery } from "../core/events";
import { PRIORITIES, type Priority } from "../core/types";
import { HubUse, type Outcome, abandon, countOf, fromMsg, invalidInput, isPlainObject, onlyKeys, operationHandler, operationOf, text } from "./node-support";
import type { NodeAPI, Node, NodeDef, NodeMessage } from "./types";

const OPERATIONS = ["health", "statistics", "events", "event-statistics", "communication", "metrics", "openapi", "cluster"] as const;

/** The event-history filter keys `msg.payload` may carry (a REST query string maps onto them). */
const EVENT_FILTER_KEYS = ["type", "priority", "minPriority", "deviceId", "source", "since", "limit"];
const DEFAULT_EVENT_LIMIT = 100;

interface HubInfoDef extends NodeDef {
  hub?: string;
  /** The operation when `msg.operation` gives none. */
  operation?: string;
}

type Translate = NodeAPI["_"];

/**
 * `tethral-hub-info`: what the hub as a whole knows — its health, its statistics, the event
 * history and statistics, the communication statistics per protocol, and the cluster's members.
 * The REST API's `/api/health`, `/api/events`, `/api/communication/statistics` and
 * `/api/cluster` are built on it.
 */
export default function (RED: NodeAPI): void {
  RED.nodes.registerType("tethral-hub-info", function (this: Node, def: HubInfoDef): void {
    RED.nodes.createNode(this, def);
    const noHub = RED._("tethral-hub-info.errors.no-hub");
    const use = HubUse.attach(RED, this, def.hub, noHub);
    const root = typeof RED.settings.httpNodeRoot === "string" ? RED.settings.httpNodeRoot : "/";
    // Node-RED answers httpNodeAuth's {user, pass} with Basic authentication before every route.
    const nodeAuth = (RED.settings as { httpNodeAuth?: unknown }).httpNodeAuth;
    const basicAuth = isPlainObject(nodeAuth) && typeof nodeAuth.user === "string" && typeof nodeAuth.pass === "string";
    const answer = operationHandler(use, noHub, (msg) => planOf(RED._, msg, def, { root, basicAuth }));

    this.on("input", (msg: NodeMessage, send, done) => {
      // Health is the one question a hub that cannot start still answers: with why it cannot.
      if (use && fromMsg(msg, "operation", text(def.operation) ?? "health") === "health") {
        use.hub().then(
          () => answer(msg, send, done),
          (err: unknown) => {
            if (use.isClosed) return abandon(msg, done);
            msg.payload = { status: "degraded", components: { hub: { status: "failed", error: errorMessage(err) } } };
            use.failed(RED._("tethral-hub-info.status.hub-down"));
            send(msg);
            done();
          },
        );
        return;
      }
      answer(msg, send, done);
    });

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
function planOf(_: Translate, msg: NodeMessage, def: HubInfoDef, api: { root: string; basicAuth: boolean }): ((hub: Hub) => Promise<Outcome> | Outcome) | Outcome {
  const operation = operationOf(msg, def.operation, "health", OPERATIONS, () => _("tethral-hub-info.errors.operation", { operations: OPERATIONS.join(", ") }));
  switch (operation) {
    case "health":
      return (hub) => {
        const health = hub.health();
        return { payload: health, status: _("tethral-hub-info.status.health", { status: health.status }), warning: health.status !== "ok" };
      };
    case "statistics":
      return (hub) => {
        const statistics = hub.statistics();
        return { payload: statistics, status: _("tethral-hub-info.status.statistics", { total: statistics.devices.total }) };
      };
    case "events": {
      const query = eventQueryOf(_, msg.payload);
      return async (hub) => {
        const events = await hub.eventHistory(query);
        return { payload: { events }, status: _("tethral-hub-info.status.events", { count: events.length }) };
      };
    }
    case "event-statistics":
      return (hub) => {
        const statistics = hub.eventStatistics();
        return { payload: statistics, status: _("tethral-hub-info.status.event-statistics", { count: statistics.published }) };
      };
    case "communication":
      return (hub) => {
        const statistics = hub.communicationStatistics();
        const connected = Object.values(statistics.protocols).reduce((n, p) => n + (typeof p.connected === "number" ? p.connected : 0), 0);
        return { payload: statistics, status: _("tethral-hub-info.status.communication", { connected }) };
      };
    case "metrics":
      return async (hub) => {
        const { contentType, text } = await hub.metrics.exposition();
        return { payload: text, headers: { "content-type": contentType }, status: _("tethral-hub-info.status.metrics"), often: true };
      };
    case "cluster":
      // msg.leader gates one-per-cluster work in flows: timers fire on every member.
      return (hub) => {
        const cluster = hub.clusterInfo();
        const leader = hub.isLeader;
        return {
          payload: cluster,
          extra: { leader },
          status: _(leader ? "tethral-hub-info.status.cluster-leader" : "tethral-hub-info.status.cluster", { members: cluster.members.length }),
        };
      };
    case "openapi":
      // The document describes the API, not the hub: it is answered even while the hub cannot start.
      return { payload: openApiDocument(api.root, packageVersion(), { basicAuth: api.basicAuth }), status: _("tethral-hub-info.status.openapi") };
  }
}

let version: string | undefined;
/** This package's version, for the OpenAPI document (the node file sits two levels below the package, in src/ and dist/ alike). */
function packageVersion(): string {
  if (version === undefined) {
    try {
      version = (JSON.parse(readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8")) as { version: string }).version;
    } catch {
      version = "0.0.0";
    }
  }
  return version;
}

/**
 * The event-history filter from `msg.payload`: `type` and `priority` as a list or comma
 * separated text (a query string's shape), `minPriority`, `deviceId`, `source`, `since` (ISO
 * time or epoch ms) and `limit` (0-10000, default 100). A payload that is no object (an inject
 * node's timestamp) asks for the latest events; an unknown key is INVALID, not ignored.
 */
function eventQueryOf(_: Translate, payload: unknown): HistoryQuery {
  if (!isPlainObject(payload)) return { limit: DEFAULT_EVENT_LIMIT };
  onlyKeys(payload, EVENT_FILTER_KEYS, (key) => _("tethral-hub-info.errors.filter-key", { key, keys: EVENT_FILTER_KEYS.join(", ") }));
  const query: HistoryQuery = { limit: DEFAULT_EVENT_LIMIT };
  const types = listOf(_, payload.type, "type");
  if (types) query.type = types;
  const priorities = listOf(_, payload.priority, "priority");
  if (priorities) query.priority = priorities.map((p) => priorityOf(_, p, "priority"));
  const minPriority = textOf(_, payload.minPriority, "minPriority");
  if (minPriority !== undefined) query.minPriority = priorityOf(_, minPriority, "minPriority");
  const deviceId = textOf(_, payload.deviceId, "deviceId");
  if (deviceId !== undefined) query.deviceId = deviceId;
  const source = textOf(_, payload.source, "source");
  if (source !== undefined) query.source = source;
  const since = payload.since;
  if (since !== undefined && since !== null && since !== "") {
    if (typeof since === "string" && /^\d+$/.test(since.trim())) query.since = Number(since);
    else if (typeof since === "string" || typeof since === "number") query.since = since;
    else throw invalidInput("since", _("tethral-hub-info.errors.since"));
  }
  const n = countOf(payload.limit);
  if (n !== undefined) {
    if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > 10_000) throw invalidInput("limit", _("tethral-hub-info.errors.limit"));
    query.limit = n;
  }
  return query;
}

/** A list from an array of strings or comma-separated text; undefined when blank. */
function listOf(_: Translate, value: unknown, field: string): string[] | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  const items = typeof value === "string" ? value.split(",") : Array.isArray(value) ? value : null;
  if (!items || items.some((item) => typeof item !== "string")) throw invalidInput(field, _("tethral-hub-info.errors.text", { field }));
  const list = (items as string[]).map((item) => item.trim()).filter((item) => item !== "");
  return list.length > 0 ? list : undefined;
}

function textOf(_: Translate, value: unknown, field: string): string | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value !== "string") throw invalidInput(field, _("tethral-hub-info.errors.text", { field }));
  return text(value);
}

/** A priority as users write it in a query: any case (`HIGH` is `high`). */
function priorityOf(_: Translate, value: string, field: string): Priority {
  const priority = value.toLowerCase();
  if (!PRIORITIES.includes(priority as Priority)) throw invalidInput(field, _("tethral-hub-info.errors.priority", { field, priorities: PRIORITIES.join(", ") }));
  return priority as Priority;
}
