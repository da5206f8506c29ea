import assert from "node:assert/strict";
import pg from "pg";
import { Hub } from "../../src/core";
import { partitionOf } from "../../src/core/cluster/partition";
import { PostgresStore } from "../../src/store/postgres";
import { FakeAdapter, settle } from "../core/fake-adapter";
import { startProxy, type TestPostgres, type TestProxy } from "../store/pg-harness";
import { LocalBroker } from "./local-link";
import { SharedAdapter, clusterPostgres, until } from "./members";

const PARTITIONS = 8;
const LEASE_MS = 1_000;

interface Member {
  hub: Hub;
  shared: SharedAdapter;
  ws: FakeAdapter;
  store: PostgresStore;
}

/**
 * `tethral_cluster_resumed_messages_total` of a member. It counts every late renewal's held
 * messages since the member started, including any a loaded machine caused before the test's own.
 */
async function resumed(m: Member): Promise<number> {
  const line = /^tethral_cluster_resumed_messages_total (\d+)$/m.exec((await m.hub.metrics.exposition()).text);
  assert.ok(line, "the metrics name tethral_cluster_resumed_messages_total");
  return Number(line[1]);
}

/** The latest lease expiry a member holds, epoch ms (0 if none), read on a connection of the test's own. */
async function latestExpiry(url: string, member: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ end: string | null }>("SELECT max(expires_at) AS end FROM cluster_leases WHERE owner = $1", [member]);
    return Number(rows[0]?.end ?? 0);
  } finally {
    await client.end();
  }
}

/** The epoch of each lease a member holds, by partition, read on a connection of the test's own: a lease lost and claimed again has a new one. */
async function leaseEpochs(url: string, member: string): Promise<Record<number, number>> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ part: number; epoch: string }>("SELECT part, epoch FROM cluster_leases WHERE owner = $1 ORDER BY part", [member]);
    return Object.fromEntries(rows.map((r) => [r.part, Number(r.epoch)]));
  } finally {
    await client.end();
  }
}

const ownedBy = (m: Member) => m.hub.clusterInfo().members.find((x) => x.id === m.hub.memberId)?.partitions ?? [];

