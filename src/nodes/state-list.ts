import type { Hub } from "../core";
import type { StateListQuery } from "../core/state";
import type { FilterValues } from "../core/registry-query";
import { type Outcome, countOf, isPlainObject, onlyKeys } from "./node-support";

const FILTER_KEYS = ["status", "protocol", "limit", "offset"];

/**
 * The texts of a state list, in the calling node's words: Node-RED translates a node's keys in
 * its own message catalogue only.
 */
export interface StateListTexts {
  /** A key of the filter that is none of `keys`. */
  filterKey(key: string, keys: string): string;
  listed(total: number): string;
  page(count: number, total: number): string;
}

/**
 * `list`: the states of the fleet, filtered and paged by `payload` (a query string's values, as
 * an `http in` request gives them). Also what `tethral-device` answers for the REST path
 * `/devices/states`, which its `/devices/:id` route must not take for a device.
 */
export function stateListPlan(payload: unknown, texts: StateListTexts): (hub: Hub) => Outcome {
  const query = filterOf(payload, texts);
  return (hub) => {
    const list = hub.listStates(query);
    const status = () => (list.states.length < list.total ? texts.page(list.states.length, list.total) : texts.listed(list.total));
    // A REST read may come thousands of times a second: its status is throttled and made when shown.
    return { payload: list, status, often: true };
  };
}

/**
 * The list filter from `payload`: `status` and `protocol` (each one value, a comma-separated
 * list or an array), `limit`, `offset` (numbers may come as digit text, as from a query
 * string). A payload that is no object (an inject node's timestamp) lists every state; an
 * unknown key is INVALID rather than silently ignored.
 */
function filterOf(payload: unknown, texts: StateListTexts): StateListQuery {
  if (!isPlainObject(payload)) return {};
  onlyKeys(payload, FILTER_KEYS, (key) => texts.filterKey(key, FILTER_KEYS.join(", ")));
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
