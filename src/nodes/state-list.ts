import type { Hub } from "../core";
import type { StateListQuery } from "../core/state";
import type { FilterValues } from "../core/registry-query";
import { type Outcome, countOf, isPlainObject, onlyKeys } from "./node-support";
import type { NodeAPI } from "./types";

type Translate = NodeAPI["_"];

const FILTER_KEYS = ["status", "protocol", "limit", "offset"];

/**
 * `list`: the states of the fleet, filtered and paged by `payload` (a query string's values, as
 * an `http in` request gives them). Also what `tethral-device` answers for the REST path
 * `/devices/states`, which its `:id` route must not take for a device.
 */
export function stateListPlan(_: Translate, payload: unknown): (hub: Hub) => Outcome {
  const query = filterOf(_, payload);
  return (hub) => {
    const list = hub.listStates(query);
    const status = () =>
      list.states.length < list.total
        ? _("tethral-state.status.page", { count: list.states.length, total: list.total })
        : _("tethral-state.status.listed", { total: list.total });
    // A REST read may come thousands of times a second: its status is throttled and made when shown.
    return { payload: list, status, often: true };
  };
}

function filterOf(_: Translate, payload: unknown): StateListQuery {
  if (!isPlainObject(payload)) return {};
  onlyKeys(payload, FILTER_KEYS, (key) => _("tethral-state.errors.filter-key", { key, keys: FILTER_KEYS.join(", ") }));
  const query: StateListQuery = {};
  // The hub checks the values (INVALID names the bad field).
  if (payload.status !== undefined && payload.status !== null && payload.status !== "") query.status = payload.status as FilterValues;
  if (payload.protocol !== undefined && payload.protocol !== null && payload.protocol !== "") query.protocol = payload.protocol as FilterValues;
  const limit = countOf(payload.limit);
  if (limit !== undefined) query.limit = limit as number;
  const offset = countOf(payload.offset);
  if (offset !== undefined) query.offset = offset as number;
  return query;
}