describe("cluster members (engine, one PostgreSQL, an in-process broker)", function () {
  this.timeout(60_000);
  let db: TestPostgres;
  let broker: LocalBroker;
  const members: Member[] = [];

  before(async function () {
    db = await clusterPostgres(this);
  });

  after(async () => {
    for (const m of members.splice(0)) await m.hub.stop().catch(() => undefined);
    await db?.stop();
  });

  async function member(id: string, url = db.url): Promise<Member> {
    const store = new PostgresStore({ url, connectTimeoutMs: 500 });
    const shared = new SharedAdapter("mqtt");
    const ws = new FakeAdapter("websocket");
    ws.auto = null;
    const hub = new Hub({
      store,
      protocols: [shared, ws],
      deviceTokens: false,
      onWarning: () => undefined,
      cluster: { member: id, partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() },
    });
    await hub.start();
    const m = { hub, shared, ws, store };
    members.push(m);
    return m;
  }

  /** Device ids, one or more in every partition. */
  const ids = Array.from({ length: 32 }, (_, i) => `dev-${i}`);

  it("spreads the partitions over the members, applies each shared message once on its owner, and routes writes and commands to owners", async () => {
    broker = new LocalBroker();
    const a = await member("a");
    const b = await member("b");
    await until("both members own half", () => ownedBy(a).length === PARTITIONS / 2 && ownedBy(b).length === PARTITIONS / 2);
    assert.deepEqual(a.hub.clusterInfo().members.map((m) => m.id), ["a", "b"]);
    // Right after a hand-over a member may not have seen the claim yet: healthy from its next beat.
    await until("A's health shows every partition owned", () => a.hub.health().components.cluster!.status === "ok");

    // Registered through A, whoever owns them; B sees them within its follow period.
    for (const id of ids) await a.hub.registerDevice({ id, protocol: id.endsWith("1") ? "websocket" : "mqtt" });
    await until("B follows the fleet", () => ids.every((id) => b.hub.listDevices({ limit: 1000 }).devices.some((d) => d.id === id)));

    // Every member's shared intake sees every message; each is applied once, on the owner.
    const seen = new Map<string, string[]>();
    for (const m of [a, b]) {
      m.hub.subscribe({ types: ["message.received"] }, (e) => {
        const list = seen.get(e.deviceId!) ?? [];
        list.push(m.hub.memberId);
        seen.set(e.deviceId!, list);
      });
    }
    for (const id of ids.filter((x) => !x.endsWith("1"))) {
      for (const m of [a, b]) m.shared.context.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: Buffer.from('{"t":1}') });
    }
    // A message that came while its owner's renewal ran late is held and applied when it comes
    // (the later tests): on a loaded machine that can happen here too, after more than a turn.
    await until("every message applied", () => ids.every((id) => id.endsWith("1") || seen.has(id)));
    await settle();
    for (const id of ids.filter((x) => !x.endsWith("1"))) {
      const owner = partitionOf(id, PARTITIONS);
      const expected = ownedBy(a).includes(owner) ? "a" : "b";
      assert.deepEqual(seen.get(id), [expected], `${id} applied once, on its owner`);
    }

    // A command through A for an MQTT device of B's (an adapter that cannot tell whether the
    // device is connected): B sends it, going by the device's status.
    const bMqtt = ids.find((id) => !id.endsWith("1") && ownedBy(b).includes(partitionOf(id, PARTITIONS)))!;
    const ping = await a.hub.sendCommand(bMqtt, { command: "ping" });
    await until("B's adapter sent it", () => b.shared.frames.some((f) => f.id === ping.id));
    assert.equal(a.shared.frames.length, 0);

    // A shared intake gives the owner the device's presence itself: an `online` another member
    // heard is no reason to send through that member while the owner's own adapter says the
    // device is not reachable (an MQTT status not confirmed again since a broker restart).
    const waiting = ids.find((id) => !id.endsWith("1") && id !== bMqtt && ownedBy(b).includes(partitionOf(id, PARTITIONS)))!;
    b.shared.links.set(waiting, false);
    a.shared.links.set(waiting, true);
    a.shared.context.connected(waiting);
    await settle();
    const held = await a.hub.sendCommand(waiting, { command: "ping" });
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(a.shared.frames.length, 0, "not sent through the member that heard the device");
    assert.ok(!b.shared.frames.some((f) => f.id === held.id), "not sent by the owner while its adapter says unreachable");
    b.shared.links.set(waiting, true);
    b.shared.context.connected(waiting);
    await until("the owner sent it once its own adapter heard the device", () => b.shared.frames.some((f) => f.id === held.id));
    assert.equal(a.shared.frames.length, 0);

    // A WebSocket device connected to the member that does not own it: its report reaches the owner.
    const wsId = ids.find((id) => id.endsWith("1") && ownedBy(b).includes(partitionOf(id, PARTITIONS)))!;
    assert.ok(wsId, "some websocket device is B's");
    a.ws.links.set(wsId, true);
    a.ws.context.connected(wsId);
    a.ws.context.receive({ protocol: "websocket", deviceId: wsId, kind: "telemetry", payload: '{"v":42}', authenticated: true });
    await until("the report reached B", () => (b.hub.getState(wsId).properties as { v?: number }).v === 42);
    assert.deepEqual(seen.get(wsId), ["b"]);

    // A command sent through A for B's device goes out through A's connection and its answer comes back.
    const sent = a.hub.sendCommand(wsId, { command: "blink", wait: true, timeout: 10 });
    await until("A's adapter was handed the command", () => a.ws.sends.length === 1);
    const { frame } = a.ws.sends[0]!;
    a.ws.sends[0]!.resolve({ status: "sent" });
    a.ws.context.receive({ protocol: "websocket", deviceId: wsId, kind: "response", payload: JSON.stringify({ id: frame.id, ok: true, result: { ok: 1 } }), authenticated: true });
    const done = await sent;
    assert.equal(done.status, "succeeded");
    assert.deepEqual(done.result, { ok: 1 });
    assert.equal(b.ws.frames.length, 0, "B holds no connection to the device");

    // A state change through B of A's device is applied by A and read back by B.
    const aDevice = ids.find((id) => !id.endsWith("1") && ownedBy(a).includes(partitionOf(id, PARTITIONS)))!;
    await b.hub.setState(aDevice, { desired: { mode: "eco" } });
    assert.deepEqual(b.hub.getState(aDevice).desired, { mode: "eco" });
    assert.deepEqual(a.hub.getState(aDevice).desired, { mode: "eco" });
  });

  it("hands partitions over at once on a clean stop, and the survivor applies what came in meanwhile", async () => {
    const [a, b] = members;
    const bDevice = ids.find((id) => !id.endsWith("1") && ownedBy(b!).includes(partitionOf(id, PARTITIONS)))!;
    const stopped = b!.hub.stop();
    members.splice(1, 1);
    // While B winds down, A's shared intake keeps the device's messages for the takeover.
    a!.shared.context.receive({ protocol: "mqtt", deviceId: bDevice, kind: "telemetry", payload: Buffer.from('{"seq":7}') });
    await stopped;
    const started = Date.now();
    await until("A owns every partition", () => ownedBy(a!).length === PARTITIONS);
    assert.ok(Date.now() - started < LEASE_MS, "well before B's lease would have run out");
    await until("the held message was applied", () => (a!.hub.getState(bDevice).properties as { seq?: number }).seq === 7);
    assert.equal(a!.hub.getDevice(bDevice).status, "online");
  });

  it("takes over the partitions of a member cut off from the database and the broker after its lease: held messages replayed in order, no device offline, its queued command delivered; back, it doubles nothing", async () => {
    const [a] = members;
    const proxy: TestProxy = await startProxy(db.url);
    try {
      const b = await member("c", proxy.url);
      await until("C has its share", () => ownedBy(b).length === PARTITIONS / 2 && ownedBy(a!).length === PARTITIONS / 2);
      const cDevice = ids.find((id) => !id.endsWith("1") && ownedBy(b).includes(partitionOf(id, PARTITIONS)))!;
      for (const m of [a!, b]) m.shared.context.receive({ protocol: "mqtt", deviceId: cDevice, kind: "telemetry", payload: Buffer.from('{"step":1}') });
      await until("C applied it", () => (b.hub.getState(cDevice).properties as { step?: number }).step === 1);
      await b.hub.flush();
      // A command for C's device, through A: queued on C (the device is not connected anywhere).
      a!.shared.links.set(cDevice, false);
      b.shared.links.set(cDevice, false);
      const queued = await a!.hub.sendCommand(cDevice, { command: "reboot" });
      assert.equal(queued.status, "queued");
      const offline: string[] = [];
      a!.hub.subscribe({ types: ["device.offline"] }, (e) => {
        offline.push(e.deviceId!);
      });

      // C is cut off: no database, no broker. The broker still delivers the device's messages to A,
      // one per 100 ms (a takeover tells apart messages more than 20 ms apart: README, Cluster mode).
      await new Promise((r) => setTimeout(r, 100));
      proxy.cut();
      broker.cut.add("c");
      const cutAt = Date.now();
      // C can renew no more: its leases end at the latest expiry they hold now, by the database's
      // clock, which is this machine's. (Not cutAt + LEASE_MS: a member starved of CPU renews
      // late, and its lease may have little left when it is cut.)
      const leaseEnd = await latestExpiry(db.url, "c");
      assert.ok(leaseEnd > 0, "C held leases when it was cut off");
      for (let seq = 2; seq <= 5; seq++) {
        a!.shared.context.receive({ protocol: "mqtt", deviceId: cDevice, kind: "telemetry", payload: Buffer.from(JSON.stringify({ step: seq })) });
        await new Promise((r) => setTimeout(r, 100));
      }
      await until("A owns every partition", () => ownedBy(a!).length === PARTITIONS, 10_000);
      const tookOverAt = Date.now();
      assert.ok(tookOverAt >= leaseEnd, `not before C's lease ran out (taken over ${tookOverAt - cutAt} ms after the cut, ${leaseEnd - cutAt} ms of lease left then)`);
      const seen = (await a!.hub.telemetry(cDevice, { keys: "step" })).series.step!.map((p) => p.value);
      assert.deepEqual(seen, [1, 2, 3, 4, 5], "each message once, in order");
      assert.equal(a!.hub.getDevice(cDevice).status, "online");
      assert.deepEqual(offline, []);
      // The queued command goes out once the device is reachable through A.
      a!.shared.links.set(cDevice, true);
      a!.shared.context.receive({ protocol: "mqtt", deviceId: cDevice, kind: "heartbeat", payload: null });
      await until("the command was handed to A's adapter", () => a!.shared.frames.some((f) => f.id === queued.id));
      // C wakes up: what it still holds is fenced. The broker hands it the backlog of what it
      // missed (stamped late, as a frozen member reads it), then C takes its share back from A:
      // the replay knows A applied those already (by the fingerprint A stored), and doubles none.
      proxy.restore();
      broker.cut.delete("c");
      for (let seq = 2; seq <= 5; seq++) b.shared.context.receive({ protocol: "mqtt", deviceId: cDevice, kind: "telemetry", payload: Buffer.from(JSON.stringify({ step: seq })) });
      b.shared.context.receive({ protocol: "mqtt", deviceId: cDevice, kind: "heartbeat", payload: null });
      await until("C has its share again", () => ownedBy(b).length === PARTITIONS / 2 && ownedBy(a!).length === PARTITIONS / 2, 15_000);
      assert.ok(ownedBy(b).includes(partitionOf(cDevice, PARTITIONS)));
      b.shared.context.receive({ protocol: "mqtt", deviceId: cDevice, kind: "telemetry", payload: Buffer.from('{"step":6}') });
      await until("C applied step 6", () => (b.hub.getState(cDevice).properties as { step?: number }).step === 6);
      await b.hub.stop();
      members.splice(members.indexOf(b), 1);
      await until("A owns every partition again", () => ownedBy(a!).length === PARTITIONS);
      assert.deepEqual((await a!.hub.telemetry(cDevice, { keys: "step" })).series.step!.map((p) => p.value), [1, 2, 3, 4, 5, 6]);
      assert.equal(a!.hub.getDevice(cDevice).status, "online");
    } finally {
      await proxy.close();
    }
  });

  /**
   * Holds back the answer to one of the member's beats: the database has renewed its leases
   * (nobody else may take them), but the answer comes after the validity of the member's previous
   * renewal ran out. `inGap` runs in that gap, while the member takes no message as its own; the
   * answer goes 10 ms later (what `inGap` forwarded has reached the member by then), or once
   * `answerWhen` resolves. Resolves once `inGap` has run. Only a beat 200 ms or more after the one
   * before is held, so that its own renewal outlasts the gap by far.
   */
  async function answerOneBeatLate(m: Member, inGap: () => void, answerWhen?: () => Promise<void>): Promise<void> {
    const beat = m.store.clusterBeat.bind(m.store);
    let previousStart = 0;
    let armed = true;
    const ran = new Promise<void>((resolve, reject) => {
      const limit = setTimeout(() => {
        m.store.clusterBeat = beat;
        reject(new Error(`no beat of ${m.hub.memberId}'s was held back`));
      }, 5_000);
      m.store.clusterBeat = async (...args: Parameters<PostgresStore["clusterBeat"]>) => {
        const start = performance.now();
        const previous = previousStart;
        const result = await beat(...args);
        previousStart = start;
        if (!armed || previous === 0 || start - previous < 200) return result;
        armed = false;
        m.store.clusterBeat = beat;
        clearTimeout(limit);
        await new Promise((r) => setTimeout(r, previous + LEASE_MS + 5 - performance.now()));
        try {
          inGap();
          resolve();
        } catch (err) {
          reject(err);
        }
        await (answerWhen ? answerWhen() : new Promise((r) => setTimeout(r, 10)));
        return result;
      };
    });
    await ran;
  }

  /** A device's values of `key` as applied on member `m` (its stored telemetry), once written. */
  async function storedValues(m: Member, id: string, key = "late"): Promise<number[]> {
    await m.hub.flush();
    return (await m.hub.telemetry(id, { keys: key })).series[key]?.map((p) => p.value as number) ?? [];
  }

  it("a late renewal keeps the leases: what a lone member held meanwhile is applied in order, and its next beat comes before that renewal runs out", async () => {
    const [a] = members;
    await until("A owns every partition", () => ownedBy(a!).length === PARTITIONS);
    const device = ids.find((id) => !id.endsWith("1"))!;
    const late = () => (a!.hub.getState(device).properties as { late?: number }).late;
    const epochs = await leaseEpochs(db.url, "a");
    assert.equal(Object.keys(epochs).length, PARTITIONS);
    const resumedBefore = await resumed(a!);
    await answerOneBeatLate(a!, () => {
      for (const step of [1, 2]) a!.shared.context.receive({ protocol: "mqtt", deviceId: device, kind: "telemetry", payload: Buffer.from(JSON.stringify({ late: step })) });
      assert.equal(late(), undefined, "A did not take the messages while its lease looked lapsed");
    });
    await until("A applied what it held, once the late renewal came", () => late() === 2, 5_000);
    assert.deepEqual(await storedValues(a!, device), [1, 2], "each held message once, in order");
    assert.equal(await resumed(a!), resumedBefore + 2, "this late renewal resumed the two held messages");
    // Alone, A has no other member's lease to wake it sooner: its next beat must come on its own
    // before the late renewal runs out, or it gives every partition up and claims them again
    // (a lease claimed again has a new epoch).
    await new Promise((r) => setTimeout(r, LEASE_MS));
    assert.equal(ownedBy(a!).length, PARTITIONS);
    assert.deepEqual(await leaseEpochs(db.url, "a"), epochs, "A kept the same leases: none was lost and claimed again");
  });

  it("a late renewal keeps the leases: reports another member forwarded meanwhile, and the shared intake's, are applied on the owner once", async () => {
    const [a] = members;
    const d = await member("d");
    await until("D has its share", () => ownedBy(d).length === PARTITIONS / 2 && ownedBy(a!).length === PARTITIONS / 2);
    const mine = ownedBy(d);
    const dWs = ids.find((id) => id.endsWith("1") && mine.includes(partitionOf(id, PARTITIONS)))!;
    const dMqtt = ids.find((id) => !id.endsWith("1") && mine.includes(partitionOf(id, PARTITIONS)))!;
    assert.ok(dWs && dMqtt, "D owns a WebSocket device and an MQTT one");
    // The WebSocket device is connected to A: its reports reach D over the link.
    a!.ws.links.set(dWs, true);
    a!.ws.context.connected(dWs);
    const gap = (id: string) => (d.hub.getState(id).properties as { gap?: number }).gap;
    const epochs = await leaseEpochs(db.url, "d");
    const resumedBefore = await resumed(d);
    const applied: string[] = [];
    for (const m of [a!, d]) {
      m.hub.subscribe({ types: ["message.received"] }, (e) => {
        if (e.deviceId === dWs || e.deviceId === dMqtt) applied.push(`${m.hub.memberId} ${e.deviceId}`);
      });
    }
    await answerOneBeatLate(d, () => {
      for (const step of [1, 2]) {
        a!.ws.context.receive({ protocol: "websocket", deviceId: dWs, kind: "telemetry", payload: JSON.stringify({ gap: step }), authenticated: true });
        for (const m of [a!, d]) m.shared.context.receive({ protocol: "mqtt", deviceId: dMqtt, kind: "telemetry", payload: Buffer.from(JSON.stringify({ gap: step })) });
      }
    });
    // The forwarded reports reach D over the link within the 10 ms before the answer.
    assert.equal(gap(dMqtt), undefined, "D did not take the shared intake's messages while its lease looked lapsed");
    await until("D applied what it held, once the late renewal came", () => gap(dWs) === 2 && gap(dMqtt) === 2, 5_000);
    assert.deepEqual(await storedValues(d, dWs, "gap"), [1, 2], "the forwarded reports once, in order");
    assert.deepEqual(await storedValues(d, dMqtt, "gap"), [1, 2], "the shared intake's once, in order");
    assert.deepEqual(applied.sort(), [`d ${dMqtt}`, `d ${dMqtt}`, `d ${dWs}`, `d ${dWs}`].sort(), "each applied once, on D only");
    assert.equal(await resumed(d), resumedBefore + 4, "this late renewal resumed the four held messages");
    assert.deepEqual(ownedBy(d), mine);
    assert.deepEqual(await leaseEpochs(db.url, "d"), epochs, "D kept the same leases");
  });

  it("an answer so late that its renewal ran out too, after another member took the partitions over, resumes nothing: what was held meanwhile is applied once, by the new owner", async () => {
    const [a, d] = members;
    assert.equal(d!.hub.memberId, "d");
    await until("A and D own half each", () => ownedBy(d!).length === PARTITIONS / 2 && ownedBy(a!).length === PARTITIONS / 2);
    const device = ids.find((id) => !id.endsWith("1") && ownedBy(d!).includes(partitionOf(id, PARTITIONS)))!;
    const frozen = (m: Member) => (m.hub.getState(device).properties as { frozen?: number }).frozen;
    await answerOneBeatLate(
      d!,
      () => {
        // The shared intake brings both members the device's messages while D's lease looks lapsed.
        for (const step of [1, 2]) for (const m of [a!, d!]) m.shared.context.receive({ protocol: "mqtt", deviceId: device, kind: "telemetry", payload: Buffer.from(JSON.stringify({ frozen: step })) });
      },
      // D's answer waits until A has taken every partition over (D neither renewed nor beat meanwhile).
      async () => {
        await until("A took D's partitions over", () => ownedBy(a!).length === PARTITIONS, 10_000);
      },
    );
    await until("A's takeover applied what A held", () => frozen(a!) === 2, 5_000);
    // The stale answer came; D gives its partitions up, beats again and takes its share back.
    await until("D has its share again", () => ownedBy(d!).length === PARTITIONS / 2 && ownedBy(a!).length === PARTITIONS / 2, 15_000);
    await a!.hub.flush();
    await d!.hub.flush();
    const owner = ownedBy(a!).includes(partitionOf(device, PARTITIONS)) ? a! : d!;
    assert.deepEqual(await storedValues(owner, device, "frozen"), [1, 2], "each held message once, in order: the stale answer resumed nothing");
  });

  it("a member that claims a partition reads the fingerprint of the last message its previous owner stored, even one its following missed", async () => {
    const [a, d] = members;
    const device = ids.find((id) => !id.endsWith("1") && ownedBy(d!).includes(partitionOf(id, PARTITIONS)))!;
    await a!.hub.flush();
    await d!.hub.flush();
    // D's last write for the device, as a commit that came later than A's following looks back
    // (stored, by the database's clock, a minute before the commit): A's following does not see it.
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      await client.query("UPDATE devices SET last_message = 424242, last_seen = last_seen + 1, stored_at = stored_at - 60000 WHERE id = $1", [device]);
    } finally {
      await client.end();
    }
    const lastMessageOf = (m: Member) => (m.hub as unknown as { cluster: { lastMessageOf(id: string): number | undefined } }).cluster.lastMessageOf(device);
    await new Promise((r) => setTimeout(r, 1_500));
    assert.notEqual(lastMessageOf(a!), 424242, "not followed");
    await d!.hub.stop();
    members.splice(members.indexOf(d!), 1);
    await until("A owns every partition", () => ownedBy(a!).length === PARTITIONS);
    assert.equal(lastMessageOf(a!), 424242, "read when the partition was claimed");
  });
});
