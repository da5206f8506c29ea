/**
 * Benchmarks that drive the runtime over the network run it as `npm start` does: the build's
 * dist/runtime/start.js in a Node process of its own (not the sources through tsx, whose
 * transpiled code differs from what ships). Needs `npm run build` (`npm run bench` builds first).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { closedPort, until } from "../test/helpers";
import { BUILT_START, runtimeNodeArgs } from "../test/runtime/spawn-runtime";

export const START = BUILT_START;

export interface Proc {
  child: ChildProcess;
  output: () => string;
  /** SIGTERM (SIGKILL after 15 s), then its exit: the code, or null when a signal ended it. */
  stop: () => Promise<number | null>;
}

/** Node running `args` in `cwd`, its output kept (the last 50–100 kB) for a failure message. */
export function startProcess(args: string[], env: NodeJS.ProcessEnv, cwd: string): Proc {
  const child = spawn(process.execPath, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const keep = (c: Buffer) => {
    out += c.toString();
    if (out.length > 100_000) out = out.slice(-50_000);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return {
    child,
    output: () => out,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

export async function getJson(url: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url);
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** `check` until it passes; fails at once, with the process's output, when the process exits. */
export function ready(proc: Proc, check: () => Promise<boolean>): () => Promise<boolean> {
  return async () => {
    if (proc.child.exitCode !== null) throw new Error(`exited with ${proc.child.exitCode}:\n${proc.output()}`);
    return check().catch(() => false);
  };
}

/**
 * The runtime as `npm start` runs it, on a fresh user dir `dir` and a free port, with `env` added
 * (TETHRAL_COAP_PORT and TETHRAL_MQTT_PORT default to 0: ports of its own); resolves once
 * /api/health answers 200. TETHRAL_TEST_NODE_ARGS adds Node flags (see runtimeNodeArgs).
 */
export async function startBuiltRuntime(dir: string, env: NodeJS.ProcessEnv, cwd: string): Promise<{ url: string; api: string; proc: Proc; stop: () => Promise<void> }> {
  checkBuild();
  rmSync(dir, { recursive: true, force: true });
  const port = await closedPort();
  const proc = startProcess([...runtimeNodeArgs(), START], { TETHRAL_COAP_PORT: "0", TETHRAL_MQTT_PORT: "0", ...env, PORT: String(port), TETHRAL_USER_DIR: dir }, cwd);
  const url = `http://127.0.0.1:${port}/`;
  const api = `http://127.0.0.1:${port}/api`;
  try {
    await until(ready(proc, async () => (await getJson(`${api}/health`)).status === 200), "the Tethral runtime", 60_000);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  // A runtime that does not stop cleanly (a non-zero exit, or killed after 15 s) fails the benchmark.
  const stop = async () => {
    const code = await proc.stop();
    if (code !== 0) throw new Error(`the runtime did not stop cleanly (exit ${code}):\n${proc.output().slice(-4000)}`);
  };
  return { url, api, proc, stop };
}

/** Throws unless the build is there and newer than every source: a benchmark measures what `npm start` would run. */
export function checkBuild(): void {
  if (!existsSync(START)) throw new Error("this benchmark runs the runtime as npm start does: run npm run build first");
  const newer = newerSource(statSync(START).mtimeMs);
  if (newer !== null) throw new Error(`${newer} is newer than the build this benchmark would measure: run npm run build first`);
}

/** A source file changed after `builtAt` (epoch ms), if any: the build would not be what the sources say. */
function newerSource(builtAt: number): string | null {
  const walk = (dir: string): string | null => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const file = join(dir, entry.name);
      const found = entry.isDirectory() ? walk(file) : statSync(file).mtimeMs > builtAt ? file : null;
      if (found !== null) return found;
    }
    return null;
  };
  return walk(join(__dirname, "..", "src"));
}
