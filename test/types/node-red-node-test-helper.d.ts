// The part of node-red-node-test-helper (0.3.x, untyped) that Tethral's tests use.
declare module "node-red-node-test-helper" {
  interface FlowNode {
    id: string;
    type: string;
    [property: string]: unknown;
  }

  interface LogEntry {
    level: number;
    id?: string;
    type?: string;
    msg?: unknown;
  }

  /** A sinon spy on RED.log.log, with the level numbers. */
  interface LogSpy {
    readonly args: [LogEntry][];
    readonly ERROR: number;
    readonly WARN: number;
    readonly INFO: number;
  }

  interface NodeTestHelper {
    init(runtimePath?: string, userSettings?: Record<string, unknown>): void;
    /** Runtime settings (`RED.settings`) for the next load, merged over Node-RED's defaults. */
    settings(userSettings?: Record<string, unknown>): Record<string, unknown>;
    load(
      nodes: ((RED: never) => void) | ((RED: never) => void)[],
      flow: FlowNode[],
      credentials?: Record<string, unknown>,
    ): Promise<void>;
    unload(): Promise<void>;
    /** Deploys `flow` as the editor would: "full", "flows" or "nodes" (only the changed nodes restart). */
    setFlows(flow: FlowNode[], type?: "full" | "flows" | "nodes"): Promise<void>;
    getNode(id: string): unknown;
    startServer(): Promise<void>;
    /** supertest against the admin app (RED.httpAdmin). */
    request(): { get(path: string): PromiseLike<{ status: number; body: unknown }> };
    /** The base URL of the helper's HTTP server (http://127.0.0.1:PORT). */
    url(): string;
    stopServer(): Promise<void>;
    log(): LogSpy;
  }

  const helper: NodeTestHelper;
  export = helper;
}
