import type { Clock } from "./clock";
import { PointBatch, PointBuffer } from "./point-batch";
import type { DevicePresenceRow, EventRow, HistoryRow, PointValue, StateRow, WriteBatch } from "./ports/store";
import type { HeldDevice } from "./write-behind-options";

/** What the queue reads from the hub when a batch is taken: presence and state as they are now. */
export interface QueueSource {
  presence(id: string): DevicePresenceRow | null;
  state(id: string): StateRow | null;
}

/**
 * What waits to be written behind: devices whose presence or state changed (marks, read from
 * memory when the batch is taken, so they cost no buffer), and history, event and point rows in
 * arrival order. Devices written directly are held aside (see `hold`). Only the queue; when and
 * how it is written is `Persistence`'s business.
 */
export class WriteQueue {
  private presence = new Set<string>();
  private states = new Set<string>();
  private history: HistoryRow[] = [];
  private events: EventRow[] = [];
  private readonly points = new PointBuffer();
  /** Devices written or deleted directly right now: their batched writes wait aside. */
  private readonly held = new Map<string, HeldDevice>();
  readonly dropped = { history: 0, events: 0, points: 0 };
  /** When rows were last dropped (clock ms), null when never. */
  lastDroppedAt: number | null = null;

  constructor(private readonly clock: Clock) {}

  markPresence(id: string): void {
    const held = this.held.get(id);
    if (held) held.presence = true;
    else this.presence.add(id);
  }

  markState(id: string): void {
    const held = this.held.get(id);
    if (held) held.state = true;
    else this.states.add(id);
  }

  /** False when the row was held aside with its device (no buffer grew). */
  addHistory(row: HistoryRow): boolean {
    const held = this.held.get(row.deviceId);
    if (held) held.history.push(row);
    else this.history.push(row);
    return !held;
  }

  addEvent(row: EventRow): void {
    this.events.push(row);
  }

  /** False when the point was held aside with its device. */
  addPoint(deviceId: string, key: string, ts: number, value: PointValue): boolean {
    const held = this.held.size === 0 ? undefined : this.held.get(deviceId);
    if (held) held.points.push({ deviceId, key, ts, value });
    else this.points.push(deviceId, key, ts, value);
    return !held;
  }

  /** See `Persistence.hold`. */
  hold(id: string): void {
    if (this.held.has(id)) return;
    const held: HeldDevice = { presence: this.presence.delete(id), state: this.states.delete(id), history: [], points: [] };
    // One pass over what waits (up to the buffer's whole size), and no new array when none is the device's.
    const rest: HistoryRow[] = [];
    for (const h of this.history) (h.deviceId === id ? held.history : rest).push(h);
    if (held.history.length > 0) this.history = rest;
    if (this.points.length > 0) held.points = this.points.extract(id).rows();
    this.held.set(id, held);
  }

  /** See `Persistence.release`. True when rows went back into the buffer. */
  release(id: string, afterwards: "changed" | "unchanged" | "gone"): boolean {
    const held = this.held.get(id);
    if (!held) return false;
    this.held.delete(id);
    if (afterwards === "gone") return false;
    const dirty = afterwards === "changed";
    if (held.presence || dirty) this.presence.add(id);
    if (held.state || dirty) this.states.add(id);
    for (const row of held.history) this.history.push(row);
    this.points.append(PointBatch.of(held.points));
    return held.history.length > 0 || held.points.length > 0;
  }

  /** The next transaction's rows: presence and state read from memory now, the rest as queued. */
  take(maxRows: number, maxPoints: number, source: QueueSource): WriteBatch {
    const presence = drain(this.presence, maxRows, (id) => source.presence(id));
    const states = drain(this.states, maxRows, (id) => source.state(id));
    const history = this.history.length <= maxRows ? this.history : this.history.slice(0, maxRows);
    this.history = this.history.length <= maxRows ? [] : this.history.slice(maxRows);
    const events = this.events.length <= maxRows ? this.events : this.events.slice(0, maxRows);
    this.events = this.events.length <= maxRows ? [] : this.events.slice(maxRows);
    const points = this.points.lend(maxPoints);
    return { presence, states, history, events, points };
  }

