import type Database from "better-sqlite3";
import type { RunEntry } from "./sqlite-rows";

type Db = Database.Database;
type Stmt = Database.Statement<unknown[], unknown>;

/** Newest first: by `at`, then `version`. */
const newestFirst = (a: RunEntry, b: RunEntry) => b[1] - a[1] || b[2] - a[2];

/** A transition as a walk sees it: its time and version, the run it is in, and its row when that run was parsed. */
interface Mark {
  at: number;
  version: number;
  run: number;
  entry: RunEntry | null;
}

/**
 * Sorts newest first (by time, then version) and keeps one of each (time, version): a device's
 * time and version name a transition, so one a retried batch wrote twice counts once.
 */
function newestOnce(marks: Mark[]): void {
  marks.sort((a, b) => b.at - a.at || b.version - a.version);
  let out = 0;
  for (const m of marks) {
    const prev = out > 0 ? marks[out - 1]! : null;
    if (prev !== null && prev.at === m.at && prev.version === m.version) continue;
    marks[out++] = m;
  }
  marks.length = out;
}

/** A device's runs as its index holds them, newest first. */
type RunKey = [rowid: number, lastAt: number, lastVersion: number, n: number];

/** What a walk found: the device's runs, how many it reached, those it reached, and the newest transitions it kept. */
interface Walk {
  keys: RunKey[];
  reachedCount: number;
  reached: { rowid: number; entries: RunEntry[] | null }[];
  /** Newest first, at most `keep`. */
  marks: Mark[];
}

/** Whether a run whose newest row is (`lastAt`, `lastVersion`) ends before `m`. */
const endsBefore = (lastAt: number, lastVersion: number, m: { at: number; version: number }) =>
  lastAt < m.at || (lastAt === m.at && lastVersion < m.version);

/** Devices visited per purge round by the per-device limit. */
const COUNT_PURGE_DEVICES = 64;

/**
 * SQLite's state history, kept in runs (migration 10): one row of `history_runs` for each device
 * in each part of a write batch, holding that device's transitions of the part as one JSON array,
 * oldest first, with the run's earliest `at`, its newest (`last_at`, `last_version`) and its
 * length beside it.
 *
 * Why. One row a transition cost three index insertions: the id's, the (device, at, version)
 * index that reads use and the `at` index that retention uses. The device index is the cost: a
 * batch's rows go to as many places in it as the batch has devices. A raw better-sqlite3
 * measurement of the old table, 300,000 rows of 1,000 devices in 20,000-row transactions in
 * device order, took 165k rows/s, 270k with no index at all; bench:store wrote 121k–134k through
 * the hub. A run is one insertion into each of two indexes for all of a device's rows in the part.
 * With a transition a device in each batch, as a steady fleet writes them, a run is one row as
 * before, with one index fewer.
 *
 * Reads walk a device's runs newest first (by their newest row) and stop once the newest `limit`
 * are known: the next run's newest row is older than the `limit`-th found so far. Runs of one
 * device may overlap in time (a batch retried after a later one); the walk and the sort keep the
 * order exact even then. The old table's id key made a retried batch's rows no-ops; here a
 * transition written twice (a device's time and version name one) is read once, and the
 * per-device limit removes the second copy.
 */
export class SqliteHistory {
  private readonly runKeysOf: Stmt;
  private readonly runText: Stmt;
  private readonly beginningBefore: Stmt;
  private readonly overLimit: Stmt;
  /** Where the per-device limit goes on from in its next round: the last device it finished. */
  private countCursor = "";
  private readonly removeRun: Stmt;
  private readonly rewriteRun: Stmt;

  constructor(db: Db) {
    const order = "ORDER BY last_at DESC, last_version DESC";
    // The device index alone (it holds all four): a walk reads a run's rows only when it needs them.
    this.runKeysOf = db.prepare(`SELECT rowid, last_at, last_version, n FROM history_runs WHERE device_id = ? ${order}`).raw(true);
    this.runText = db.prepare("SELECT rows FROM history_runs WHERE rowid = ?").pluck(true);
    this.beginningBefore = db.prepare("SELECT rowid, last_at, n FROM history_runs WHERE first_at < ? ORDER BY first_at LIMIT ?").raw(true);
    this.overLimit = db.prepare(
      "SELECT device_id FROM history_runs WHERE device_id > ? GROUP BY device_id HAVING sum(n) > ? ORDER BY device_id LIMIT ?",
    ).raw(true);
    this.removeRun = db.prepare("DELETE FROM history_runs WHERE rowid = ?");
    this.rewriteRun = db.prepare("UPDATE history_runs SET first_at = ?, last_at = ?, last_version = ?, n = ?, rows = ? WHERE rowid = ?");
  }

  /** The device's last `limit` transitions, oldest first. */
  last(deviceId: string, limit: number): RunEntry[] {
    if (limit <= 0) return [];
    return this.walk(deviceId, limit, true).marks.map((m) => m.entry!).reverse();
  }

  /**
   * Removes transitions older than `cutoff` (ms), at most `batchSize` (the contract's bound on a
   * purge round): a run wholly older goes whole while it fits, else its oldest rows go. Rows removed.
   */
  purgeOlderThan(cutoff: number, batchSize: number): number {
    let left = batchSize;
    // Each of these runs holds a row older than the cutoff: batchSize of them are enough.
    for (const [rowid, lastAt, n] of this.beginningBefore.all(cutoff, batchSize) as [number, number, number][]) {
      if (left === 0) break;
      if (lastAt < cutoff && n <= left) {
        this.removeRun.run(rowid);
        left -= n;
      } else {
        left -= this.dropOldest(rowid, this.parse(rowid), (e) => e[1] < cutoff, left);
      }
    }
    return batchSize - left;
  }

