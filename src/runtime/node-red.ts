// The slices of Express's and node-red's embedding APIs the runtime uses.
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { HTTP_REFUSAL_EVENT, HttpRefusal } from "../nodes/http-refusals";

export type Handler = (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => void;

/** Express tells an error handler from a handler by its four parameters. */
export type ErrorHandler = (err: { status?: number; statusCode?: number; message?: string }, req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void;

export interface ExpressApp extends Handler {
  use(path: string, ...handlers: Array<Handler | ErrorHandler>): void;
  set(setting: string, value: unknown): void;
}

export interface Express {
  (): ExpressApp;
  static(root: string, options?: unknown): Handler;
}

/** The slice of node-red's embedding API used here (node-red/lib/red.js). */
export interface NodeRed {
  init(server: Server, settings: Record<string, unknown>): void;
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly httpAdmin: Handler;
  readonly httpNode: Handler;
  readonly log: { info(msg: string): void; warn(msg: string): void; error(msg: unknown): void };
  readonly events: {
    on(event: "runtime-event", listener: (event: RuntimeEvent) => void): void;
    off(event: "runtime-event", listener: (event: RuntimeEvent) => void): void;
    /** The flows' lifecycle (node-red's flows/index.js), at start, at every deploy and at stop. */
    on(event: "flows:started" | "flows:stopping", listener: () => void): void;
    emit(event: typeof HTTP_REFUSAL_EVENT, refusal: HttpRefusal): boolean;
  };
}

export interface RuntimeEvent {
  id: string;
  payload?: { state?: string; error?: string; types?: string[] };
}
