import { type ChildProcess, spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { createServer } from "node:net";
import assert from "node:assert/strict";
import path from "node:path";
import { checkAnswer } from "./api-document";

export interface RuntimeChild {
  /** The editor, e.g. `http://127.0.0.1:40123/`. */
  url: string;
  /** The REST API root, without a trailing slash: `http://127.0.0.1:40123/api`. */
  api: string;
  /** The runtime's process (Node itself, no shell between): for its CPU time, SIGSTOP and SIGCONT. */
  pid: number;
  /** What the process printed, for a failure message. */
  output(): string;
  /** SIGTERM, then waits for the exit (the runtime stops its flows and hub first). */
  stop(): Promise<void>;
  /** SIGKILL, as a crash or the OOM killer would: nothing runs on the way out. Resolves at the exit. */
  kill(): Promise<void>;
}

const CHILD = path.join(__dirname, "child.ts");
/** The build's runtime, as `npm start` runs it (`spawnRuntime` with `from: "build"`). */
export const BUILT_START = path.join(__dirname, "..", "..", "dist", "runtime", "start.js");

/** How long a start may take before it is given up (mocha hooks that spawn allow more). */
export const START_LIMIT_MS = 60_000;
const STOP_LIMIT_MS = 20_000;
// The last of the runtime's log kept for a failure message.
const OUTPUT_KEPT = 64 * 1024;

/** TETHRAL_TEST_NODE_ARGS: extra Node flags for the runtimes a test or benchmark starts (`--cpu-prof --cpu-prof-dir=...` to profile them). */
export function runtimeNodeArgs(): string[] {
  return (process.env.TETHRAL_TEST_NODE_ARGS ?? "").split(" ").filter((a) => a.length > 0);
}

/**
 * Starts the flow runtime in a process of its own on `userDir`, and resolves once it is ready. A
 * restart is `stop()` and another `spawnRuntime` on the same dir. `stop()` rejects when the runtime
 * does not stop cleanly (a non-zero exit, or no exit within 20 s, when it is killed): a restart
 * test must not pass over a shutdown that failed.
 * - `from: "sources"` (tests): test/runtime/child.ts through tsx, this package from its sources;
 *   ready when it prints READY.
 * - `from: "build"` (benchmarks): the build's dist/runtime/start.js, exactly as `npm start` runs
 *   it, given the port, the broker and the ports of `env` as child.ts takes them, at `npm start`'s
 *   log level (child.ts logs warnings only); ready when it prints where its editor is (flows that
 *   failed to start show later, as the benchmark's own failure). tsx's transpiled code differs
 *   from what ships (see bench/run.mjs), so a benchmark must not measure it.
 */
export function spawnRuntime(userDir: string, env: NodeJS.ProcessEnv = {}, from: "sources" | "build" = "sources"): Promise<RuntimeChild> {
  const args = from === "build" ? [...runtimeNodeArgs(), BUILT_START] : [...runtimeNodeArgs(), "--import", "tsx", CHILD, userDir];
  const all: NodeJS.ProcessEnv = { ...process.env, ...env };
  if (from === "build") {
    // What child.ts does with the same variables, said the way npm start reads them.
    all.PORT = env.TETHRAL_TEST_RUNTIME_PORT ?? "0";
    all.HOST = "127.0.0.1";
    all.TETHRAL_USER_DIR = userDir;
    all.TETHRAL_MQTT_PORT ??= "0";
    all.TETHRAL_COAP_PORT ??= "0";
    if (env.TETHRAL_TEST_RUNTIME_MQTT_URL) all.TETHRAL_MQTT_URL = env.TETHRAL_TEST_RUNTIME_MQTT_URL;
    else delete all.TETHRAL_MQTT_URL;
  }
  const proc: ChildProcess = spawn(process.execPath, args, { env: all, stdio: ["ignore", "pipe", "pipe"] });
  const readyLine = from === "build" ? /Tethral editor:\s+(\S+)/ : /READY (\S+)/;
  let output = "";
  const keep = (chunk: Buffer) => {
    output += chunk.toString();
    if (output.length > 2 * OUTPUT_KEPT) output = output.slice(-OUTPUT_KEPT);
  };
  proc.stdout!.on("data", keep);
  proc.stderr!.on("data", keep);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`the runtime did not start in ${START_LIMIT_MS / 1000} s:\n${output}`));
    }, START_LIMIT_MS);
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`the runtime exited with ${code} before it was ready:\n${output}`));
    };
    const onData = () => {
      const ready = readyLine.exec(output);
      if (!ready) return;
      clearTimeout(timer);
      proc.stdout!.off("data", onData);
      proc.off("exit", onExit);
      const url = ready[1]!;
      resolve({
        url,
        api: `${url}api`,
        pid: proc.pid!,
        output: () => output,
        stop: () =>
          new Promise<void>((done, fail) => {
            if (proc.exitCode !== null || proc.signalCode !== null) return done();
            let killed = false;
            const kill = setTimeout(() => {
              killed = true;
              proc.kill("SIGKILL");
            }, STOP_LIMIT_MS);
            proc.once("exit", (code) => {
              clearTimeout(kill);
              if (killed) fail(new Error(`the runtime did not stop within ${STOP_LIMIT_MS / 1000} s:\n${output.slice(-4000)}`));
              else if (code !== 0) fail(new Error(`the runtime stopped with exit code ${code}:\n${output.slice(-4000)}`));
              else done();
            });
            proc.kill("SIGTERM");
          }),
        kill: () =>
          new Promise<void>((done) => {
            if (proc.exitCode !== null || proc.signalCode !== null) return done();
            proc.once("exit", () => done());
            proc.kill("SIGKILL");
          }),
      });
    };
    proc.stdout!.on("data", onData);
    proc.once("exit", onExit);
  });
}

