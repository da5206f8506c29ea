import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { Worker } from "node:worker_threads";

/**
 * The simulated MQTT devices of bench/comm-devices.ts, in a worker thread so the devices and
 * what they talk to each have a core. A call is answered by the worker's next message; a worker
 * that fails or exits fails every call waiting and every later one, so a benchmark never hangs
 * on it.
 */
export class DeviceWorker {
  private readonly worker = deviceThread();
  private readonly waiting: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  private failed: Error | null = null;

  constructor() {
    this.worker.on("message", (m: { ok: boolean; value?: unknown; error?: string }) => {
      const w = this.waiting.shift();
      if (!w) return;
      if (m.ok) w.resolve(m.value);
      else w.reject(new Error(m.error));
    });
    const fail = (err: Error) => {
      this.failed ??= err;
      for (const w of this.waiting.splice(0)) w.reject(err);
    };
    this.worker.on("error", fail);
    this.worker.on("exit", (code) => fail(new Error(`the device worker exited with ${code}`)));
  }

  call<T>(request: object): Promise<T> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise<T>((resolve, reject) => {
      this.waiting.push({ resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage(request);
    });
  }

  async close(): Promise<void> {
    if (!this.failed) await this.call({ op: "close" }).catch(() => undefined);
    await this.worker.terminate();
  }
}

/**
 * Run by bench/run.mjs (a bundle, `__filename` a .js file), the devices' thread is the build of
 * comm-devices.ts it made beside the bundle; from the sources, comm-devices.ts through tsx's
 * require hook (--import hooks do not reach workers on Node 20).
 */
function deviceThread(): Worker {
  const built = join(dirname(__filename), "comm-devices.js");
  if (__filename.endsWith(".js") && existsSync(built)) return new Worker(built);
  return new Worker(`require("tsx/cjs"); require(${JSON.stringify(join(__dirname, "comm-devices.ts"))});`, { eval: true });
}
