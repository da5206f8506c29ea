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
  return format(b);
}

function format(b: Uint8Array): string {
  let o = 0;
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) out[o++] = 0x2d;
    out[o++] = HEX.charCodeAt(b[i]! >> 4);
    out[o++] = HEX.charCodeAt(b[i]! & 0x0f);
  }
  return out.toString("latin1", 0, 36);
}

let lastMs = 0;
let counter = 0;

/**
 * A version 7 UUID: the first 48 bits are the time in ms, so ids made one after another sort
 * after one another. History rows and events use these: a database index on them grows at its
 * end instead of at random places, which keeps batched inserts fast.
 */
export function newTimeId(now: number = Date.now()): string {
  if (poolOffset === pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const b = pool.subarray(poolOffset, poolOffset + 16);
  poolOffset += 16;
  // A 12-bit counter after the time keeps ids made in the same millisecond in order.
  if (now <= lastMs) {
    counter = (counter + 1) & 0xfff;
    if (counter === 0) lastMs++;
    now = lastMs;
  } else {
    lastMs = now;
    counter = 0;
  }
  b[0] = Math.floor(now / 2 ** 40) & 0xff;
  b[1] = Math.floor(now / 2 ** 32) & 0xff;
  b[2] = (now >>> 24) & 0xff;
  b[3] = (now >>> 16) & 0xff;
  b[4] = (now >>> 8) & 0xff;
  b[5] = now & 0xff;
  b[6] = 0x70 | (counter >> 8);
  b[7] = counter & 0xff;
  b[8] = (b[8]! & 0x3f) | 0x80;
  return format(b);
}
