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

/** Where a device's hash is kept: on its registry record. */
export interface TokenHolders {
  record(id: string): { tokenHash: string | undefined } | undefined;
}

export class DeviceTokens {
  /**
   * Hashes of ids with no registry record when they were set (none is expected: tokens load
   * after the devices and follow them in a cluster). Each device's hash otherwise lives on its
   * record, as a 32-character latin1 string: a map of a million 32-byte Buffers beside the
   * registry cost a tenth of a registration and 130 bytes a device.
   */
  private readonly orphans = new Map<string, string>();

  constructor(
    private readonly store: Store | null,
    private readonly holders: TokenHolders,
  ) {}

  static generate(): string {
    if (poolOffset === pool.length) {
      randomFillSync(pool);
      poolOffset = 0;
    }
    // Offsets into the pool rather than a view of it: a Buffer per token was a tenth of the token's cost.
    const start = poolOffset;
    const end = start + TOKEN_BYTES;
    poolOffset = end;
    const token = pool.toString("base64url", start, end);
    pool.fill(0, start, end);
    return token;
  }

  async load(): Promise<void> {
    if (!this.store) return;
    for (const row of await this.store.loadTokens()) this.set(row.deviceId, fromHex(row.hash));
  }

  has(deviceId: string): boolean {
    return this.get(deviceId) !== undefined;
  }

  /** Stores the hash of `token` for a device (durably first, with a store), replacing any other. */
  async save(deviceId: string, token: string, now: number): Promise<void> {
    if (!this.store) return this.remember(deviceId, token);
    const digest = digestOf(token);
    await this.store.putToken({ deviceId, hash: Buffer.from(digest, "latin1").toString("hex"), createdAt: now });
    this.set(deviceId, digest);
  }

  /** Keeps the hash of `token` in memory only: for a hub without a store, where `save` would do just this. */
  remember(deviceId: string, token: string): void {
    this.set(deviceId, digestOf(token));
  }

  /** Constant-time check of a presented token; false when the device has none. */
  verify(deviceId: string, token: string | undefined): boolean {
    const expected = this.get(deviceId);
    return expected !== undefined && matches(token, Buffer.from(expected, "latin1"));
  }

  /**
   * `verify`, against the hash in the store when this member's copy does not have it yet (a
   * cluster member's view follows the database about a second behind); false without a store.
   */
  async verifyStored(deviceId: string, token: string): Promise<boolean> {
    if (this.verify(deviceId, token)) return true;
    const row = this.store ? await this.store.getToken(deviceId) : null;
    return row !== null && matches(token, Buffer.from(row.hash, "hex"));
  }

  /** A token another cluster member stored (read back from the database). */
  restore(row: { deviceId: string; hash: string }): void {
    this.set(row.deviceId, fromHex(row.hash));
  }

  /** Forgets a device's token in memory (the store deletes it with the device). */
  forget(deviceId: string): void {
    const record = this.holders.record(deviceId);
    if (record) record.tokenHash = undefined;
    this.orphans.delete(deviceId);
  }

  private get(deviceId: string): string | undefined {
    return this.holders.record(deviceId)?.tokenHash ?? this.orphans.get(deviceId);
  }

  private set(deviceId: string, digest: string): void {
    const record = this.holders.record(deviceId);
    if (record) {
      record.tokenHash = digest;
      this.orphans.delete(deviceId);
    } else {
      this.orphans.set(deviceId, digest);
    }
  }
}

/** SHA-256 of the token's UTF-8 as latin1 text, in one call with no Hash object (making one was a sixth of a registration). */
/** Constant-time check of a presented token against a SHA-256 `expected`. */
function matches(token: unknown, expected: Buffer): boolean {
  if (typeof token !== "string" || token.length === 0 || token.length > 1024 || expected.length !== 32) return false;
  return timingSafeEqual(hashOnce("sha256", token, "buffer"), expected);
}

function digestOf(token: string): string {
  return hashOnce("sha256", token, "binary");
}

/** A stored hex hash as the latin1 string kept in memory. */
function fromHex(hex: string): string {
  return Buffer.from(hex, "hex").toString("latin1");
}

/**
 * The token a device presents over HTTP (a report, a WebSocket upgrade): `Authorization: Bearer
 * TOKEN`, else `?token=` (for devices that cannot set headers, and under httpNodeAuth, whose
 * Basic credentials take the header).
 */
export function presentedToken(authorization: unknown, query: unknown): string | undefined {
  const bearer = typeof authorization === "string" ? /^Bearer\s+(\S+)\s*$/i.exec(authorization) : null;
  if (bearer) return bearer[1];
  return typeof query === "string" ? query : undefined;
}
