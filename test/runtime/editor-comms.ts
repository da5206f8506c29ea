import { WebSocket } from "ws";
import { until } from "../helpers";
import type { Json } from "./spawn-runtime";

/** One message of the editor's Debug sidebar: a debug node's output, or a node's error or warning. */
export interface DebugMessage {
  /** The debug node, or the node that logged. */
  id: string;
  name?: string;
  /** Node-RED's log level for a node's error (20) or warning (30); absent for a debug node's output. */
  level?: number;
  /** The output, decoded from the sidebar's encoding (a message object, a string, a number...). */
  msg: Json;
}

export interface NodeStatus {
  fill?: string;
  shape?: string;
  text?: string;
}

/** Node-RED's log levels, as the Debug sidebar receives them. */
export const LOG_ERROR = 20;
export const LOG_WARN = 30;

/**
 * What the editor sees of a running Node-RED over its comms websocket (`/comms`): the Debug
 * sidebar's messages and the nodes' status lines, as a user reads them. Subscribes as the
 * editor does, without credentials (a runtime with adminAuth would need a token first).
 */
export class EditorComms {
  readonly debug: DebugMessage[] = [];
  private readonly statuses = new Map<string, NodeStatus>();
  /** How many `notification/runtime-deploy` messages came: Node-RED sends one once a deploy's flows have started. */
  private deploys = 0;

  private constructor(private readonly ws: WebSocket) {
    ws.on("message", (data) => {
      for (const { topic, data: body } of JSON.parse(String(data)) as Array<{ topic: string; data: Json }>) {
        if (topic === "debug") this.debug.push(decode(body));
        else if (topic.startsWith("status/")) this.statuses.set(topic.slice("status/".length), body as NodeStatus);
        else if (topic === "notification/runtime-deploy") this.deploys++;
      }
    });
  }

  /** Connects to the editor at `editorUrl` (e.g. `http://127.0.0.1:40123/`). */
  static async open(editorUrl: string): Promise<EditorComms> {
    const ws = new WebSocket(`${editorUrl.replace(/^http/, "ws")}comms`);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    ws.send(JSON.stringify({ subscribe: "debug" }));
    ws.send(JSON.stringify({ subscribe: "status/#" }));
    ws.send(JSON.stringify({ subscribe: "notification/runtime-deploy" }));
    const comms = new EditorComms(ws);
    // Node-RED keeps the last runtime-deploy (one is sent when the flows load) and sends it to a
    // new subscriber: counted before anyone takes a mark, so it cannot pass for a later deploy.
    await until(() => comms.deploys > 0, "Node-RED's last runtime-deploy notification");
    return comms;
  }

  /** A mark for `started`: take it before the deploy. */
  deployMark(): number {
    return this.deploys;
  }

  /**
   * Waits until the flows of a deploy made after `mark` run. Node-RED answers a deploy (`POST
   * /flows`, `POST /flow`) once it is saved, and starts its flows after that: until then its
   * nodes are not there (an inject button answers 404), however the machine is loaded.
   */
  started(mark: number, ms = 15_000): Promise<true> {
    return until(() => this.deploys > mark, "the deployed flows to start", ms);
  }

  /** Where the sidebar is now: `next` and `problems` look only at what comes after a mark. */
  mark(): number {
    return this.debug.length;
  }

  /** The outputs of debug node `id` since `from`. */
  outputs(id: string, from = 0): Json[] {
    return this.debug.slice(from).filter((m) => m.id === id && m.level === undefined).map((m) => m.msg);
  }

  /** Waits for an output of debug node `id` since `from` that `test` accepts, and returns it. */
  next(id: string, from: number, what: string, test: (msg: Json) => boolean = () => true, ms = 8000): Promise<Json> {
    return until(() => this.outputs(id, from).find(test), `${what} in the Debug sidebar`, ms);
  }

  /** Errors and warnings the nodes `ids` logged since `from`, as "<id>: <text>". */
  problems(ids: Iterable<string>, from = 0): string[] {
    const wanted = new Set(ids);
    return this.debug
      .slice(from)
      .filter((m) => m.level !== undefined && m.level <= LOG_WARN && wanted.has(m.id))
      .map((m) => `${m.id}: ${typeof m.msg === "string" ? m.msg : JSON.stringify(m.msg)}`);
  }

  /** The status line node `id` shows now. */
  status(id: string): NodeStatus | undefined {
    return this.statuses.get(id);
  }

  close(): void {
    this.ws.close();
  }
}

/**
 * The sidebar's encoding (Node-RED's util.encodeObject): an object or an array travels as JSON
 * text with its `format`; strings, numbers and booleans as they are.
 */
function decode(body: Json): DebugMessage {
  const format = String(body.format ?? "");
  let msg: Json = body.msg;
  if (typeof msg === "string" && (format.startsWith("Object") || format.startsWith("array") || format === "error")) msg = JSON.parse(msg);
  return { id: body.id, name: body.name, level: body.level, msg };
}
