import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { TethralError } from "../../src/core/errors";
import type { HubOptions } from "../../src/core/hub";
import type { Device } from "../../src/core/types";
import { CoapAdapter, type CoapAdapterOptions } from "../../src/protocols/coap";
import type { AdapterContext } from "../../src/protocols/types";
import { assertNoPollution, assertRejectsCode } from "../helpers";
import { CoapCommandDevice, CoapDevice, type CoapHub, ID, RawClient, reportOptions, resettingDevice, standInContext, startCoapHub, until } from "./coap-device";

describe("CoapAdapter", () => {
  let t: CoapHub;
  const closers: (() => Promise<unknown>)[] = [];
  const start = async (options?: HubOptions, adapterOptions?: CoapAdapterOptions) => {
    t = await startCoapHub(options, adapterOptions);
    closers.push(() => t.device.close(), () => t.hub.stop());
    return t;
  };
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
  });

  describe("device reports", () => {
    beforeEach(() => start());

    it("takes telemetry, heartbeats, state and status with the device's token and answers 2.04", async () => {
      assert.equal((await t.device.report(ID, "telemetry", t.token, { temperature: 21.5 })).code, "2.04");
      assert.deepEqual(t.hub.getState(ID).properties, { temperature: 21.5 });
      assert.equal(t.hub.getDevice(ID).status, "online");
      assert.equal((await t.device.report(ID, "heartbeat", t.token, "")).code, "2.04");
      assert.equal((await t.device.report(ID, "state", t.token, { properties: { humidity: 40 } })).code, "2.04");
      assert.deepEqual(t.hub.getState(ID).properties, { temperature: 21.5, humidity: 40 });
      assert.equal((await t.device.report(ID, "status", t.token, "offline")).code, "2.04");
      assert.equal(t.hub.getDevice(ID).status, "offline");
      // A known device announcing itself again (at boot) is a sign of life.
      assert.equal((await t.device.report(ID, "register", t.token, { id: ID })).code, "2.04");
      assert.equal(t.hub.getDevice(ID).status, "online");
      assert.equal(t.coap().messagesIn, 5);
      assert.equal(t.coap().rejected, 0);
    });

    it("refuses a wrong or missing token with 4.01 and an unknown device with 4.04, counted, state untouched", async () => {
      const wrong = await t.device.report(ID, "telemetry", "not-the-token", { temperature: 99 });
      assert.equal(wrong.code, "4.01");
      assert.equal(JSON.parse(wrong.body).error.code, "UNAUTHORIZED");
      assert.equal((await t.device.report(ID, "telemetry", undefined, { temperature: 99 })).code, "4.01");
      const unknown = await t.device.report("nobody", "telemetry", t.token, { temperature: 99 });
      assert.equal(unknown.code, "4.04");
      assert.equal(JSON.parse(unknown.body).error.code, "NOT_FOUND");
      assert.deepEqual(t.hub.getState(ID).properties, {});
      assert.equal(t.hub.getDevice(ID).status, "unknown");
      assert.equal(t.coap().rejected, 3);
      const rejected = await t.hub.eventHistory({ type: "message.rejected" });
      assert.deepEqual(rejected.map((e) => (e.data as { protocol: string }).protocol), ["coap", "coap", "coap"]);
    });

    it("refuses a request naming two tokens with 4.01, whichever comes first, as HTTP refuses ?token=a&token=b", async () => {
      for (const query of [`token=${t.token}&token=bogus`, `token=bogus&token=${t.token}`, `token=${t.token}&token=${t.token}`]) {
        const answer = await t.device.request(`/devices/${ID}/telemetry`, '{"temperature": 99}', { query });
        assert.equal(answer.code, "4.01", query.replace(t.token!, "TOKEN"));
      }
      assert.deepEqual(t.hub.getState(ID).properties, {}, "nothing taken");
      assert.equal(t.coap().rejected, 3);
    });

    it("refuses payloads that are not a JSON object with 4.00 and stays unaffected", async () => {
      const before = t.hub.getState(ID).version;
      // Then bytes that are no UTF-8, and a key that names no property.
      for (const payload of ["{not json", "[1, 2]", '"hot"', "42", '{"__proto__": {"polluted": true}}', '{"a": {"__proto__": {"polluted": 1}}}', Buffer.from('{"u":"\xff\xfe"}', "latin1"), '{"": 5}']) {
        const answer = await t.device.report(ID, "telemetry", t.token, payload);
        assert.equal(answer.code, "4.00", `${payload} gave ${answer.code} ${answer.body}`);
        assert.equal(JSON.parse(answer.body).error.code, "INVALID");
      }
      assert.equal((await t.device.report(ID, "state", t.token, { status: "exploded" })).code, "4.00");
      assert.equal(t.coap().rejected, 9);
      assert.equal(t.hub.getState(ID).version, before);
      assertNoPollution();
      // Still serving: the next good report goes through.
      assert.equal((await t.device.report(ID, "telemetry", t.token, { temperature: 20 })).code, "2.04");
      assert.deepEqual(t.hub.getState(ID).properties, { temperature: 20 });
    });

    it("answers 4.04 to other paths and 4.05 to other methods, and counts them", async () => {
      assert.equal((await t.device.request("/devices", "{}", { query: `token=${t.token}` })).code, "4.04");
      assert.equal((await t.device.request(`/devices/${ID}/firmware`, "{}", { query: `token=${t.token}` })).code, "4.04");
      assert.equal((await t.device.request(`/api/devices/${ID}/telemetry`, "{}")).code, "4.04");
      const get = await t.device.request(`/devices/${ID}/telemetry`, "", { method: "GET", query: `token=${t.token}` });
      assert.equal(get.code, "4.05");
      assert.match(get.body, /POST/);
      assert.equal((await t.device.request(`/devices/${ID}/state`, "{}", { method: "PUT", query: `token=${t.token}` })).code, "4.05");
      // An Observe registration (GET, Observe 0) is refused too: nothing here can be observed.
      const raw = new RawClient(t.adapter.port!);
      const observe = await raw.send({ code: "0.01", token: Buffer.of(9), options: [...reportOptions(ID, "state", t.token), [6, Buffer.alloc(0)]] });
      await raw.close();
      assert.equal(observe.code, "4.05");
      assert.equal(t.coap().rejected, 6);
      assert.equal(t.coap().messagesIn, 0, "none of them reached the hub");
    });

    it("passes answers to commands sent another way to the hub (/responses)", async () => {
      const answer = await t.device.report(ID, "responses", t.token, { id: "no-such-command", ok: true, result: 1 });
      assert.equal(answer.code, "2.04");
      assert.equal(t.hub.communicationStatistics().commands.unknownResponses, 1);
    });
  });

  describe("commands", () => {
    const devices: CoapCommandDevice[] = [];
    const tokens = new Map<string, string>();
    afterEach(async () => {
      for (const d of devices.splice(0)) await d.close();
    });
    /** A device serving commands, registered in the hub at its address (plus `base`). */
    const commandDevice = async (handler: ConstructorParameters<typeof CoapCommandDevice>[0], id = "valve-1", base = "") => {
      const d = new CoapCommandDevice(handler);
      devices.push(d);
      await d.listen();
      tokens.set(id, (await t.hub.registerDevice({ id, protocol: "coap", address: d.address + base })).token!);
      return d;
    };
    const json = (code: string, body: unknown) => (_frame: unknown, res: import("coap").OutgoingMessage) => {
      res.code = code;
      res.end(typeof body === "string" ? body : JSON.stringify(body));
    };

    beforeEach(() => start());

    it("POSTs {id, command, params} to {address}/commands and takes a 2.05 JSON answer as the result", async () => {
      const d = await commandDevice(json("2.05", { opened: 40 }), "valve-1", "/api/v1");
      const command = await t.hub.sendCommand("valve-1", { command: "open", params: { percent: 40 }, wait: true, timeout: 5 });
      assert.equal(command.status, "succeeded");
      assert.deepEqual(command.result, { opened: 40 });
      assert.equal(command.attempts, 1);
      assert.deepEqual(d.received, [{ path: "/api/v1/commands", frame: { id: command.id, command: "open", params: { percent: 40 } } }]);
      assert.equal(t.coap().messagesOut, 1);
      assert.ok(t.coap().bytesOut > 0);
    });

    it("takes an empty 2.04 as a null result and a text body as text", async () => {
      let body = "";
      await commandDevice((_f, res) => {
        res.code = "2.04";
        res.end(body);
      });
      assert.equal((await t.hub.sendCommand("valve-1", { command: "ping", wait: true, timeout: 5 })).result, null);
      body = "done";
      const text = await t.hub.sendCommand("valve-1", { command: "ping", wait: true, timeout: 5 });
      assert.equal(text.status, "succeeded");
      assert.equal(text.result, "done");
    });

    it("fails a command the device answers with 4.xx or 5.xx, with the code and text as the error", async () => {
      let code = "4.00";
      await commandDevice((_f, res) => {
        res.code = code;
        res.end("no such valve");
      });
      const refused = await t.hub.sendCommand("valve-1", { command: "open", wait: true, timeout: 5, retries: 2 });
      assert.equal(refused.status, "failed");
      assert.equal(refused.error, "4.00 no such valve");
      assert.equal(refused.attempts, 1, "an answer is not retried");
      code = "5.03";
      assert.equal((await t.hub.sendCommand("valve-1", { command: "open", wait: true, timeout: 5 })).error, "5.03 no such valve");
    });

    it("ends a one-way command (expectResponse false) sent once its request has left, whether the device answers late, with an error, or not at all", async () => {
      let answer: "late" | "error" | "never" = "never";
      await commandDevice((_f, res) => {
        if (answer === "never") return;
        if (answer === "error") {
          res.code = "5.00";
          res.end("broken");
          return;
        }
        setTimeout(() => {
          res.code = "2.04";
          res.end();
        }, 1600);
      });
      for (const how of ["never", "error", "late"] as const) {
        answer = how;
        // One request to the device at a time: each waits for the one before to be done with.
        const done = await t.hub.sendCommand("valve-1", { command: "blink", expectResponse: false, wait: true, timeout: 2 });
        assert.equal(done.status, "sent", `${how}: ${done.status} ${done.error ?? ""}`);
        assert.ok(Date.parse(done.completedAt!) - Date.parse(done.sentAt!) < 500, `${how}: ended as it was sent, not when the device answered`);
      }
      // The late answer comes, and is ignored, before the device's socket closes.
      await new Promise((r) => setTimeout(r, 1800));
      assert.deepEqual((await t.hub.deviceCommands("valve-1")).map((c) => c.status), ["sent", "sent", "sent"]);
    });

    it("sends a frame larger than one datagram block-wise, and takes a block-wise answer", async () => {
      const log = "l".repeat(3000);
      const d = await commandDevice(json("2.05", { log }));
      const params = { firmware: "f".repeat(4000) };
      const command = await t.hub.sendCommand("valve-1", { command: "flash", params, wait: true, timeout: 5 });
      assert.equal(command.status, "succeeded");
      assert.deepEqual(d.received[0]!.frame.params, params);
      assert.deepEqual(command.result, { log });
    });

    it("sends to a device at an IPv6 address", async () => {
      const d = new CoapCommandDevice(json("2.05", { v6: true }), "::1");
      devices.push(d);
      await d.listen();
      await t.hub.registerDevice({ id: "valve-6", protocol: "coap", address: `coap://[::1]:${d.port}` });
      const command = await t.hub.sendCommand("valve-6", { command: "open", wait: true, timeout: 5 });
      assert.deepEqual(command.result, { v6: true });
    });

    it("gives up on a silent device after the timeout", async () => {
      const d = await commandDevice(() => undefined);
      const command = await t.hub.sendCommand("valve-1", { command: "open", wait: true, timeout: 0.2 });
      assert.notEqual(command.status, "succeeded");
      assert.ok(command.status === "timed_out" || command.status === "failed", command.status);
      assert.match(command.error ?? "", /no answer/);
      assert.equal(d.received.length, 1);
      assert.equal(t.adapter.statistics().commandTimeouts, 1);
      assert.equal(t.adapter.statistics().pendingCommands, 0);
      assert.equal(t.coap().errors, 0, "a silent device is no fault of the hub's");
    });

    it("marks a command sent once its datagram is out: a device that took it and never answers has it sent (sentAt, command.sent), then timed out", async () => {
      const d = await commandDevice(() => undefined);
      const events: string[] = [];
      t.hub.subscribe({ types: "command.*" }, (e) => void events.push(e.type));
      const queued = await t.hub.sendCommand("valve-1", { command: "open", timeout: 1.5 });
      await until(() => d.received.length === 1);
      await new Promise((r) => setTimeout(r, 50));
      const waiting = await t.hub.getCommand(queued.id);
      assert.equal(waiting.status, "sent", "the device has it");
      assert.ok(waiting.sentAt, "with the time it left");
      await until(async () => (await t.hub.getCommand(queued.id)).status !== "sent", "the command ended", 5000);
      const ended = await t.hub.getCommand(queued.id);
      assert.ok(ended.status === "timed_out" || ended.status === "failed", ended.status);
      assert.equal(ended.sentAt, waiting.sentAt);
      assert.deepEqual(events.slice(0, 2), ["command.queued", "command.sent"]);
      assert.equal(events.filter((e) => e === "command.sent").length, 1);
    });

    it("marks a block-wise command sent with its answer, not with its first block", async () => {
      const d = await commandDevice(json("2.05", { flashed: true }));
      const events: string[] = [];
      t.hub.subscribe({ types: "command.*" }, (e) => void events.push(e.type));
      const command = await t.hub.sendCommand("valve-1", { command: "flash", params: { firmware: "f".repeat(4000) }, wait: true, timeout: 5 });
      assert.equal(command.status, "succeeded");
      assert.ok(command.sentAt);
      assert.equal(d.received.length, 1);
      assert.deepEqual(events, ["command.queued", "command.sent", "command.succeeded"]);
    });

    it("retries a command the device did not answer, and the second attempt reaches it", async () => {
      const d = await commandDevice((frame, res) => {
        if (d.received.length === 1) return; // the first attempt gets lost
        res.code = "2.05";
        res.end(JSON.stringify({ attempt: d.received.length }));
      });
      const command = await t.hub.sendCommand("valve-1", { command: "open", wait: true, timeout: 0.5, retries: 2 });
      assert.equal(command.status, "succeeded");
      assert.equal(command.attempts, 2);
      assert.deepEqual(command.result, { attempt: 2 });
      assert.deepEqual(d.received.map((r) => r.frame.id), [command.id, command.id], "the same command, sent twice");
    });

    it("reaches a device that comes back on its port after the first attempt", async () => {
      const d = await commandDevice(json("2.05", { back: true }));
      await d.close(); // offline: datagrams to its port go nowhere
      const pending = t.hub.sendCommand("valve-1", { command: "open", wait: true, timeout: 0.2, retries: 5 });
      await until(() => t.adapter.statistics().commandTimeouts >= 1);
      await d.listen();
      const command = await pending;
      assert.equal(command.status, "succeeded");
      assert.deepEqual(command.result, { back: true });
      assert.ok(command.attempts >= 2);
    });

    it("holds a command for a device known to be offline until it reports again over CoAP", async () => {
      const d = await commandDevice(json("2.05", { ok: 1 }));
      await t.hub.setState("valve-1", { status: "offline" });
      const queued = await t.hub.sendCommand("valve-1", { command: "open", timeout: 5 });
      assert.equal((await t.hub.getCommand(queued.id)).attempts, 0);
      assert.equal(d.received.length, 0);
      assert.equal((await t.device.report("valve-1", "heartbeat", tokens.get("valve-1"), "")).code, "2.04");
      const done = await t.hub.waitForCommand(queued.id);
      assert.equal(done.status, "succeeded");
      assert.equal(d.received.length, 1);
    });

    it("does not take a reset (RST) from the device as its answer", async () => {
      const d = await resettingDevice();
      closers.push(d.close);
      await t.hub.registerDevice({ id: "valve-r", protocol: "coap", address: d.address });
      const command = await t.hub.sendCommand("valve-r", { command: "open", wait: true, timeout: 5, retries: 1 });
      assert.equal(command.status, "failed");
      assert.match(command.error ?? "", /reset/);
      assert.equal(d.received(), 2, "a refusal is retried like any failed attempt");
    });

    it("refuses devices without a coap:// address (INVALID)", async () => {
      const device = (address?: string) => ({ ...t.hub.getDevice(ID), address }) as Device;
      const frame = { id: "c1", command: "open", params: {} };
      for (const address of [undefined, "", "http://10.0.0.5/commands", "coaps://10.0.0.5", "not a url", "coap://:5683/x"]) {
        const err = await assertRejectsCode(() => t.adapter.send(device(address), frame, 1000), "INVALID");
        assert.match(err.message, new RegExp(ID));
      }
      await t.hub.registerDevice({ id: "valve-9", protocol: "coap" });
      const command = await t.hub.sendCommand("valve-9", { command: "open", wait: true, timeout: 1 });
      assert.equal(command.status, "failed");
      assert.match(command.error ?? "", /no address/);
    });
  });

  describe("lifecycle", () => {
    it("frees its port and sockets on stop, and refuses to send afterwards", async () => {
      const running = () => process.getActiveResourcesInfo().filter((r) => r === "UDPWrap" || r === "Timeout").length;
      await new Promise((resolve) => setImmediate(resolve)); // counted after mocha has armed this test's timeout
      const before = running();
      await start();
      const port = t.adapter.port!;
      const d = new CoapCommandDevice(() => undefined); // silent: a send is in flight at stop
      await d.listen();
      const sent = t.adapter.send({ ...t.hub.getDevice(ID), address: d.address }, { id: "c1", command: "x", params: {} }, 60_000);
      sent.catch(() => undefined); // refused at the stop below, before it is asserted: not an unhandled rejection meanwhile
      await until(() => d.received.length === 1);
      await t.device.report(ID, "telemetry", t.token, { temperature: 1 });
      await t.device.close();
      await t.hub.stop();
      await assertRejectsCode(() => sent, "UNAVAILABLE");
      await d.close();
      assert.equal(t.adapter.port, null);
      assert.equal(t.adapter.health().status, "stopped");
      await assertRejectsCode(() => t.adapter.send(t.hub.getDevice(ID), { id: "c2", command: "x", params: {} }, 1000), "UNAVAILABLE");
      await t.adapter.stop(); // twice is fine
      await new Promise((resolve) => setImmediate(resolve)); // a closed socket's handle goes on the next turn
      assert.equal(running(), before, "no socket or timer left running");
      const again = createSocket({ type: "udp4", reuseAddr: false });
      await new Promise<void>((resolve, reject) => again.once("error", reject).bind(port, "127.0.0.1", resolve));
      await new Promise<void>((resolve) => again.close(() => resolve()));
    });

    describe("with a stand-in hub", () => {
      const context = standInContext;
      const adapters: CoapAdapter[] = [];
      const clients: CoapDevice[] = [];
      afterEach(async () => {
        for (const c of clients.splice(0)) await c.close();
        for (const a of adapters.splice(0)) await a.stop();
      });
      const serve = async (ctx: AdapterContext, options = {}) => {
        const adapter = new CoapAdapter({ port: 0, ...options });
        adapters.push(adapter);
        await adapter.start(ctx);
        return adapter;
      };

      it("answers a report 2.04 only once the hub says it is stored (5.03 if the hub stops first); a command's answer at once", async () => {
        let store: ((stored: boolean) => void) | null = null;
        const ctx = context((m) => ({ ok: true, deviceId: m.deviceId, status: "online", changed: true }));
        const held = { ...ctx, stored: () => new Promise<boolean>((resolve) => (store = resolve)) };
        const adapter = await serve(held);
        const client = new CoapDevice(adapter.port!);
        clients.push(client);
        let answered = false;
        const report = client.report(ID, "telemetry", "t", { a: 1 }).then((a) => ((answered = true), a));
        await until(() => store !== null, "the adapter waiting for the store");
        await new Promise((resolve) => setTimeout(resolve, 100));
        assert.equal(answered, false, "no 2.04 before the report is stored");
        store!(true);
        assert.equal((await report).code, "2.04");
        store = null;
        const stopping = client.report(ID, "state", "t", { properties: { a: 2 } });
        await until(() => store !== null, "the adapter waiting for the store");
        store!(false);
        assert.equal((await stopping).code, "5.03");
        assert.equal((await client.report(ID, "responses", "t", { id: "c1", ok: true })).code, "2.04", "not held: nothing waits");
      });

      it("answers 5.03 while the hub is unavailable and 5.00 when it fails, without throwing", async () => {
        let fail: "unavailable" | "throw" = "unavailable";
        const warnings: string[] = [];
        const ctx = context(() => {
          if (fail === "throw") throw new Error("boom");
          return { ok: false, error: new TethralError("UNAVAILABLE", "the hub is stopping") };
        }, warnings);
        const adapter = await serve(ctx);
        const client = new CoapDevice(adapter.port!);
        clients.push(client);
        const answer = await client.report(ID, "telemetry", "t", { a: 1 });
        assert.equal(answer.code, "5.03");
        assert.deepEqual(JSON.parse(answer.body), { error: { code: "UNAVAILABLE", message: "the hub is stopping" } });
        fail = "throw";
        assert.equal((await client.report(ID, "telemetry", "t", { a: 1 })).code, "5.00");
        assert.equal(ctx.counters.errors, 1);
        assert.match(warnings.join("\n"), /boom/);
      });

      it("fails to start with a clear error when the port is taken, and serves IPv6 hosts", async () => {
        const taken = await serve(context(() => ({ ok: true, deviceId: ID, status: null, changed: false })));
        const second = new CoapAdapter({ port: taken.port! });
        const err = await assertRejectsCode(() => second.start(context(() => assert.fail())), "UNAVAILABLE");
        assert.match(err.message, new RegExp(`port ${taken.port}.*TETHRAL_COAP_PORT`));
        await second.stop();
        const v6 = await serve(context(() => ({ ok: true, deviceId: ID, status: null, changed: false })), { host: "::1" });
        assert.equal(v6.health().status, "ok");
        assert.equal(typeof v6.port, "number");
      });

      it("binds nothing when disabled", async () => {
        const adapter = await serve(context(() => assert.fail()), { enabled: false });
        assert.equal(adapter.port, null);
        assert.equal(adapter.health().status, "stopped");
        assert.equal(adapter.isConnected(), undefined);
        await assertRejectsCode(() => adapter.send({ id: ID, address: "coap://127.0.0.1:1" } as Device, { id: "c", command: "x", params: {} }, 100), "UNAVAILABLE");
      });
    });
  });
});
