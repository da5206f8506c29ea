import { randomBytes } from "node:crypto";
import net from "node:net";
import pg from "pg";

/**
 * PostgreSQL for store tests: a fresh database on the server named by TETHRAL_TEST_PG_URL, or
 * else PGlite (real PostgreSQL compiled to WASM) in-process, served over TCP on 127.0.0.1 so the
 * store talks to it through `pg` exactly as to a server. Start it once per test file: PGlite
 * takes a second or two and about 450 MB.
 */
export interface TestPostgres {
  /** A database of its own for this test file. */
  url: string;
  kind: "server" | "pglite";
  /** The pool size a store must use here: 1 on PGlite, which runs one statement at a time. */
  poolSize: number | undefined;
  /** Whether a store may write points with COPY: PGlite's socket server does not take COPY FROM STDIN. */
  bulkCopy: boolean;
  /** The real server writes every batch the large-batch way (COPY), PGlite small ones in one statement: both paths run. */
  onePassPoints: number | undefined;
  /** Drops every table, so the next store starts from an empty database. */
  reset: () => Promise<void>;
  /** Runs SQL outside any store (setup and checks); not while a store holds PGlite's connection. */
  sql: (text: string, params?: unknown[]) => Promise<Record<string, unknown>[]>;
  stop: () => Promise<void>;
}

const TABLES = [
  "tethral_migrations", "devices", "device_tokens", "states", "state_history", "events", "commands",
  "ts_keys", "ts_series", "ts_points", "ts_rollup_1m", "ts_rollup_1h",
  "cluster_meta", "cluster_members", "cluster_leases", "removed_devices",
];
const RESET_SQL = `DROP TABLE IF EXISTS ${TABLES.join(", ")}`;

export async function startTestPostgres(): Promise<TestPostgres> {
  const serverUrl = process.env.TETHRAL_TEST_PG_URL;
  return serverUrl ? startOnServer(serverUrl) : startPglite();
}

async function startOnServer(serverUrl: string): Promise<TestPostgres> {
  const name = `tethral_t_${randomBytes(6).toString("hex")}`;
  await withClient(serverUrl, (c) => c.query(`CREATE DATABASE ${name}`));
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  const sql = (text: string, params?: unknown[]) => withClient(url.toString(), async (c) => (await c.query(text, params)).rows);
  return {
    url: url.toString(),
    kind: "server",
    poolSize: undefined,
    bulkCopy: true,
    onePassPoints: 0,
    reset: async () => {
      await sql(RESET_SQL);
    },
    sql,
    stop: async () => {
      await withClient(serverUrl, (c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
}

async function startPglite(): Promise<TestPostgres> {
  const [{ PGlite }, { PGLiteSocketServer }] = await Promise.all([
    import("@electric-sql/pglite"),
    import("@electric-sql/pglite-socket"),
  ]);
  const db = await PGlite.create();
  // PGlite is one backend: the socket server runs one protocol message at a time and holds other
  // connections back while one is inside a transaction. Several connections used one after
  // another (a store and a re-opened one) are fine; used concurrently outside transactions,
  // their unnamed prepared statements could interleave. Hence one connection per store.
  const server = new PGLiteSocketServer({ db, port: 0, host: "127.0.0.1", maxConnections: 8 });
  try {
    await server.start();
  } catch (err) {
    await db.close();
    throw err;
  }
  // In-process queries share PGlite's one session with the socket: fine between tests, when no
  // store is connected.
  const sql = async (text: string, params?: unknown[]) => (await db.query<Record<string, unknown>>(text, params)).rows;
  return {
    url: `postgres://postgres@${server.getServerConn()}/postgres`,
    kind: "pglite",
    poolSize: 1,
    bulkCopy: false,
    onePassPoints: undefined,
    reset: async () => {
      await db.exec(RESET_SQL);
    },
    sql,
    stop: async () => {
      await server.stop();
      await db.close();
    },
  };
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export interface TestProxy {
  /** The target's URL with the proxy's host and port. */
  url: string;
  /** Destroys every live connection and refuses new ones until `restore()`: an outage. */
  cut: () => void;
  restore: () => void;
  close: () => Promise<void>;
}

/** A TCP proxy on 127.0.0.1 in front of the database at `targetUrl`, to take it away mid-test. */
export async function startProxy(targetUrl: string): Promise<TestProxy> {
  const target = new URL(targetUrl);
  const targetHost = target.hostname;
  const targetPort = Number(target.port || 5432);
  const sockets = new Set<net.Socket>();
  let down = false;
  const track = (socket: net.Socket): void => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
  };
  const server = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, targetHost);
    track(client);
    track(upstream);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  const url = new URL(targetUrl);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  const cut = (): void => {
    down = true;
    for (const socket of sockets) socket.destroy();
    sockets.clear();
  };
  return {
    url: url.toString(),
    cut,
    restore: () => {
      down = false;
    },
    close: async () => {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
