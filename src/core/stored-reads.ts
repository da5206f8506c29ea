import type { Clock } from "./clock";
import { invalid, notFound } from "./errors";
import type { EventBus, HistoryQuery } from "./events";
import type { Store } from "./ports/store";
import type { HeartbeatMonitor } from "./heartbeat";
import type { Presence } from "./presence";
import type { DeviceRegistry } from "./registry";
import type { StateManager } from "./state";
import { eventOf, eventQueryOf, historyEntry } from "./stored-rows";
import type { StateHistoryEntry, TethralEvent } from "./types";
import type { Persistence, PersistenceHost } from "./write-behind";

/** What the write-behind store reads from the hub, and how it speaks up. */
export function storeHost(
  hub: { registry: DeviceRegistry; state: StateManager; events: EventBus; heartbeat: HeartbeatMonitor },
  warn: (message: string) => void,
  batchWritten: (ms: number) => void,
): PersistenceHost {
  return {
    presence: (id) => {
      const r = hub.registry.record(id);
      if (!r) return null;
      // One shape for every row (the write path reads them in a loop): 0 for none.
      return { id, status: r.status, lastSeen: r.lastSeen, learnedTimeout: hub.heartbeat.learnedMs(r.heartbeat), offlineSince: hub.heartbeat.offlineSinceOf(r.heartbeat) };
    },
    state: (id) => hub.state.row(id),
    degraded: (error) => hub.events.publish("store.degraded", { error }, { source: "store", priority: "high" }),
    recovered: (pending) => hub.events.publish("store.recovered", { pending }, { source: "store" }),
    warn,
    batchWritten,
  };
}

/** Fills the registry, the states and presence from the store at start. */
export async function loadFleet(store: Store, registry: DeviceRegistry, state: StateManager, presence: Presence, now: number, restorePresence = true): Promise<void> {
  // The newest stored event (`hub.stopped` after a clean stop) says until when the previous run was up.
  const [devices, states, newest] = await Promise.all([store.loadDevices(), store.loadStates(), restorePresence ? store.events({ limit: 1 }, now) : []]);
  // Registration order survives a restart: it is the default order of every listing.
  devices.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const row of devices) registry.restore(row);
  for (const row of states) if (registry.has(row.deviceId)) state.restore(row.deviceId, row);
  if (restorePresence) presence.restore(devices, now, newest[0]?.timestamp ?? 0);
}

/**
 * History reads: from the store once everything waiting is written (so what happened before a
 * restart is there); from memory without a store, and while the store is unreachable (at once
 * when it is known to be, instead of after a timeout).
 */
export class StoredReads {
  constructor(
    private readonly persistence: Persistence | null,
    private readonly registry: DeviceRegistry,
    private readonly state: StateManager,
    private readonly events: EventBus,
    private readonly clock: Clock,
    /** Event types the store does not keep: their recent ones come from memory. */
    private readonly unstored: ReadonlySet<string> = new Set(),
  ) {}

  async stateHistory(id: string, limit?: number): Promise<StateHistoryEntry[]> {
    if (!this.registry.has(id)) throw notFound("device", id);
    if (limit !== undefined && (!Number.isInteger(limit) || limit < 0 || limit > 10_000)) {
      throw invalid("history", "must be a whole number from 0 to 10000");
    }
    return this.read(
      async (store) => (await store.stateHistory(id, limit ?? this.state.historySize)).map(historyEntry),
      () => this.state.history(id, limit),
    );
  }

  async eventHistory(query: HistoryQuery): Promise<TethralEvent[]> {
    if (!this.persistence) return this.events.query(query);
    const q = eventQueryOf(query);
    return this.read(
      async (store) => withRecent((await store.events(q, this.clock.now())).map(eventOf), () => this.events.query(query), this.unstored, q.limit),
      () => this.events.query(query),
    );
  }

  private async read<T>(read: (store: Store) => Promise<T>, fromMemory: () => T): Promise<T> {
    const p = this.persistence;
    if (!p || p.isDegraded) return fromMemory();
    try {
      await p.flushAll();
      return await read(p.store);
    } catch {
      return fromMemory();
    }
  }
}

/** Stored events with the recent ones of the types the store does not keep, newest first, at most `limit`. */
function withRecent(stored: TethralEvent[], memory: () => TethralEvent[], unstored: ReadonlySet<string>, limit: number): TethralEvent[] {
  const recent = unstored.size === 0 ? [] : memory().filter((e) => unstored.has(e.type));
  if (recent.length === 0) return stored;
  // Event ids start with their time, so they sort as the events happened.
  return stored
    .concat(recent)
    .sort((a, b) => (a.timestamp === b.timestamp ? (a.id < b.id ? 1 : a.id > b.id ? -1 : 0) : a.timestamp < b.timestamp ? 1 : -1))
    .slice(0, limit);
}
