import { type ChildProcess, execFile, spawn } from "node:child_process";
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { closedPort, until } from "./helpers";

// Debian's Mosquitto: the broker (package `mosquitto`, in /usr/sbin, which a user's PATH may
// lack) and the clients mosquitto_pub / mosquitto_sub (package `mosquitto-clients`). Clients
// nobody here wrote: where they are missing, the tests that need them say so and skip.

/** The program's path, looked up on PATH and in the sbin directories; null when it is not installed. */
export function program(name: string): string | null {
  const dirs = [...(process.env.PATH ?? "").split(path.delimiter), "/usr/sbin", "/usr/local/sbin"];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** Skips the test (or hook) with one line when a program is missing; true when it may go on. */
export function needs(context: Mocha.Context, names: string[], install: string): boolean {
  const missing = names.filter((name) => program(name) === null);
  if (missing.length === 0) return true;
  console.log(`    (skipped: ${missing.join(", ")} not installed; ${install})`);
  context.skip();
  return false;
}

export interface Mosquitto {
  url: string;
  port: number;
  /** The broker process's PID. */
  pid: number;
  stop(): Promise<void>;
}

/**
 * A Mosquitto broker of the test's own on a free port of 127.0.0.1: anonymous, nothing kept on
 * disk, with `settings` (mosquitto.conf lines) added. Stopped by its PID.
 */
export async function startMosquitto(settings: string[] = []): Promise<Mosquitto> {
  const bin = program("mosquitto");
  if (!bin) throw new Error("mosquitto is not installed");
  const dir = mkdtempSync(path.join(tmpdir(), "tethral-mosquitto-"));
  const conf = path.join(dir, "mosquitto.conf");
  const port = await closedPort();
  writeFileSync(conf, [`listener ${port} 127.0.0.1`, "allow_anonymous true", "persistence false", "log_dest stderr", "log_type error", ...settings, ""].join("\n"));
  const proc = spawn(bin, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  let output = "";
  proc.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  const stop = async (): Promise<void> => {
    if (proc.exitCode === null && proc.signalCode === null) process.kill(proc.pid!, "SIGTERM");
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await until(async () => {
      if (proc.exitCode !== null) throw new Error(`mosquitto exited with ${proc.exitCode}: ${output}`);
      return accepts(port);
    }, `mosquitto listening on ${port}`, 5000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `mqtt://127.0.0.1:${port}`, port, pid: proc.pid!, stop };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

export interface Run {
  /** The exit code; null when it was killed. */
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs mosquitto_pub (or another of the clients) to its end; killed after `timeoutMs`. */
export function run(name: string, args: string[], timeoutMs = 10_000): Promise<Run> {
  const bin = program(name);
  if (!bin) return Promise.reject(new Error(`${name} is not installed`));
  return new Promise((resolve) => {
    execFile(bin, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** curl with its arguments; the answer's status is split off its body (`-s -w "\n%{http_code}"`). */
export async function curl(args: string[], timeoutMs = 10_000): Promise<{ status: number; body: string }> {
  const r = await run("curl", ["-s", "-w", "\n%{http_code}", ...args], timeoutMs);
  const at = r.stdout.lastIndexOf("\n");
  return { status: Number(r.stdout.slice(at + 1)), body: r.stdout.slice(0, at) };
}

/** A mosquitto_sub left running: its output line by line, stopped by its PID. */
export class Subscriber {
  readonly lines: string[] = [];
  stderr = "";
  private readonly exited: Promise<void>;
  private partial = "";

  private constructor(private readonly proc: ChildProcess) {
    proc.stdout!.on("data", (chunk: Buffer) => {
      const text = this.partial + chunk.toString();
      const parts = text.split("\n");
      this.partial = parts.pop()!;
      this.lines.push(...parts);
    });
    proc.stderr!.on("data", (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.exited = new Promise((resolve) => proc.once("exit", () => resolve()));
  }

  static start(args: string[]): Subscriber {
    const bin = program("mosquitto_sub");
    if (!bin) throw new Error("mosquitto_sub is not installed");
    return new Subscriber(spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] }));
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async stop(): Promise<void> {
    if (this.running) process.kill(this.proc.pid!, "SIGTERM");
    await this.exited;
  }
}
