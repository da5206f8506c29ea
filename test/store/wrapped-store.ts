import { TethralError } from "../../src/core/errors";
import { PointBatch } from "../../src/core/point-batch";
import type { Store, WriteBatch } from "../../src/core/ports/store";

/**
 * A store in front of another that a test can make slow (answers after `delayMs`, as a
 * database over the network does), unreachable (`down`), silent (`hang`: calls never answer),
 * or picky (`refuse` marks rows the database refuses as INVALID). Counts concurrent batches.
 */
export class WrappedStore implements Store {
  delayMs = 0;
  /** Extra wait of batches only: a batch still on its way while a direct write goes through. */
  batchDelayMs = 0;
  down = false;
  hang = false;
  refuse: ((batch: WriteBatch) => boolean) | null = null;
  /** Devices of the batch whose partitions have moved (a cluster's fence refuses the batch, naming them); null or none: not fenced. */
  fence: ((batch: WriteBatch) => string[] | null) | null = null;
  inFlight = 0;
  maxInFlight = 0;
  batches: WriteBatch[] = [];

  constructor(readonly inner: Store) {}

  get kind() {
    return this.inner.kind;
  }
  /** As the store behind: the write-behind queue's columns reach it through this one. */
  get pointColumns() {
    return this.inner.pointColumns;
  }
  get description() {
    return this.inner.description;
  }

  private async gate<T>(fn: () => Promise<T>): Promise<T> {
    if (this.hang) return new Promise<T>(() => undefined);
    if (this.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.delayMs));
    if (this.down) throw new Error("connection refused");
    return fn();
  }

  open = () => this.inner.open();
  close = () => this.inner.close();
  schemaVersion = () => this.inner.schemaVersion();
  ping = () => this.gate(() => this.inner.ping());
  upsertDevice: Store["upsertDevice"] = (row) => this.gate(() => this.inner.upsertDevice(row));
  deleteDevice: Store["deleteDevice"] = (id) => this.gate(() => this.inner.deleteDevice(id));
  upsertState: Store["upsertState"] = (row) => this.gate(() => this.inner.upsertState(row));
  writeBatch = async (batch: WriteBatch): Promise<void> => {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.batchDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.batchDelayMs));
      await this.gate(async () => {
        const moved = this.fence?.(batch);
        if (moved && moved.length > 0) throw Object.assign(new TethralError("CONFLICT", "fenced"), { fenced: true as const, partitions: [0], deviceIds: moved });
        if (this.refuse?.(batch)) throw new TethralError("INVALID", "a row the database cannot take");
        await this.inner.writeBatch(batch);
        // Kept past the write: a copy, since the queue uses the points' columns again.
        this.batches.push({ ...batch, ...(batch.points && { points: PointBatch.of(batch.points).rows() }) });
      });
    } finally {
      this.inFlight--;
    }
  };
  loadDevices = () => this.inner.loadDevices();
  loadStates = () => this.inner.loadStates();
  stateHistory: Store["stateHistory"] = (id, limit) => this.gate(() => this.inner.stateHistory(id, limit));
  points: Store["points"] = (q) => this.gate(() => this.inner.points(q));
  buckets: Store["buckets"] = (q) => this.gate(() => this.inner.buckets(q));
  telemetryKeys: Store["telemetryKeys"] = (id) => this.gate(() => this.inner.telemetryKeys(id));
  events: Store["events"] = (q, now) => this.gate(() => this.inner.events(q, now));
  putToken: Store["putToken"] = (row) => this.gate(() => this.inner.putToken(row));
  getToken: Store["getToken"] = (id) => this.gate(() => this.inner.getToken(id));
  loadTokens: Store["loadTokens"] = () => this.gate(() => this.inner.loadTokens());
  deleteToken: Store["deleteToken"] = (id) => this.gate(() => this.inner.deleteToken(id));
  putCommand: Store["putCommand"] = (row) => this.gate(() => this.inner.putCommand(row));
  putCommands: Store["putCommands"] = (rows) => this.gate(() => this.inner.putCommands(rows));
  getCommand: Store["getCommand"] = (id) => this.gate(() => this.inner.getCommand(id));
  pendingCommands: Store["pendingCommands"] = (id) => this.gate(() => this.inner.pendingCommands(id));
  deleteCommand: Store["deleteCommand"] = (id) => this.gate(() => this.inner.deleteCommand(id));
  deviceCommands: Store["deviceCommands"] = (id, statuses, limit) => this.gate(() => this.inner.deviceCommands(id, statuses, limit));
  purge: Store["purge"] = (policy, now, size) => this.gate(() => this.inner.purge(policy, now, size));
}