/** A parsed JSON answer: tests read it field by field and assert each. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any;

export interface CallOptions {
  /**
   * Why this answer is not checked against the OpenAPI document: a request sent outside the API
   * on purpose (a foreign Host or Origin the guard refuses, a route that does not exist).
   */
  outsideApi?: string;
}

/**
 * A JSON request to the API: status, parsed body (null for none) and headers. Every answer under
 * /api is checked against the API's OpenAPI document (route, status, content type, body schema),
 * and one that does not match fails the test, unless `options.outsideApi` says why not.
 */
export async function call(
  api: string,
  method: string,
  route: string,
  body?: unknown,
  headers: Record<string, string> = {},
  options: CallOptions = {},
): Promise<{ status: number; body: Json; headers: Headers }> {
  const init: RequestInit = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)["content-type"] ??= "application/json";
  }
  const url = `${api}${route}`;
  const res = await fetch(url, init);
  const text = await res.text();
  let parsed: unknown = null;
  if (text !== "") {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (!options.outsideApi) checkAnswer(url, method, res.status, res.headers.get("content-type"), text, parsed);
  return { status: res.status, body: parsed, headers: res.headers };
}

/**
 * Fixed free ports for the runtime's HTTP server, embedded MQTT broker and CoAP server: devices
 * find them again after a full deploy or a restart, as they would at 1880, 1883 and 5683. The
 * probe sockets are held until all three are chosen, so no two come out the same.
 */
export async function fixedPorts(): Promise<NodeJS.ProcessEnv> {
  const tcp = [createServer(), createServer()];
  const udp = createSocket("udp4");
  try {
    const [http, mqtt] = await Promise.all(
      tcp.map(
        (s) =>
          new Promise<number>((resolve, reject) => {
            s.once("error", reject);
            s.listen(0, "127.0.0.1", () => resolve((s.address() as { port: number }).port));
          }),
      ),
    );
    const coap = await new Promise<number>((resolve, reject) => {
      udp.once("error", reject);
      udp.bind(0, "127.0.0.1", () => resolve(udp.address().port));
    });
    return { TETHRAL_TEST_RUNTIME_PORT: String(http), TETHRAL_MQTT_PORT: String(mqtt), TETHRAL_COAP_PORT: String(coap) };
  } finally {
    await Promise.all(tcp.map((s) => new Promise<void>((r) => (s.listening ? s.close(() => r()) : r()))));
    await new Promise<void>((r) => {
      try {
        udp.close(() => r());
      } catch {
        r();
      }
    });
  }
}

/**
 * An error answer as CONTRACT §1 has it: the code, and a message that speaks of the request
 * (never of the flow's msg properties); with `status`, the answer's HTTP status too.
 */
export function assertErrorAnswer(res: { status?: number; body: Json }, code: string, status?: number): void {
  if (status !== undefined) assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body?.error?.code, code, JSON.stringify(res.body));
  assert.equal(typeof res.body.error.message, "string");
  assert.ok(res.body.error.message.length > 0);
  assert.doesNotMatch(res.body.error.message, /msg\./, "the message speaks of the request, not of msg properties");
}
