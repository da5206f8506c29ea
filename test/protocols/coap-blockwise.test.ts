import assert from "node:assert/strict";
import type { HubOptions } from "../../src/core/hub";
import type { CoapAdapterOptions } from "../../src/protocols/coap";
import { type CoapHub, ID, RawClient, block1, reportOptions, startCoapHub, uint } from "./coap-device";

/**
 * Block-wise uploads (RFC 7959 Block1) and payload size: what a device sending more than one
 * datagram meets, from raw datagrams (tokens, endpoints, block numbers chosen by the test).
 */
describe("CoapAdapter block-wise uploads", () => {
  let t: CoapHub;
  const closers: (() => Promise<unknown>)[] = [];
  const raws: RawClient[] = [];
  const start = async (options?: HubOptions, adapterOptions?: CoapAdapterOptions) => {
    t = await startCoapHub(options, adapterOptions);
    closers.push(() => t.device.close(), () => t.hub.stop());
    return t;
  };
  const rawClient = () => {
    const raw = new RawClient(t.adapter.port!);
    raws.push(raw);
    return raw;
  };
  afterEach(async () => {
    for (const raw of raws.splice(0)) await raw.close();
    for (const close of closers.splice(0).reverse()) await close();
  });

  it("matches the blocks of an upload by endpoint and resource, whatever token each carries (RFC 7959 §2.3, as libcoap sends them)", async () => {
    await start();
    const [raw, elsewhere] = [rawClient(), rawClient()];
    const block = (num: number, more: boolean, kind = "telemetry") => [...reportOptions(ID, kind, t.token), [27, block1(num, more, 0)]] as [number, Buffer][];
    const body = Buffer.from(JSON.stringify({ a: "x".repeat(37) })); // three blocks of 16
    const part = (n: number) => body.subarray(n * 16, n * 16 + 16);
    const first = await raw.send({ token: Buffer.of(1), options: block(0, true), payload: part(0) });
    assert.equal(first.code, "2.31");
    assert.deepEqual(first.options.get(27), block1(0, true, 0), "Block1 echoed");
    // The same block 1 from another endpoint, to another resource, or with another Request-Tag continues nothing...
    assert.equal((await elsewhere.send({ token: Buffer.of(2), options: block(1, true), payload: part(1) })).code, "4.08");
    assert.equal((await raw.send({ token: Buffer.of(3), options: block(1, true, "state"), payload: part(1) })).code, "4.08");
    const tagged = [...block(1, true), [292, Buffer.of(0xab)]] as [number, Buffer][];
    assert.equal((await raw.send({ token: Buffer.of(4), options: tagged, payload: part(1) })).code, "4.08");
    // ...and leaves the upload in progress alone: its next blocks, each with a new token, complete it.
    assert.equal((await raw.send({ token: Buffer.of(5), options: block(1, true), payload: part(1) })).code, "2.31");
    const done = await raw.send({ token: Buffer.from("newtoken"), options: block(2, false), payload: part(2) });
    assert.equal(done.code, "2.04");
    assert.deepEqual(done.options.get(27), block1(2, false, 0));
    assert.deepEqual(t.hub.getState(ID).properties, { a: "x".repeat(37) });
    assert.equal(t.coap().messagesIn, 1);
    assert.equal(t.coap().rejected, 3);
    assert.equal(t.adapter.statistics().blockTransfers, 0);
  });

  it("restarts an upload whose block 0 comes again, and takes a token-less one", async () => {
    await start();
    const raw = rawClient();
    const block = (num: number, more: boolean) => [...reportOptions(ID, "telemetry", t.token), [27, block1(num, more, 0)]] as [number, Buffer][];
    const stale = Buffer.from(JSON.stringify({ old: "y".repeat(30) }));
    const body = Buffer.from(JSON.stringify({ a: "x".repeat(20) }));
    assert.equal((await raw.send({ token: Buffer.alloc(0), options: block(0, true), payload: stale.subarray(0, 16) })).code, "2.31");
    assert.equal((await raw.send({ token: Buffer.alloc(0), options: block(0, true), payload: body.subarray(0, 16) })).code, "2.31");
    assert.equal((await raw.send({ token: Buffer.alloc(0), options: block(1, false), payload: body.subarray(16) })).code, "2.04");
    assert.deepEqual(t.hub.getState(ID).properties, { a: "x".repeat(20) });
    assert.equal(t.adapter.statistics().blockTransfers, 0);
  });

  it("takes a block-wise report that fits and refuses a 1 MB one with 4.13 once it passes the limit", async () => {
    await start();
    const big = { blob: "x".repeat(5000) };
    assert.equal((await t.device.report(ID, "telemetry", t.token, big)).code, "2.04", "5 kB goes in five blocks");
    assert.equal(t.hub.getState(ID).properties.blob, big.blob);
    const huge = await t.device.report(ID, "telemetry", t.token, { blob: "x".repeat(1024 * 1024) });
    assert.equal(huge.code, "4.13");
    assert.equal(huge.options.get(60)?.readUIntBE(0, huge.options.get(60)!.length), 256 * 1024, "Size1 names the limit");
    assert.equal(t.adapter.statistics().blockTransfers, 0, "the partial upload is dropped");
    assert.equal(t.coap().rejected, 1);
  });

  it("refuses a single datagram larger than the hub allows with 4.13, counted and published", async () => {
    await start({ maxPayloadBytes: 4096 });
    const payload = Buffer.from(JSON.stringify({ blob: "x".repeat(60_000) })); // near the largest UDP datagram
    const answer = await rawClient().send({ token: Buffer.of(1), options: reportOptions(ID, "telemetry", t.token), payload });
    assert.equal(answer.code, "4.13");
    assert.equal(answer.options.get(60)?.readUIntBE(0, answer.options.get(60)!.length), 4096);
    assert.deepEqual(t.hub.getState(ID).properties, {});
    assert.equal(t.coap().rejected, 1);
    assert.equal((await t.hub.eventHistory({ type: "message.rejected" })).length, 1);
  });

  it("refuses a block whose offset passes the limit at once, without allocating up to it", async () => {
    await start();
    // Block 2^20-1 of 1024 bytes, marked last: the library alone would allocate a gigabyte for it.
    const options = [...reportOptions(ID, "telemetry", t.token), [27, block1(1_048_575, false, 6)] as [number, Buffer]];
    const answer = await rawClient().send({ token: Buffer.of(2), options, payload: Buffer.alloc(16, 0x20) });
    assert.equal(answer.code, "4.13");
    // One announcing a total (Size1) above the limit is refused on its first block.
    const announced = [...reportOptions(ID, "telemetry", t.token), [27, block1(0, true, 6)], [60, uint(10_000_000)]] as [number, Buffer][];
    assert.equal((await rawClient().send({ token: Buffer.of(3), options: announced, payload: Buffer.alloc(1024, 0x20) })).code, "4.13");
    assert.equal(t.adapter.statistics().blockTransfers, 0);
  });

  it("holds block-wise uploads only for devices with a good token, and only so many at once", async () => {
    await start({}, { maxBlockTransfers: 2 });
    const other = await t.hub.registerDevice({ id: "boiler-2", protocol: "coap" });
    const firstBlock = (token: string | undefined, id = ID, kind = "telemetry") => [...reportOptions(id, kind, token), [27, block1(0, true, 6)]] as [number, Buffer][];
    const raw = rawClient();
    const payload = Buffer.alloc(1024, 0x20);
    assert.equal((await raw.send({ token: Buffer.of(1), options: firstBlock("wrong"), payload })).code, "4.01");
    assert.equal((await raw.send({ token: Buffer.of(2), options: firstBlock(t.token, "nobody"), payload })).code, "4.04");
    assert.equal(t.adapter.statistics().blockTransfers, 0, "nothing buffered for them");
    assert.equal((await raw.send({ token: Buffer.of(3), options: firstBlock(t.token), payload })).code, "2.31");
    assert.equal((await raw.send({ token: Buffer.of(4), options: firstBlock(other.token, "boiler-2"), payload })).code, "2.31");
    const third = await raw.send({ token: Buffer.of(5), options: firstBlock(t.token, ID, "state"), payload });
    assert.equal(third.code, "5.03");
    assert.ok(third.options.has(14), "Max-Age says when to try again");
    assert.equal(t.adapter.statistics().blockTransfers, 2);
    assert.equal(t.coap().rejected, 3);
  });

  it("lets one device hold at most two block-wise uploads, so it cannot starve the others", async () => {
    await start(); // room for 16 uploads in all
    const other = await t.hub.registerDevice({ id: "boiler-2", protocol: "coap" });
    const firstBlock = (token: string, id = ID, kind = "telemetry") => [...reportOptions(id, kind, token), [27, block1(0, true, 0)]] as [number, Buffer][];
    const body = Buffer.from(JSON.stringify({ a: "x".repeat(20) })); // 28 bytes: two blocks of 16
    const [a, b, c] = [rawClient(), rawClient(), rawClient()];
    // From three endpoints (ports) and to two resources: the device is who the path and token name.
    assert.equal((await a.send({ token: Buffer.of(1), options: firstBlock(t.token), payload: body.subarray(0, 16) })).code, "2.31");
    assert.equal((await b.send({ token: Buffer.of(2), options: firstBlock(t.token), payload: body.subarray(0, 16) })).code, "2.31");
    for (const [client, kind] of [[c, "telemetry"], [a, "state"]] as const) {
      const refused = await client.send({ token: Buffer.of(3), options: firstBlock(t.token, ID, kind), payload: body.subarray(0, 16) });
      assert.equal(refused.code, "5.03", `a third upload (${kind}) is refused`);
      assert.equal(JSON.parse(refused.body).error.code, "UNAVAILABLE");
      assert.match(JSON.parse(refused.body).error.message, /boiler-1.*2 block-wise uploads/);
      const maxAge = refused.options.get(14)!.readUIntBE(0, refused.options.get(14)!.length);
      assert.ok(maxAge >= 1 && maxAge <= 93, `Max-Age ${maxAge}`);
    }
    assert.equal((await c.send({ token: Buffer.of(4), options: firstBlock(other.token!, "boiler-2"), payload: body.subarray(0, 16) })).code, "2.31", "another device still gets a slot");
    assert.equal(t.adapter.statistics().blockTransfers, 3);
    assert.equal(t.coap().rejected, 2);
    // An upload finished frees its slot for the device's next one.
    const last = [...reportOptions(ID, "telemetry", t.token), [27, block1(1, false, 0)]] as [number, Buffer][];
    assert.equal((await a.send({ token: Buffer.of(5), options: last, payload: body.subarray(16) })).code, "2.04");
    assert.deepEqual(t.hub.getState(ID).properties, { a: "x".repeat(20) });
    assert.equal((await c.send({ token: Buffer.of(6), options: firstBlock(t.token, ID, "state"), payload: body.subarray(0, 16) })).code, "2.31");
  });

  it("forgets an upload left idle, so a device that vanished mid-way holds nothing for long", async () => {
    await start({}, { blockTransferIdleMs: 150 });
    const firstBlock = (kind: string) => [...reportOptions(ID, kind, t.token), [27, block1(0, true, 0)]] as [number, Buffer][];
    const raw = rawClient();
    assert.equal((await raw.send({ token: Buffer.of(1), options: firstBlock("telemetry"), payload: Buffer.alloc(16, 0x20) })).code, "2.31");
    assert.equal((await raw.send({ token: Buffer.of(2), options: firstBlock("state"), payload: Buffer.alloc(16, 0x20) })).code, "2.31");
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(t.adapter.statistics().blockTransfers, 0);
    assert.equal((await raw.send({ token: Buffer.of(3), options: firstBlock("heartbeat"), payload: Buffer.alloc(16, 0x20) })).code, "2.31");
  });

  it("refuses blocks out of order with 4.08, and answers a retransmitted last block from its cache", async () => {
    await start();
    const raw = rawClient();
    const block = (num: number, more: boolean) => [...reportOptions(ID, "telemetry", t.token), [27, block1(num, more, 0)]] as [number, Buffer][];
    // Block size 16: {"a":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"} in three blocks.
    const body = Buffer.from(JSON.stringify({ a: "x".repeat(37) }));
    const part = (n: number) => body.subarray(n * 16, n * 16 + 16);
    assert.equal((await raw.send({ token: Buffer.of(1), options: block(2, false), payload: part(2) })).code, "4.08", "nothing to continue");
    assert.equal((await raw.send({ token: Buffer.of(2), options: block(0, true), payload: part(0) })).code, "2.31");
    assert.equal((await raw.send({ token: Buffer.of(2), options: block(2, false), payload: part(2) })).code, "4.08", "block 1 is missing");
    assert.equal(t.adapter.statistics().blockTransfers, 0, "the gapped transfer is dropped");
    assert.equal((await raw.send({ token: Buffer.of(3), options: block(0, true), payload: part(0) })).code, "2.31");
    assert.equal((await raw.send({ token: Buffer.of(3), options: block(1, true), payload: part(1) })).code, "2.31");
    const last = { token: Buffer.of(3), options: block(2, false), payload: part(2), messageId: 500 };
    assert.equal((await raw.send(last)).code, "2.04");
    assert.equal((await raw.send(last)).code, "2.04", "the retransmission gets the same answer");
    assert.equal(t.coap().messagesIn, 1, "and is not taken in twice");
    assert.equal(t.coap().rejected, 2, "nor counted as refused");
    assert.deepEqual(t.hub.getState(ID).properties, { a: "x".repeat(37) });
  });
});
