import { type Envelope, anyOf, compilePattern, toList } from "./subscription";
import { PRIORITY_RANK, type Priority, type TethralEvent } from "./types";
import { toEpoch } from "./validation";

export interface HistoryQuery {
  type?: string | string[];
  priority?: Priority | Priority[];
  minPriority?: Priority;
  deviceId?: string;
  source?: string;
  since?: number | string | Date;
  limit?: number;
}

/** The bus's recent events in memory: a ring of fixed size, the oldest overwritten first. */
export class EventHistory {
  private readonly ring: (Envelope | undefined)[];
  private head = 0;
  private count = 0;

  constructor(size: number) {
    this.ring = new Array(Math.max(1, size));
  }

  add(env: Envelope): void {
    const cap = this.ring.length;
    this.ring[this.head] = env;
    this.head = (this.head + 1) % cap;
    if (this.count < cap) this.count++;
  }

  /** Newest first. Expired events are left out: they have left the history. */
  query(q: HistoryQuery, now: number): TethralEvent[] {
    const matchType = q.type === undefined ? null : anyOf(toList(q.type).map(compilePattern));
    const priorities = q.priority === undefined ? null : new Set(toList(q.priority));
    const minRank = q.minPriority === undefined ? 0 : PRIORITY_RANK[q.minPriority];
    const since = q.since === undefined ? 0 : toEpoch(q.since, "since");
    const limit = Math.min(q.limit ?? 100, this.ring.length);
    const cap = this.ring.length;
    const out: TethralEvent[] = [];
    for (let i = 1; i <= this.count && out.length < limit; i++) {
      const env = this.ring[(this.head - i + cap) % cap]!;
      const e = env.event;
      if (env.expiresAt <= now || env.rank < minRank) continue;
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
    for (let i = 0; i < this.count; i++) if (this.ring[i]!.expiresAt > now) n++;
    return n;
  }
}
