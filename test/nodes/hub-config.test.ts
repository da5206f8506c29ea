import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  HUB_CONFIG_DEFAULTS,
  type HubConfig,
  parseHubConfig,
  storageFor,
  storeOf,
  toHubOptions,
} from "../../src/nodes/hub-config";
import { PostgresStore, connectionSettings } from "../../src/store/postgres";
import { SqliteStore } from "../../src/store/sqlite";
import { assertCode } from "../helpers";

const DAY_MS = 24 * 3600 * 1000;
const USER_DIR = path.resolve("/srv/node-red");

const config = (extra: Partial<HubConfig> = {}): HubConfig => ({ ...HUB_CONFIG_DEFAULTS, ...extra });

describe("tethral-hub storage settings", function () {
  describe("parseHubConfig", function () {
    it("defaults to auto storage, tethral.sqlite, 7 days of events and 30 of history", () => {
      const parsed = parseHubConfig({ id: "hub1", type: "tethral-hub" });
      assert.deepEqual(parsed, HUB_CONFIG_DEFAULTS);
      assert.equal(parsed.storage, "auto");
      assert.equal(parsed.sqliteFile, "tethral.sqlite");
      assert.equal(parsed.eventRetentionDays, 7);
      assert.equal(parsed.historyRetentionDays, 30);
    });

    it("takes the edit dialog's strings, blanks as defaults, and a storage from ${ENV} in any case", () => {
      const parsed = parseHubConfig({
        storage: " SQLite ",
        sqliteFile: "  ",
        postgresUrl: "",
        eventRetentionDays: "0",
        historyRetentionDays: "1.5",
      });
      assert.equal(parsed.storage, "sqlite");
      assert.equal(parsed.sqliteFile, "tethral.sqlite");
      assert.equal(parsed.eventRetentionDays, 0);
      assert.equal(parsed.historyRetentionDays, 1.5);
    });

    it("refuses an unknown storage and out-of-range retention, naming each field", () => {
      const err = assertCode(
        () => parseHubConfig({ storage: "mongodb", eventRetentionDays: -1, historyRetentionDays: "a month" }),
        "INVALID",
      );
      assert.deepEqual(
        err.details.map((d) => `${d.field} ${d.message}`),
        [
          "eventRetentionDays must be at least 0",
          "historyRetentionDays must be a number",
          "storage must be one of auto, sqlite, postgres, memory",
        ],
      );
    });

    it("names the variable of an ${ENV} storage, file or URL that is not set", () => {
      assertCode(() => parseHubConfig({ storage: "${TETHRAL_STORAGE}" }), "INVALID", "storage");
      const file = assertCode(() => parseHubConfig({ storage: "sqlite", sqliteFile: "${FLEET_FILE}" }), "INVALID", "sqliteFile");
      assert.match(file.message, /environment variable FLEET_FILE, which is not set/);
      const url = assertCode(() => parseHubConfig({ storage: "postgres", postgresUrl: "${FLEET_DB}" }), "INVALID", "postgresUrl");
      assert.match(url.message, /environment variable FLEET_DB, which is not set/);
    });

    it("checks the URL only for postgres storage, and never repeats it", () => {
      for (const [url, message] of [
        ["", "is required when storage is postgres"],
        ["db.example/fleet?password=s3cret", "must be a URL like postgres://user@host:5432/database"],
        ["tethral:s3cret@db.example/fleet", "must start with postgres:// or postgresql://"],
        ["postgres://tethral:s3cret@db.example:port/fleet", "must be a URL like postgres://user@host:5432/database"],
        ["mysql://tethral:s3cret@db.example/fleet", "must start with postgres:// or postgresql://"],
      ] as const) {
        const err = assertCode(() => parseHubConfig({ storage: "postgres", postgresUrl: url }), "INVALID", "postgresUrl");
        assert.deepEqual(err.details, [{ field: "postgresUrl", message }]);
        assert.doesNotMatch(err.message, /s3cret/);
      }
      for (const url of ["postgres://tethral@db.example:5432/fleet", "postgresql://db.example/fleet?sslmode=require"]) {
        assert.equal(parseHubConfig({ storage: "postgres", postgresUrl: url }).postgresUrl, url);
      }
      assert.equal(parseHubConfig({ storage: "memory", postgresUrl: "mysql://x" }).storage, "memory");
      assert.equal(parseHubConfig({ storage: "sqlite", postgresUrl: "${UNSET_URL}" }).storage, "sqlite");
    });

    it("reports storage problems together with the other settings' problems", () => {
      const err = assertCode(() => parseHubConfig({ defaultHeartbeatTimeout: 0, storage: "postgres", postgresUrl: "x" }), "INVALID");
      assert.deepEqual(err.details.map((d) => d.field).sort(), ["defaultHeartbeatTimeout", "postgresUrl"]);
    });
  });

  describe("toHubOptions", function () {
    it("maps the retention days to the store's retention, and passes the store and warnings on", () => {
      const store = new SqliteStore({ path: ":memory:" });
      const onWarning = (_message: string) => undefined;
      const options = toHubOptions(
        config({ eventRetentionDays: 2, historyRetentionDays: 0, stateHistorySize: 50, pointRetentionDays: 3, minuteRetentionDays: 0, hourRetentionDays: 400 }),
        { store, onWarning },
      );
      assert.equal(options.store, store);
      assert.equal(options.onWarning, onWarning);
      assert.deepEqual(options.persistence?.retention, {
        eventsMaxAgeMs: 2 * DAY_MS,
        historyMaxAgeMs: 0,
        historyMaxPerDevice: 50,
        pointsMaxAgeMs: 3 * DAY_MS,
        rollups1mMaxAgeMs: 0,
        rollups1hMaxAgeMs: 400 * DAY_MS,
      });
      assert.deepEqual(options.persistence?.unstoredEventTypes, ["message.received", "state.changed"]);
      assert.equal(options.state?.historyOfReports, false);
      const keepAll = toHubOptions(config({ unstoredEvents: " ", historyOfReports: true }));
      assert.deepEqual(keepAll.persistence?.unstoredEventTypes, [], "an empty list stores every type");
      assert.equal(keepAll.state?.historyOfReports, true);
      assert.equal(toHubOptions(config()).store, undefined, "memory: no store");
    });
  });

  describe("storageFor and storeOf", function () {
    it("sqlite: the file, relative to the user dir, or to the current directory without one", () => {
      assert.deepEqual(storageFor(config({ storage: "sqlite", sqliteFile: "data/fleet.sqlite" }), {}, USER_DIR, {}), {
        kind: "sqlite",
        source: "setting",
        path: path.join(USER_DIR, "data", "fleet.sqlite"),
      });
      const absolute = path.resolve("/var/lib/tethral/fleet.sqlite");
      assert.deepEqual(storageFor(config({ storage: "sqlite", sqliteFile: absolute }), {}, USER_DIR, {}), {
        kind: "sqlite",
        source: "setting",
        path: absolute,
      });
      assert.deepEqual(storageFor(config(), {}, undefined, {}), {
        kind: "sqlite",
        source: "default",
        path: path.join(process.cwd(), "tethral.sqlite"),
      });
    });

    it("auto: TETHRAL_DB when set, else tethral.sqlite in the user dir", () => {
      const auto = config({ storage: "auto", sqliteFile: "ignored.sqlite" });
      assert.deepEqual(storageFor(auto, {}, USER_DIR, {}), { kind: "sqlite", source: "default", path: path.join(USER_DIR, "tethral.sqlite") });
      assert.deepEqual(storageFor(auto, {}, USER_DIR, { TETHRAL_DB: "  " }), {
        kind: "sqlite",
        source: "default",
        path: path.join(USER_DIR, "tethral.sqlite"),
      });
      assert.deepEqual(storageFor(auto, {}, USER_DIR, { TETHRAL_DB: "db/env.sqlite" }), {
        kind: "sqlite",
        source: "TETHRAL_DB",
        path: path.join(USER_DIR, "db", "env.sqlite"),
      });
      assert.deepEqual(storageFor(auto, {}, USER_DIR, { TETHRAL_DB: ":memory:" }), { kind: "memory", source: "TETHRAL_DB" });
      for (const url of ["postgres://tethral@db.example/fleet", "postgresql://tethral@db.example:26257/fleet", "POSTGRES://db.example/fleet"]) {
        assert.deepEqual(storageFor(auto, { postgresPassword: "not for auto" }, USER_DIR, { TETHRAL_DB: url }), {
          kind: "postgres",
          source: "TETHRAL_DB",
          options: { url },
        });
      }
      const err = assertCode(
        () => storageFor(auto, {}, USER_DIR, { TETHRAL_DB: "postgres://tethral:s3cret@db.example:x/fleet" }),
        "INVALID",
        "TETHRAL_DB",
      );
      assert.doesNotMatch(err.message, /s3cret/);
    });

    it("memory: no store at all", () => {
      assert.deepEqual(storageFor(config({ storage: "memory" }), {}, USER_DIR, { TETHRAL_DB: "x.sqlite" }), { kind: "memory", source: "setting" });
      assert.equal(storeOf(storageFor(config({ storage: "memory" }), {}, USER_DIR, {})), null);
    });

    it("postgres: the credential password reaches the connection, never the description", () => {
      const postgres = config({ storage: "postgres", postgresUrl: "postgres://tethral@db.example:5432/fleet" });
      const password = "s3cret p@ss/word";
      const choice = storageFor(postgres, { postgresPassword: password }, USER_DIR, {});
      assert.deepEqual(choice, {
        kind: "postgres",
        source: "setting",
        options: { url: "postgres://tethral@db.example:5432/fleet", password },
      });

      const store = storeOf(storageFor(postgres, { postgresPassword: password }, USER_DIR, {}));
      assert.ok(store instanceof PostgresStore);
      assert.equal(store.description, "db.example:5432/fleet");
      assert.ok(!store.description.includes("s3cret"));
      assert.equal(choice.kind, "postgres");
      const { connectionString } = connectionSettings(choice.options.url, choice.options.password);
      assert.equal(decodeURIComponent(new URL(connectionString).password), password);
      assert.equal(new URL(connectionString).username, "tethral");

      // No credential: the URL's own password, if any, is the one used.
      assert.deepEqual(storageFor({ ...postgres, postgresUrl: "postgres://tethral:inurl@db.example/fleet" }, { postgresPassword: "" }, USER_DIR, {}), {
        kind: "postgres",
        source: "setting",
        options: { url: "postgres://tethral:inurl@db.example/fleet" },
      });
    });

    it("makes the store without opening it", () => {
      const dir = mkdtempSync(path.join(tmpdir(), "tethral-make-store-"));
      try {
        const store = storeOf(storageFor(config({ storage: "sqlite", sqliteFile: "sub/fleet.sqlite" }), {}, dir, {}));
        assert.ok(store instanceof SqliteStore);
        assert.equal(store.description, path.join(dir, "sub", "fleet.sqlite"));
        assert.equal(existsSync(path.join(dir, "sub")), false);
        assert.deepEqual(readdirSync(dir), []);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
