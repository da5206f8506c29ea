import http from "node:http";
import https from "node:https";
import { errorMessage } from "../../core/errors";
import { SimulationError, readCapped } from "./support";

/** A refusal from the REST API (CONTRACT §1 error body), or status 0 when it could not be reached. */
export class ApiError extends SimulationError {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string | null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export interface ApiAnswer {
  status: number;
  body: unknown;
}

const REQUEST_TIMEOUT_MS = 10_000;
const MAX_ANSWER_BYTES = 1024 * 1024;

/**
 * The slice of the REST API (CONTRACT §3) the simulator uses. It keeps its own keep-alive agent,
 * so HTTP devices' reports reuse connections and `close()` leaves no socket behind.
 */
export class ApiClient {
  readonly root: string;
  private readonly agent: http.Agent;
  private readonly transport: typeof http | typeof https;

  constructor(api: string) {
    this.root = api.replace(/\/+$/, "");
    const secure = new URL(this.root).protocol === "https:";
    this.transport = secure ? https : http;
    this.agent = new this.transport.Agent({ keepAlive: true, maxSockets: 16 });
  }

  health(): Promise<ApiAnswer> {
    // A degraded hub may answer 503 and still list its components.
    return this.request("GET", "/health", undefined, {}, [200, 503]);
  }

  /** `POST /devices`: the record with `token` (absent when the hub runs with tokens off). */
  async register(record: object): Promise<Record<string, unknown>> {
    return (await this.request("POST", "/devices", record)).body as Record<string, unknown>;
  }

  async getDevice(id: string): Promise<Record<string, unknown>> {
    return (await this.request("GET", `/devices/${encodeURIComponent(id)}`)).body as Record<string, unknown>;
  }

  async removeDevice(id: string): Promise<void> {
    await this.request("DELETE", `/devices/${encodeURIComponent(id)}`);
  }

  /** An HTTP device's report (CONTRACT §2): `POST /devices/{id}/telemetry` with its Bearer token. */
  async telemetry(id: string, token: string | undefined, data: object): Promise<void> {
    const headers: Record<string, string> = token === undefined ? {} : { Authorization: `Bearer ${token}` };
    await this.request("POST", `/devices/${encodeURIComponent(id)}/telemetry`, data, headers);
  }

  close(): void {
    this.agent.destroy();
  }

  /** One request; a status outside `expected` (any 2xx by default) becomes an ApiError with the API's own message. */
  request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}, expected?: number[]): Promise<ApiAnswer> {
    const url = `${this.root}${path}`;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = this.transport.request(url, {
        method,
        agent: this.agent,
        headers: {
          Accept: "application/json",
          ...(payload ? { "Content-Type": "application/json", "Content-Length": String(payload.length) } : {}),
          ...headers,
        },
      });
      req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`)));
      req.on("error", (err: NodeJS.ErrnoException) => reject(unreachable(method, url, err)));
      req.on("response", (res) => {
        readCapped(res, MAX_ANSWER_BYTES).then(({ text }) => {
          const status = res.statusCode ?? 0;
          const parsed = parseJson(text);
          const ok = expected ? expected.includes(status) : status >= 200 && status < 300;
          if (ok) resolve({ status, body: parsed });
          else reject(refusal(method, path, status, parsed, text));
        }, (err: unknown) => reject(unreachable(method, url, err as NodeJS.ErrnoException)));
      });
      req.end(payload);
    });
  }
}

function parseJson(text: string): unknown {
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** The API's own words (`{"error": {"code", "message"}}`), else the status and the start of the body. */
function refusal(method: string, path: string, status: number, body: unknown, text: string): ApiError {
  const error = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  const code = typeof error?.code === "string" ? error.code : null;
  const message = typeof error?.message === "string" ? error.message : text.trim().slice(0, 200) || "no message";
  return new ApiError(`${method} ${path}: HTTP ${status}${code ? ` ${code}` : ""}: ${message}`, status, code);
}

function unreachable(method: string, url: string, err: NodeJS.ErrnoException): ApiError {
  return new ApiError(`cannot reach the Tethral API (${method} ${url}): ${err.code ?? errorMessage(err)}`, 0, null);
}
