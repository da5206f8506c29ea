import { existsSync } from "node:fs";
import { join, resolve as resolvePath } from "node:path";
import { MessageChannel, type MessagePort, Worker } from "node:worker_threads";
import { ChurnMap } from "../core/churn-map";
import { TethralError } from "../core/errors";
import type { SqliteDatabase } from "./sqlite-database";
import type { SqliteStoreOptions } from "./sqlite";
import { BACKSTOP_PAGES, fromWire, isInMemoryPath, type SqliteMethod, type SqliteReply, type SqliteRequest } from "./sqlite-wire";

export type ThreadArgs<M extends SqliteMethod> = Parameters<SqliteDatabase[M]>;
export type ThreadResult<M extends SqliteMethod> = ReturnType<SqliteDatabase[M]>;

/** What a thread of the store starts with (sqlite-worker.ts). */
export interface ThreadData extends SqliteStoreOptions {
  role: "database" | "checkpointer";
  /** The database thread's line to the checkpointer, and the checkpointer's to it. */
  peer?: MessagePort;
  walAutocheckpointPages?: number;
}

/** SQLite's default checkpoint threshold, for a database thread whose checkpointer is gone. */
const SQLITE_DEFAULT_AUTOCHECKPOINT = 1000;

/**
 * A call waiting for the thread's answer. A class, not an object literal: V8 decides per literal
 * whether to allocate its objects straight into the old generation ("pretenuring"), from how many
 * survive a young collection. While a bulk write is on the thread its call waits long, so the
 * literal was judged long-lived for good; every later call's entry then went to the old
 * generation holding its young promise and answer, which each young collection had to keep and
 * copy until the next full one. Queries after a year's load of points took a p99 of 18–27 ms
 * that way against 2.6–6.2 ms with this class (bench:timeseries, SQLite, three runs each way at
 * least). `new` of a class makes no such decision.
 */
class Pending {
  constructor(
    readonly resolve: (value: unknown) => void,
    readonly reject: (err: Error) => void,
  ) {}
}

/**
 * One worker thread holding one SqliteDatabase. Calls are posted in order and settled by the
 * thread's answers; when the thread dies, every call waiting and every later one is refused
 * with UNAVAILABLE, so nothing waits for an answer that cannot come.
 */
export class SqliteThread {
  /** By call id (see ChurnMap: a Map of them kept answered calls past their time). */
  private readonly pending = new ChurnMap<number, Pending>();
  private nextId = 1;
  private stopping = false;
  private ended: TethralError | undefined;
  private lastError: Error | undefined;

  private constructor(
    private readonly worker: Worker,
    private readonly where: string,
    private readonly onLost: (reason: TethralError) => void,
    private checkpointer: Worker | null,
  ) {}

  /** The checkpointer's stop, once begun: every later stop waits for the same one. */
  private checkpointerStopped: Promise<void> | null = null;

  /**
   * Starts a thread for the database at `data.path`, and for a file its checkpointer thread;
   * `onLost` hears of a database thread that died by itself.
   */
  static start(data: SqliteStoreOptions, onLost: (reason: TethralError) => void): SqliteThread {
    if (isInMemoryPath(data.path)) {
      const thread = new SqliteThread(spawn({ ...data, role: "database" }), data.path, onLost, null);
      thread.listen();
      return thread;
    }
    // Both threads open the same file, the checkpointer later: by then this process may have
    // changed its working directory.
    const file = { ...data, path: resolvePath(data.path) };
    const { port1, port2 } = new MessageChannel();
    const worker = spawn({ ...file, role: "database", peer: port1, walAutocheckpointPages: BACKSTOP_PAGES }, [port1]);
    let checkpointer: Worker;
    try {
      checkpointer = spawn({ ...file, role: "checkpointer", peer: port2 }, [port2]);
    } catch (err) {
      void worker.terminate();
      throw err;
    }
    const thread = new SqliteThread(worker, data.path, onLost, checkpointer);
    thread.listen();
    return thread;
  }

  /**
   * Posts a call; the thread's answer settles the promise. The buffers in `transfer` are moved
   * to the thread, not copied: the caller must not use them again.
   */
  call<M extends SqliteMethod>(method: M, args: ThreadArgs<M>, transfer?: readonly ArrayBuffer[]): Promise<ThreadResult<M>> {
    if (this.ended) return Promise.reject(this.ended);
    const id = this.nextId++;
    this.worker.postMessage({ id, method, args } satisfies SqliteRequest, transfer);
    return new Promise<ThreadResult<M>>((resolve, reject) => {
      // An idle thread must not keep the process alive (an open connection never did); a call
      // waiting for its answer must.
      if (this.pending.size === 0) this.worker.ref();
      this.pending.set(id, new Pending(resolve as (value: unknown) => void, reject));
    });
  }

  /** Closes the database (after the calls already posted) and ends the threads. */
  async stop(): Promise<void> {
    // The checkpointer's connection closes first: the database thread's close, the last one,
    // then checkpoints what is left and removes the WAL.
    await this.stopCheckpointer();
    if (this.ended) return;
    try {
      await this.call("close", []);
    } catch {
      // The thread is ended below whatever the close said.
    }
    this.stopping = true;
    await this.worker.terminate();
  }

  private stopCheckpointer(): Promise<void> {
    const c = this.checkpointer;
    if (c) {
      this.checkpointer = null;
      this.checkpointerStopped = this.endCheckpointer(c);
    }
    return this.checkpointerStopped ?? Promise.resolve();
  }

  private async endCheckpointer(c: Worker): Promise<void> {
    const closed = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2000);
      timer.unref();
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      c.once("message", done);
      c.once("exit", done);
    });
    try {
      c.postMessage("close");
      await closed;
    } finally {
      await c.terminate();
    }
  }

  private listen(): void {
    const c = this.checkpointer;
    if (c) {
      c.unref();
      c.on("error", () => undefined);
      c.on("exit", () => {
        if (this.checkpointer !== c) return;
        // Died by itself: the database thread checkpoints as SQLite does by default again.
        this.checkpointer = null;
        this.call("walAutocheckpoint", [SQLITE_DEFAULT_AUTOCHECKPOINT]).catch(() => undefined);
      });
    }
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
      if (!this.stopping) {
        void this.stopCheckpointer();
        this.onLost(this.ended);
      }
    });
  }
}

/**
 * The worker, from wherever this code runs. From the TypeScript sources (tests, tsx) the thread
 * loads tsx's require hook itself: on Node 20 a worker does not get the --import hook. From a
 * build, this file is in a shared chunk at the top of dist/ and the worker is an entry of its
 * own at dist/store/sqlite-worker.js.
 */
function spawn(data: ThreadData, transferList: MessagePort[] = []): Worker {
  if (__filename.endsWith(".ts")) {
    const entry = JSON.stringify(join(__dirname, "sqlite-worker.ts"));
    const source = `require(require("node:module").createRequire(${entry}).resolve("tsx/cjs")); require(${entry});`;
    return new Worker(source, { eval: true, workerData: data, transferList });
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
  return new Worker(file, { workerData: data, transferList });
}
