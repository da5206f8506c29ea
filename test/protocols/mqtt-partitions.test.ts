import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { type AddressInfo, type Socket, createConnection, createServer } from "node:net";
import mqtt, { type MqttClient } from "mqtt";
import { partitionOf } from "../../src/core/cluster/partition";
import { fingerprintOf } from "../../src/core/cluster/replay";
import type { DeviceMessage, PartitionHost, ReceiveResult } from "../../src/core/ports/protocol";
import { PartitionSessions, partitionClientId } from "../../src/protocols/mqtt-partitions";
import { TopicScheme } from "../../src/protocols/mqtt-topics";
import { type Mosquitto, needs, startMosquitto } from "../mosquitto";
import { until } from "./mqtt-device";
import { FakeContext } from "./ws-fake-context";

const PARTITIONS = 4;

/** A cluster member as a partition's session sees it: what it applied, and when its writes are stored. */
class Member implements PartitionHost {
  readonly partitions = PARTITIONS;
  readonly applied: { deviceId: string; payload: string; packetId: number }[] = [];
  readonly last = new Map<string, number>();
  owned = true;
  /** The mark of what is applied so far; a test says when it is stored. */
  mark = 1;
  /** Holds the event loop this long right after the session connects (a takeover's other work), in the turn's last phase. */
  stallMs = 0;
  private listeners: ((index: number) => void)[] = [];

  constructor(readonly devices: string[]) {}

  partitionOf(id: string): number {
    return partitionOf(id, PARTITIONS);
  }
  ownsPartition(): boolean {
    return this.owned;
  }
  async confirmOwnership(): Promise<boolean> {
    return this.owned;
  }
  devicesOf(p: number): string[] {
    if (this.stallMs > 0) {
      const ms = this.stallMs;
      setImmediate(() => {
        const until = performance.now() + ms;
        while (performance.now() < until);
      });
    }
    return this.devices.filter((id) => this.partitionOf(id) === p);
  }
  /** Messages to refuse as not its own, next (a lease that ran out after the session asked). */
  refusals = 0;
  /** Messages refused as not its own so far. */
  refused = 0;
  /** Called after each message applied. */
  afterApply: (() => void) | null = null;
  receive(message: DeviceMessage, packetId: number): ReceiveResult | null {
    // As a member decides: by its lease at this instant.
    if (!this.owned || this.refusals > 0) {
      this.refusals = Math.max(0, this.refusals - 1);
      this.refused++;
      return null;
    }
    const payload = Buffer.from(message.payload as Uint8Array).toString();
    this.applied.push({ deviceId: message.deviceId, payload, packetId });
    this.last.set(message.deviceId, fingerprintOf(message.kind, message.payload, packetId));
    this.afterApply?.();
    return { ok: true, deviceId: message.deviceId, status: "online", changed: true };
  }
  lastMessageOf(id: string): number | undefined {
    return this.last.get(id);
  }
  writtenMark(): number | null {
    return this.mark;
  }
  onWritten(listener: (index: number) => void): () => void {
    this.listeners.push(listener);
    return () => (this.listeners = this.listeners.filter((l) => l !== listener));
  }
  readonly warnings: string[] = [];
  warn(message: string): void {
    this.warnings.push(message);
  }
  /** Everything applied so far is stored. */
  store(): void {
    const index = ++this.mark;
    for (const l of this.listeners) l(index);
  }
}

