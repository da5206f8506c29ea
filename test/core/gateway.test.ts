import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManualClock } from "../../src/core/clock";
import { Hub, type HubOptions } from "../../src/core/hub";
import type { TethralEvent } from "../../src/core/types";
import type { DeviceMessage } from "../../src/protocols/types";
import { SqliteStore } from "../../src/store/sqlite";
import { assertNoPollution, assertRejectsCode } from "../helpers";
import { FakeAdapter, settle } from "./fake-adapter";

async function setup(options: HubOptions = {}) {
  const clock = new ManualClock();
  const adapter = new FakeAdapter();
  const hub = new Hub({ clock, heartbeat: { resolutionMs: 0 }, protocols: [adapter], ...options });
  await hub.start();
  const rejected: TethralEvent[] = [];
  hub.subscribe({ types: "message.rejected" }, (e) => {
    rejected.push(e);
  });
  const send = (m: Partial<DeviceMessage>) => adapter.context.receive({ protocol: "fake", deviceId: "d1", kind: "telemetry", payload: "{}", ...m });
  return { clock, adapter, hub, rejected, send };
}

describe("device gateway: decode, authenticate, ingest", () => {
  describe("tokens", () => {
    it("registration answers a token once; the device record never shows it again", async () => {
      const t = await setup();
      const registered = await t.hub.registerDevice({ id: "d1", protocol: "fake" });
      assert.equal(typeof registered.token, "string");
      assert.ok(registered.token!.length >= 40, "32 random bytes");
      assert.equal("token" in t.hub.getDevice("d1"), false);
      assert.equal(JSON.stringify(t.hub.listDevices()).includes(registered.token!), false);
      const other = await t.hub.registerDevice({ id: "d2", protocol: "fake" });
      assert.notEqual(other.token, registered.token);
      await t.hub.stop();
    });

    it("takes a message with the right token and refuses a wrong or missing one (UNAUTHORIZED), counted", async () => {
      const t = await setup();
      const { token } = await t.hub.registerDevice({ id: "d1", protocol: "fake" });
      assert.deepEqual(t.send({ payload: Buffer.from('{"t": 1}'), token }), { ok: true, deviceId: "d1", status: "online", changed: true });
      for (const bad of [undefined, "", `${token}x`, token!.slice(1), "x".repeat(5000)]) {
        const r = t.send({ payload: '{"t": 2}', token: bad });
        assert.equal(r.ok, false);
        if (!r.ok) assert.equal(r.error.code, "UNAUTHORIZED");
      }
      assert.deepEqual(t.hub.getState("d1").properties, { t: 1 });
      assert.equal(t.rejected.length, 5);
      assert.deepEqual(t.rejected.map((e) => (e.data as { reason: string }).reason), Array(5).fill("bad-token"));
      const stats = t.hub.communicationStatistics().protocols.fake!;
      assert.equal(stats.messagesIn, 6);
      assert.equal(stats.rejected, 5);
      assert.equal(t.hub.statistics().messages.rejected, 5);
      await t.hub.stop();
    });

    it("authenticates connections: a known device with its token, an unknown one NOT_FOUND, a bad token UNAUTHORIZED", async () => {
      const t = await setup();
      const { token } = await t.hub.registerDevice({ id: "d1", protocol: "fake" });
      assert.deepEqual(t.adapter.context.authenticate("fake", "d1", token), { ok: true, deviceId: "d1", known: true });
      const wrong = t.adapter.context.authenticate("fake", "d1", "nope");
      assert.equal(wrong.ok === false && wrong.error.code, "UNAUTHORIZED");
      const unknown = t.adapter.context.authenticate("fake", "ghost", token);
      assert.equal(unknown.ok === false && unknown.error.code, "NOT_FOUND");
      const badId = t.adapter.context.authenticate("fake", "a/b", token);
      assert.equal(badId.ok === false && badId.error.code, "INVALID");
      assert.equal(t.rejected.length, 3);
      await t.hub.stop();
    });

    it("keeps only a SHA-256 of the token in the store, and the token works after a restart; rotation replaces it", async () => {
      const dir = mkdtempSync(join(tmpdir(), "tethral-tokens-"));
      try {
        const path = join(dir, "hub.sqlite");
        const hub1 = new Hub({ store: new SqliteStore({ path }) });
        await hub1.start();
        const { token } = await hub1.registerDevice({ id: "d1", protocol: "mqtt" });
        await hub1.stop();
        const store = new SqliteStore({ path });
        await store.open();
        const row = await store.getToken("d1");
        assert.equal(row!.hash, createHash("sha256").update(token!).digest("hex"));
        assert.equal(JSON.stringify(await store.loadDevices()).includes(token!), false);
        await store.close();

        const hub2 = new Hub({ store: new SqliteStore({ path }) });
        await hub2.start();
        const ok = hub2.receive({ protocol: "http", deviceId: "d1", kind: "heartbeat", payload: null, token });
        assert.equal(ok.ok, true);
        const rotated = await hub2.rotateToken("d1");
        assert.notEqual(rotated.token, token);
        assert.equal(hub2.receive({ protocol: "http", deviceId: "d1", kind: "heartbeat", payload: null, token }).ok, false);
        assert.equal(hub2.receive({ protocol: "http", deviceId: "d1", kind: "heartbeat", payload: null, token: rotated.token }).ok, true);
        await assertRejectsCode(() => hub2.rotateToken("ghost"), "NOT_FOUND");
        await hub2.stop();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("with tokens off, refuses to issue a token (CONFLICT) rather than one nobody checks", async () => {
      const t = await setup({ deviceTokens: false });
      await t.hub.registerDevice({ id: "d1", protocol: "fake" });
      const err = await assertRejectsCode(() => t.hub.rotateToken("d1"), "CONFLICT");
      assert.match(err.message, /tokens are off/);
      await assertRejectsCode(() => t.hub.rotateToken("ghost"), "NOT_FOUND");
      assert.equal(t.send({ payload: '{"t": 1}' }).ok, true, "the device goes on as before");
      await t.hub.stop();
    });

    it("with tokens off, takes known devices without one and registers without one", async () => {
      const t = await setup({ deviceTokens: false });
      const registered = await t.hub.registerDevice({ id: "d1", protocol: "fake" });
      assert.equal(registered.token, undefined);
      assert.equal(t.send({ payload: '{"t": 1}' }).ok, true);
      const unknown = t.send({ deviceId: "ghost" });
      assert.equal(unknown.ok === false && unknown.error.code, "NOT_FOUND");
      await t.hub.stop();
    });
  });

  describe("bad input", () => {
    it("refuses invalid JSON, wrong shapes, __proto__ keys, bad ids and oversized payloads, and changes nothing", async () => {
      const t = await setup({ maxPayloadBytes: 1024 });
      const { token } = await t.hub.registerDevice({ id: "d1", protocol: "fake" });
      t.send({ payload: '{"t": 1}', token });
      const before = t.hub.getState("d1");
      const cases: Array<[Partial<DeviceMessage>, string, string]> = [
        [{ payload: Buffer.from("{not json") }, "INVALID", "invalid-json"],
        // Nothing at all (an empty MQTT payload), or only white space.
        [{ payload: Buffer.alloc(0) }, "INVALID", "invalid-json"],
        [{ kind: "state", payload: " \r\n" }, "INVALID", "invalid-json"],
        [{ payload: "[1,2,3]" }, "INVALID", "invalid-payload"],
        [{ payload: '"text"' }, "INVALID", "invalid-payload"],
        [{ payload: '{"__proto__": {"polluted": true}}' }, "INVALID", "invalid-payload"],
        [{ kind: "state", payload: '{"status": "exploded"}' }, "INVALID", "invalid-payload"],
        [{ kind: "status", payload: "sideways" }, "INVALID", "invalid-payload"],
        [{ kind: "bogus" as "telemetry" }, "INVALID", "invalid-payload"],
        [{ payload: Buffer.alloc(1025, 32) }, "INVALID", "too-large"],
        [{ payload: `{"x": "${"y".repeat(1_000_000)}"}` }, "INVALID", "too-large"],
        [{ deviceId: "../etc/passwd" }, "INVALID", "invalid-device-id"],
        [{ deviceId: "ghost" }, "NOT_FOUND", "unknown-device"],
        // Bytes that are no UTF-8 (as MQTT and CoAP hand them over), refused, not stored with U+FFFD.
        [{ payload: Buffer.from([0x7b, 0x22, 0x75, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]) }, "INVALID", "invalid-json"],
        [{ payload: new Uint8Array([0x7b, 0x22, 0x75, 0x22, 0x3a, 0x22, 0xc3, 0x22, 0x7d]) }, "INVALID", "invalid-json"],
        [{ kind: "status", payload: Buffer.from([0x6f, 0x6e, 0xff]) }, "INVALID", "invalid-payload"],
        // A key that names no property (each top-level key is a time series).
        [{ payload: '{"": 5, "ok": 7}' }, "INVALID", "invalid-payload"],
        [{ kind: "state", payload: '{"properties": {"": 1}}' }, "INVALID", "invalid-payload"],
      ];
      for (const [message, code, reason] of cases) {
        const r = t.send({ token, ...message });
        assert.equal(r.ok, false, JSON.stringify(message).slice(0, 80));
        if (!r.ok) assert.equal(r.error.code, code, `${JSON.stringify(message).slice(0, 80)}: ${r.error.message}`);
        if (!r.ok && reason === "invalid-json") assert.match(r.error.message, /is empty|is not valid JSON|UTF-8/, r.error.message);
        assert.equal((t.rejected.at(-1)!.data as { reason: string }).reason, reason, JSON.stringify(message).slice(0, 80));
      }
      assert.equal(t.rejected.length, cases.length);
      assert.deepEqual(t.hub.getState("d1"), before, "nothing changed");
      assertNoPollution();
      assert.equal(t.send({ payload: '{"t": 2}', token }).ok, true, "the hub still takes good messages");
      assert.equal(t.send({ payload: Buffer.from('{"u": "é ✓ 𝄞"}'), token }).ok, true, "UTF-8 beyond ASCII is taken");
      assert.equal(t.hub.getState("d1").properties.u, "é ✓ 𝄞");
      await t.hub.stop();
    });

    it("holds a device's reported properties, merged, to 256 KiB of JSON: the report that would take them past it is refused", async () => {
      const t = await setup({ deviceTokens: false });
      await t.hub.registerDevice({ id: "d1", protocol: "fake" });
      const big = (key: string) => JSON.stringify({ [key]: "y".repeat(250_000) });
      assert.equal(t.send({ payload: big("p1") }).ok, true, "one report of 250,000 characters");
      const second = t.send({ payload: big("p2") });
      assert.equal(second.ok, false, "a second one under another key would make 500,000");
      if (!second.ok) assert.match(second.error.message, /would be \d+ bytes of JSON in all, more than the 262144/);
      assert.deepEqual(Object.keys(t.hub.getState("d1").properties), ["p1"], "nothing of it kept");
      // Small reports after it, and one that replaces the large value, are taken.
      for (let i = 0; i < 50; i++) assert.equal(t.send({ payload: JSON.stringify({ [`k${i}`]: i }) }).ok, true);
      assert.equal(t.send({ payload: big("p1") }).ok, true, "the large value replaced by another as large");
      assert.equal(t.send({ payload: JSON.stringify({ p1: "small" }) }).ok, true);
      assert.equal(t.send({ payload: big("p2") }).ok, true, "room again once the first is small");
      assert.equal(Buffer.byteLength(JSON.stringify(t.hub.getState("d1").properties)) <= 256 * 1024, true);
      // Many reports of a little under 1 KiB each, under other keys: the key limit bounds them.
      await t.hub.registerDevice({ id: "d2", protocol: "fake" });
      let taken = 0;
      for (let i = 0; i < 300; i++) if (t.send({ deviceId: "d2", payload: JSON.stringify({ [`k${i}`]: "z".repeat(1000) }) }).ok) taken++;
      assert.equal(taken, 256);
      assert.equal(Buffer.byteLength(JSON.stringify(t.hub.getState("d2").properties)) <= 256 * 1024, true);
      await t.hub.stop();
    });

    it("after a restart, a device whose stored properties are large is measured: small reports do not take them past 256 KiB", async () => {
      const dir = mkdtempSync(join(tmpdir(), "tethral-large-"));
      try {
        const path = join(dir, "hub.sqlite");
        const hub1 = new Hub({ store: new SqliteStore({ path }), deviceTokens: false });
        await hub1.start();
        await hub1.registerDevice({ id: "d1", protocol: "http" });
        assert.equal(hub1.receive({ protocol: "http", deviceId: "d1", kind: "telemetry", payload: JSON.stringify({ blob: "y".repeat(250_000) }) }).ok, true);
        await hub1.stop();
        const hub2 = new Hub({ store: new SqliteStore({ path }), deviceTokens: false });
        await hub2.start();
        try {
          let taken = 0;
          // Reports of under 1 KiB each, each under a key of its own: about 12 of them fit.
          for (let i = 0; i < 40; i++) if (hub2.receive({ protocol: "http", deviceId: "d1", kind: "telemetry", payload: JSON.stringify({ [`k${i}`]: "z".repeat(950) }) }).ok) taken++;
          assert.ok(taken > 0 && taken < 40, `${taken} of 40 taken`);
          assert.ok(Buffer.byteLength(JSON.stringify(hub2.getState("d1").properties)) <= 256 * 1024);
        } finally {
          await hub2.stop();
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("files a refusal that names no device under none, not under a device called \"null\"", async () => {
      const t = await setup({ deviceTokens: false });
      await t.hub.registerDevice({ id: "null", protocol: "fake" });
      t.hub.rejectMessage("fake", { reason: "malformed", message: "not a datagram" });
      assert.equal(t.rejected.length, 1);
      assert.equal(t.rejected[0]!.deviceId, null);
      await t.hub.stop();
    });
  });

  describe("message kinds", () => {
    it("state, status and heartbeat; a retained online is old news, a retained offline is applied", async () => {
      const t = await setup({ deviceTokens: false });
      await t.hub.registerDevice({ id: "d1", protocol: "fake" });
      assert.equal(t.send({ kind: "status", payload: "online", retained: true }).ok, true);
      assert.equal(t.hub.getDevice("d1").status, "unknown", "a retained online is not a heartbeat");
      t.send({ kind: "heartbeat", payload: Buffer.from("whatever, not JSON") });
      assert.equal(t.hub.getDevice("d1").status, "online");
      t.send({ kind: "state", payload: { properties: { mode: "eco" } } });
      assert.deepEqual(t.hub.getState("d1").properties, { mode: "eco" });
      t.send({ kind: "status", payload: Buffer.from("offline"), retained: true });
      assert.equal(t.hub.getDevice("d1").status, "offline");
      await t.hub.stop();
    });

    it("self-registration: off by default; when on, an unknown device registers itself and keeps the token it presented", async () => {
      const off = await setup();
      const refused = off.send({ deviceId: "new-1", kind: "register", payload: '{"name": "New"}', token: "a-token-of-16-chars-or-more" });
      assert.equal(refused.ok === false && refused.error.code, "NOT_FOUND");
      await off.hub.stop();

      const t = await setup({ selfRegistration: true });
      const auth = t.adapter.context.authenticate("fake", "new-1", "whatever-the-device-has-123");
      assert.deepEqual(auth, { ok: true, deviceId: "new-1", known: false });
      const short = t.send({ deviceId: "new-1", kind: "register", payload: "{}", token: "short" });
      assert.equal(short.ok === false && short.error.code, "UNAUTHORIZED");
      const mismatch = t.send({ deviceId: "new-1", kind: "register", payload: '{"id": "other"}', token: "whatever-the-device-has-123" });
      assert.equal(mismatch.ok === false && mismatch.error.code, "INVALID");
      const telemetry = t.send({ deviceId: "new-1", payload: "{}", token: "whatever-the-device-has-123" });
      assert.equal(telemetry.ok === false && telemetry.error.code, "NOT_FOUND", "only register before it is known");
      const r = t.send({ deviceId: "new-1", kind: "register", payload: '{"name": "New one", "capabilities": ["temperature"]}', token: "whatever-the-device-has-123" });
      assert.equal(r.ok, true);
      await settle();
      const device = t.hub.getDevice("new-1");
      assert.equal(device.name, "New one");
      assert.equal(device.protocol, "fake");
      assert.equal(t.send({ deviceId: "new-1", payload: '{"t": 1}', token: "whatever-the-device-has-123" }).ok, true);
      assert.equal(t.send({ deviceId: "new-1", payload: '{"t": 1}', token: "another-token-of-the-kind" }).ok, false);
      // Announcing itself again at the next boot is a heartbeat, not a second registration.
      assert.equal(t.send({ deviceId: "new-1", kind: "register", payload: "{}", token: "whatever-the-device-has-123" }).ok, true);
      const bad = t.send({ deviceId: "new-2", kind: "register", payload: '{"protocol": 5}', token: "whatever-the-device-has-123" });
      assert.equal(bad.ok, true, "accepted for registration...");
      await settle();
      assert.equal((t.rejected.at(-1)!.data as { reason: string }).reason, "registration-failed", "...then refused, and said so");
      assert.throws(() => t.hub.getDevice("new-2"));
      await t.hub.stop();
    });
  });

  describe("adapters", () => {
    it("starts and stops adapters with the hub; one that fails to start leaves the hub running, degraded, and named", async () => {
      const good = new FakeAdapter("good");
      const broken = new FakeAdapter("broken");
      broken.start = async () => {
        throw new Error("listen EADDRINUSE 127.0.0.1:1883");
      };
      const warnings: string[] = [];
      const hub = new Hub({ protocols: [good, broken], onWarning: (m) => warnings.push(m) });
      await hub.start();
      assert.equal(good.started, true);
      assert.equal(hub.isRunning, true);
      const health = hub.health();
      assert.equal(health.status, "degraded");
      assert.deepEqual(health.components["protocol:broken"], { status: "degraded", error: "listen EADDRINUSE 127.0.0.1:1883" });
      assert.equal(health.components["protocol:good"]!.status, "ok");
      assert.match(warnings.join("\n"), /protocol broken did not start: listen EADDRINUSE/);
      await hub.stop();
      assert.equal(good.stopped, true);
      assert.throws(() => new Hub({ protocols: [new FakeAdapter("x"), new FakeAdapter("x")] }), /already served/);
      assert.throws(() => new Hub({ protocols: [new FakeAdapter("Bad Name")] }), /name/);
    });
  });
});
