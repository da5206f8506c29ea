import assert from "node:assert/strict";
import mqtt from "mqtt";
import { MqttClusterLink, topicLevel } from "../../src/cluster/mqtt-link";
import { TethralError, notFound } from "../../src/core/errors";
import type { ClusterHandler, ForwardedMessage } from "../../src/core/ports/cluster";
import { assertRejectsCode, closedPort, until } from "../helpers";
import { type Mosquitto, needs, startMosquitto } from "../mosquitto";

interface Member {
  link: MqttClusterLink;
  received: ForwardedMessage[];
}

describe("cluster link over MQTT 5 (a Mosquitto of the test's own)", function () {
  let broker: Mosquitto;
  const links: MqttClusterLink[] = [];

  before(async function () {
    if (!needs(this, ["mosquitto"], "apt-get install mosquitto")) return;
    broker = await startMosquitto();
  });

  after(async () => {
    await broker?.stop();
  });

  afterEach(async () => {
    await Promise.all(links.splice(0).map((l) => l.stop()));
  });

  async function member(id: string, call: ClusterHandler = () => Promise.resolve(null), root = "tethral"): Promise<Member> {
    const link = new MqttClusterLink({ url: broker.url, root });
    links.push(link);
    const received: ForwardedMessage[] = [];
    await link.start(id, { call, message: (m) => received.push(m) });
    return { link, received };
  }

  const message = (deviceId: string, n: number, payload: ForwardedMessage["payload"] = JSON.stringify({ n })): ForwardedMessage => ({
    deviceId,
    protocol: "websocket",
    kind: "telemetry",
    payload,
    via: "a",
    at: 1_700_000_000_000 + n,
  });

  it("runs a call on the named member and brings its answer back", async () => {
    const seen: unknown[] = [];
    const a = await member("a");
    await member("b", (method, args) => {
      seen.push({ method, args });
      return Promise.resolve({ answeredBy: "b", echo: args });
    });
    assert.equal(a.link.connected, true);
    const answer = await a.link.call("b", "device.get", { id: "dev-1", $weird: 1 }, 5000);
    assert.deepEqual(answer, { answeredBy: "b", echo: { id: "dev-1", $weird: 1 } });
    assert.deepEqual(seen, [{ method: "device.get", args: { id: "dev-1", $weird: 1 } }]);
  });

  it("rejects with the handler's error code, status and details (a TethralError again)", async () => {
    const a = await member("a");
    await member("b", (method) => {
      if (method === "missing") return Promise.reject(notFound("device", "dev-9"));
      if (method === "bad") return Promise.reject(new TethralError("INVALID", "name: too long", [{ field: "name", message: "too long" }]));
      return Promise.reject(new Error("disk on fire"));
    });
    const missing = await assertRejectsCode(() => a.link.call("b", "missing", null, 5000), "NOT_FOUND");
    assert.equal(missing.status, 404);
    assert.equal(missing.message, 'device "dev-9" not found');
    const bad = await assertRejectsCode(() => a.link.call("b", "bad", null, 5000), "INVALID", "name");
    assert.equal(bad.status, 400);
    const other = await assertRejectsCode(() => a.link.call("b", "other", null, 5000), "UNAVAILABLE");
    assert.match(other.message, /disk on fire/);
  });

  it("does not run a request its member reads after the caller gave up on it (a frozen member's backlog)", async () => {
    const a = await member("a");
    const ran: unknown[] = [];
    const b = await member("b", (method, args) => {
      ran.push(args);
      return Promise.resolve("done");
    });
    // B stops reading its socket, as a member stopped with SIGSTOP does; the request waits there.
    const stream = (b.link as unknown as { client: { stream: { pause(): void; resume(): void } } }).client.stream;
    stream.pause();
    await assertRejectsCode(() => a.link.call("b", "deliver", { n: 1 }, 200), "UNAVAILABLE");
    stream.resume();
    // A later request in time runs; the stale one never does.
    assert.equal(await a.link.call("b", "deliver", { n: 2 }, 5000), "done");
    assert.deepEqual(ran, [{ n: 2 }]);
  });

  it("takes an answer that came in time, though the caller's loop was held past the deadline (no retry of what was done)", async () => {
    const a = await member("a");
    await member("b", () => {
      // Once B's answer is on its way, the process's loop is held past A's deadline, as a busy
      // member's can be: the answer waits in A's socket while A's timer expires.
      setImmediate(() => {
        const t = Date.now();
        while (Date.now() - t < 500);
      });
      return Promise.resolve("done");
    });
    assert.equal(await a.link.call("b", "deliver", { n: 1 }, 200), "done");
  });

  it("rejects with UNAVAILABLE naming the member when no answer comes in time", async () => {
    const a = await member("a");
    const err = await assertRejectsCode(() => a.link.call("nobody-here", "device.get", null, 300), "UNAVAILABLE");
    assert.match(err.message, /"nobody-here"/);
  });

  it("carries forwarded messages to every member, this one included, in the order they were sent", async function () {
    this.timeout(60_000);
    const a = await member("a");
    const b = await member("b");
    const c = await member("c");
    const count = 1000;
    for (let n = 0; n < count; n++) a.link.forward(message(`dev-${n % 7}`, n));
    for (const m of [a, b, c]) {
      await until(() => m.received.length >= count, "every forwarded message", 30_000);
      assert.equal(m.received.length, count);
      assert.deepEqual(m.received.map((r) => JSON.parse(r.payload as string).n), [...Array(count).keys()]);
    }
    assert.deepEqual(b.received[3], message("dev-3", 3));
  });

  it("carries bytes as bytes, in forwarded messages, arguments and answers", async () => {
    const bytes = new Uint8Array([0, 1, 2, 250, 255, 0x7b]);
    const a = await member("a");
    const b = await member("b", (_method, args) => Promise.resolve({ back: (args as { raw: Uint8Array }).raw, text: "{}" }));
    a.link.forward(message("dev-1", 1, bytes));
    a.link.forward(message("dev-1", 2, null));
    await until(() => b.received.length === 2, "the forwarded bytes");
    assert.ok(b.received[0]!.payload instanceof Uint8Array);
    assert.deepEqual(b.received[0]!.payload, bytes);
    assert.equal(b.received[1]!.payload, null);
    const answer = (await a.link.call("b", "echo", { raw: bytes }, 5000)) as { back: Uint8Array; text: string };
    assert.ok(answer.back instanceof Uint8Array);
    assert.deepEqual(answer.back, bytes);
    assert.equal(answer.text, "{}");
  });

  it("keeps member ids with /, +, # and % in one topic level of their own", async () => {
    assert.equal(topicLevel("host/1:1880"), "host%2F1:1880");
    assert.notEqual(topicLevel("a%2Fb"), topicLevel("a/b"));
    const calls: string[] = [];
    const odd = "rack/1+#%2";
    const a = await member("a");
    // A member whose name, taken as topic levels, would sit under the odd one's or match it.
    await member("rack", (m) => (calls.push(`rack:${m}`), Promise.resolve("rack")));
    await member(odd, (m) => (calls.push(`odd:${m}`), Promise.resolve("odd")));
    assert.equal(await a.link.call(odd, "who", null, 5000), "odd");
    assert.equal(await a.link.call("rack", "who", null, 5000), "rack");
    assert.deepEqual(calls, ["odd:who", "rack:who"]);
  });

  it("answers the odd member's own calls on its reply topic", async () => {
    const odd = await member("x/+/#");
    await member("b", () => Promise.resolve("from b"));
    assert.equal(await odd.link.call("b", "who", null, 5000), "from b");
  });

  it("rejects the calls still waiting when it stops, and refuses new ones", async () => {
    const a = await member("a");
    await member("b", () => new Promise(() => undefined));
    const waiting = a.link.call("b", "never", null, 60_000);
    // The request reached b before the stop, so nothing but the stop ends the wait.
    await new Promise((r) => setTimeout(r, 200));
    const rejected = assertRejectsCode(() => waiting, "UNAVAILABLE");
    await a.link.stop();
    const err = await rejected;
    assert.match(err.message, /stopped/);
    assert.equal(a.link.connected, false);
    await assertRejectsCode(() => a.link.call("b", "again", null, 1000), "UNAVAILABLE");
  });

  it("keeps the cluster's topics apart from other hubs' topic roots", async () => {
    const a = await member("a", undefined, "site-a");
    const b = await member("b", undefined, "site-b");
    a.link.forward(message("dev-1", 1));
    await until(() => a.received.length === 1, "a's own forward");
    assert.equal(b.received.length, 0);
  });

  it("refuses to start when the broker cannot be reached in time, and a stop ends a start still waiting", async () => {
    const nowhere = `mqtt://127.0.0.1:${await closedPort()}`;
    const late = new MqttClusterLink({ url: nowhere, startTimeoutMs: 300, reconnectPeriod: 100 });
    links.push(late);
    const err = await assertRejectsCode(() => late.start("a", { call: () => Promise.resolve(null), message: () => undefined }), "UNAVAILABLE");
    assert.match(err.message, /within 300 ms/);
    assert.equal(late.connected, false);

    const stopped = new MqttClusterLink({ url: nowhere, startTimeoutMs: 60_000, reconnectPeriod: 100 });
    const starting = assertRejectsCode(() => stopped.start("b", { call: () => Promise.resolve(null), message: () => undefined }), "UNAVAILABLE");
    await stopped.stop();
    assert.match((await starting).message, /stopped before it had subscribed/);
  });

  it("subscribes again after the broker cut its connection, and says so through connected", async function () {
    this.timeout(30_000);
    const a = await member("a");
    const b = await member("b", () => Promise.resolve("still here"));
    // Another client taking b's client id makes the broker drop b (MQTT's session takeover).
    const intruder = mqtt.connect(broker.url, { clientId: "tethral-cluster-b", protocolVersion: 5, reconnectPeriod: 0 });
    await until(() => !b.link.connected, "b's connection cut");
    intruder.end(true);
    await until(() => b.link.connected, "b connected and subscribed again", 15_000);
    assert.equal(await a.link.call("b", "who", null, 5000), "still here");
  });
});
