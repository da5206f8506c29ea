import type { TethralError } from "./errors";
import type { EventBus } from "./events";
import type { ProtocolCounters } from "./ports/protocol";
import { DEVICE_ID_PATTERN } from "./validation";

const MAX_REFUSAL_KEYS = 256;
const OVERFLOW_KEY = "other\u0000other";

/**
 * The one place a refused device message is counted and published: whoever refuses it (the
 * gateway, before the message is read; the traffic, when its content is bad; a transport, before
 * it reached the hub) calls `refuse` once, and it is counted in all, by protocol and reason, for
 * the protocol's counters when it came through one, and published as `message.rejected`.
 */
export class Refusals {
  private total = 0;
  /** By protocol and reason (a refusal is rare next to the traffic: a map is cheap enough). */
  private readonly byReason = new Map<string, { protocol: string; reason: string; count: number }>();

  constructor(private readonly events: EventBus) {}

  /** Returns the error, for the caller to throw or answer with. */
  refuse(deviceId: unknown, protocol: string | null, kind: unknown, error: TethralError, reason: string, counters?: ProtocolCounters): TethralError {
    this.total++;
    if (counters) counters.rejected++;
    this.tally(protocol ?? "none", reason);
    this.events.publish(
      "message.rejected",
      { reason, protocol, kind: typeof kind === "string" ? kind.slice(0, 32) : undefined, error: error.message },
      { deviceId: typeof deviceId === "string" && DEVICE_ID_PATTERN.test(deviceId) ? deviceId : null, source: protocol ?? "device", priority: "low" },
    );
    return error;
  }

  get rejected(): number {
    return this.total;
  }

  /** Refused messages by protocol ("none" for a flow's own report) and reason, as counted so far. */
  counts(): Iterable<{ protocol: string; reason: string; count: number }> {
    return [...this.byReason.values()].map((r) => ({ ...r }));
  }

  private tally(protocol: string, reason: string): void {
    const key = `${protocol}\u0000${reason}`;
    let entry = this.byReason.get(key);
    if (!entry) {
      // Reasons come from the hub's and the adapters' own short lists; this bound only guards a
      // plugin that would put a message's content into its reason.
      if (this.byReason.size >= MAX_REFUSAL_KEYS && key !== OVERFLOW_KEY) return this.tally("other", "other");
      this.byReason.set(key, (entry = { protocol, reason, count: 0 }));
    }
    entry.count++;
  }
}
