// `npm start`'s runtime and the npm process that started it (see `watchNpm`).
import { readFileSync } from "node:fs";
import path from "node:path";

/** How often a runtime started by npm looks for npm (a getppid call; on Linux a small /proc read). */
const CHECK_MS = 500;
const SHELLS = new Set(["sh", "dash", "bash", "zsh", "ash", "ksh"]);

/**
 * Under `npm start` the runtime is not npm's child but its shell's: npm runs `sh -c "node
 * dist/runtime/start.js"`, and dash stays between them. npm passes a SIGTERM on to that shell
 * only: the shell exits, npm exits, and the runtime would go on serving, reparented. So a runtime
 * started by an npm script stops, as on SIGTERM, once npm has gone: its parent changed or went,
 * or (Linux) the shell between them lost npm. Call it first thing: npm may go while Node-RED
 * starts. Returns a function that starts the watch, calling `onGone` once; or null outside npm,
 * for a process npm did not start itself (Linux), or with `TETHRAL_STOP_WITH_NPM=off` (a runtime
 * an npm script puts in the background on purpose).
 * `nohup node dist/runtime/start.js &` outlives its shell, as any program does.
 */
export function watchNpm(env: NodeJS.ProcessEnv = process.env): ((onGone: () => void) => void) | null {
  if (!env.npm_lifecycle_event || env.TETHRAL_STOP_WITH_NPM === "off") return null;
  const parent = process.ppid;
  let npm: number | undefined;
  let goneAtStart = false;
  if (process.platform === "linux") {
    if (isShellRunningScript(parent)) {
      // The shell's own parent, npm: npm killed alone (SIGKILL, the OOM killer) leaves the shell
      // waiting on the runtime, reparented.
      npm = parentOf(parent);
    } else if (parent === 1) {
      // Reparented before this looked: npm and its shell are gone already.
      goneAtStart = true;
    } else if (!isNpm(parent)) {
      // Not npm's script but a process of another program's run by one (a benchmark's runtime
      // inherits npm's variables): that program stops it.
      return null;
    }
  }
  const gone = () => goneAtStart || process.ppid !== parent || !isAlive(parent) || (npm !== undefined && parentOf(parent) !== npm);
  return (onGone) => {
    if (gone()) return onGone();
    const timer = setInterval(() => {
      if (!gone()) return;
      clearInterval(timer);
      onGone();
    }, CHECK_MS).unref();
  };
}

/** Whether a process is there (on Windows a process's ppid never changes: it must be asked). */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** A process's arguments (Linux), or undefined. */
function commandLine(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").slice(0, -1);
  } catch {
    return undefined;
  }
}

/** `sh -c <script>` (or another shell's), as npm runs a script. */
function isShellRunningScript(pid: number): boolean {
  const args = commandLine(pid);
  return args !== undefined && args.length >= 3 && SHELLS.has(path.basename(args[0]!)) && args[1] === "-c";
}

/** npm itself (a shell that runs the script's last command in its place leaves npm the parent). */
function isNpm(pid: number): boolean {
  return commandLine(pid)?.some((a) => /(^|[/\\])npm(-cli\.js)?$/.test(a)) ?? false;
}

/** A process's parent (Linux, from /proc/<pid>/stat), or undefined. */
function parentOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) state ppid …": comm may hold spaces and parentheses.
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    return Number.isInteger(ppid) ? ppid : undefined;
  } catch {
    return undefined;
  }
}
