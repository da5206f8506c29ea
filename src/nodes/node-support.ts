import { type Hub, errorMessage } from "../core";
import { TethralError, isTethralError } from "../core/errors";
import { checkLabel } from "../core/validation";
import type { HubStatusReport, InputHandler, Node, NodeAPI, NodeMessage, NodeStatus, TethralHubNode } from "./types";

/**
 * What every Tethral node does with its hub: find the config node, count itself as a user,
 * and keep a status that tells the truth — the hub's trouble when it has one, else the node's
 * own last result. Modelled on the core MQTT nodes' use of their broker node.
 */
export class HubUse {
  private hubReport: HubStatusReport | null = null;
  private own: NodeStatus = {};
  private readonly unsubscribe: () => void;
  /** What `whileRunning` set up on the hub it last saw running, and how to undo it. */
  private attached: { hub: Hub; undo: () => void } | null = null;
  private attach: ((hub: Hub) => () => void) | null = null;
  private closed = false;

  private constructor(
    private readonly node: Node,
    private readonly hubNode: TethralHubNode,
  ) {
    hubNode.register(node, { showStatus: false });
    this.unsubscribe = hubNode.onStatus((report) => {
      this.hubReport = report;
      this.show();
      this.follow();
    });
  }

  /**
   * The hub of `hubId`, or null after an error status and a log line when the node names
   * none (a flow imported without its config node).
   */
  static attach(RED: NodeAPI, node: Node, hubId: unknown, noHubText: string): HubUse | null {
    const hubNode = typeof hubId === "string" && hubId !== "" ? (RED.nodes.getNode(hubId) as TethralHubNode | null) : null;
    if (!hubNode || typeof hubNode.acquire !== "function") {
      node.status({ fill: "red", shape: "ring", text: noHubText });
      node.error(noHubText);
      return null;
    }
    return new HubUse(node, hubNode);
  }

  /**
   * Runs `setUp` on the hub whenever one is running, and its undo when that hub stops: a
   * subscription survives a failed first start (the config node makes a new hub on the next
   * use) and a restart, and is released on close. Starts the hub if it is not started yet.
   */
  whileRunning(setUp: (hub: Hub) => () => void): void {
    this.attach = setUp;
    this.hub().catch(() => undefined); // a failure shows as the hub's status; the next start is followed
    this.follow();
  }

  /** Sets up on the hub if it runs, and undoes that if it does not (status listeners run after the hub's state moved). */
  private follow(): void {
    if (!this.attach || this.closed) return;
    const hub = this.hubNode.runningHub();
    if (hub === null) {
      this.detach();
      return;
    }
    // Set up at once, on the "running" change itself: a call that waited for the hub's start
    // (a registration sent as the flow was deployed) runs after this, so its events are seen.
    if (this.attached?.hub === hub) return;
    this.detach();
    try {
      this.attached = { hub, undo: this.attach(hub) };
    } catch (err) {
      this.failed(errorLabel(err));
      this.node.error(toError(err));
    }
  }

  private detach(): void {
    const attached = this.attached;
    this.attached = null;
    attached?.undo();
  }

  /** True once the node is closed (a redeploy): work still in flight must not send. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** The started hub (starts it on first use). */
  hub(): Promise<Hub> {
    return this.hubNode.acquire();
  }

  /** The node's own status, shown while the hub is running. */
  status(status: NodeStatus): void {
    this.own = status;
    this.show();
  }

  /** `warning`: an answer that says something is wrong (a degraded health), shown yellow. */
  ok(text: string, warning = false): void {
    this.pendingText = null;
    this.status({ fill: warning ? "yellow" : "green", shape: "dot", text: clip(text) });
  }

  /**
   * As `ok`, for results that may come many times a second (device reports, REST reads): shown
   * at most twice a second, its text made (translated) only when it is shown.
   */
  okOften(text: () => string): void {
    this.pendingText = text;
    this.often.request();
  }

  private pendingText: (() => string) | null = null;

  private readonly often = throttled(() => this.show());

  failed(text: string): void {
    this.pendingText = null;
    this.status({ fill: "red", shape: "ring", text: clip(text) });
  }

  private show(): void {
    if (this.pendingText !== null) {
      this.own = { fill: "green", shape: "dot", text: clip(this.pendingText()) };
      this.pendingText = null;
    }
    const hub = this.hubReport;
    if (hub && hub.state !== "running") this.node.status(hub.display);
    else this.node.status(this.own);
  }

  /** Forgets the node (on close); the hub keeps running for its other users. */
  close(): void {
    this.closed = true;
    this.often.cancel();
    this.detach();
    this.unsubscribe();
    this.hubNode.deregister(this.node);
    this.node.status({});
  }
}