describe("MQTT partition sessions (cluster mode, a Mosquitto of the test's own)", function () {
  this.timeout(30_000);
  let broker: Mosquitto | null = null;
  let root: string;
  let topics: TopicScheme;
  let device: MqttClient | null = null;
  const intakes: PartitionSessions[] = [];
  const id = "dev-1";
  const partition = partitionOf(id, PARTITIONS);

  before(async function () {
    if (!needs(this, ["mosquitto"], "apt-get install mosquitto")) return;
    broker = await startMosquitto();
  });
  after(async () => {
    await broker?.stop();
  });
  beforeEach(async () => {
    root = `tethral-test-${randomBytes(4).toString("hex")}`;
    topics = new TopicScheme(root);
    device = await mqtt.connectAsync(broker!.url, { clientId: `${root}-device`, protocolVersion: 5 });
  });
  const proxies: { close: () => Promise<void> }[] = [];
  afterEach(async () => {
    for (const intake of intakes.splice(0)) await intake.stop();
    for (const proxy of proxies.splice(0)) await proxy.close();
    await device?.endAsync(true);
    // The sessions outlive their connections: ended here, so the broker keeps nothing of the test.
    const clean = await mqtt.connectAsync(broker!.url, { clientId: partitionClientId(root, partition), protocolVersion: 5, clean: true });
    await clean.endAsync();
  });

  async function hold(member: Member, url = broker!.url): Promise<{ intake: PartitionSessions; context: FakeContext }> {
    const context = new FakeContext();
    const intake = new PartitionSessions(member, url, { startTimeoutMs: 5_000 }, topics, () => context);
    intake.start(context);
    intakes.push(intake);
    await intake.open(partition);
    return { intake, context };
  }

  async function report(n: number): Promise<void> {
    await device!.publishAsync(topics.prefix + `${id}/telemetry`, JSON.stringify({ n }), { qos: 1 });
  }

  const payloads = (m: Member) => m.applied.map((a) => JSON.parse(a.payload).n as number);

  /** A first holder applies these reports, none stored, and loses its lease (its session cut): the broker keeps them for the next. */
  async function appliedThenCut(reports: number[]): Promise<Member> {
    const first = new Member([id]);
    const a = await hold(first);
    for (const n of reports) await report(n);
    await until(async () => first.applied.length === reports.length, `${reports.length} applied`, 5_000);
    a.intake.cut(partition);
    return first;
  }

  it("takes only its partition's registered devices' messages, under a client id every member shares", async () => {
    const member = new Member([id]);
    await hold(member);
    await device!.publishAsync(topics.prefix + "someone-else/telemetry", "{}", { qos: 1 });
    await report(1);
    await until(async () => member.applied.length === 1, "one message applied", 5_000);
    assert.deepEqual(payloads(member), [1]);
    assert.match(partitionClientId(root, partition), new RegExp(`^tethral-[0-9a-f]{8}-p${partition}$`));
  });

  it("acknowledges a message only once it is stored: one let go before gives it to the next holder, flagged as sent before", async () => {
    const first = new Member([id]);
    const a = await hold(first);
    for (let n = 1; n <= 3; n++) await report(n);
    await until(async () => first.applied.length === 3, "three applied", 5_000);
    // Stored: 1-3 acknowledged. Then 4 and 5, applied but not stored when the lease is lost.
    first.store();
    for (let n = 4; n <= 5; n++) await report(n);
    await until(async () => first.applied.length === 5, "five applied", 5_000);
    a.intake.cut(partition);
    await report(6); // while no one holds the session: the broker keeps it

    const second = new Member([id]);
    await hold(second);
    await until(async () => second.applied.length === 3, "4, 5 and 6 given to the next holder", 5_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(payloads(second), [4, 5, 6]);
  });

  it("skips redelivered messages up to the last one applied (by fingerprint, packet id included) and applies the rest in order", async () => {
    // The same payload twice: only the packet id tells them apart.
    const first = await appliedThenCut([1, 2, 2, 3]);

    // The successor read, with the device's presence, the fingerprint of the first "2" as the last applied.
    const second = new Member([id]);
    const firstTwo = first.applied[1]!;
    second.last.set(id, fingerprintOf("telemetry", Buffer.from(firstTwo.payload), firstTwo.packetId));
    await hold(second);
    await until(async () => second.applied.length === 2, "the second 2 and 3", 5_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(payloads(second), [2, 3]);
    assert.equal(second.applied[0]!.packetId, first.applied[2]!.packetId);
  });

  it("skips them too when the loop was held past the quiet time right after it connected, with the redelivered messages waiting unread", async () => {
    // The broker resends 1, 2 and 3 right after its CONNACK; a proxy in between passes them 50 ms
    // after the CONNACK, so they come in a read of their own, after the successor's loop was held.
    const proxy = await laggingProxy(new URL(broker!.url), 3, 50);
    proxies.push(proxy);
    const first = await appliedThenCut([1, 2, 3]);

    // The successor's loop is held 300 ms (three times the quiet time) just after its session
    // connects: when the loop goes on, the quiet timer has run out, and the resent messages are
    // read in that same turn.
    const second = new Member([id]);
    const lastOne = first.applied[2]!;
    second.last.set(id, fingerprintOf("telemetry", Buffer.from(lastOne.payload), lastOne.packetId));
    second.stallMs = 300;
    await hold(second, proxy.url);
    await report(4);
    await until(async () => second.applied.length >= 1, "the next report", 5_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(payloads(second), [4], "1, 2 and 3 were applied by the first holder: skipped, not applied again");
  });

  it("a new holder takes the session over from one that still has it (a frozen member), which does not take it back once its lease is gone", async () => {
    const first = new Member([id]);
    const a = await hold(first);
    // The first member's beat, when it comes, says the lease has moved.
    first.owned = false;
    const second = new Member([id]);
    await hold(second);
    await report(7);
    await until(async () => second.applied.length === 1, "the new holder applied it", 5_000);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    await report(8);
    await until(async () => second.applied.length === 2, "the new holder kept the session", 5_000);
    assert.equal(first.applied.length, 0);
    assert.deepEqual(payloads(second), [7, 8]);
    assert.equal(a.intake.statistics().partitionSessionsConnected, 0, "the old holder did not connect again");
  });

  it("a holder whose connection dropped while its lease holds connects again and goes on", async () => {
    const member = new Member([id]);
    const { intake } = await hold(member);
    await report(1);
    await until(async () => member.applied.length === 1, "applied", 5_000);
    // Another client with the session's id cuts the connection (as a broker restart or a network cut would), then goes.
    const intruder = await mqtt.connectAsync(broker!.url, { clientId: partitionClientId(root, partition), protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 60 } });
    await intruder.endAsync();
    await until(async () => intake.statistics().partitionSessionsConnected === 1, "connected again", 5_000);
    await report(2);
    await until(async () => member.applied.length === 2, "the next report", 5_000);
    assert.deepEqual(payloads(member), [1, 2]);
  });

  it("listens for a device registered while it holds the partition before the registration answers, and stops for a removed one", async () => {
    const member = new Member([]);
    const { intake } = await hold(member);
    await report(1); // not registered yet: no subscription, the broker drops it
    member.devices.push(id);
    const subscribed = intake.added(id);
    assert.ok(subscribed, "a subscription is made");
    await subscribed;
    await report(2);
    await until(async () => member.applied.length === 1, "the registered device's report", 5_000);
    intake.removed(id);
    await new Promise((resolve) => setTimeout(resolve, 200));
    await report(3);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(payloads(member), [2]);
  });

  it("waits, unacknowledged, while the partition is not this member's this instant, and applies once it is again", async () => {
    const member = new Member([id]);
    await hold(member);
    member.owned = false;
    await report(1);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(member.applied.length, 0);
    member.owned = true;
    await until(async () => member.applied.length === 1, "applied once owned", 5_000);
  });

  it("does not apply redelivered messages once the partition stopped being its own while they came: the next holder gets them", async () => {
    await appliedThenCut([1, 2, 3]);

    // The second holder takes the resent messages, and a hand-over begins before their quiet time ends.
    const second = new Member([id]);
    const b = await hold(second);
    await until(async () => b.intake.statistics().partitionRedelivered === 3, "three resent", 5_000);
    second.owned = false;
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(payloads(second), [], "nothing applied while the partition is not its own");
    await b.intake.close(partition);

    const third = new Member([id]);
    await hold(third);
    await until(async () => third.applied.length === 3, "the next holder gets them", 5_000);
    assert.deepEqual(payloads(third), [1, 2, 3]);
    assert.deepEqual(payloads(second), []);
  });

  it("offers a message the member refused as not its own (its lease ran out after the session asked) again: applied once, in order", async () => {
    const member = new Member([id]);
    member.refusals = 1;
    await hold(member);
    await report(1);
    await report(2);
    await until(async () => member.applied.length === 2, "both applied", 5_000);
    assert.deepEqual(payloads(member), [1, 2]);
    assert.equal(member.refused, 1);
  });

  it("stops applying resent messages where the member refuses one (its lease ran out in the loop over them): the rest wait, unacknowledged, for the next holder", async () => {
    await appliedThenCut([1, 2, 3]);

    // The second holder's lease runs out right after it applies the first resent message.
    const second = new Member([id]);
    second.afterApply = () => (second.owned = false);
    const b = await hold(second);
    await until(async () => second.refused > 0, "a resent message refused", 5_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(payloads(second), [1]);
    // What it applied is stored, and acknowledged at the hand-over; what it refused is not.
    second.store();
    await b.intake.close(partition);

    const third = new Member([id]);
    await hold(third);
    await until(async () => third.applied.length === 2, "the next holder gets the rest", 5_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(payloads(third), [2, 3]);
    assert.deepEqual(payloads(second), [1]);
  });
});

/**
 * A TCP proxy to the broker: the client's bytes pass at once. Of the broker's, it waits for its
 * first packet (the CONNACK) and the `then` packets after it, passes the CONNACK at once and those
 * `lagMs` later, and the rest at once. Runs in the test's own thread: its timer runs in the turn
 * after a held loop, before the session's quiet timer (armed later), and writes those packets to
 * the session's socket there, where that turn's read finds them.
 */
async function laggingProxy(target: URL, then: number, lagMs: number): Promise<{ url: string; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = createConnection({ host: target.hostname, port: Number(target.port) });
    sockets.add(client).add(upstream);
    let pending: Buffer | null = Buffer.alloc(0);
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => {
      if (pending === null) {
        client.write(d);
        return;
      }
      pending = Buffer.concat([pending, d]);
      let at = 0;
      const ends: number[] = [];
      for (let length = packetLength(pending); length !== null && at + length <= pending.length && ends.length < then + 1; length = packetLength(pending.subarray(at))) {
        at += length;
        ends.push(at);
      }
      if (ends.length < then + 1) return;
      const held = pending;
      pending = null;
      client.write(held.subarray(0, ends[0]));
      setTimeout(() => client.writable && client.write(held.subarray(ends[0])), lagMs);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("close", end).on("error", end);
    upstream.on("close", end).on("error", end);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** The whole length of the MQTT packet at the start of `b` (fixed header, remaining length), or null until its header is in. */
function packetLength(b: Buffer): number | null {
  let multiplier = 1;
  let remaining = 0;
  for (let i = 1; i < Math.min(b.length, 5); i++) {
    remaining += (b[i]! & 0x7f) * multiplier;
    if ((b[i]! & 0x80) === 0) return 1 + i + remaining;
    multiplier *= 128;
  }
  return null;
}
