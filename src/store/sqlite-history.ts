import type Database from "better-sqlite3";
import type { RunEntry } from "./sqlite-rows";

type Db = Database.Database;
type Stmt = Database.Statement<unknown[], unknown>;

/** Newest first: by `at`, then `version`. */
const newestFirst = (a: RunEntry, b: RunEntry) => b[1] - a[1] || b[2] - a[2];

interface TakenRun {
  rowid: number;
  entries: RunEntry[];
}

/** The newest `limit` transitions of a device, and the runs read to find them. */
interface Newest {
  /** Newest first. */
  entries: RunEntry[];
  taken: TakenRun[];
}

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
 * order exact even then. The old table's id key made a retried batch's rows no-ops; here a row
 * written twice is read once (by id), and retention removes the second copy like any row
 * beyond a device's limit.
 */
export class SqliteHistory {
  private readonly runsOf: Stmt;
  private readonly runSizesOf: Stmt;
  private readonly runText: Stmt;
  private readonly beginningBefore: Stmt;
  private readonly overLimit: Stmt;
  private readonly removeRun: Stmt;
  private readonly rewriteRun: Stmt;

  constructor(db: Db) {
    const order = "ORDER BY last_at DESC, last_version DESC";
    this.runsOf = db.prepare(`SELECT rowid, last_at, last_version, rows FROM history_runs WHERE device_id = ? ${order}`).raw(true);
    this.runSizesOf = db.prepare("SELECT rowid, n FROM history_runs WHERE device_id = ?").raw(true);
    this.runText = db.prepare("SELECT rows FROM history_runs WHERE rowid = ?").pluck(true);
    this.beginningBefore = db.prepare("SELECT rowid, last_at, n FROM history_runs WHERE first_at < ? ORDER BY first_at LIMIT ?").raw(true);
    this.overLimit = db.prepare("SELECT device_id FROM history_runs GROUP BY device_id HAVING sum(n) > ? LIMIT ?").raw(true);
    this.removeRun = db.prepare("DELETE FROM history_runs WHERE rowid = ?");
    this.rewriteRun = db.prepare("UPDATE history_runs SET first_at = ?, last_at = ?, last_version = ?, n = ?, rows = ? WHERE rowid = ?");
  }

  /** The device's last `limit` transitions, oldest first. */
  last(deviceId: string, limit: number): RunEntry[] {
    return this.newest(deviceId, limit).entries.reverse();
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
   * Keeps each device's newest `keep` transitions, removing at most `batchSize` rows a round:
   * first the runs older than every kept row, then the older rows of runs that hold kept ones too. Rows removed.
   */
  purgeBeyond(keep: number, batchSize: number): number {
    let left = batchSize;
    for (const [deviceId] of this.overLimit.all(keep, COUNT_PURGE_DEVICES) as [string][]) {
      if (left === 0) break;
      const { entries, taken } = this.newest(deviceId, keep);
      const read = new Set(taken.map((run) => run.rowid));
      // The runs the walk did not reach end before every kept row.
      for (const [rowid, n] of this.runSizesOf.all(deviceId) as [number, number][]) {
        if (left === 0) break;
        if (read.has(rowid)) continue;
        if (n <= left) {
          this.removeRun.run(rowid);
          left -= n;
        } else {
          left -= this.dropOldest(rowid, this.parse(rowid), () => true, left);
        }
      }
      const kept = new Set(entries);
      for (const run of taken) {
        if (left === 0) break;
        left -= this.dropOldest(run.rowid, run.entries, (e) => !kept.has(e), left);
      }
    }
    return batchSize - left;
  }

  private newest(deviceId: string, limit: number): Newest {
    const entries: RunEntry[] = [];
    const taken: TakenRun[] = [];
    if (limit <= 0) return { entries, taken };
    // Sorted and cut to `limit` whenever it is full: the last one is then the oldest that stays.
    let full = false;
    // A row written twice (a batch retried after its commit went through) is read once.
    const seen = new Set<string>();
    for (const [rowid, lastAt, lastVersion, text] of this.runsOf.iterate(deviceId) as IterableIterator<[number, number, number, string]>) {
      if (full) {
        const oldest = entries[limit - 1]!;
        // Every run after this one ends no later than it does.
        if (lastAt < oldest[1] || (lastAt === oldest[1] && lastVersion < oldest[2])) break;
      }
      const run = JSON.parse(text) as RunEntry[];
      taken.push({ rowid, entries: run });
      for (const e of run) {
        if (seen.has(e[0])) continue;
        seen.add(e[0]);
        entries.push(e);
      }
      if (entries.length >= limit) {
        entries.sort(newestFirst);
        entries.length = limit;
        full = true;
      }
    }
    if (!full) entries.sort(newestFirst);
    return { entries, taken };
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
