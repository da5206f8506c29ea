import { existsSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { TethralError } from "../core/errors";
import type { SqliteDatabase } from "./sqlite-database";
import type { SqliteStoreOptions } from "./sqlite";
import { fromWire, type SqliteMethod, type SqliteReply, type SqliteRequest } from "./sqlite-wire";

export type ThreadArgs<M extends SqliteMethod> = Parameters<SqliteDatabase[M]>;
export type ThreadResult<M extends SqliteMethod> = ReturnType<SqliteDatabase[M]>;

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

/**
 * One worker thread holding one SqliteDatabase. Calls are posted in order and settled by the
 * thread's answers; when the thread dies, every call waiting and every later one is refused
 * with UNAVAILABLE, so nothing waits for an answer that cannot come.
 */
export class SqliteThread {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private stopping = false;
  private ended: TethralError | undefined;
  private lastError: Error | undefined;

  private constructor(
    private readonly worker: Worker,
    private readonly where: string,
    private readonly onLost: (reason: TethralError) => void,
  ) {}

  /** Starts a thread for the database at `data.path`; `onLost` hears of a thread that died by itself. */
  static start(data: SqliteStoreOptions, onLost: (reason: TethralError) => void): SqliteThread {
    const thread = new SqliteThread(spawn(data), data.path, onLost);
    thread.listen();
    return thread;
  }

  /** Posts a call; the thread's answer settles the promise. */
  call<M extends SqliteMethod>(method: M, args: ThreadArgs<M>): Promise<ThreadResult<M>> {
    if (this.ended) return Promise.reject(this.ended);
    const id = this.nextId++;
    this.worker.postMessage({ id, method, args } satisfies SqliteRequest);
    return new Promise<ThreadResult<M>>((resolve, reject) => {
      // An idle thread must not keep the process alive (an open connection never did); a call
      // waiting for its answer must.
      if (this.pending.size === 0) this.worker.ref();
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
    });
  }

  /** Closes the database (after the calls already posted) and ends the thread. */
  async stop(): Promise<void> {
    if (this.ended) return;
    try {
      await this.call("close", []);
    } catch {
      // The thread is ended below whatever the close said.
    }
    this.stopping = true;
    await this.worker.terminate();
  }

  private listen(): void {
    this.worker.unref();
    this.worker.on("message", (reply: SqliteReply) => {
      const waiting = this.pending.get(reply.id);
      if (!waiting) return;
      this.pending.delete(reply.id);
      if (this.pending.size === 0) this.worker.unref();
      if (reply.ok) waiting.resolve(reply.value);
      else waiting.reject(fromWire(reply.error));
    });
    this.worker.on("error", (err) => {
      this.lastError = err;
    });
    this.worker.on("exit", (code) => {
      const why = this.lastError ? this.lastError.message : `exit code ${code}`;
      this.ended = this.stopping
        ? new TethralError("UNAVAILABLE", `the SQLite store at ${this.where} is not open`)
        : new TethralError("UNAVAILABLE", `the SQLite database thread for ${this.where} stopped unexpectedly (${why})`);
      if (this.lastError) this.ended.cause = this.lastError;
      for (const waiting of this.pending.values()) waiting.reject(this.ended);
      this.pending.clear();
      if (!this.stopping) this.onLost(this.ended);
    });
  }
}

/**
 * The worker, from wherever this code runs. From the TypeScript sources (tests, tsx) the thread
 * loads tsx's require hook itself: on Node 20 a worker does not get the --import hook. From a
 * build, this file is in a shared chunk at the top of dist/ and the worker is an entry of its
 * own at dist/store/sqlite-worker.js.
 */
function spawn(data: SqliteStoreOptions): Worker {
  if (__filename.endsWith(".ts")) {
    const entry = JSON.stringify(join(__dirname, "sqlite-worker.ts"));
    const source = `require(require("node:module").createRequire(${entry}).resolve("tsx/cjs")); require(${entry});`;
    return new Worker(source, { eval: true, workerData: data });
  }
  const candidates = [
    join(__dirname, "sqlite-worker.js"),
    join(__dirname, "store", "sqlite-worker.js"),
    join(__dirname, "..", "store", "sqlite-worker.js"),
  ];
  const file = candidates.find((f) => existsSync(f));
  if (!file) {
    throw new TethralError("UNAVAILABLE", `cannot open the SQLite database at ${data.path}: no sqlite-worker.js in ${candidates.join(", ")}`);
  }
  return new Worker(file, { workerData: data });
}
