import type { Hub } from "../core";
import type { TelemetryQueryInput } from "../core/telemetry";
import { HubUse, type Outcome, countOf, fromMsg, invalidInput, isPlainObject, onlyKeys, flowCause, operationHandler, operationOf, text, deviceSender } from "./node-support";
import { stateListPlan } from "./state-list";
import { chartPoints } from "./telemetry-chart";
import type { Node, NodeAPI, NodeDef, NodeMessage } from "./types";

const OPERATIONS = ["get", "set", "history", "list", "statistics", "desired", "telemetry", "telemetry-keys"] as const;

/** History entries answered when neither the node nor `msg.limit` says how many. */
const DEFAULT_COUNT = 10;
const QUERY_KEYS = ["keys", "from", "to", "interval", "agg", "limit"];

interface StateDef extends NodeDef {
  hub?: string;
  /** The operation when `msg.operation` gives none. */
  operation?: string;
  /** The device when `msg.deviceId` gives none. */
  deviceId?: string;
  /** History entries when `msg.limit` gives none (the editor sends text). */
  count?: string | number;
  /** What `telemetry` sends: the answer as the REST API gives it (`answer`), or points for Dashboard 2's ui-chart (`chart`). */
  output?: string;
}

type Translate = NodeAPI["_"];

/**
 * `tethral-state` (CONTRACT §5): device state. `msg.operation` (or the configured one) picks
 * `get`, `set`, `history`, `list`, `statistics`, `desired` (a device reading its twin with its
 * own token, `msg.token`: HTTP devices), `telemetry` (the time series, CONTRACT §7, queried by
 * `msg.payload`) or `telemetry-keys` for `msg.deviceId`; the result replaces
 * `msg.payload` of the same msg, which goes on. A `set` with a stale `expectedVersion` is a
 * CONFLICT for a Catch node.
 */
export default function (RED: NodeAPI): void {
  RED.nodes.registerType("tethral-state", function (this: Node, def: StateDef): void {
    RED.nodes.createNode(this, def);
    const use = HubUse.attach(RED, this, def.hub, RED._("tethral-state.errors.no-hub"));

    // Node-RED counts the handler's parameters: operationHandler returns one with three.
    this.on("input", operationHandler(use, RED._("tethral-state.errors.no-hub"), (msg) => planOf(RED._, msg, def)));

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
function planOf(_: Translate, msg: NodeMessage, def: StateDef): (hub: Hub) => Promise<Outcome> | Outcome {
  const operation = operationOf(msg, def.operation, "get", OPERATIONS, () => _("tethral-state.errors.operation", { operations: OPERATIONS.join(", ") }));
  const deviceId = fromMsg(msg, "deviceId", text(def.deviceId));
  const needId = (): string => {
    if (deviceId === undefined || deviceId === null) throw invalidInput("deviceId", _("tethral-state.errors.no-device", { operation }));
    if (typeof deviceId !== "string") throw invalidInput("deviceId", _("tethral-state.errors.device-type"));
    return deviceId;
  };

  switch (operation) {
    case "get": {
      const id = needId();
      return (hub) => {
        const state = hub.getState(id);
        return { payload: state, status: () => _("tethral-state.status.got", { id, version: state.version, status: state.status }), often: true };
      };
    }
    case "set": {
      const id = needId();
      if (!isPlainObject(msg.payload)) throw invalidInput("payload", _("tethral-state.errors.set-payload"));
      const input = msg.payload;
      // The msg is the cause: the state history and `state.changed` carry its id.
      const cause = flowCause(msg);
      return async (hub) => {
        const state = await hub.setState(id, input, cause);
        return { payload: state, status: _("tethral-state.status.set", { id, version: state.version }) };
      };
    }
    case "history": {
      const id = needId();
      const limit = countOf(fromMsg(msg, "limit", countOfConfig(def.count)));
      return async (hub) => {
        const entries = await hub.stateHistory(id, limit as number);
        return { payload: entries, status: _("tethral-state.status.history", { id, count: entries.length }) };
      };
    }
    case "list":
      return stateListPlan(msg.payload, {
        filterKey: (key, keys) => _("tethral-state.errors.filter-key", { key, keys }),
        listed: (total) => _("tethral-state.status.listed", { total }),
        page: (count, total) => _("tethral-state.status.page", { count, total }),
      });
    case "desired": {
      // The device's own read (the REST flow's GET /api/devices/{id}/desired): its token is checked.
      const id = needId();
      const { token, protocol } = deviceSender(msg, (field) => _(`tethral-state.errors.${field}`));
      return (hub) => {
        const result = hub.readTwin(protocol, id, token);
        if (!result.ok) throw result.error;
        return { payload: result.twin, status: () => _("tethral-state.status.desired", { id, version: result.twin.version }), often: true };
      };
    }
    case "telemetry": {
      const id = needId();
      const query = telemetryQueryOf(_, msg.payload);
      const chart = def.output === "chart";
      return async (hub) => {
        const answer = await hub.telemetry(id, query);
        const keys = Object.keys(answer.series);
        const points = keys.reduce((n, key) => n + answer.series[key]!.length, 0);
        const status = _("tethral-state.status.telemetry", { id, points, keys: keys.length });
        // A query answers the whole range: the chart shows it instead of adding it to what it drew.
        return chart ? { payload: chartPoints(answer), status, extra: { action: "replace" } } : { payload: answer, status };
      };
    }
    case "telemetry-keys": {
      const id = needId();
      return async (hub) => {
        const keys = await hub.telemetryKeys(id);
        return { payload: keys, status: _("tethral-state.status.telemetry-keys", { id, count: keys.length }) };
      };
    }
    case "statistics":
      return (hub) => {
        const statistics = hub.stateStatistics();
        return { payload: statistics, status: _("tethral-state.status.statistics", { total: statistics.total }) };
      };
  }
}

/**
 * The telemetry query from `msg.payload` (CONTRACT §7): `{keys, from, to, interval, agg, limit}`,
 * values as a query string gives them or typed. A payload that is no object (an inject node's
 * timestamp) asks for every key over the last 24 hours; an unknown key is INVALID, as a
 * misspelt `interval` would otherwise answer raw points. The hub checks the values.
 */
function telemetryQueryOf(_: Translate, payload: unknown): TelemetryQueryInput {
  if (!isPlainObject(payload)) return {};
  onlyKeys(payload, QUERY_KEYS, (key) => _("tethral-state.errors.query-key", { key, keys: QUERY_KEYS.join(", ") }));
  return payload as TelemetryQueryInput;
}

/** The configured history count; blank or unreadable falls back to the default. */
function countOfConfig(value: unknown): number {
  const n = countOf(value);
  return typeof n === "number" && Number.isInteger(n) && n >= 0 ? n : DEFAULT_COUNT;
}

