import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { PACKAGE_ROOT, StartupError, optionsFromEnv } from "../../src/runtime/start";
import { closedPort } from "../helpers";
import { type TestPostgres, startTestPostgres } from "../store/pg-harness";

const CLUSTER = { TETHRAL_CLUSTER: "on", TETHRAL_DB: "postgres://tethral@db.lan:5432/fleet", TETHRAL_MQTT_URL: "mqtt://broker.lan:1883" };

/** optionsFromEnv refuses `env` with one line naming `variable`. */
function refuses(env: NodeJS.ProcessEnv, variable: string, says: RegExp): void {
  assert.throws(() => optionsFromEnv(env, "/srv/app"), (err: unknown) => {
    assert.ok(err instanceof StartupError, String(err));
    assert.equal(err.variable, variable);
    assert.match(err.message, says);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
}

describe("npm start in cluster mode: checks before Node-RED starts", function () {
  it("takes TETHRAL_CLUSTER=on with a PostgreSQL URL, an external broker and the partition count", () => {
    assert.deepEqual(optionsFromEnv({ ...CLUSTER, TETHRAL_PARTITIONS: "128" }, "/srv/app").cluster, { partitions: 128, db: CLUSTER.TETHRAL_DB });
    assert.deepEqual(optionsFromEnv(CLUSTER, "/srv/app").cluster, { partitions: 64, db: CLUSTER.TETHRAL_DB });
    assert.equal(optionsFromEnv({ ...CLUSTER, TETHRAL_CLUSTER: "off" }, "/srv/app").cluster, undefined);
    assert.equal(optionsFromEnv({}, "/srv/app").cluster, undefined);
  });

  it("refuses SQLite, memory or no TETHRAL_DB, naming TETHRAL_DB", () => {
    refuses({ ...CLUSTER, TETHRAL_DB: "" }, "TETHRAL_DB", /TETHRAL_CLUSTER=on needs a PostgreSQL or CockroachDB database.*set TETHRAL_DB.*unset/);
    refuses({ ...CLUSTER, TETHRAL_DB: "fleet.sqlite" }, "TETHRAL_DB", /set TETHRAL_DB to its postgres:\/\/ URL$/);
    refuses({ ...CLUSTER, TETHRAL_DB: ":memory:" }, "TETHRAL_DB", /set TETHRAL_DB/);
    refuses({ ...CLUSTER, TETHRAL_DB: "postgres://tethral@db:port/x" }, "TETHRAL_DB", /invalid environment variable TETHRAL_DB: must be a URL/);
  });

  it("refuses the embedded broker (no TETHRAL_MQTT_URL), naming TETHRAL_MQTT_URL", () => {
    refuses({ ...CLUSTER, TETHRAL_MQTT_URL: "" }, "TETHRAL_MQTT_URL", /needs an external MQTT broker.*set TETHRAL_MQTT_URL/);
    refuses({ ...CLUSTER, TETHRAL_MQTT_URL: "http://broker" }, "TETHRAL_MQTT_URL", /invalid environment variable TETHRAL_MQTT_URL/);
  });

  it("refuses a bad TETHRAL_CLUSTER, TETHRAL_PARTITIONS or TETHRAL_LEASE_SECONDS, naming it", () => {
    refuses({ ...CLUSTER, TETHRAL_CLUSTER: "yes please" }, "TETHRAL_CLUSTER", /TETHRAL_CLUSTER: must be on or off/);
    for (const bad of ["0", "4097", "12.5", "many"]) {
      refuses({ ...CLUSTER, TETHRAL_PARTITIONS: bad }, "TETHRAL_PARTITIONS", /TETHRAL_PARTITIONS: must be a whole number from 1 to 4096/);
    }
    for (const bad of ["1", "301", "ten"]) {
      refuses({ ...CLUSTER, TETHRAL_LEASE_SECONDS: bad }, "TETHRAL_LEASE_SECONDS", /TETHRAL_LEASE_SECONDS: must be a number of seconds from 2 to 300/);
    }
  });

  describe("as a command", function () {
    this.timeout(120_000);
    let scratch: string;
    let db: TestPostgres;

    before(async function () {
      this.timeout(60_000);
      scratch = mkdtempSync(path.join(tmpdir(), "tethral-cluster-start-"));
      db = await startTestPostgres();
    });

    after(async () => {
      await db?.stop();
      rmSync(scratch, { recursive: true, force: true });
    });

    interface Outcome {
      code: number | null;
      stdout: string;
      stderr: string;
    }

    /**
     * `npm start` (src/runtime/start.ts) with `env`: its exit, or, once it serves, what it printed
     * (then stopped with SIGTERM, by its PID).
     */
    function start(env: NodeJS.ProcessEnv): Promise<Outcome & { served: boolean }> {
      const child = spawn(process.execPath, ["--require", require.resolve("tsx/cjs"), path.join(PACKAGE_ROOT, "src", "runtime", "start.ts")], {
        cwd: scratch,
        env: { ...process.env, PORT: "0", HOST: "127.0.0.1", TETHRAL_USER_DIR: mkdtempSync(path.join(scratch, "user-")), ...env },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      let served = false;
      child.stdout.on("data", (chunk: Buffer) => {
        stdout += chunk.toString();
        if (!served && /Tethral REST API:/.test(stdout)) {
          served = true;
          process.kill(child.pid!, "SIGTERM");
        }
      });
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
      return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr, served })));
    }

    it("prints one line naming TETHRAL_DB and exits 1 on SQLite", async () => {
      const out = await start({ TETHRAL_CLUSTER: "on", TETHRAL_DB: "fleet.sqlite", TETHRAL_MQTT_URL: "mqtt://127.0.0.1:1" });
      assert.equal(out.code, 1);
      assert.equal(out.stdout, "");
      assert.match(out.stderr, /^TETHRAL_CLUSTER=on needs a PostgreSQL or CockroachDB database shared by every member: set TETHRAL_DB to its postgres:\/\/ URL\n$/);
    });

    it("prints one line naming TETHRAL_PARTITIONS and exits 1 when the database records another partition count", async () => {
      await db.sql("DROP TABLE IF EXISTS cluster_meta");
      await db.sql("CREATE TABLE cluster_meta (id INT PRIMARY KEY, partitions INT NOT NULL)");
      await db.sql("INSERT INTO cluster_meta (id, partitions) VALUES (1, 32)");
      try {
        const out = await start({ TETHRAL_CLUSTER: "on", TETHRAL_DB: db.url, TETHRAL_MQTT_URL: `mqtt://127.0.0.1:${await closedPort()}`, TETHRAL_PARTITIONS: "16" });
        assert.equal(out.code, 1, out.stderr);
        assert.equal(out.stdout, "");
        assert.equal(
          out.stderr,
          "TETHRAL_PARTITIONS is 16, but the cluster's database was first used with 32 partitions: set TETHRAL_PARTITIONS=32 on every member\n",
        );
      } finally {
        await db.sql("DROP TABLE IF EXISTS cluster_meta");
      }
    });

    it("goes on to start Node-RED on a database no cluster has used yet", async () => {
      await db.sql("DROP TABLE IF EXISTS cluster_meta");
      const out = await start({ TETHRAL_CLUSTER: "on", TETHRAL_DB: db.url, TETHRAL_MQTT_URL: `mqtt://127.0.0.1:${await closedPort()}`, TETHRAL_PARTITIONS: "16", TETHRAL_MEMBER_ID: "m1" });
      assert.equal(out.served, true, `it did not serve:\n${out.stdout}\n${out.stderr}`);
      assert.match(out.stdout, /Tethral editor: {3}http:\/\/127\.0\.0\.1:\d+\//);
    });
  });
});
