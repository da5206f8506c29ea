import type { DeviceMessage } from "../ports/protocol";

/** A device message another member should have applied, kept in case that member dies. */
export interface HeldMessage {
  /** When this member took it (its clock, epoch ms). */
  at: number;
  message: DeviceMessage;
  /** The member holding the device's connection (forwarded messages), for its commands. */
  via?: string;
}

/**
 * The lease gap (DESIGN.md "Cluster"): every member sees every device message (the broker fans
 * MQTT out; other protocols are forwarded to all), and the members that do not own a device keep
 * its recent messages, per partition, for a few lease periods. When the owner dies, the member
 * that takes the partition over replays those its predecessor had not written (newer than the
 * device's stored lastSeen), so a QoS 1 message the broker acknowledged during the gap is applied
 * once. A ring per partition, pruned by age as it is appended to: no timer, no per-message allocation
 * beyond the entry.
 */
export class RecentMessages {
  private readonly rings: HeldMessage[][];
  private readonly heads: number[];
  private held = 0;
  private dropped = 0;

  constructor(
    partitions: number,
    /** How long a message is kept, ms. */
    private readonly keepMs: number,
    /** At most this many per partition (the oldest go first): bounds memory under any rate. */
    private readonly perPartition: number,
  ) {
    this.rings = Array.from({ length: partitions }, () => []);
    this.heads = new Array<number>(partitions).fill(0);
  }

  add(partition: number, entry: HeldMessage): void {
    const ring = this.rings[partition]!;
    ring.push(entry);
    this.held++;
    let head = this.heads[partition]!;
    const oldest = entry.at - this.keepMs;
    while (head < ring.length && (ring[head]!.at < oldest || ring.length - head > this.perPartition)) {
      if (ring.length - head > this.perPartition) this.dropped++;
      head++;
      this.held--;
    }
    // Compact once the dead head is half the array.
    if (head > 1024 && head * 2 > ring.length) {
      ring.splice(0, head);
      head = 0;
    }
    this.heads[partition] = head;
  }

  /** The partition's messages, oldest first, emptied (the caller replays what it needs). */
  take(partition: number, now: number): HeldMessage[] {
    const ring = this.rings[partition]!;
    const head = this.heads[partition]!;
    const out = ring.slice(head).filter((e) => e.at >= now - this.keepMs);
    this.held -= ring.length - head;
    this.rings[partition] = [];
    this.heads[partition] = 0;
    return out;
  }

  statistics(): { held: number; dropped: number } {
    return { held: this.held, dropped: this.dropped };
  }
}
