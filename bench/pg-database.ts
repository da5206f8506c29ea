import pg from "pg";

/** The PostgreSQL server a benchmark runs against: TETHRAL_BENCH_PG_URL, else TETHRAL_TEST_PG_URL. */
export function benchServer(): string | undefined {
  return process.env.TETHRAL_BENCH_PG_URL ?? process.env.TETHRAL_TEST_PG_URL;
}

/** Runs one statement on `url` with a connection of its own. */
export async function runSql(url: string, sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

/** A fresh database on the server, named `<prefix>_<time>`, and how to drop it afterwards. */
export async function freshDatabase(server: string, prefix: string): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `${prefix}_${Date.now()}`;
  await runSql(server, `CREATE DATABASE ${name}`);
  const url = new URL(server);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop: () => runSql(server, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

/**
 * PGlite in-process, served on 127.0.0.1 for `pg`: real PostgreSQL without a server, slower. It
 * runs one statement at a time (pool size 1) and takes no COPY FROM STDIN.
 */
export async function pgliteDatabase(): Promise<{ url: string; exec: (sql: string) => Promise<unknown>; stop: () => Promise<void> }> {
  const { PGlite } = await import("@electric-sql/pglite");
  const { PGLiteSocketServer } = await import("@electric-sql/pglite-socket");
  const db = await PGlite.create();
  // A store reconnects while the socket server still holds the closed one: room for a few.
  const socket = new PGLiteSocketServer({ db, port: 0, host: "127.0.0.1", maxConnections: 8 });
  await socket.start();
  return {
    url: `postgres://postgres@${socket.getServerConn()}/postgres`,
    exec: (sql) => db.exec(sql),
    stop: async () => {
      await socket.stop();
      await db.close();
    },
  };
}