  /**
   * Drops what waits of the devices `theirs` picks, held aside for a direct write or not (not their
   * events, which name no lease): the rows dropped.
   */
  discard(theirs: (deviceId: string) => boolean): number {
    let n = 0;
    for (const [id, held] of this.held) {
      if (!theirs(id)) continue;
      n += Number(held.presence) + Number(held.state) + held.history.length + held.points.length;
      held.presence = held.state = false;
      held.history = [];
      held.points = [];
    }
    for (const id of this.presence) if (theirs(id) && this.presence.delete(id)) n++;
    for (const id of this.states) if (theirs(id) && this.states.delete(id)) n++;
    const history = this.history.filter((row) => !theirs(row.deviceId));
    n += this.history.length - history.length;
    this.history = history;
    if (this.points.length > 0) n += this.points.extractWhere(theirs).length;
    return n;
  }

  /** A batch from `take` is written (or put back): its points' columns can be used again. */
  recycle(batch: WriteBatch): void {
    this.points.recycle(batch.points);
  }

  /** A failed batch goes back in front of what arrived meanwhile; presence and state are re-read later. */
  putBack(batch: WriteBatch): void {
    for (const row of batch.presence) this.markPresence(row.id);
    for (const row of batch.states) this.markState(row.deviceId);
    const free: HistoryRow[] = [];
    for (const row of batch.history) {
      const held = this.held.get(row.deviceId);
      if (held) held.history.push(row);
      else free.push(row);
    }
    this.history = free.concat(this.history);
    this.events = batch.events.concat(this.events);
    const back = PointBatch.of(batch.points);
    const unheld = back.filter((id) => !this.held.has(id));
    if (unheld.length < back.length) for (let i = 0; i < back.length; i++) this.held.get(back.deviceIds[i]!)?.points.push(back.row(i));
    this.points.prepend(unheld);
  }

  /**
   * Drops at least `over` rows: the oldest events, then the oldest history rows, then the oldest
   * points, and never less than `chunk` at a time, so a full buffer does not cost a large copy on
   * every append.
   */
  shed(over: number, chunk: number): void {
    let excess = Math.max(over, chunk);
    this.lastDroppedAt = this.clock.now();
    const events = Math.min(excess, this.events.length);
    if (events > 0) {
      this.events.splice(0, events);
      this.dropped.events += events;
      excess -= events;
    }
    const history = Math.min(excess, this.history.length);
    if (history > 0) {
      this.history.splice(0, history);
      this.dropped.history += history;
      excess -= history;
    }
    const points = Math.min(excess, this.points.length);
    if (points > 0) {
      this.points.drop(points);
      this.dropped.points += points;
    }
  }

  get isEmpty(): boolean {
    return this.presence.size + this.states.size + this.history.length + this.events.length + this.points.length === 0;
  }

  /** Every row and mark waiting. */
  get size(): number {
    return this.presence.size + this.states.size + this.history.length + this.events.length + this.points.length;
  }

  /** Rows that take buffer space: history, events and points (presence and state are marks). */
  get backlog(): number {
    return this.history.length + this.events.length + this.points.length;
  }

  get rowsWaiting(): number {
    return this.history.length + this.events.length;
  }

  get pointsWaiting(): number {
    return this.points.length;
  }

  /** How many batches it takes to write what waits now. */
  batchesFor(maxRows: number, maxPoints: number): number {
    return Math.max(
      Math.ceil(Math.max(this.presence.size, this.states.size, this.history.length, this.events.length) / maxRows),
      Math.ceil(this.points.length / maxPoints),
    );
  }

  pending(): { presence: number; states: number; history: number; events: number; points: number } {
    return { presence: this.presence.size, states: this.states.size, history: this.history.length, events: this.events.length, points: this.points.length };
  }
}

/** Takes up to `max` marked devices off `marks`, reading each one's row as it is now (none for a device gone). */
function drain<R>(marks: Set<string>, max: number, read: (id: string) => R | null): R[] {
  const rows: R[] = [];
  for (const id of marks) {
    if (rows.length >= max) break;
    marks.delete(id);
    const row = read(id);
    if (row) rows.push(row);
  }
  return rows;
}