/** Status text stays short: the editor shows about 30 characters under a node. */
export function clip(text: string, max = 32): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** A short label for an error on a node's status: its code when it has one. */
export function errorLabel(err: unknown): string {
  if (isTethralError(err)) return err.code;
  return errorMessage(err);
}

/**
 * A listening node whose settings can never match (an id or pattern the editor would flag, in a
 * flow imported or deployed anyway): a red ring and one log line naming `problem`, rather than
 * "listening" for what can never come. True when refused.
 */
export function refuseSettings(RED: NodeAPI, node: Node, type: string, problem: string | null): boolean {
  if (problem === null) return false;
  node.status({ fill: "red", shape: "ring", text: RED._(`${type}.status.invalid`) });
  node.error(`${RED._(`${type}.errors.invalid-config`)}: ${problem}`);
  return true;
}

/** A node with no hub (none chosen, or one deleted): UNAVAILABLE for the Catch node, as any hub that cannot serve. */
export function noHubError(text: string): Error {
  return toError(new TethralError("UNAVAILABLE", text));
}

/**
 * Hands an error to Node-RED so a Catch node gets `msg.error.code` (CONTRACT §1 codes) and
 * `msg.error.message` as the plain sentence: Node-RED copies an own `code` property and takes
 * the message from `toString()`, which would otherwise say "TethralError: ...".
 */
export function toError(err: unknown): Error {
  if (isTethralError(err)) {
    const e = Object.assign(new Error(err.message), { code: err.code, details: err.details });
    e.name = err.name;
    e.toString = () => err.message;
    // Node-RED hands a Catch node only an error's message, code, stack and cause: the fields at
    // fault travel as the cause, for a flow (the REST API's error answer) to pass on.
    if (err.details?.length) e.cause = { details: err.details };
    return e;
  }
  if (err instanceof Error) return err;
  return new Error(String(err));
}

/**
 * A value from `msg` when it is set there, else the node's configured one: the override rule of
 * CONTRACT §5 (`msg.operation` over the editor's choice, and so on).
 */
export function fromMsg<T>(msg: NodeMessage, key: string, configured: T): T | unknown {
  return Object.hasOwn(msg, key) && msg[key] !== undefined && msg[key] !== null && msg[key] !== "" ? msg[key] : configured;
}

/**
 * `msg.operation` when set, else the configured one, else `fallback`; anything that is not one of
 * `operations` is INVALID with `message()` (the node's own sentence, naming them; made only then).
 */
export function operationOf<T extends string>(msg: NodeMessage, configured: unknown, fallback: T, operations: readonly T[], message: () => string): T {
  const operation = fromMsg(msg, "operation", text(configured) ?? fallback);
  if (typeof operation !== "string" || !operations.includes(operation as T)) throw invalidInput("operation", message());
  return operation as T;
}

/** Digit text (a query string's number) becomes its number; blank is undefined; anything else is left for a check to refuse. */
export function countOf(value: unknown): unknown {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string") {
    if (value.trim() === "") return undefined;
    if (/^\s*\d+\s*$/.test(value)) return Number(value);
  }
  return value;
}

/** Throws INVALID, in the node's own words, for the first key of a filter that is not one of `keys`. */
export function onlyKeys(filter: Record<string, unknown>, keys: readonly string[], message: (key: string) => string): void {
  const unknown = Object.keys(filter).find((key) => !keys.includes(key));
  if (unknown !== undefined) throw invalidInput(unknown, message(unknown));
}

/** Names from an editor field: split by `separator` (commas or white space), trimmed, blanks and repeats dropped. */
export function names(value: unknown, separator: RegExp = /[\s,]+/): string[] {
  const s = text(value);
  return s === undefined ? [] : [...new Set(s.split(separator).map((v) => v.trim()).filter((v) => v !== ""))];
}

/**
 * How a device message from a flow (the REST flow's HTTP routes) says who sent it: `msg.token`
 * (text, or absent) and `msg.protocol` (default `http`). INVALID naming the field otherwise;
 * `message` gives the node's own text for either, translated only for a refusal (a report may
 * come thousands of times a second).
 */
export function deviceSender(msg: NodeMessage, message: (field: "token" | "protocol") => string): { token: string | undefined; protocol: string } {
  const token = fromMsg(msg, "token", undefined);
  if (token !== undefined && typeof token !== "string") throw invalidInput("token", message("token"));
  const protocol = fromMsg(msg, "protocol", "http");
  if (typeof protocol !== "string") throw invalidInput("protocol", message("protocol"));
  return { token, protocol };
}

/**
 * The msg as the cause of a change a flow makes: its events and history entries carry its id.
 * A msg that an event started (tethral-in, -event-in, -state-watch put the event's `causeId` on
 * it) makes that cause the parent, so the reaction can be traced back to the device message.
 */
