import type { FleetChanges } from "../ports/cluster";
import type { DeviceRecord, DeviceRegistry } from "../registry";
import type { DeviceStatus } from "../types";
import type { MemberHost } from "./member";

/**
 * A cluster member's copy of devices another member owns, brought up to date from the rows that
 * changed in the database (`ClusterStore.changedSince`): no events, no history, no heartbeat
 * bookkeeping (those are the owner's). A changed desired state is handed to the adapters whose
 * connections this member holds.
 */
/** Status and lastSeen as the owner wrote them. */
export function follow(record: DeviceRecord, row: { status: string; lastSeen: number; lastMessage?: number }, registry: DeviceRegistry, lastMessages: Map<string, number>): void {
  if (record.status !== row.status) registry.setStatus(record, row.status as DeviceStatus);
  if (row.lastSeen >= record.lastSeen) {
    record.lastSeen = row.lastSeen;
    if (row.lastMessage) lastMessages.set(record.id, row.lastMessage);
  }
}

export function applyChanges(host: MemberHost, owns: (deviceId: string) => boolean, changes: FleetChanges, lastMessages: Map<string, number>): void {
  const { registry, state, tokens, presence } = host;
  for (const row of changes.devices) {
    if (owns(row.id)) continue;
    const record = registry.record(row.id);
    if (!record) {
      registry.restore(row);
      if (row.lastMessage) lastMessages.set(row.id, row.lastMessage);
      continue;
    }
    if (record.updatedAt !== row.updatedAt) {
      // Edited on its owner: the record is rebuilt (indexes and all), its state and token hash
      // kept (an edit writes no token row that would bring the hash back).
      const kept = record.state;
      const tokenHash = record.tokenHash;
      registry.remove(row.id, { silent: true });
      const fresh = registry.restore(row);
      fresh.state = kept;
      fresh.tokenHash = tokenHash;
      if (row.lastMessage) lastMessages.set(row.id, row.lastMessage);
      continue;
    }
    follow(record, row, registry, lastMessages);
  }
  for (const row of changes.presence) {
    if (owns(row.id)) continue;
    const record = registry.record(row.id);
    if (record) follow(record, row, registry, lastMessages);
  }
  for (const row of changes.states) {
    if (owns(row.deviceId)) continue;
    const record = registry.record(row.deviceId);
    if (!record) continue;
    const current = record.state;
    if (current && current.rev >= row.rev && current.version >= row.version) continue;
    const desiredMoved = !current || current.version !== row.version;
    // The row was parsed for this alone: its objects are taken, not copied.
    state.restore(row.deviceId, row, true);
    if (desiredMoved) host.deliverTwin(row.deviceId);
  }
  for (const row of changes.tokens) if (!owns(row.deviceId)) tokens.restore(row);
  for (const id of changes.removed) {
    if (owns(id)) continue;
    const record = registry.record(id);
    // Registered again since (a tombstone older than the row): kept.
    if (!record || changes.devices.some((d) => d.id === id)) continue;
    presence.forget(id);
    state.forget(record);
    registry.remove(id, { silent: true });
    tokens.forget(id);
  }
}
