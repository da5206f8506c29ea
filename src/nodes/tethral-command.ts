import { TethralError } from "../core/errors";
import type { Command } from "../core/types";
import type { Hub } from "../core";
import { HubUse, type Outcome, abandon, clip, errorLabel, fromMsg, invalidInput, isPlainObject, noHubError, operationHandler, text, toError } from "./node-support";
import type { Node, NodeAPI, NodeDef, NodeMessage, NodeStatus } from "./types";

const OPERATIONS = ["send", "get", "cancel", "list"] as const;
type Operation = (typeof OPERATIONS)[number];

interface CommandDef extends NodeDef {
  hub?: string;
  /** `send` (the default), or `get`/`cancel` of the command `msg.commandId` names. */
  operation?: string;
  /** The device when `msg.deviceId` gives none. */
  deviceId?: string;
  /** The command name when `msg.command` gives none. */
  command?: string;
  wait?: boolean;
  /** Editor numbers arrive as strings; blank means "the hub's default". */
  timeout?: string | number;
  retries?: string | number;
  priority?: string;
  expiresIn?: string | number;
  supersede?: boolean;
  expectResponse?: boolean;
}

/**
 * `tethral-command` (CONTRACT §5): sends `msg.command` with `msg.payload` as its params to
 * `msg.deviceId`, and with `wait` passes on the device's answer — or hands the failure to a
 * Catch node (DEVICE_ERROR, TIMEOUT, CONFLICT) with `msg.command` set. The operations `get`
 * and `cancel` look up or cancel the command `msg.commandId` names.
 */
export default function (RED: NodeAPI): void {
  RED.nodes.registerType("tethral-command", function (this: Node, def: CommandDef): void {
    RED.nodes.createNode(this, def);
    const use = HubUse.attach(RED, this, def.hub, RED._("tethral-command.errors.no-hub"));
    let inFlight = 0;
    let lastName = "";
    let lastResult: NodeStatus = {};
    // The editor's choice only: msg.operation belongs to the device and state nodes a msg may have passed.
    const operation = text(def.operation) ?? "send";

    const show = (): void => {
      if (!use) return;
      if (inFlight > 0) {
        use.status({ fill: "blue", shape: "ring", text: clip(RED._("tethral-command.status.in-flight", { count: inFlight, command: lastName })) });
      } else {
        use.status(lastResult);
      }
    };

    const lookUp = operationHandler(use, RED._("tethral-command.errors.no-hub"), (msg) =>
      operation === "list" ? listPlan(RED, msg, def) : lookUpPlan(RED, msg, operation),
    );

    this.on("input", (msg: NodeMessage, send, done) => {
      if (!use) return done(noHubError(RED._("tethral-command.errors.no-hub")));
      if (operation !== "send") return lookUp(msg, send, done);
      let deviceId: unknown;
      let input: Record<string, unknown>;
      try {
        ({ deviceId, input } = requestOf(RED, msg, def));
      } catch (err) {
        lastResult = { fill: "red", shape: "ring", text: clip(errorLabel(err)) };
        show();
        return done(toError(err));
      }
      const name = input.command as string;
      inFlight++;
      lastName = name;
      show();
      use
        .hub()
        .then((hub) => hub.sendCommand(deviceId as string, input))
        .then(
          (command) => {
            inFlight--;
            // A redeploy closed the node meanwhile: its wiring is gone, the command lives on in the hub.
            if (use.isClosed) return abandon(msg, done);
            const failure = input.wait === true ? failureOf(command) : null;
            msg.command = structuredClone(command);
            lastResult = statusOf(RED, command, failure);
            show();
            if (failure) return done(toError(failure));
            msg.payload = command.completedAt === null ? null : structuredClone(command.result);
            send(msg);
            done();
          },
          (err: unknown) => {
            inFlight--;
            if (use.isClosed) return abandon(msg, done);
            lastResult = { fill: "red", shape: "ring", text: clip(RED._("tethral-command.status.refused", { command: name, error: errorLabel(err) })) };
            show();
            done(toError(err));
          },
        )
        .catch((err: unknown) => this.error(err, msg));
    });

    this.on("close", (_removed: boolean, done: () => void) => {
      use?.close();
      done();
    });
  });
};

