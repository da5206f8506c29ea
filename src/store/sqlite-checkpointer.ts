import Database from "better-sqlite3";
import type { MessagePort } from "node:worker_threads";

type Db = InstanceType<typeof Database>;

/** At most one background checkpoint per this many ms while writes keep coming. */
export const CHECKPOINT_INTERVAL_MS = 200;
/** Checkpoints failed in a row after which the thread gives up (the writer then checkpoints as SQLite does by default). */
const MAX_FAILURES = 5;

interface CheckpointResult {
  busy: number;
  log: number;
  checkpointed: number;
}

/**
 * Copies the WAL back into the database file from a thread of its own, so the store's thread
 * never does it in the middle of a write.
 *
 * SQLite checkpoints at the end of whichever commit takes the WAL past 1,000 pages, on the
 * connection that made it: that commit then also copies 4 MB and waits for two fsyncs. With a
 * transaction per command at 1,000 commands a second, that was one call in a few hundred taking
 * 5–10 ms instead of 0.1, and every call queued behind it waiting as long (`bench:comm`).
 *
 * Here a second connection runs passive checkpoints (they never wait for, nor block, the writer
 * or readers), at most every `CHECKPOINT_INTERVAL_MS` while the writer says it has written, and
 * again after it stops, until a checkpoint finds nothing new. The writer keeps SQLite's own
 * checkpoint at `BACKSTOP_PAGES` (sqlite-wire.ts), so the WAL stays bounded whatever happens here. Under steady
 * writes the WAL is rarely all copied just when a transaction begins (when SQLite starts it over
 * from the top), so it grows to that size and the writer's checkpoint does run, once per
 * `BACKSTOP_PAGES` instead of per 1,000, and finds most of the WAL copied already. A thread whose
 * checkpoints keep failing ends, and the writer checkpoints as SQLite does by default again.
 */
export class WalCheckpointer {
  private db: Db | undefined;
  private timer: NodeJS.Timeout | null = null;
  private lastRunAt = 0;
  private lastLog = -1;
  private failures = 0;
  private closed = false;

  constructor(
    private readonly path: string,
    private readonly busyTimeoutMs: number,
    /** Called once checkpoints keep failing: the thread should end. */
    private readonly giveUp: () => void,
  ) {}

  /** The writer wrote something: checkpoint soon. */
  nudge(): void {
    if (this.closed || this.timer !== null) return;
    const wait = Math.max(0, this.lastRunAt + CHECKPOINT_INTERVAL_MS - performance.now());
    this.timer = setTimeout(() => this.run(), wait);
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.db?.close();
    this.db = undefined;
  }

  private run(): void {
    this.timer = null;
    if (this.closed) return;
    this.lastRunAt = performance.now();
    let result: CheckpointResult;
    try {
      // Opened on first use: by then the writer has opened the file, set WAL and migrated it.
      this.db ??= this.connect();
      result = (this.db.pragma("wal_checkpoint(PASSIVE)") as CheckpointResult[])[0]!;
    } catch {
      // Briefly unreadable: the next nudge tries again, and the writer's own checkpoint bounds
      // the WAL meanwhile. Failing again and again: let the writer do it all.
      if (++this.failures >= MAX_FAILURES) {
        this.close();
        this.giveUp();
      }
      return;
    }
    this.failures = 0;
    // Frames came in meanwhile, some could not be copied yet (a reader holds them), or the
    // checkpoint lock was taken (the writer's own checkpoint): look again. Otherwise rest until
    // the writer writes again.
    const again = result.busy !== 0 || result.log !== this.lastLog || result.checkpointed < result.log;
    this.lastLog = result.log;
    if (again) this.nudge();
  }

  private connect(): Db {
    const db = new Database(this.path, { fileMustExist: true, timeout: this.busyTimeoutMs });
    try {
      db.pragma("synchronous = NORMAL");
      // This connection never checkpoints on its own commits (it makes none) and must not
      // hold a snapshot longer than a checkpoint.
      db.pragma("wal_autocheckpoint = 0");
    } catch (err) {
      db.close();
      throw err;
    }
    return db;
  }
}

/** The checkpointer's thread: nudges from the writer's thread on `writer`, "close" from its parent. */
export function runCheckpointer(parent: MessagePort, writer: MessagePort, path: string, busyTimeoutMs: number): void {
  // Giving up ends this thread; its parent then has the writer checkpoint on its own again.
  const checkpointer = new WalCheckpointer(path, busyTimeoutMs, () => process.exit(1));
  writer.on("message", () => checkpointer.nudge());
  parent.on("message", (m: unknown) => {
    if (m === "close") {
      checkpointer.close();
      writer.close();
      parent.postMessage("closed");
    }
  });
}
