import assert from "node:assert/strict";
import { type CoapHub, ID, RawClient, startCoapHub, uint, until } from "./coap-device";

/** Observe (RFC 7641) of a device's desired resource, from a hand-made client: every datagram is seen. */
describe("CoAP: observing a device's desired resource (RFC 7641)", () => {
  let t: CoapHub;
  let client: RawClient;
  const token = Buffer.of(0xab, 0xcd);
  const options = (observe: number | null, deviceToken = t.token): [number, Buffer][] => {
    const o: [number, Buffer][] = [
      [11, Buffer.from("devices")],
      [11, Buffer.from(ID)],
      [11, Buffer.from("desired")],
      [15, Buffer.from(`token=${deviceToken}`)],
    ];
    if (observe !== null) o.push([6, uint(observe)]);
    return o;
  };
  const observe = () => client.send({ code: "0.01", token, options: options(0) });
  const observers = () => t.coap().observers as number;
  const seq = (o: Map<number, Buffer>) => o.get(6)!.reduce((n, b) => n * 256 + b, 0);

  beforeEach(async () => {
    t = await startCoapHub({}, { observeAckTimeoutMs: 20 });
    client = new RawClient(t.adapter.port!);
    await t.hub.setState(ID, { desired: { setpoint: 21 } });
  });

  afterEach(async () => {
    await client.close();
    await t.hub.stop();
  });

  it("answers the twin with an Observe number, then notifies every change (confirmable, increasing numbers) until the client resets", async () => {
    const first = await observe();
    assert.equal(first.code, "2.05");
    assert.deepEqual(JSON.parse(first.body), { desired: { setpoint: 21 }, delta: { setpoint: 21 }, version: t.hub.getState(ID).version });
    assert.deepEqual(first.options.get(12), Buffer.of(50));
    assert.ok(first.options.has(6), "registered: the answer carries Observe");
    assert.equal(observers(), 1);

    await t.hub.setState(ID, { desired: { setpoint: 23 } });
    const note = (await client.next())!;
    assert.equal(note.type, "CON");
    assert.equal(note.code, "2.05");
    assert.ok(seq(note.options) > seq(first.options));
    assert.deepEqual(JSON.parse(note.body).desired, { setpoint: 23 });
    client.settle("ACK", note.messageId!);

    // The device's report clears the delta, and the observer hears it.
    t.hub.receive({ protocol: "coap", deviceId: ID, kind: "telemetry", payload: '{"setpoint":23}', token: t.token });
    const cleared = (await client.next())!;
    assert.deepEqual(JSON.parse(cleared.body).delta, {});
    assert.ok(seq(cleared.options) > seq(note.options));

    client.settle("RST", cleared.messageId!);
    await until(() => observers() === 0, "the reset to end the observation");
    await t.hub.setState(ID, { desired: { setpoint: 24 } });
    assert.equal(await client.next(300), null, "nothing after the reset");
  });

  it("deregisters with Observe = 1 (same token), and re-registering with the same token does not double the notifications", async () => {
    await observe();
    await observe();
    assert.equal(observers(), 1);
    const off = await client.send({ code: "0.01", token, options: options(1) });
    assert.equal(off.code, "2.05");
    assert.equal(off.options.has(6), false, "no longer observed");
    assert.equal(observers(), 0);
    await t.hub.setState(ID, { desired: { setpoint: 30 } });
    assert.equal(await client.next(300), null);
  });

  it("drops a client that stops acknowledging after RFC 7252's retransmissions", async () => {
    await observe();
    await t.hub.setState(ID, { desired: { setpoint: 25 } });
    const sent: number[] = [];
    for (let n = await client.next(); n; n = await client.next(1500)) sent.push(n.messageId!);
    assert.equal(sent.length, 5, "the notification and 4 retransmissions");
    assert.equal(new Set(sent).size, 1, "retransmissions repeat the message id");
    assert.equal(observers(), 0);
    assert.equal(t.coap().observersGone, 1);
  });

  it("ends observations with 4.04 when the device is removed and 4.01 when its token is replaced", async () => {
    await observe();
    await t.hub.rotateToken(ID);
    const revoked = (await client.next())!;
    assert.equal(revoked.code, "4.01");
    assert.equal(observers(), 0);
    const { token: fresh } = await t.hub.rotateToken(ID);
    assert.equal((await client.send({ code: "0.01", token, options: options(0, "stale") })).code, "4.01", "the old token is refused");
    assert.equal(observers(), 0);
    await client.send({ code: "0.01", token, options: options(0, fresh) });
    await t.hub.removeDevice(ID);
    const removed = (await client.next())!;
    assert.equal(removed.code, "4.04");
    assert.equal(observers(), 0);
  });

  it("holds at most 4 observations per device, refuses other methods, and tells observers when the hub stops", async () => {
    for (let i = 0; i < 5; i++) {
      const answer = await client.send({ code: "0.01", token: Buffer.of(i), options: options(0) });
      assert.equal(answer.options.has(6), i < 4, `registration ${i}`);
    }
    assert.equal(observers(), 4);
    assert.equal((await client.send({ code: "0.02", token, options: options(null) })).code, "4.05");
    await t.hub.stop();
    const goodbyes = [];
    for (let n = await client.next(); n; n = await client.next(300)) goodbyes.push(n.code);
    assert.deepEqual(goodbyes, ["5.03", "5.03", "5.03", "5.03"]);
  });
});
