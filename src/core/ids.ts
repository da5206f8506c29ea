import { randomFillSync } from "node:crypto";

const HEX_CODES = Uint8Array.from("0123456789abcdef", (c) => c.charCodeAt(0));
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
  const at = take16();
  pool[at + 6] = (pool[at + 6]! & 0x0f) | 0x40;
  pool[at + 8] = (pool[at + 8]! & 0x3f) | 0x80;
  return format(at);
}

/** Where the next 16 random bytes of the pool start (indexes, not a view: an id makes no object but its text). */
function take16(): number {
  if (poolOffset === pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const at = poolOffset;
  poolOffset += 16;
  return at;
}

/** The 16 bytes of the pool at `at` as a UUID's text. */
function format(at: number): string {
  let o = 0;
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) out[o++] = 0x2d;
    const byte = pool[at + i]!;
    out[o++] = HEX_CODES[byte >> 4]!;
    out[o++] = HEX_CODES[byte & 0x0f]!;
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
  const at = take16();
  // A 12-bit counter after the time keeps ids made in the same millisecond in order.
  if (now <= lastMs) {
    counter = (counter + 1) & 0xfff;
    if (counter === 0) lastMs++;
    now = lastMs;
  } else {
    lastMs = now;
    counter = 0;
  }
  pool[at] = Math.floor(now / 2 ** 40) & 0xff;
  pool[at + 1] = Math.floor(now / 2 ** 32) & 0xff;
  pool[at + 2] = (now >>> 24) & 0xff;
  pool[at + 3] = (now >>> 16) & 0xff;
  pool[at + 4] = (now >>> 8) & 0xff;
  pool[at + 5] = now & 0xff;
  pool[at + 6] = 0x70 | (counter >> 8);
  pool[at + 7] = counter & 0xff;
  pool[at + 8] = (pool[at + 8]! & 0x3f) | 0x80;
  return format(at);
}
