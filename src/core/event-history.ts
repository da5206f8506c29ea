import { anyOf, compilePattern, toList } from "./subscription";
import { type HubEvent, PRIORITY_RANK, type Priority } from "./types";
import { timeOf } from "./telemetry-query";

export interface HistoryQuery {
  type?: string | string[];
  priority?: Priority | Priority[];
  minPriority?: Priority;
  deviceId?: string;
  source?: string;
  since?: number | string | Date;
  limit?: number;
}

/**
 * The bus's recent events in memory: a ring of fixed size, the oldest overwritten first. It keeps
 * the events themselves and their expiry in a typed array, not the delivery envelopes: whatever
 * history holds lives long enough to reach the old generation, so it should be as little as can be.
 */
export class EventHistory {
  private readonly ring: (HubEvent | undefined)[];
  private readonly expires: Float64Array;
  private head = 0;
  private count = 0;

  constructor(size: number) {
    this.ring = new Array(Math.max(1, size));
    this.expires = new Float64Array(this.ring.length);
  }

  add(event: HubEvent, expiresAt: number): void {
    const cap = this.ring.length;
    this.ring[this.head] = event;
    this.expires[this.head] = expiresAt;
    this.head = (this.head + 1) % cap;
    if (this.count < cap) this.count++;
  }

  /** Newest first. Expired events are left out: they have left the history. */
  query(q: HistoryQuery, now: number): HubEvent[] {
    const matchType = q.type === undefined ? null : anyOf(toList(q.type).map(compilePattern));
    const priorities = q.priority === undefined ? null : new Set(toList(q.priority));
    const minRank = q.minPriority === undefined ? 0 : PRIORITY_RANK[q.minPriority];
    const since = q.since === undefined ? 0 : timeOf(q.since, "since");
    const limit = Math.min(q.limit ?? 100, this.ring.length);
    const cap = this.ring.length;
    const out: HubEvent[] = [];
    for (let i = 1; i <= this.count && out.length < limit; i++) {
      const slot = (this.head - i + cap) % cap;
      const e = this.ring[slot]!;
      if (this.expires[slot]! <= now || PRIORITY_RANK[e.priority] < minRank) continue;
      if (matchType && !matchType(e.type)) continue;
      if (priorities && !priorities.has(e.priority)) continue;
      if (q.deviceId !== undefined && e.deviceId !== q.deviceId) continue;
      if (q.source !== undefined && e.source !== q.source) continue;
      if (since > 0 && Date.parse(e.timestamp) < since) continue;
      out.push(e);
    }
    return out;
  }

  /** Events kept that have not expired by `now`. */
  liveCount(now: number): number {
    let n = 0;
    for (let i = 0; i < this.count; i++) if (this.expires[i]! > now) n++;
    return n;
  }
}