  /**
   * Keeps each device's newest `keep` transitions (a fraction counts as the whole number below
   * it, at least 1), removing at most `batchSize` rows a round. Devices are taken in id order
   * from where the last round stopped, round the fleet, so that none waits on those before it.
   * Rows removed.
   */
  purgeBeyond(keep: number, batchSize: number): number {
    const limit = Math.max(1, Math.floor(keep));
    let left = batchSize;
    let wrapped = false;
    while (left > 0) {
      const devices = this.overLimit.all(this.countCursor, limit, COUNT_PURGE_DEVICES) as [string][];
      for (const [deviceId] of devices) {
        const { removed, done } = this.trim(deviceId, limit, left);
        left -= removed;
        // A device cut short by the bound (the only way to stop short) is taken again first in the next round.
        if (done) this.countCursor = deviceId;
        if (left === 0) break;
      }
      if (left === 0 || devices.length === COUNT_PURGE_DEVICES) continue;
      // The end of the fleet: once more from its start, then done.
      this.countCursor = "";
      if (wrapped) break;
      wrapped = true;
    }
    return batchSize - left;
  }

  /**
   * Removes up to `max` of a device's transitions beyond its newest `keep`: how many went, and
   * whether that was all of them. The walk reads the device index (newest run first) and parses
   * only runs of more than one row (a steady fleet's runs are of one): a run of one is its index
   * entry. It stops, as reads do, once the next run ends before the `keep`-th newest. A
   * transition written twice (same time and version) counts once: its second copy goes.
   */
  private trim(deviceId: string, keep: number, max: number): { removed: number; done: boolean } {
    const { keys, reachedCount, reached, marks } = this.walk(deviceId, keep, false);
    let left = max;
    // The runs not reached end before every kept row: whole, oldest first.
    for (let k = keys.length - 1; k >= reachedCount && left > 0; k--) {
      const [rowid, , , n] = keys[k]!;
      if (n <= left) {
        this.removeRun.run(rowid);
        left -= n;
      } else {
        left -= this.dropOldest(rowid, this.parse(rowid), () => true, left);
      }
    }
    const keptRuns = new Set<number>();
    const keptEntries = new Set<RunEntry>();
    for (const m of marks) {
      keptRuns.add(m.run);
      if (m.entry) keptEntries.add(m.entry);
    }
    for (let r = reached.length - 1; r >= 0 && left > 0; r--) {
      const { rowid, entries } = reached[r]!;
      if (entries === null) {
        if (keptRuns.has(r)) continue;
        this.removeRun.run(rowid);
        left -= 1;
      } else {
        left -= this.dropOldest(rowid, entries, (e) => !keptEntries.has(e), left);
      }
    }
    const removed = max - left;
    let stored = 0;
    for (const key of keys) stored += key[3];
    return { removed, done: removed === stored - marks.length };
  }

  /**
   * Walks a device's runs newest first (by their newest row, from the device index) until its
   * newest `keep` transitions are known: the next run ends before the `keep`-th newest found so
   * far. Runs of one row are their index entry unless `parseAll` (reads need their rows).
   */
  private walk(deviceId: string, keep: number, parseAll: boolean): Walk {
    const keys = this.runKeysOf.all(deviceId) as RunKey[];
    const reached: Walk["reached"] = [];
    const marks: Mark[] = [];
    let full = false;
    let i = 0;
    for (; i < keys.length; i++) {
      const [rowid, lastAt, lastVersion, n] = keys[i]!;
      if (full && endsBefore(lastAt, lastVersion, marks[keep - 1]!)) break;
      const run = reached.length;
      if (n === 1 && !parseAll) {
        reached.push({ rowid, entries: null });
        marks.push({ at: lastAt, version: lastVersion, run, entry: null });
      } else {
        const entries = this.parse(rowid);
        reached.push({ rowid, entries });
        for (const entry of entries) marks.push({ at: entry[1], version: entry[2], run, entry });
      }
      if (marks.length >= keep) {
        newestOnce(marks);
        if (marks.length >= keep) {
          marks.length = keep;
          full = true;
        }
      }
    }
    if (!full) newestOnce(marks);
    return { keys, reachedCount: i, reached, marks };
  }

  private parse(rowid: number): RunEntry[] {
    return JSON.parse(this.runText.get(rowid) as string) as RunEntry[];
  }

  /** Removes the oldest (at most `max`) of the run's entries that `drop` picks; the run is rewritten, or removed when empty. How many went. */
  private dropOldest(rowid: number, entries: RunEntry[], drop: (e: RunEntry) => boolean, max: number): number {
    const picked = entries.filter(drop);
    if (picked.length === 0) return 0;
    if (picked.length > max) {
      picked.sort((a, b) => newestFirst(b, a));
      picked.length = max;
    }
    const gone = new Set(picked);
    this.keep(rowid, entries.filter((e) => !gone.has(e)));
    return picked.length;
  }

  /** A run left with `entries` (oldest first as stored): rewritten, or removed when none is left. */
  private keep(rowid: number, entries: RunEntry[]): void {
    if (entries.length === 0) {
      this.removeRun.run(rowid);
      return;
    }
    let firstAt = Number.POSITIVE_INFINITY;
    let last = entries[0]!;
    for (const e of entries) {
      if (e[1] < firstAt) firstAt = e[1];
      if (e[1] > last[1] || (e[1] === last[1] && e[2] > last[2])) last = e;
    }
    this.rewriteRun.run(firstAt, last[1], last[2], entries.length, JSON.stringify(entries), rowid);
  }
}
