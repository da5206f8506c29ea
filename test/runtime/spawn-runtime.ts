import { type ChildProcess, spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { createServer } from "node:net";
import path from "node:path";

export interface RuntimeChild {
  /** The editor, e.g. `http://127.0.0.1:40123/`. */
  url: string;
  /** The REST API root, without a trailing slash: `http://127.0.0.1:40123/api`. */
  api: string;
  /** What the process printed, for a failure message. */
  output(): string;
  /** SIGTERM, then waits for the exit (the runtime stops its flows and hub first). */
  stop(): Promise<void>;
}

const CHILD = path.join(__dirname, "child.ts");

/**
 * Starts the flow runtime (test/runtime/child.ts) in a process of its own on `userDir`, and
 * resolves once it prints READY. A restart is `stop()` and another `spawnRuntime` on the same dir.
 */
export function spawnRuntime(userDir: string, env: NodeJS.ProcessEnv = {}): Promise<RuntimeChild> {
  const proc: ChildProcess = spawn(process.execPath, ["--import", "tsx", CHILD, userDir], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`the runtime did not start in 60 s:\n${output}`));
    }, 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const ready = /READY (\S+)/.exec(output);
      if (!ready) return;
      clearTimeout(timer);
      proc.stdout!.off("data", onData);
      const url = ready[1]!;
      resolve({
        url,
        api: `${url}api`,
        output: () => output,
        stop: () =>
          new Promise<void>((done) => {
            if (proc.exitCode !== null || proc.signalCode !== null) return done();
            const kill = setTimeout(() => proc.kill("SIGKILL"), 20_000);
            proc.once("exit", () => {
              clearTimeout(kill);
              done();
            });
            proc.kill("SIGTERM");
          }),
      });
    };
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the runtime exited with ${code} before it was ready:\n${output}`));
    });
  });
}

/** A parsed JSON answer: tests read it field by field and assert each. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any;

/** A JSON request to the API: status, parsed body (null for none) and headers. */
export async function call(
  api: string,
  method: string,
  route: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Json; headers: Headers }> {
  const init: RequestInit = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)["content-type"] ??= "application/json";
  }
  const res = await fetch(`${api}${route}`, init);
  const text = await res.text();
  let parsed: unknown = null;
  if (text !== "") {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

/** A TCP (or UDP) port free right now, for a runtime that must come back on the same ports. */
export function freePort(kind: "tcp" | "udp"): Promise<number> {
  return new Promise((resolve, reject) => {
    if (kind === "udp") {
      const s = createSocket("udp4");
      s.once("error", reject);
      s.bind(0, "127.0.0.1", () => {
        const { port } = s.address();
        s.close(() => resolve(port));
      });
      return;
    }
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}


/**
 * Fixed free ports for the runtime's HTTP server, embedded MQTT broker and CoAP server: devices
 * find them again after a full deploy or a restart, as they would at 1880, 1883 and 5683.
 */
export async function fixedPorts(): Promise<NodeJS.ProcessEnv> {
  return {
    TETHRAL_TEST_RUNTIME_PORT: String(await freePort("tcp")),
    TETHRAL_MQTT_PORT: String(await freePort("tcp")),
    TETHRAL_COAP_PORT: String(await freePort("udp")),
  };
}
