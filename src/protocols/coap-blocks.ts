/**
 * Block-wise uploads (RFC 7959 Block1) being reassembled, one slot per upload. A slot is found
 * by a key the adapter makes from the client's endpoint and the request's identifying options,
 * never by token: a client may send every block with a new one (§2.3; libcoap does).
 *
 * Memory is bounded by `max` slots of at most the hub's payload limit each; one device holds at
 * most `perDevice` of them, so it cannot take every slot and starve the rest of the fleet. A slot
 * no block has reached for `idleMs` is forgotten (checked whenever slots are counted or taken,
 * so no timer runs).
 */
export interface BlockSlotLimits {
  max: number;
  perDevice: number;
  idleMs: number;
}

/** One Block1 block as the option gives it: number, more-flag and block size in bytes. */
export interface Block {
  num: number;
  more: boolean;
  size: number;
}

export type BlockOutcome =
  | { status: "continue" }
  | { status: "complete"; payload: Buffer }
  /** 4.08: the block continues nothing; 5.03: no slot free, try again in `retryAfterSec`. */
  | { status: "refused"; code: "4.08" | "5.03"; message: string; retryAfterSec?: number };

interface Slot {
  deviceId: string;
  parts: Buffer[];
  received: number;
  touched: number;
}

export class Block1Slots {
  /** In order of last activity, least recent first: expiry looks only at the front. */
  private readonly slots = new Map<string, Slot>();
  private readonly held = new Map<string, number>();

  constructor(
    private readonly limits: BlockSlotLimits,
    private readonly now: () => number = Date.now,
  ) {}

  /** Uploads in progress now. */
  get size(): number {
    this.expire(this.now());
    return this.slots.size;
  }

  /**
   * Takes one block (already checked for size and sender) of the upload `key` by `deviceId`.
   * Blocks must come in order from block 0; block 0 again restarts the upload (§2.5).
   */
  take(key: string, deviceId: string, block: Block, payload: Buffer): BlockOutcome {
    const now = this.now();
    this.expire(now);
    let slot = this.slots.get(key);
    if (block.num === 0) {
      if (slot) this.drop(key);
      if (!block.more) return { status: "complete", payload };
      const refusal = this.noRoomFor(deviceId, now);
      if (refusal) return refusal;
      slot = { deviceId, parts: [], received: 0, touched: now };
      this.held.set(deviceId, (this.held.get(deviceId) ?? 0) + 1);
    } else if (!slot || block.num * block.size !== slot.received) {
      // RFC 7959 §2.9.2: a block continuing nothing, or leaving a gap.
      if (slot) this.drop(key);
      return { status: "refused", code: "4.08", message: "request entity incomplete: send the blocks in order from block 0" };
    }
    slot.parts.push(payload);
    slot.received += payload.length;
    slot.touched = now;
    this.slots.delete(key);
    this.slots.set(key, slot);
    if (block.more) return { status: "continue" };
    this.drop(key);
    return { status: "complete", payload: Buffer.concat(slot.parts, slot.received) };
  }

  /** Forgets an upload (refused mid-way). */
  drop(key: string): void {
    const slot = this.slots.get(key);
    if (!slot) return;
    this.slots.delete(key);
    const held = (this.held.get(slot.deviceId) ?? 1) - 1;
    if (held > 0) this.held.set(slot.deviceId, held);
    else this.held.delete(slot.deviceId);
  }

  clear(): void {
    this.slots.clear();
    this.held.clear();
  }

  /** 5.03 with the seconds until a slot frees up (Max-Age, RFC 7252 §5.9.3.4), or null when there is room. */
  private noRoomFor(deviceId: string, now: number): BlockOutcome | null {
    const retryAfter = (slot: Slot) => Math.max(1, Math.ceil((slot.touched + this.limits.idleMs - now) / 1000));
    if ((this.held.get(deviceId) ?? 0) >= this.limits.perDevice) {
      // At most `max` slots to look through; the first found is the device's least recently active.
      const oldest = [...this.slots.values()].find((s) => s.deviceId === deviceId)!;
      const message = `device "${deviceId}" already has ${this.limits.perDevice} block-wise uploads in progress: finish one, or retry later`;
      return { status: "refused", code: "5.03", message, retryAfterSec: retryAfter(oldest) };
    }
    if (this.slots.size >= this.limits.max) {
      const oldest = this.slots.values().next().value!;
      return { status: "refused", code: "5.03", message: "too many block-wise uploads in progress: retry later", retryAfterSec: retryAfter(oldest) };
    }
    return null;
  }

  private expire(now: number): void {
    for (const [key, slot] of this.slots) {
      if (now - slot.touched < this.limits.idleMs) break;
      this.drop(key);
    }
  }
}
