// The device simulator (`npm run simulate`): a fleet of devices that register through the REST
// API and then talk to the hub as real MQTT, CoAP, WebSocket or HTTP clients (CONTRACT §2, §3).
import { errorMessage } from "../core/errors";
import { DEFAULT_API, DEFAULT_DEVICES, DEFAULT_INTERVAL_SEC, DEFAULT_SUMMARY_SEC, SIMULATED_PROTOCOLS, type SimulatedProtocol, type SimulationOptions, resolveOptions } from "./simulator/options";
import { Simulation } from "./simulator/simulation";
import { SimulationError, UsageError } from "./simulator/support";

// The programmatic API: what scripts and the tests drive.
export { Simulation, type SimulationStats } from "./simulator/simulation";
export type { SimulationEvents } from "./simulator/device";
export { deviceSpecs, resolveOptions, type SimulationOptions } from "./simulator/options";
export { deviceEndpoint } from "./simulator/endpoints";
export { SimulationError, UsageError } from "./simulator/support";

export const USAGE = `Usage: npm run simulate -- [flags]

Registers simulated devices through the Tethral REST API and runs each as a real protocol
client: telemetry (temperature, humidity, battery) every interval, answers to commands
(ping answers pong, read the readings, anything else is acknowledged). The devices stay
registered when it stops; running it again with the same prefix replaces them.

  --devices <n>         how many devices (default ${DEFAULT_DEVICES})
  --protocol <name>     ${SIMULATED_PROTOCOLS.join(" | ")} (default mqtt)
  --api <url>           the hub's REST API (default ${DEFAULT_API})
  --interval <s>        seconds between telemetry reports, ±20 % (default ${DEFAULT_INTERVAL_SEC})
  --heartbeat <s>       the devices' heartbeatTimeout (default 3 × interval)
  --slow <fraction>     devices that answer commands after 2-5 s, e.g. 0.1 or 10% (default 0)
  --fail <fraction>     devices that answer commands with failure (default 0)
  --drop <fraction>     devices that go away for longer than their heartbeat now and then (default 0)
  --prefix <text>       device id prefix (default sim-<protocol>-, ids sim-mqtt-001, ...)
  --duration <s>        stop after this many seconds (default: run until Ctrl-C)
  --summary <s>         seconds between summary lines, 0 for none (default ${DEFAULT_SUMMARY_SEC})
  --mqtt <url>          MQTT broker (default: the hub's embedded broker, from GET /health)
  --coap <url>          the hub's CoAP server, e.g. coap://127.0.0.1:5683 (default: from GET /health)
  --websocket <url>     the hub's WebSocket endpoint (default: ws://<api host>/tethral/ws)
  --listen <host>       where CoAP and HTTP devices take commands; the hub must reach it (default 127.0.0.1)
  -h, --help            this text`;

type FlagKind = "count" | "seconds" | "fraction" | "text" | "protocol";

const FLAGS: Record<string, { key: keyof SimulationOptions | "duration"; kind: FlagKind }> = {
  "--devices": { key: "devices", kind: "count" },
  "--protocol": { key: "protocol", kind: "protocol" },
  "--api": { key: "api", kind: "text" },
  "--interval": { key: "interval", kind: "seconds" },
  "--heartbeat": { key: "heartbeat", kind: "seconds" },
  "--slow": { key: "slow", kind: "fraction" },
  "--fail": { key: "fail", kind: "fraction" },
  "--drop": { key: "drop", kind: "fraction" },
  "--prefix": { key: "prefix", kind: "text" },
  "--duration": { key: "duration", kind: "seconds" },
  "--summary": { key: "summary", kind: "seconds" },
  "--mqtt": { key: "mqtt", kind: "text" },
  "--coap": { key: "coap", kind: "text" },
  "--websocket": { key: "websocket", kind: "text" },
  "--listen": { key: "listen", kind: "text" },
};

/** What the command line asks for: the usage text, or a simulation (and how long to run it). */
export type ParsedArgs = { help: true } | { help: false; options: SimulationOptions; duration: number | null };

/**
 * Reads the simulator's flags (`--flag value` or `--flag=value`). Throws a UsageError, whose
 * message is the one line to print, for an unknown flag, a missing value or a value the
 * simulation cannot use: the values are checked here, before anything connects.
 */
