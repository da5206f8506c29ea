import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Hub } from "../../src/core/hub";
import { SqliteStore } from "../../src/store/sqlite";
import { until } from "../helpers";
import { MqttDevice } from "../protocols/mqtt-device";

const CHILD = join(__dirname, "fixtures", "crash-child.ts");
const COMMANDS_CHILD = join(__dirname, "fixtures", "crash-commands-child.ts");
const TWIN_CHILD = join(__dirname, "fixtures", "crash-twin-child.ts");
const REPORTS_CHILD = join(__dirname, "fixtures", "crash-reports-child.ts");

/** Runs the child until `acks` changes are acknowledged plus a random extra moment, then SIGKILLs it. */
function runAndKill(file: string, acks: number, extraMs: number, child_ = CHILD): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", child_, file], { stdio: ["ignore", "pipe", "pipe"] });
    const lines: string[] = [];
    let buffered = "";
    let stderr = "";
    let killing = false;
    child.stdout.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const parts = buffered.split("\n");
      buffered = parts.pop() ?? "";
      lines.push(...parts);
      if (!killing && lines.length >= acks) {
        killing = true;
        setTimeout(() => child.kill("SIGKILL"), extraMs);
      }
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.on("exit", (code, signal) => {
      if (signal === "SIGKILL") resolve(lines);
      else reject(new Error(`the child ended by itself (${code}): ${stderr}`));
    });
  });
}

/** A fresh folder for each test of the suite (removed after it); the getter names the current one. */
function scratchDir(): () => string {
  let dir = "";
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "tethral-crash-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  return () => dir;
}

describe("crash safety (SQLite file, SIGKILL)", function () {
  this.timeout(60_000);
  const scratch = scratchDir();

  for (const [acks, extraMs] of [
    [5, 0],
    [40, 3],
    [120, 17],
    [200, 41],
    // And one random moment each run (the title says which, to reproduce a failure).
    [1 + Math.floor(Math.random() * 300), Math.floor(Math.random() * 50)],
  ] as const) {
    it(`keeps every acknowledged change when killed after ${acks} acknowledgements (+${extraMs} ms)`, async () => {
      const file = join(scratch(), "hub.sqlite");
      const lines = await runAndKill(file, acks, extraMs);
      const registered = new Set<string>();
      const deleted = new Set<string>();
      const versions = new Map<string, number>();
      for (const line of lines) {
        const [what, id, version] = line.split(" ");
        if (what === "REG") registered.add(id!);
        if (what === "DEL") deleted.add(id!);
        if (what === "SET") versions.set(id!, Number(version));
      }
      // The child removes d(k) right after acknowledging "SET d(k+5)" (k a multiple of 5): a
      // removal may have committed without its acknowledgement reaching us, so d(k) may be gone.
      const mayBeGone = (id: string) => {
        const k = Number(id.slice(1));
        return k % 5 === 0 && versions.has(`d${k + 5}`);
      };
      assert.ok(registered.size > 0);

      const hub = new Hub({ store: new SqliteStore({ path: file }), onWarning: () => undefined });
      await hub.start();
      try {
        for (const id of registered) {
          if (deleted.has(id)) {
            assert.equal(hub.registry.has(id), false, `${id} was removed and acknowledged`);
            continue;
          }
          if (!hub.registry.has(id) && mayBeGone(id)) continue;
          assert.ok(hub.registry.has(id), `acknowledged registration of ${id} survived`);
          const acked = versions.get(id);
          if (acked !== undefined) {
            const state = hub.getState(id);
            assert.deepEqual(state.desired, { n: Number(id.slice(1)) }, `acknowledged desired state of ${id}`);
            assert.ok(state.version >= acked, `${id} at version ${state.version}, acknowledged ${acked}`);
          }
        }
        // History is consistent: per device, a gapless run of versions from the first change
        // (batches land in order, so a crash can only cut the end), never past the state's version.
        for (const device of hub.listDevices({ limit: 100_000 }).devices) {
          const versions = (await hub.stateHistory(device.id, 1000)).map((h) => h.version);
          assert.deepEqual(versions, versions.map((_, i) => i + 1), `history of ${device.id} is 1..${versions.length}`);
          if (versions.length > 0) assert.ok(versions.at(-1)! <= hub.getState(device.id).version);
        }
      } finally {
        await hub.stop();
      }
    });
  }
});

describe("crash safety of command answers (SQLite file, SIGKILL)", function () {
  this.timeout(60_000);
  const scratch = scratchDir();

  // Until 2026-12-08 a cancel or a supersede was answered before its status was stored (up to
  // 100 ms later): a crash right after the answer brought the command back queued, and it was
  // sent after all (a tester's find: 3 of 3 cancels).
  for (const [acks, extraMs] of [
    [3, 0],
    [30, 1],
    [90, 0],
    [1 + Math.floor(Math.random() * 150), Math.floor(Math.random() * 5)],
  ] as const) {
    it(`keeps every answered cancel and supersede when killed after ${acks} answers (+${extraMs} ms)`, async () => {
      const file = join(scratch(), "hub.sqlite");
      const lines = await runAndKill(file, acks + 1, extraMs, COMMANDS_CHILD);
      const answered = lines.filter((l) => l !== "READY").map((l) => l.split(" ") as [string, string]);
      assert.ok(answered.length >= acks);
      const hub = new Hub({ store: new SqliteStore({ path: file }), onWarning: () => undefined });
      await hub.start();
      try {
        // A waited-for command's end is written behind (a durable write before each answer cost
        // the command round trip's p99 three times over): it may come back queued, and is sent
        // again, at least once, as the README says.
        const expected: Record<string, string> = { CAN: "cancelled", SUP: "superseded" };
        for (const [what, id] of answered.filter(([what]) => what !== "DONE")) {
          const c = await hub.getCommand(id);
          assert.equal(c.status, expected[what], `${what} ${id}: answered ${expected[what]}, stored ${c.status}`);
        }
      } finally {
        await hub.stop();
      }
    });
  }
});

