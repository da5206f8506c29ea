/**
 * Where a device belongs in a cluster (CONTRACT §8): `partitionOf` is a stable hash of its id
 * (FNV-1a, 32 bits, over the id's UTF-16 code units; ids are ASCII by validation, so these are its
 * bytes) modulo the partition count, the same on every member and every version.
 */
export function partitionOf(deviceId: string, partitions: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < deviceId.length; i++) {
    h ^= deviceId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % partitions;
}

/** A member's weight for a partition (rendezvous hashing): FNV-1a of both, then a final mix. */
function score(member: string, partition: number): number {
  let h = 0x811c9dc5 ^ partition;
  h = Math.imul(h, 0x01000193);
  for (let i = 0; i < member.length; i++) {
    h ^= member.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  // murmur3's finaliser: FNV alone puts similar member names close together.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Which live member each partition should belong to: rendezvous hashing with a cap of
 * ceil(P / members) partitions per member, so the spread is even (within one) and a member
 * joining or leaving moves about the share it gains or loses. Every member computes the same
 * answer from the same member list. Partitions go in order of how strongly they prefer their top
 * member, so the cap displaces the weakest preferences.
 */
export function assignPartitions(partitions: number, members: readonly string[]): string[] {
  const live = [...new Set(members)].sort();
  if (live.length === 0) return [];
  const cap = Math.ceil(partitions / live.length);
  const ranked: { partition: number; order: string[]; margin: number }[] = [];
  for (let p = 0; p < partitions; p++) {
    const scored = live.map((m) => ({ m, s: score(m, p) })).sort((a, b) => b.s - a.s || (a.m < b.m ? -1 : 1));
    ranked.push({ partition: p, order: scored.map((x) => x.m), margin: scored.length > 1 ? scored[0]!.s - scored[1]!.s : 0 });
  }
  // Strongest preferences first; ties by partition number, so every member agrees.
  ranked.sort((a, b) => b.margin - a.margin || a.partition - b.partition);
  const load = new Map(live.map((m) => [m, 0]));
  const owner: string[] = new Array<string>(partitions);
  for (const r of ranked) {
    const m = r.order.find((candidate) => load.get(candidate)! < cap)!;
    owner[r.partition] = m;
    load.set(m, load.get(m)! + 1);
  }
  return owner;
}