export function flowCause(msg: NodeMessage): { source: string; causeId: string | null; parentCauseId: string | null } {
  return {
    source: "flow",
    causeId: typeof msg._msgid === "string" ? msg._msgid : null,
    // A `msg.causeId` that is no cause id (a flow's own use of the name) is left out, not refused.
    parentCauseId: typeof msg.causeId === "string" && checkLabel(msg.causeId, "causeId") === null ? msg.causeId : null,
  };
}

/** A non-empty trimmed string or undefined (editor fields arrive as strings, blank = unset). */
export function text(value: unknown): string | undefined {
  if (typeof value !== "string") return undefined;
  const s = value.trim();
  return s === "" ? undefined : s;
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value);
}

/** An INVALID error naming the msg property at fault. */
export function invalidInput(field: string, message: string): TethralError {
  return new TethralError("INVALID", message, [{ field, message }]);
}

/** What one operation of a request/response node answers: the new `msg.payload` and its status text. */
export interface Outcome {
  payload: unknown;
  /** The status text; a function when made only as it is shown (see `often`). */
  status: string | (() => string);
  /** A result that may come many times a second: its status is throttled. */
  often?: boolean;
  /** The answer says something is wrong (a health that is not ok): a yellow dot, not a green one. */
  warning?: boolean;
  /** Set on the msg too (e.g. the id a registration gave). */
  deviceId?: string;
  /** Set as `msg.headers`, which an http response node sends (the Content-Type of a text answer). */
  headers?: Record<string, string>;
  /** Further msg properties the next node reads (Dashboard 2's ui-chart reads `msg.action`). */
  extra?: Record<string, unknown>;
}

/**
 * The input handler of a node that turns a msg into one hub call: `plan` reads the msg (and
 * throws INVALID before the hub is touched), the call's outcome replaces `msg.payload` of the
 * same msg, which goes on; an error goes to `done(err)` and shows as a red status.
 */
export function operationHandler(
  use: HubUse | null,
  noHubText: string,
  /** The hub call a msg asks for, or the answer itself when it needs no hub (nothing is started for it). */
  plan: (msg: NodeMessage) => ((hub: Hub) => Promise<Outcome> | Outcome) | Outcome,
): InputHandler {
  return (msg, send, done) => {
    if (!use) return done(noHubError(noHubText));
    const fail = (err: unknown) => {
      // Closed by a redeploy meanwhile: the old node says nothing more.
      if (use.isClosed) return abandon(msg, done);
      use.failed(errorLabel(err));
      done(toError(err));
    };
    let call: ((hub: Hub) => Promise<Outcome> | Outcome) | Outcome;
    try {
      call = plan(msg);
    } catch (err) {
      return fail(err);
    }
    (typeof call === "function" ? use.hub().then(call) : Promise.resolve(call))
      .then((outcome) => {
        // Closed by a redeploy while the hub worked: its old wires must not get the answer.
        if (use.isClosed) return abandon(msg, done);
        msg.payload = outcome.payload;
        if (outcome.deviceId !== undefined) msg.deviceId = outcome.deviceId;
        if (outcome.headers !== undefined) msg.headers = { ...(msg.headers as Record<string, string> | undefined), ...outcome.headers };
        if (outcome.extra !== undefined) Object.assign(msg, outcome.extra);
        const status = outcome.status;
        if (outcome.often) use.okOften(typeof status === "function" ? status : () => status);
        else use.ok(typeof status === "function" ? status() : status, outcome.warning);
        send(msg);
        done();
      }, fail);
  };
}

/**
 * Ends a msg whose node was closed (a redeploy) while it worked: nothing is sent on. A request of
 * an `http in` node that nothing will answer now is answered 503 UNAVAILABLE, so its client does
 * not wait for ever; the next deploy's nodes take new requests.
 */
export function abandon(msg: NodeMessage, done: () => void): void {
  const res = (msg.res as { _res?: { headersSent?: boolean; status?(code: number): { json(body: unknown): void } } } | undefined)?._res;
  if (res && res.headersSent === false && typeof res.status === "function") {
    try {
      res.status(503).json({ error: { code: "UNAVAILABLE", message: "the flow was redeployed while this request was handled: try again" } });
    } catch {
      // The client has gone: nothing to answer.
    }
  }
  done();
}

/**
 * Runs `show` at once, then at most every `ms`: a busy fleet must not send the editor a status
 * update per message. The last request is always shown.
 */
export function throttled(show: () => void, ms = 500): { request(): void; cancel(): void } {
  let last = 0;
  let timer: NodeJS.Timeout | null = null;
  return {
    request() {
      if (timer !== null) return;
      const wait = last + ms - Date.now();
      if (wait <= 0) {
        last = Date.now();
        show();
        return;
      }
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        show();
      }, wait);
    },
    cancel() {
      if (timer !== null) clearTimeout(timer);
      timer = null;
    },
  };
}
