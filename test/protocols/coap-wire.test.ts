import assert from "node:assert/strict";
import type { TethralEvent } from "../../src/core/types";
import { type CoapHub, ID, RawClient, reportOptions, startCoapHub } from "./coap-device";

/**
 * What the CoAP server makes of datagrams no well-behaved client library sends: options it does
 * not understand (RFC 7252 §5.4.1), broken messages (§3, §4.2), and discovery (RFC 6690).
 */
describe("CoapAdapter on the wire", () => {
  let t: CoapHub;
  let raw: RawClient;
  beforeEach(async () => {
    t = await startCoapHub();
    raw = new RawClient(t.adapter.port!);
  });
  afterEach(async () => {
    await raw.close();
    await t.device.close();
    await t.hub.stop();
  });
  const rejections = async (reason: string) => (await t.hub.eventHistory({ type: "message.rejected" })).filter((e: TethralEvent) => (e.data as { reason: string }).reason === reason);

  describe("options", () => {
    const report = (extra: [number, Buffer][], temperature: number, nonConfirmable = false) =>
      raw.send({ token: Buffer.of(temperature), options: [...reportOptions(ID, "telemetry", t.token), ...extra], payload: Buffer.from(JSON.stringify({ temperature })), nonConfirmable });

    it("answers 4.02 Bad Option to a critical option it does not understand, in CON and NON requests, and changes nothing", async () => {
      // An unassigned odd number, If-Match (1), OSCORE (9), Q-Block1 (19); a second Uri-Port; a 3-byte Uri-Port.
      const bad: [string, [number, Buffer][]][] = [
        ["65001", [[65001, Buffer.of(1)]]],
        ["1", [[1, Buffer.of(1, 2)]]],
        ["9", [[9, Buffer.alloc(0)]]],
        ["19", [[19, Buffer.of(8)]]],
        ["7", [[7, Buffer.of(0x16, 0x33)], [7, Buffer.of(0x16, 0x34)]]],
        ["7", [[7, Buffer.of(1, 2, 3)]]],
      ];
      for (const [number, options] of bad) {
        const answer = await report(options, 1);
        assert.equal(answer.code, "4.02", `option ${number}: ${answer.code} ${answer.body}`);
        assert.equal(answer.type, "ACK");
        assert.equal(JSON.parse(answer.body).error.code, "INVALID");
        assert.match(JSON.parse(answer.body).error.message, new RegExp(`option ${number}\\b`));
      }
      const non = await report([[65001, Buffer.of(1)]], 1, true);
      assert.equal(non.code, "4.02");
      assert.equal(non.type, "NON");
      assert.deepEqual(t.hub.getState(ID).properties, {});
      assert.equal(t.coap().messagesIn, 0);
      assert.equal(t.coap().rejected, 7);
      assert.equal((await rejections("bad-option")).length, 7);
    });

    it("answers 5.05 to a proxy request, and ignores elective options it does not know", async () => {
      const proxied = await report([[35, Buffer.from("coap://10.0.0.9/x")]], 1);
      assert.equal(proxied.code, "5.05");
      // An unassigned even number, Uri-Host (3) and Uri-Port (7), as coap-client sends them.
      const ok = await report([[65000, Buffer.of(1)], [3, Buffer.from("hub.local")], [7, Buffer.of(0x16, 0x33)]], 2);
      assert.equal(ok.code, "2.04", ok.body);
      assert.deepEqual(t.hub.getState(ID).properties, { temperature: 2 });
      assert.equal(t.coap().rejected, 1);
    });
  });

  describe("malformed datagrams", () => {
    it("counts each as refused and answers a CON or NON with a reset (RST), never with the library's text", async () => {
      // [what, datagram, answered with a reset]. Message ids 0x1200 + n where a header can be read.
      const cases: [string, Buffer, boolean][] = [
        ["token length 9", Buffer.of(0x49, 0x02, 0x12, 0x01, ...Buffer.alloc(9, 7)), true],
        ["token cut short", Buffer.of(0x48, 0x02, 0x12, 0x02, 1, 2), true],
        ["option delta 15", Buffer.of(0x41, 0x02, 0x12, 0x03, 0xaa, 0xf1, 0x00), true],
        ["option length 15", Buffer.of(0x40, 0x02, 0x12, 0x04, 0xbf, 0x00), true],
        ["option value past the end", Buffer.of(0x40, 0x02, 0x12, 0x05, 0xb5, 0x61), true],
        ["option extension missing", Buffer.of(0x40, 0x02, 0x12, 0x06, 0xd0), true],
        ["payload marker, no payload", Buffer.of(0x40, 0x02, 0x12, 0x07, 0xff), true],
        ["empty message with a token", Buffer.of(0x41, 0x00, 0x12, 0x08, 0x01), true],
        ["NON with a broken option", Buffer.of(0x50, 0x02, 0x12, 0x09, 0xb5), true],
        ["reserved code class 7", Buffer.of(0x40, 0xe1, 0x12, 0x0a), true],
        ["ACK with a broken option", Buffer.of(0x60, 0x44, 0x12, 0x0b, 0xb5), false],
        ["3 bytes", Buffer.of(0x40, 0x01, 0x00), false],
        ["nothing", Buffer.alloc(0), false],
        ["version 2", Buffer.of(0x80, 0x01, 0x12, 0x0c), false],
        ["version 0 garbage", Buffer.from("\x00garbage from nowhere"), false],
      ];
      for (const [what, datagram, reset] of cases) {
        const answer = await raw.sendRaw(datagram);
        if (!reset) {
          assert.equal(answer, null, `${what}: no answer, got ${answer?.code} ${answer?.body}`);
          continue;
        }
        assert.ok(answer, `${what}: answered`);
        assert.equal(answer.type, "RST", `${what}: ${answer.type} ${answer.code} ${answer.body}`);
        assert.equal(answer.code, "0.00");
        assert.equal(answer.messageId, datagram.readUInt16BE(2), what);
        assert.equal(answer.body, "");
      }
      assert.equal(t.coap().rejected, cases.length);
      const events = await rejections("malformed");
      assert.equal(events.length, cases.length);
      for (const e of events) assert.match((e.data as { error: string }).error, /^malformed CoAP datagram: /);
      assert.deepEqual(t.warnings, []);
      assert.equal(t.coap().messagesIn, 0);
      // Still serving; a CoAP ping (an empty CON) gets its reset and counts as nothing.
      assert.equal((await raw.send({ token: Buffer.of(1), options: reportOptions(ID, "telemetry", t.token), payload: Buffer.from('{"t":1}') })).code, "2.04");
      const pong = await raw.sendRaw(Buffer.of(0x40, 0x00, 0x12, 0x0d));
      assert.equal(pong?.type, "RST");
      assert.equal(t.coap().rejected, cases.length);
    });
  });

  describe("discovery", () => {
    const discover = (options: [number, Buffer][] = [], code = "0.01") => raw.send({ code, token: Buffer.of(9), options: [[11, Buffer.from(".well-known")], [11, Buffer.from("core")], ...options] });
    /** RFC 6690 §2: link-value *("," link-value); a link-value is <URI-Reference> *(";" link-param). */
    const parse = (body: string) =>
      body.split(",").map((value) => {
        const match = /^<([^<>]+)>((?:;[a-z]+(?:=(?:"[^"]*"|[A-Za-z0-9.]+))?)*)$/.exec(value);
        assert.ok(match, `not a link-value: ${value}`);
        assert.doesNotMatch(match[1]!, /[{} ]/, "a URI reference, no template characters");
        const params = Object.fromEntries([...match[2]!.matchAll(/;([a-z]+)(?:=(?:"([^"]*)"|([^;]*)))?/g)].map((m) => [m[1], m[2] ?? m[3] ?? ""]));
        return { href: decodeURIComponent(match[1]!), params };
      });

    it("answers GET /.well-known/core with the hub's resources in CoRE link format (RFC 6690), content-format 40", async () => {
      const answer = await discover();
      assert.equal(answer.code, "2.05");
      assert.deepEqual(answer.options.get(12), Buffer.of(40));
      const links = parse(answer.body);
      const byHref = new Map(links.map((l) => [l.href, l.params]));
      for (const kind of ["telemetry", "heartbeat", "state", "status", "register", "responses"]) {
        const params = byHref.get(`/devices/{id}/${kind}`);
        assert.ok(params, `${kind} listed in ${answer.body}`);
        assert.equal(params.rt, `tethral.${kind}`);
        assert.equal(params.if, "tethral.report");
      }
      assert.equal(byHref.get("/devices/{id}/telemetry")!.ct, "50");
      assert.equal(byHref.get("/devices/{id}/status")!.ct, "0");
      // The twin: observable (RFC 7641 §6), JSON.
      assert.deepEqual(byHref.get("/devices/{id}/desired"), { rt: "tethral.desired", if: "core.s", ct: "50", obs: "" });
      assert.ok(answer.body.endsWith(';ct=50;obs'), answer.body);
      assert.equal(t.coap().rejected, 0);
    });

    it("filters by query (RFC 6690 §4.1), refuses other formats with 4.06 and other methods with 4.05", async () => {
      const telemetry = await discover([[15, Buffer.from("rt=tethral.telemetry")]]);
      assert.deepEqual(parse(telemetry.body).map((l) => l.href), ["/devices/{id}/telemetry"]);
      const json = await discover([[15, Buffer.from("ct=50")]]);
      assert.deepEqual(parse(json.body).map((l) => l.href.split("/").pop()), ["telemetry", "state", "register", "responses", "desired"]);
      const observable = await discover([[15, Buffer.from("obs")]]);
      assert.deepEqual(parse(observable.body).map((l) => l.href), ["/devices/{id}/desired"]);
      const prefix = await discover([[15, Buffer.from("rt=tethral.st*")]]);
      assert.deepEqual(parse(prefix.body).map((l) => l.href.split("/").pop()), ["state", "status"]);
      const none = await discover([[15, Buffer.from("rt=core.rd")]]);
      assert.equal(none.code, "2.05");
      assert.equal(none.body, "");
      assert.equal((await discover([[17, Buffer.of(40)]])).code, "2.05");
      assert.equal((await discover([[17, Buffer.of(50)]])).code, "4.06");
      assert.equal((await discover([], "0.02")).code, "4.05");
    });
  });
});
