import { randomFillSync } from "node:crypto";

const HEX = "0123456789abcdef";
const POOL_IDS = 256;
const pool = Buffer.alloc(16 * POOL_IDS);
let poolOffset = pool.length;
const out = Buffer.alloc(36);

/**
 * A random (version 4) UUID as a flat string. Node's `randomUUID()` returns a string built by
 * concatenation that V8 keeps as a chain of a dozen cons-string nodes (about 450 bytes); ids
 * kept in state history and event history would cost that each. Random bytes are drawn in
 * batches, so this is also cheaper per call.
 */
export function newId(): string {
  if (poolOffset === pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const b = pool.subarray(poolOffset, poolOffset + 16);
  poolOffset += 16;
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  let o = 0;
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) out[o++] = 0x2d;
    out[o++] = HEX.charCodeAt(b[i]! >> 4);
    out[o++] = HEX.charCodeAt(b[i]! & 0x0f);
  }
  return out.toString("latin1", 0, 36);
}
