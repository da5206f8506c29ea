import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { SqliteDatabase } from "./sqlite-database";
import { runCheckpointer } from "./sqlite-checkpointer";
import type { ThreadData } from "./sqlite-thread";
import { SQLITE_METHODS, type SqliteReply, type SqliteRequest, toWire } from "./sqlite-wire";

/**
 * The SQLite store's threads. The database thread answers requests one at a time in the order
 * they came, each after its work is done (a write: committed), so an answer means what the
 * synchronous call used to mean. A file database has a second thread, the checkpointer (see
 * `WalCheckpointer`), which the database thread tells when it has written.
 */

const port = parentPort;
if (!port) throw new Error("sqlite-worker runs as a worker thread of SqliteStore");
const data = workerData as ThreadData;

if (data.role === "checkpointer") {
  runCheckpointer(port, data.peer!, data.path, data.busyTimeoutMs ?? 5000);
} else {
  serve(port, data.peer);
}

function serve(port: MessagePort, checkpointer: MessagePort | undefined): void {
  const db = new SqliteDatabase(data);
  const methods = new Set<string>(SQLITE_METHODS);
  type Call = (...args: unknown[]) => unknown;
  /** Calls that may have written: only their success wakes the checkpointer. */
  const WRITES = new Set<string>(["open", "upsertDevice", "deleteDevice", "upsertState", "writeBatch", "commitBatch", "putToken", "deleteToken", "putCommand", "putCommands", "deleteCommand", "purge"]);
  /** Nudges are few: one per this many ms at most (the checkpointer waits longer between runs anyway). */
  const NUDGE_MS = 50;
  let nudgedAt = -NUDGE_MS;

  port.on("message", ({ id, method, args }: SqliteRequest) => {
    let reply: SqliteReply;
    try {
      // Only the listed methods: a request must not reach the constructor or a private helper.
      if (!methods.has(method)) throw new Error(`the SQLite worker has no method ${String(method)}`);
      reply = { id, ok: true, value: (db[method] as Call).apply(db, args) };
    } catch (err) {
      reply = { id, ok: false, error: toWire(err) };
    }
    try {
      port.postMessage(reply);
    } catch (err) {
      port.postMessage({ id, ok: false, error: toWire(err) } satisfies SqliteReply);
    }
    if (checkpointer && reply.ok && WRITES.has(method)) {
      const now = performance.now();
      if (now - nudgedAt >= NUDGE_MS) {
        nudgedAt = now;
        checkpointer.postMessage(0);
      }
    }
  });
}