export function parseArgs(argv: readonly string[]): ParsedArgs {
  const options: Record<string, unknown> = {};
  let duration: number | null = null;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") return { help: true };
    if (!arg.startsWith("--")) throw new UsageError(`unexpected argument "${arg}": flags start with --`);
    const eq = arg.indexOf("=");
    const name = eq < 0 ? arg : arg.slice(0, eq);
    const flag = Object.hasOwn(FLAGS, name) ? FLAGS[name] : undefined;
    if (!flag) throw new UsageError(`unknown flag ${name}`);
    let value: string | undefined = eq < 0 ? argv[i + 1] : arg.slice(eq + 1);
    if (eq < 0) {
      if (value === undefined || value.startsWith("--")) throw new UsageError(`${name} needs a value`);
      i++;
    }
    value = value!.trim();
    const parsed = convert(name, flag.kind, value);
    if (flag.key === "duration") {
      if ((parsed as number) <= 0) throw new UsageError(`--duration must be a number of seconds above 0, not ${value}`);
      duration = parsed as number;
    } else options[flag.key] = parsed;
  }
  resolveOptions(options as SimulationOptions);
  return { help: false, options: options as SimulationOptions, duration };
}

function convert(name: string, kind: FlagKind, value: string): unknown {
  switch (kind) {
    case "text":
      return value;
    case "protocol":
      if (!(SIMULATED_PROTOCOLS as readonly string[]).includes(value)) throw new UsageError(`${name} must be one of ${SIMULATED_PROTOCOLS.join(", ")}, not "${value}"`);
      return value as SimulatedProtocol;
    case "count":
      if (!/^\d+$/.test(value)) throw new UsageError(`${name} must be a whole number, not "${value}"`);
      return Number(value);
    case "seconds":
      if (!/^\d+(\.\d+)?$|^\.\d+$/.test(value)) throw new UsageError(`${name} must be a number of seconds, not "${value}"`);
      return Number(value);
    case "fraction": {
      const percent = /^(\d+(?:\.\d+)?)%$/.exec(value);
      if (percent) return Number(percent[1]) / 100;
      if (!/^\d+(\.\d+)?$|^\.\d+$/.test(value)) throw new UsageError(`${name} must be a fraction from 0 to 1 or a percentage, not "${value}"`);
      return Number(value);
    }
  }
}

/** Lines prefixed with the time, so a long run's summaries can be told apart. */
function timestamped(level: "info" | "warn", message: string): void {
  const line = `${new Date().toISOString().slice(11, 19)} ${message}`;
  if (level === "info") console.log(line);
  else console.warn(line);
}

/** `npm run simulate`: parse, start, print a summary now and then, stop cleanly on a signal or after --duration. */
async function main(argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  let args: ParsedArgs;
  try {
    args = parseArgs(argv);
  } catch (err) {
    console.error(`${errorMessage(err)} (see --help)`);
    process.exit(2);
  }
  if (args.help) {
    console.log(USAGE);
    return;
  }
  const simulation = new Simulation({ ...args.options, log: timestamped });
  let stopping = false;
  const stop = (why: string) => {
    if (stopping) {
      // A second Ctrl-C means "now".
      console.error(`${why} again: exiting without waiting`);
      process.exit(1);
    }
    stopping = true;
    timestamped("info", simulation.summary());
    timestamped("info", `${why}: stopping (the devices stay registered)`);
    simulation.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        console.error("the simulation did not stop cleanly:", err);
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));

  const { protocol, devices } = simulation.options;
  timestamped("info", `registering ${devices} ${protocol} devices at ${simulation.options.api} ...`);
  try {
    await simulation.start();
  } catch (err) {
    console.error(err instanceof SimulationError ? err.message : err);
    process.exit(1);
  }
  if (stopping) return;
  const traits = describeTraits(simulation);
  timestamped("info", `${devices} ${protocol} devices running against ${simulation.deviceEndpoint}${traits}; Ctrl-C to stop`);
  if (args.duration !== null) setTimeout(() => stop(`${args.duration} s passed`), args.duration * 1000);
}

function describeTraits(simulation: Simulation): string {
  const counts = { slow: 0, fail: 0, drop: 0 };
  for (const d of simulation.deviceList()) for (const t of ["slow", "fail", "drop"] as const) if (d.traits[t]) counts[t]++;
  const parts = [counts.slow && `${counts.slow} slow`, counts.fail && `${counts.fail} failing`, counts.drop && `${counts.drop} dropping`].filter(Boolean);
  return parts.length ? ` (${parts.join(", ")})` : "";
}

if (require.main === module) void main();