describe("crash safety of twin versions (SQLite file, SIGKILL)", function () {
  this.timeout(60_000);
  const scratch = scratchDir();

  // Until 2026-12-08 a twin a report moved was sent before its state was stored: after a SIGKILL
  // the store held an older version than the device had been given, and the next change came
  // with a version the device had seen, which it must ignore (a tester's find).
  for (const [twins, extraMs] of [
    [20, 0],
    [200, 1],
    [1 + Math.floor(Math.random() * 400), Math.floor(Math.random() * 30)],
  ] as const) {
    it(`never gives a device a twin version the store does not hold when killed after ${twins} twins (+${extraMs} ms)`, async () => {
      const file = join(scratch(), "hub.sqlite");
      const lines = await runAndKill(file, twins + 1, extraMs, TWIN_CHILD);
      const given = new Map<string, number>();
      for (const line of lines) {
        const [what, id, version] = line.split(" ");
        if (what === "TWIN") given.set(id!, Math.max(given.get(id!) ?? 0, Number(version)));
      }
      assert.ok(given.size > 0);
      const hub = new Hub({ store: new SqliteStore({ path: file }), onWarning: () => undefined });
      await hub.start();
      try {
        for (const [id, version] of given) {
          const stored = hub.getState(id).version;
          assert.ok(stored >= version, `${id}: given version ${version}, the store holds ${stored}`);
        }
      } finally {
        await hub.stop();
      }
    });
  }
});

describe("crash safety of acknowledged reports (SQLite file, SIGKILL)", function () {
  this.timeout(60_000);
  const scratch = scratchDir();

  for (const [acks, extraMs] of [
    [30, 0],
    [150, 7],
    [1 + Math.floor(Math.random() * 300), Math.floor(Math.random() * 30)],
  ] as const) {
    it(`keeps every report acknowledged (an MQTT PUBACK, the REST flow's answer) when killed after ${acks} of each (+${extraMs} ms)`, async () => {
      const file = join(scratch(), "hub.sqlite");
      const child = spawn(process.execPath, ["--import", "tsx", REPORTS_CHILD, file], { stdio: ["ignore", "pipe", "pipe"] });
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      let httpAcked = 0;
      let buffered = "";
      const port = await new Promise<number>((resolve, reject) => {
        child.once("exit", (code) => reject(new Error(`the child ended (${code}): ${stderr}`)));
        child.stdout.on("data", (chunk: Buffer) => {
          buffered += chunk.toString();
          const lines = buffered.split("\n");
          buffered = lines.pop() ?? "";
          for (const line of lines) {
            const parts = line.split(" ");
            if (parts[0] === "PORT") resolve(Number(parts[1]));
            if (parts[0] === "ACK") httpAcked = Number(parts[2]);
          }
        });
      });
      assert.ok(Number.isInteger(port) && port > 0, `the child's broker port: ${port}`);
      // One QoS 1 report at a time, each sent once the one before it is acknowledged.
      const device = await MqttDevice.connect(`mqtt://127.0.0.1:${port}`, { id: "m1" });
      let mqttAcked = 0;
      const reporting = (async () => {
        for (let seq = 1; ; seq++) {
          await device.publish("telemetry", { seq });
          mqttAcked = seq;
        }
      })().catch(() => undefined);
      await until(() => mqttAcked >= acks && httpAcked >= acks, `${acks} acknowledgements of each`, 30_000);
      await new Promise((resolve) => setTimeout(resolve, extraMs));
      child.kill("SIGKILL");
      await exited;
      const [mqttSeen, httpSeen] = [mqttAcked, httpAcked];
      await device.end();
      await reporting;

      const hub = new Hub({ store: new SqliteStore({ path: file }), onWarning: () => undefined });
      await hub.start();
      try {
        for (const [id, acknowledged] of [["m1", mqttSeen], ["h1", httpSeen]] as const) {
          const stored = new Set((await hub.telemetry(id, { keys: "seq", from: 0, limit: 10_000 })).series.seq?.map((p) => p.value));
          const lost = Array.from({ length: acknowledged }, (_, i) => i + 1).filter((seq) => !stored.has(seq));
          assert.ok(acknowledged < 10_000, "fewer than a page of reports");
          assert.deepEqual(lost, [], `${id}: ${lost.length} of ${acknowledged} acknowledged reports lost`);
        }
      } finally {
        await hub.stop();
      }
    });
  }
});
