import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { isTethralError } from "../../src/core/errors";
import { LATEST_SCHEMA_VERSION, MIGRATIONS_TABLE } from "../../src/store/migrations";
import { SqliteStore } from "../../src/store/sqlite";
import { describeStoreContract } from "./contract";
import { deviceRow, eventRow, historyRow, stateRow, T0 } from "./fixtures";

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "tethral-sqlite-"));
}

/** Raw SQL through a short-lived connection of its own, as another process would. */
function rawSql(file: string, text: string): Record<string, unknown>[] {
  const db = new Database(file);
  try {
    const stmt = db.prepare(text);
    if (stmt.reader) return stmt.all() as Record<string, unknown>[];
    stmt.run();
    return [];
  } finally {
    db.close();
  }
}

describeStoreContract("SQLite :memory:", async () => ({
  store: new SqliteStore({ path: ":memory:" }),
  cleanup: async () => {},
}));

describeStoreContract("SQLite file", async () => {
  const dir = tempDir();
  const file = join(dir, "tethral.db");
  return {
    store: new SqliteStore({ path: file }),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
    reopen: async () => new SqliteStore({ path: file }),
    sql: async (text: string) => rawSql(file, text),
  };
});

describe("SqliteStore", function () {
  let dir: string;
  const stores: SqliteStore[] = [];
  const track = (s: SqliteStore) => (stores.push(s), s);

  beforeEach(function () {
    dir = tempDir();
  });

  afterEach(async function () {
    for (const s of stores.splice(0)) await s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("creates the file and its missing directories, in WAL mode", async function () {
    const file = join(dir, "nested", "deeper", "tethral.db");
    const store = track(new SqliteStore({ path: file }));
    assert.equal(store.kind, "sqlite");
    assert.equal(store.description, file);
    await store.open();
    assert.ok(statSync(file).isFile());
    assert.deepEqual(rawSql(file, "PRAGMA journal_mode"), [{ journal_mode: "wal" }]);
  });

  it("keeps the data over a close and reopen", async function () {
    const file = join(dir, "tethral.db");
    const first = track(new SqliteStore({ path: file }));
    await first.open();
    await first.upsertDevice(deviceRow("d1"));
    await first.writeBatch({
      presence: [{ id: "d1", status: "offline", lastSeen: T0 + 9 }],
      states: [stateRow("d1", 2)],
      history: [historyRow("h1", "d1", T0, 1)],
      events: [eventRow("e1", "device.offline", T0, { deviceId: "d1" })],
    });
    await first.close();

    const second = track(new SqliteStore({ path: file }));
    await second.open();
    assert.deepEqual(await second.loadDevices(), [deviceRow("d1", { status: "offline", lastSeen: T0 + 9 })]);
    assert.deepEqual(await second.loadStates(), [stateRow("d1", 2)]);
    assert.equal((await second.stateHistory("d1", 10)).length, 1);
    assert.equal((await second.events({ limit: 10 }, T0)).length, 1);
  });

  it("finds committed writes in the WAL of a connection that never closed", async function () {
    const file = join(dir, "tethral.db");
    const writer = track(new SqliteStore({ path: file }));
    await writer.open();
    await writer.upsertDevice(deviceRow("d1"));
    await writer.writeBatch({ presence: [], states: [stateRow("d1", 1)], history: [], events: [] });
    // Still open, no checkpoint: what a crash would leave behind.
    assert.ok(existsSync(`${file}-wal`));
    const reader = track(new SqliteStore({ path: file }));
    await reader.open();
    assert.deepEqual(await reader.loadDevices(), [deviceRow("d1")]);
    assert.deepEqual(await reader.loadStates(), [stateRow("d1", 1)]);
  });

  it("refuses a newer database before changing anything in it", async function () {
    const file = join(dir, "future.db");
    const db = new Database(file);
    db.exec(`CREATE TABLE ${MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, name TEXT, applied_at INTEGER)`);
    db.exec(`INSERT INTO ${MIGRATIONS_TABLE} VALUES (${LATEST_SCHEMA_VERSION + 1}, 'next', 0)`);
    db.close();
    const store = track(new SqliteStore({ path: file }));
    await assert.rejects(store.open(), (err: unknown) => {
      assert.ok(isTethralError(err));
      assert.equal(err.code, "UNAVAILABLE");
      assert.ok(err.message.includes(file), err.message);
      return true;
    });
    assert.deepEqual(rawSql(file, "PRAGMA journal_mode"), [{ journal_mode: "delete" }]);
    assert.deepEqual(rawSql(file, "SELECT name FROM sqlite_master WHERE type = 'table'"), [{ name: MIGRATIONS_TABLE }]);
    await assert.rejects(store.loadDevices(), (err: unknown) => isTethralError(err) && err.code === "UNAVAILABLE");
  });

  it("refuses a file that is not a database with UNAVAILABLE", async function () {
    const file = join(dir, "garbage.db");
    writeFileSync(file, "this is not a database, just text long enough to fill a header......................");
    const store = track(new SqliteStore({ path: file }));
    await assert.rejects(store.open(), (err: unknown) => isTethralError(err) && err.code === "UNAVAILABLE");
  });

  it("turns a thrown error into a rejected promise", async function () {
    const store = track(new SqliteStore({ path: ":memory:" }));
    const pending = store.loadDevices();
    assert.ok(pending instanceof Promise);
    await assert.rejects(pending, (err: unknown) => isTethralError(err) && err.code === "UNAVAILABLE");
    await store.open();
    await assert.rejects(
      store.upsertDevice(deviceRow("d1", { metadata: { n: 1n } as never })),
      (err: unknown) => isTethralError(err) && err.code === "INVALID",
    );
  });

  it("writes every row of batches around the chunk sizes", async function () {
    const store = track(new SqliteStore({ path: ":memory:" }));
    await store.open();
    let next = 0;
    for (const n of [1, 2, 3, 127, 128, 129, 255, 256, 257, 383]) {
      const events = Array.from({ length: n }, () => eventRow(`e${next}`, "x.y", T0 + next++));
      await store.writeBatch({ presence: [], states: [], history: [], events });
    }
    const all = await store.events({ limit: 10_000 }, T0);
    assert.equal(all.length, next);
    assert.equal(new Set(all.map((e) => e.id)).size, next);
  });
});
