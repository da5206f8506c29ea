import { hash as hashOnce, randomFillSync, timingSafeEqual } from "node:crypto";
import type { Store } from "./ports/store";

/**
 * Device tokens (CONTRACT §4). A token is 32 random bytes, handed out once; only its SHA-256
 * is kept. A slow password hash buys nothing here: the token is random, not a guessable
 * password, and checking it on every CoAP or HTTP report must cost microseconds. The hashes
 * live in memory (loaded at start) so no message waits for the database.
 */
const TOKEN_BYTES = 32;
/**
 * Random bytes for tokens, drawn 128 tokens at a time: one call into the system's generator per
 * token was a quarter of the time a registration takes. Each slice is used once; it is zeroed
 * once encoded, so the pool holds only tokens not yet handed out (the handed-out string itself
 * lives on the heap until it is collected, as any token does).
 */
const pool = Buffer.alloc(TOKEN_BYTES * 128);
let poolOffset = pool.length;

export class DeviceTokens {
  private readonly hashes = new Map<string, Buffer>();

  constructor(private readonly store: Store | null) {}

  static generate(): string {
    if (poolOffset === pool.length) {
      randomFillSync(pool);
      poolOffset = 0;
    }
    const slice = pool.subarray(poolOffset, poolOffset + TOKEN_BYTES);
    poolOffset += TOKEN_BYTES;
    const token = slice.toString("base64url");
    slice.fill(0);
    return token;
  }

  /** SHA-256 of the token's UTF-8, hex: one call, no Hash object (a sixth of a registration's time was making one). */
  static hash(token: string): string {
    return hashOnce("sha256", token, "hex");
  }

  async load(): Promise<void> {
    if (!this.store) return;
    for (const row of await this.store.loadTokens()) this.hashes.set(row.deviceId, Buffer.from(row.hash, "hex"));
  }

  has(deviceId: string): boolean {
    return this.hashes.has(deviceId);
  }

  /** Stores the hash of `token` for a device (durably first, with a store), replacing any other. */
  async save(deviceId: string, token: string, now: number): Promise<void> {
    const hash = DeviceTokens.hash(token);
    await this.store?.putToken({ deviceId, hash, createdAt: now });
    this.hashes.set(deviceId, Buffer.from(hash, "hex"));
  }

  /** Constant-time check of a presented token; false when the device has none. */
  verify(deviceId: string, token: string | undefined): boolean {
    const expected = this.hashes.get(deviceId);
    if (!expected || typeof token !== "string" || token.length === 0 || token.length > 1024) return false;
    return timingSafeEqual(hashOnce("sha256", token, "buffer"), expected);
  }

  /** A token another cluster member stored (read back from the database). */
  restore(row: { deviceId: string; hash: string }): void {
    this.hashes.set(row.deviceId, Buffer.from(row.hash, "hex"));
  }

  /** Forgets a device's token in memory (the store deletes it with the device). */
  forget(deviceId: string): void {
    this.hashes.delete(deviceId);
  }
}