/** `list`: the commands of `msg.deviceId` (or the node's device), newest first; `msg.payload` may filter by `status` and `limit`. */
function listPlan(RED: NodeAPI, msg: NodeMessage, def: CommandDef): (hub: Hub) => Promise<Outcome> {
  const deviceId = fromMsg(msg, "deviceId", text(def.deviceId));
  if (typeof deviceId !== "string" || deviceId === "") throw invalidInput("deviceId", RED._("tethral-command.errors.no-device"));
  // A payload that is no filter (an inject node's timestamp) lists the newest commands.
  const query = isPlainObject(msg.payload) ? msg.payload : {};
  return async (hub) => {
    const commands = await hub.deviceCommands(deviceId, query);
    return { payload: commands, status: RED._("tethral-command.status.listed", { count: commands.length, id: deviceId }) };
  };
}

/** `get` or `cancel` of the command `msg.commandId` (or the id of the command object in `msg.command`). */
function lookUpPlan(RED: NodeAPI, msg: NodeMessage, operation: string): (hub: Hub) => Promise<Outcome> {
  if (!OPERATIONS.includes(operation as Operation)) {
    throw invalidInput("operation", RED._("tethral-command.errors.operation", { operations: OPERATIONS.join(", ") }));
  }
  const earlier = isPlainObject(msg.command) ? msg.command.id : undefined;
  const id = fromMsg(msg, "commandId", earlier);
  if (typeof id !== "string" || id.trim() === "") throw invalidInput("commandId", RED._("tethral-command.errors.no-command-id", { operation }));
  return async (hub) => {
    const command = operation === "cancel" ? await hub.cancelCommand(id) : await hub.getCommand(id);
    msg.command = structuredClone(command);
    return { payload: command, status: RED._("tethral-command.status.looked-up", { command: command.command, status: command.status }) };
  };
}

/** What `msg` and the editor ask for, in the hub's `sendCommand` input shape. */
function requestOf(RED: NodeAPI, msg: NodeMessage, def: CommandDef): { deviceId: unknown; input: Record<string, unknown> } {
  const deviceId = fromMsg(msg, "deviceId", text(def.deviceId));
  if (deviceId === undefined) throw new TethralError("INVALID", RED._("tethral-command.errors.no-device"));
  // An incoming msg.command that is not a name (the command object of an earlier tethral-command) is not an override.
  const command = typeof msg.command === "string" && msg.command.trim() !== "" ? msg.command.trim() : text(def.command);
  if (command === undefined) throw new TethralError("INVALID", RED._("tethral-command.errors.no-command"));
  const params = msg.payload === undefined || msg.payload === null ? {} : msg.payload;
  if (typeof params !== "object" || Array.isArray(params)) throw invalidInput("payload", RED._("tethral-command.errors.params"));
  const options: Record<string, unknown> = {
    wait: fromMsg(msg, "wait", def.wait !== false),
    timeout: fromMsg(msg, "timeout", number(def.timeout)),
    retries: fromMsg(msg, "retries", number(def.retries)),
    priority: fromMsg(msg, "priority", text(def.priority)),
    expiresIn: fromMsg(msg, "expiresIn", number(def.expiresIn)),
    supersede: fromMsg(msg, "supersede", def.supersede === true),
    expectResponse: fromMsg(msg, "expectResponse", def.expectResponse !== false),
  };
  for (const key of Object.keys(options)) if (options[key] === undefined) delete options[key];
  return { deviceId, input: { command, params, ...options } };
}

/** A number from the editor (a string there), undefined when left blank. */
function number(value: unknown): number | undefined {
  if (typeof value === "number") return value;
  const s = text(value);
  return s === undefined ? undefined : Number(s);
}

/**
 * The error a waited-for command ended with, or null when it succeeded (a one-way command
 * ends at `sent` or `delivered`) or has not ended (still queued for a device that is away).
 */
function failureOf(command: Command): TethralError | null {
  if (command.completedAt === null) return null;
  switch (command.status) {
    case "failed":
      return new TethralError("DEVICE_ERROR", command.error ?? "the device reported a failure");
    case "timed_out":
    case "expired":
      return new TethralError("TIMEOUT", command.error ?? `the command ${command.status}`);
    case "superseded":
    case "cancelled":
      return new TethralError("CONFLICT", command.error ?? `the command was ${command.status}`);
    default:
      return null;
  }
}

function statusOf(RED: NodeAPI, command: Command, failure: TethralError | null): NodeStatus {
  const names = { command: command.command, status: command.status };
  if (command.completedAt === null) return { fill: "blue", shape: "dot", text: clip(RED._("tethral-command.status.pending", names)) };
  const ms = Math.max(0, Date.parse(command.completedAt) - Date.parse(command.createdAt));
  const took = ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
  const shown = clip(RED._("tethral-command.status.ended", { ...names, took }));
  return failure ? { fill: "red", shape: "ring", text: shown } : { fill: "green", shape: "dot", text: shown };
}
