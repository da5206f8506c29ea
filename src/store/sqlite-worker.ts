import { parentPort, workerData } from "node:worker_threads";
import { SqliteDatabase } from "./sqlite-database";
import type { SqliteStoreOptions } from "./sqlite";
import { SQLITE_METHODS, type SqliteReply, type SqliteRequest, toWire } from "./sqlite-wire";

/**
 * The SQLite store's database thread. Requests are answered one at a time in the order they
 * came, each after its work is done (a write: committed), so an answer means what the
 * synchronous call used to mean.
 */

const port = parentPort;
if (!port) throw new Error("sqlite-worker runs as a worker thread of SqliteStore");

const db = new SqliteDatabase(workerData as SqliteStoreOptions);
const methods = new Set<string>(SQLITE_METHODS);
type Call = (...args: unknown[]) => unknown;

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
});
