// The slice of Node-RED's node API that Tethral's nodes use. @types/node-red is not a
// dependency, so these interfaces describe only what the runtime (4.x) really provides.

import type { Hub } from "../core";

export type StatusFill = "red" | "green" | "yellow" | "blue" | "grey";
export type StatusShape = "ring" | "dot";

/** What `node.status()` shows under a node; `{}` clears it. */
export interface NodeStatus {
  fill?: StatusFill;
  shape?: StatusShape;
  text?: string;
}

/** A node's configuration as deployed, after Node-RED has substituted `${ENV}` values. */
export interface NodeDef {
  id: string;
  type: string;
  name?: string;
  z?: string;
}

export type NodeMessage = Record<string, unknown> & { _msgid?: string };

export type CloseHandler =
  | (() => void)
  | ((done: () => void) => void)
  | ((removed: boolean, done: () => void) => void);

export type InputHandler = (
  msg: NodeMessage,
  send: (msg: NodeMessage | (NodeMessage | NodeMessage[] | null)[]) => void,
  done: (err?: Error) => void,
) => void;

/** A runtime node. Node-RED counts a handler's declared parameters: see CloseHandler. */
export interface Node {
  readonly id: string;
  readonly type: string;
  readonly name?: string;
  readonly z?: string;
  /** The node's credentials, as registered with `registerType(..., { credentials })`. */
  readonly credentials?: Readonly<Record<string, unknown>>;
  on(event: "close", handler: CloseHandler): this;
  on(event: "input", handler: InputHandler): this;
  status(status: NodeStatus): void;
  log(msg: unknown): void;
  warn(msg: unknown): void;
  error(err: unknown, msg?: NodeMessage): void;
  debug(msg: unknown): void;
  trace(msg: unknown): void;
}

/** A node with outputs that sends on its own (subscriptions, watches), not only in answer to input. */
export type SendingNode = Node & { send(msg: NodeMessage): void };

export interface NodeRegistryApi {
  createNode(node: Node, def: NodeDef): void;
  registerType<T extends NodeDef>(
    type: string,
    constructor: (this: Node, def: T) => void,
    opts?: { credentials?: Record<string, { type: "text" | "password" }>; settings?: Record<string, unknown> },
  ): void;
  getNode(id: string): Node | null;
}

export interface AdminRequest {
  params: Record<string, string>;
  query: Record<string, unknown>;
}

export interface AdminResponse {
  status(code: number): AdminResponse;
  json(body: unknown): void;
}

/** The `RED` object Node-RED passes to a node module. */
export interface NodeAPI {
  nodes: NodeRegistryApi;
  log: {
    info(msg: unknown): void;
    warn(msg: unknown): void;
    error(msg: unknown): void;
    debug(msg: unknown): void;
  };
  settings: Record<string, unknown>;
  /** Node-RED's plugin registry (a stub under node-red-node-test-helper). */
  plugins?: {
    registerPlugin(id: string, definition: object): void;
    getByType?(type: string): unknown[];
  };
  /** The editor's HTTP API (Express), for admin endpoints. */
  httpAdmin?: {
    get(path: string, ...handlers: Array<(req: AdminRequest, res: AdminResponse, next: () => void) => void>): void;
  };
  auth?: { needsPermission(permission: string): (req: AdminRequest, res: AdminResponse, next: () => void) => void };
  /** Messages to every open editor (`RED.comms.subscribe` on the editor side). */
  comms?: { publish(topic: string, data: unknown, retain?: boolean): void };
  /** Node-RED's HTTP server (shared by the editor, httpNode and websocket endpoints). */
  server?: import("node:http").Server;
  /** Node-RED's runtime event bus (the flow runtime announces refused HTTP device reports on it). */
  events?: {
    on(event: string, listener: (payload: unknown) => void): void;
    removeListener(event: string, listener: (payload: unknown) => void): void;
  };
  /** Translates a key of this node set's message catalogue. */
  _(key: string, substitutions?: Record<string, unknown>): string;
}

// ── The tethral-hub config node, as the other Tethral nodes see it ──────────────────────────

/** Where the hub held by a tethral-hub node is in its life. */
export type HubLifecycle = "idle" | "starting" | "running" | "stopping" | "stopped" | "error";

export interface HubStatus {
  state: HubLifecycle;
  /** Why the hub is in `error`. */
  error?: string;
}

/** A hub status together with how a node shows it (text already translated). */
export interface HubStatusReport extends HubStatus {
  display: NodeStatus;
}

export type HubStatusListener = (status: HubStatusReport) => void;

export interface RegisterOptions {
  /** Show the hub's state as the user node's status (default true). */
  showStatus?: boolean;
}

/**
 * The API of a `tethral-hub` config node, for the nodes that use it:
 * ```ts
 * const hubNode = RED.nodes.getNode(config.hub) as TethralHubNode | null;
 * hubNode.register(this);                    // starts the hub, shows its state on this node
 * const hub = await hubNode.acquire();       // the started hub
 * this.on("close", (_removed, done) => { hubNode.deregister(this); done(); });
 * ```
 */
export interface TethralHubApi {
  /** Counts `user` as a user of the hub, starts the hub if needed and shows its state. */
  register(user: Node, options?: RegisterOptions): void;
  /** Forgets `user` and clears the status the hub put on it. The hub keeps running. */
  deregister(user: Node): void;
  /** The started hub: starts it on first use; concurrent calls share one start. */
  acquire(): Promise<Hub>;
  /**
   * The hub while it is running, or null: what a status listener told "running" sets up on at
   * once (an event subscription), before the calls that waited for `acquire()` run.
   */
  runningHub(): Hub | null;
  /** The hub's current state. */
  hubStatus(): HubStatusReport;
  /** Calls `listener` now and on every state change; returns the function that unsubscribes. */
  onStatus(listener: HubStatusListener): () => void;
  /** Number of registered user nodes. */
  userCount(): number;
}

export type TethralHubNode = Node & TethralHubApi;
