import assert from "node:assert/strict";
import { partitionOf } from "../../src/core/cluster/partition";
import { until } from "../helpers";
import { program } from "../mosquitto";
import { MqttDevice, WsDevice } from "./cluster-devices";
import { type Member, TestCluster, register } from "./cluster-harness";
import { type Json, START_LIMIT_MS, call } from "./spawn-runtime";

/**
 * Cluster mode end to end (CONTRACT §8): three `npm start` members on a fresh database of the
 * real PostgreSQL server and a Mosquitto of their own; MQTT devices on the broker and WebSocket
 * devices each connected to a member that does not own it report numbered telemetry and answer
 * commands. One member is killed (SIGKILL), another stopped (SIGTERM), both restarted, and the
 * third frozen past its lease (SIGSTOP) and woken (SIGCONT); through all of it no device goes
 * offline, every command acknowledged ends completed, every telemetry report the broker
 * acknowledged is a stored point, and each device event is in the cluster's history once.
 */
const PARTITIONS = 16;
const LEASE_SECONDS = 3;
const LEASE_MS = LEASE_SECONDS * 1000;
/** The devices' heartbeat timeout: shorter than a freeze of the member, so a woken member's deadlines have passed. */
const HEARTBEAT_TIMEOUT_S = 8;
const REPORT_MS = 500;
/** Devices each member owns at the start, per protocol. */
const MQTT_PER_MEMBER = 4;
const WS_PER_MEMBER = 2;
const TAG = "cluster-e2e";
/** Sequence numbers as runs with what they have in common: "15-19 between X and Y; 40 after Z". */
function runs(seqs: number[], label: (n: number) => string): string {
  const out: string[] = [];
  let first = seqs[0]!;
  for (let i = 1; i <= seqs.length; i++) {
    const n = seqs[i];
    if (n !== undefined && n === seqs[i - 1]! + 1 && label(n) === label(first)) continue;
    const last = seqs[i - 1]!;
    out.push(`${first === last ? first : `${first}-${last}`} ${label(first)}`);
    if (n !== undefined) first = n;
  }
  return out.join("; ");
}

const TERMINAL = new Set(["succeeded", "failed", "timed_out", "expired", "superseded", "cancelled"]);

interface Sent {
  id: string;
  deviceId: string;
  command: string;
  /** Where it was sent. */
  via: string;
}

describe("cluster end to end: three members, one PostgreSQL, one Mosquitto", function () {
  this.timeout(START_LIMIT_MS + 60_000);
  let cluster: TestCluster;
  const mqttDevices = new Map<string, MqttDevice>();
  const wsDevices = new Map<string, WsDevice>();
  /** Every command a member acknowledged (200 or 202): each must end completed. */
  const acknowledged: Sent[] = [];
  /** Commands whose answer is held by the device across a failover: succeeded, or timed out as after a restart. */
  const held = new Set<string>();
  /** PATCHes acknowledged per device: each is one device.updated event in the cluster's history. */
  const patches = new Map<string, number>();
  const patched = (id: string) => patches.set(id, (patches.get(id) ?? 0) + 1);
  const figures: Record<string, number | string> = {};
  /** Each MQTT device's last sequence number at each event of the run: a missing report is placed by them. */
  const marks: { what: string; at: string; seqs: Map<string, number> }[] = [];
  const mark = (what: string) => marks.push({ what, at: new Date().toISOString().slice(11), seqs: new Map([...mqttDevices].map(([id, d]) => [id, d.seq])) });
  /** Where in the run report `seq` of `id` was sent. */
  const phase = (id: string, seq: number) => {
    let last = "the start";
    for (const x of marks) {
      if ((x.seqs.get(id) ?? 0) >= seq) return `between ${last} and ${x.what}`;
      last = x.what;
    }
    return `after ${last}`;
  };
  const startedAt = new Date().toISOString();

  const members = () => cluster.members;
  const m = (id: string): Member => cluster.member(id);
  const allIds = () => [...mqttDevices.keys(), ...wsDevices.keys()];
  const ownerOf = (owners: Map<number, string>, deviceId: string) => owners.get(partitionOf(deviceId, PARTITIONS))!;
  const evenly = (owners: Map<number, string>, among: string[]) =>
    among.every((id) => {
      const n = [...owners.values()].filter((o) => o === id).length;
      return Math.abs(n - PARTITIONS / among.length) <= 1;
    });

  before(async function () {
    this.timeout(START_LIMIT_MS * 2);
    const server = process.env.TETHRAL_TEST_PG_URL;
    if (!server || !program("mosquitto")) {
      console.log("    (skipped: the cluster test needs TETHRAL_TEST_PG_URL and mosquitto; CI has both)");
      this.skip();
    }
    cluster = await TestCluster.create(server!, { members: 3, partitions: PARTITIONS, leaseSeconds: LEASE_SECONDS, prefix: "tethral_cluster_e2e" });
    await cluster.startAll();
    figures.startedMembers = 3;
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed" && cluster) console.log(`--- the members' logs ---\n${cluster.logs()}`);
  });

  after(async function () {
    this.timeout(60_000);
    for (const d of mqttDevices.values()) await d.stop();
    for (const d of wsDevices.values()) await d.stop();
    await cluster?.stop();
    if (Object.keys(figures).length > 1) console.log(`    cluster figures: ${JSON.stringify(figures)}`);
    if (marks.length > 0) console.log(`    the run: ${marks.map((x) => `${x.what} ${x.at}`).join("; ")}`);
  });

  /** Waits until every live member agrees each partition has one owner among `among`, spread evenly. */
  async function balanced(among: string[], ms: number): Promise<Map<number, string>> {
    return until(
      async () => {
        const owners = await cluster.settled(among);
        return owners && evenly(owners, among) ? owners : null;
      },
      `every partition owned, evenly, by ${among.join(", ")}`,
      ms,
    );
  }

  async function state(member: Member, id: string): Promise<Json> {
    const res = await call(member.api, "GET", `/devices/${id}/state`);
    assert.equal(res.status, 200, `${id} on ${member.id}: ${JSON.stringify(res.body)}`);
    return res.body;
  }

  async function command(member: Member, deviceId: string, body: Json): Promise<{ status: number; body: Json }> {
    const res = await call(member.api, "POST", `/devices/${deviceId}/command`, body);
    if (res.status === 200 || res.status === 202) acknowledged.push({ id: res.body.id, deviceId, command: body.command, via: member.id });
    return res;
  }

  async function commandStatus(id: string): Promise<Json> {
    const live = cluster.live();
    const res = await call(live[0]!.api, "GET", `/commands/${id}`);
    assert.equal(res.status, 200, `command ${id}: ${JSON.stringify(res.body)}`);
    return res.body;
  }

  async function noneOffline(where: string): Promise<void> {
    for (const member of cluster.live()) {
      const res = await call(member.api, "GET", `/devices?status=offline&tag=${TAG}`);
      assert.equal(res.status, 200);
      assert.deepEqual(
        res.body.devices.map((d: Json) => d.id),
        [],
        `${where}: no device offline on ${member.id}`,
      );
    }
  }

  /** A counter or gauge of the member's /api/metrics, summed over its labels. */
  async function metric(member: Member, name: string): Promise<number> {
    const res = await call(member.api, "GET", "/metrics");
    let sum = 0;
    for (const line of String(res.body).split("\n")) {
      const match = new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`).exec(line);
      if (match) sum += Number(match[2]);
    }
    return sum;
  }

  /** Each device's last sequence number as `member` reads it. */
  async function sequences(member: Member): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const id of allIds()) out.set(id, Number((await state(member, id)).properties?.seq ?? 0));
    return out;
  }

  /** Waits until every device's state, read through every live member, is past `floor`. */
  async function moving(floor: Map<string, number>, what: string, ms = 15_000): Promise<void> {
    for (const member of cluster.live()) {
      for (const id of allIds()) {
        await until(async () => Number((await state(member, id)).properties?.seq ?? 0) > (floor.get(id) ?? 0) + 1, `${id}'s state moving on ${member.id} (${what})`, ms);
      }
    }
  }

  it("owns every partition, spread evenly over the three members, within two lease periods of their start", async () => {
    const ready = Date.now();
    const owners = await balanced(["m1", "m2", "m3"], 2 * LEASE_MS + 2000);
    figures.initialBalanceMs = Date.now() - ready;
    const counts = ["m1", "m2", "m3"].map((id) => [...owners.values()].filter((o) => o === id).length);
    console.log(`    partitions per member: ${counts.join(", ")} (balanced ${figures.initialBalanceMs} ms after the last start)`);
    const view = await cluster.view(m("m2"));
    assert.equal(view.member, "m2");
    assert.equal(view.partitions, PARTITIONS);
    for (const member of view.members) {
      assert.ok(!Number.isNaN(Date.parse(member.since)) && !Number.isNaN(Date.parse(member.lastSeen)), JSON.stringify(member));
    }
  });

  it("sees a device registered or changed through one member through every other within about a second", async () => {
    const owners = (await cluster.settled())!;
    // Ids chosen so every member owns some devices of each protocol: each member's share is
    // then checked through the failovers.
    const pick = (prefix: string, perMember: number) => {
      const chosen: string[] = [];
      const per = new Map<string, number>();
      for (let n = 0; chosen.length < perMember * 3; n++) {
        const id = `${prefix}-${String(n).padStart(3, "0")}`;
        const owner = ownerOf(owners, id);
        if ((per.get(owner) ?? 0) >= perMember) continue;
        per.set(owner, (per.get(owner) ?? 0) + 1);
        chosen.push(id);
      }
      return chosen;
    };
    const ids = [...pick("mq", MQTT_PER_MEMBER).map((id) => ({ id, protocol: "mqtt" })), ...pick("ws", WS_PER_MEMBER).map((id) => ({ id, protocol: "websocket" }))];
    let worst = 0;
    const seenEverywhere = async (id: string, from: Member, check: (device: Json) => boolean, what: string) => {
      const at = Date.now();
      await Promise.all(
        members()
          .filter((x) => x !== from)
          .map((other) =>
            until(
              async () => {
                const res = await call(other.api, "GET", `/devices/${id}`);
                return res.status === 200 && check(res.body);
              },
              `${id} ${what} through ${from.id}, seen through ${other.id}`,
              3000,
            ),
          ),
      );
      worst = Math.max(worst, Date.now() - at);
    };
    const tokens = new Map<string, string>();
    await Promise.all(
      ids.map(async ({ id, protocol }, i) => {
        const via = members()[i % 3]!;
        const { token } = await register(via, { id, name: id, protocol, tags: [TAG], heartbeatTimeout: HEARTBEAT_TIMEOUT_S });
        tokens.set(id, token);
        await seenEverywhere(id, via, () => true, "registered");
      }),
    );
    figures.registeredVisibleMs = worst;
    worst = 0;
    await Promise.all(
      ids.map(async ({ id }, i) => {
        const via = members()[(i + 1) % 3]!;
        const res = await call(via.api, "PATCH", `/devices/${id}`, { name: `renamed ${id}`, metadata: { via: via.id } });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        patched(id);
        await seenEverywhere(id, via, (d) => d.name === `renamed ${id}` && d.metadata.via === via.id, "changed");
      }),
    );
    figures.changedVisibleMs = worst;
    console.log(`    a registration seen through every member after ${figures.registeredVisibleMs} ms at worst, a change after ${figures.changedVisibleMs} ms`);
    assert.ok(Number(figures.registeredVisibleMs) <= 2000 && Number(figures.changedVisibleMs) <= 2000, `about a second: ${JSON.stringify(figures)}`);
    for (const member of members()) {
      const list = await call(member.api, "GET", `/devices?tag=${TAG}&limit=100`);
      assert.equal(list.body.total, ids.length, `the whole fleet listed through ${member.id}`);
      const ws = await call(member.api, "GET", `/devices?tag=${TAG}&protocol=websocket`);
      assert.equal(ws.body.total, WS_PER_MEMBER * 3, `filters are cluster-wide on ${member.id}`);
    }

    // The devices: MQTT ones on the broker; each WebSocket one on a member that does not own it.
    const wsUrls = members().map((x) => x.ws);
    for (const { id, protocol } of ids) {
      if (protocol === "mqtt") {
        const d = new MqttDevice(id, tokens.get(id)!, cluster.mosquitto.url);
        mqttDevices.set(id, d);
        await d.connect();
      } else {
        const owner = ownerOf(owners, id);
        const at = members().findIndex((x) => x.id !== owner && ![...wsDevices.values()].some((w) => w.at === members().indexOf(x) && ownerOf(owners, w.id) === owner));
        const d = new WsDevice(id, tokens.get(id)!, wsUrls, at >= 0 ? at : members().findIndex((x) => x.id !== owner));
        assert.notEqual(members()[d.at]!.id, owner);
        wsDevices.set(id, d);
        await d.connect();
      }
    }
    for (const d of [...mqttDevices.values(), ...wsDevices.values()]) d.report(REPORT_MS);
  });

  it("takes reports from MQTT devices and from WebSocket devices on members that do not own them: state moves on every member", async () => {
    await moving(new Map(allIds().map((id) => [id, 2])), "first reports");
    for (const member of members()) {
      for (const id of allIds()) assert.equal((await state(member, id)).status, "online", `${id} online on ${member.id}`);
    }
    await noneOffline("reporting");
  });

  it("delivers a command sent through a member that is not the owner, and `wait` answers on that member", async () => {
    const owners = (await cluster.settled())!;
    let n = 0;
    for (const id of allIds()) {
      const owner = ownerOf(owners, id);
      const ws = wsDevices.get(id);
      const holder = ws ? members()[ws.at]!.id : null;
      // Neither the owner nor (for a WebSocket device) the member holding its connection, where there is one.
      const via = members().find((x) => x.id !== owner && x.id !== holder) ?? members().find((x) => x.id !== owner)!;
      const nonce = `n${++n}`;
      const res = await command(via, id, { command: "echo", params: { nonce }, wait: true, timeout: 10 });
      assert.equal(res.status, 200, `${id} (owner ${owner}) through ${via.id}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.status, "succeeded");
      assert.equal(res.body.result.device, id);
      assert.equal(res.body.result.params.nonce, nonce);
      // Without wait: 202 through one member, followed to its end through another.
      const queued = await command(via, id, { command: "echo", params: { nonce: `${nonce}b` } });
      assert.equal(queued.status, 202, JSON.stringify(queued.body));
      const other = members().find((x) => x !== via)!;
      const done = await until(
        async () => {
          const c = await call(other.api, "GET", `/commands/${queued.body.id}`);
          return c.body.status === "succeeded" ? c.body : null;
        },
        `${id}'s command through ${via.id} seen succeeded through ${other.id}`,
        10_000,
      );
      assert.equal(done.result.params.nonce, `${nonce}b`);
    }
    for (const d of [...mqttDevices.values(), ...wsDevices.values()]) {
      assert.ok(d.commands.size >= 2, `${d.id} got its commands`);
    }
  });

  it("SIGKILL: the others own every partition within lease + a few seconds, no device goes offline, its queued commands are delivered and state keeps moving", async function () {
    this.timeout(90_000);
    const owners = (await cluster.settled())!;
    const victim = m("m1");
    const theirs = allIds().filter((id) => ownerOf(owners, id) === victim.id);
    assert.ok(theirs.some((id) => mqttDevices.has(id)) && theirs.some((id) => wsDevices.has(id)), `m1 owns devices of both protocols: ${theirs}`);
    // Each of its devices holds one command's answer across the kill, with more queued behind it.
    const holdMs = LEASE_MS + 4000;
    const behind: string[] = [];
    for (const id of theirs) {
      const hold = await command(m("m2"), id, { command: "hold", params: { ms: holdMs }, timeout: 20 });
      assert.equal(hold.status, 202, JSON.stringify(hold.body));
      held.add(hold.body.id);
      for (let i = 0; i < 2; i++) {
        const q = await command(m("m3"), id, { command: "echo", params: { i } });
        assert.equal(q.status, 202, JSON.stringify(q.body));
        behind.push(q.body.id);
      }
    }
    for (const id of theirs) {
      const device = mqttDevices.get(id) ?? wsDevices.get(id)!;
      await until(() => [...held].some((c) => device.commands.has(c)), `${id} holding its command`, 5000);
    }
    for (const id of behind) assert.equal((await commandStatus(id)).status, "queued", `command ${id} queued behind the held one`);
    // CONTRACT §8: a command that was `sent` when its owner died waits for its answer. One whose
    // `sent` was not yet written (the tens of milliseconds after the device took it) is sent again,
    // as after a single runtime's crash: the kill comes once every held one is stored as sent.
    for (const id of held) await until(async () => (await commandStatus(id)).status === "sent", `command ${id} stored as sent`, 5000);
    const floor = await sequences(m("m2"));

    figures.heldBeforeKill = (await metric(m("m2"), "tethral_cluster_held_messages")) + (await metric(m("m3"), "tethral_cluster_held_messages"));
    const replayed0 = (await metric(m("m2"), "tethral_cluster_replayed_messages_total")) + (await metric(m("m3"), "tethral_cluster_replayed_messages_total"));
    mark("the SIGKILL of m1");
    const killedAt = Date.now();
    await victim.kill();
    // Commands for its devices while nobody owns them: queued, then delivered by the new owner.
    const during = Promise.all(
      theirs.map(async (id) => {
        const res = await command(m("m2"), id, { command: "echo", params: { during: true } });
        return `${res.status}${res.status === 202 ? "" : ` ${res.body?.error?.message}`} after ${Date.now() - killedAt} ms`;
      }),
    );
    await until(() => cluster.settled(["m2", "m3"]), "every partition owned by m2 and m3", LEASE_MS + 5000);
    figures.failoverMs = Date.now() - killedAt;
    mark("m1's partitions owned again");
    const statuses = await during;
    figures.replayedAfterKill = (await metric(m("m2"), "tethral_cluster_replayed_messages_total")) + (await metric(m("m3"), "tethral_cluster_replayed_messages_total")) - replayed0;
    figures.commandsDuringGap = statuses.join(",");
    console.log(`    SIGKILL → every partition owned in ${figures.failoverMs} ms (lease ${LEASE_MS} ms); commands sent meanwhile answered ${statuses.join(", ")}`);
    // Queued (202) at once, as with a live owner: the member waits for the takeover (CONTRACT §8,
    // commands reach the owner) rather than for the dead owner's answer.
    for (const s of statuses) assert.match(s, /^202/, `a command sent while its owner is dead is queued for the new owner`);

    await noneOffline("after the kill");
    await moving(floor, "after the kill");
    for (const c of acknowledged.filter((x) => theirs.includes(x.deviceId))) {
      const done = await until(
        async () => {
          const s = await commandStatus(c.id);
          return TERMINAL.has(s.status) ? s : null;
        },
        `command ${c.id} (${c.command}) for ${c.deviceId} completed after the kill`,
        LEASE_MS + 30_000,
      );
      if (held.has(c.id)) assert.ok(done.status === "succeeded" || done.status === "timed_out", `${c.id}: ${done.status}`);
      else assert.equal(done.status, "succeeded", `${c.command} ${c.id} for ${c.deviceId}: ${JSON.stringify(done)}`);
    }
    const heldOutcome = await Promise.all([...held].map(async (id) => (await commandStatus(id)).status));
    console.log(`    commands held across the kill ended ${heldOutcome.join(", ")}`);
    for (const d of wsDevices.values()) {
      await until(() => d.connected && members()[d.at]!.id !== "m1", `${d.id} connected to a live member`, 5000);
    }
    await noneOffline("after the commands");
  });

  it("SIGTERM: the stopping member hands its partitions over at once", async () => {
    const victim = m("m2");
    const termAt = Date.now();
    mark("the SIGTERM of m2");
    await victim.stop();
    const exitAt = Date.now();
    // Released on the way out: no lease row still names it, whatever its expiry.
    const leases = await cluster.leases();
    assert.deepEqual(
      leases.filter((l) => l.owner === "m2").map((l) => l.partition),
      [],
      "a clean stop leaves no lease of its own",
    );
    await until(() => cluster.settled(["m3"]), "every partition owned by m3", LEASE_MS);
    figures.sigtermHandoverMs = Date.now() - exitAt;
    figures.sigtermStopMs = exitAt - termAt;
    console.log(`    SIGTERM: stopped in ${figures.sigtermStopMs} ms; every partition owned by m3 ${figures.sigtermHandoverMs} ms after the exit (lease ${LEASE_MS} ms)`);
    const floor = await sequences(m("m3"));
    await moving(floor, "after the stop");
    for (const id of allIds()) {
      const res = await command(m("m3"), id, { command: "echo", params: { after: "sigterm" }, wait: true, timeout: 10 });
      assert.equal(res.status, 200, `${id}: ${JSON.stringify(res.body)}`);
    }
    await noneOffline("after the stop");
  });

  it("restarted, both take their shares back", async function () {
    this.timeout(START_LIMIT_MS + 30_000);
    mark("m2's partitions owned by m3");
    await Promise.all([m("m1").start(), m("m2").start()]);
    mark("m1 and m2 restarted");
    const ready = Date.now();
    await balanced(["m1", "m2", "m3"], 2 * LEASE_MS + 2000);
    figures.rejoinBalanceMs = Date.now() - ready;
    console.log(`    restarted members balanced ${figures.rejoinBalanceMs} ms after the last start`);
    for (const member of members()) {
      const list = await call(member.api, "GET", `/devices?tag=${TAG}&limit=100`);
      assert.equal(list.body.total, allIds().length, `the fleet through ${member.id}`);
    }
    await moving(await sequences(m("m1")), "after the restart");
    await noneOffline("after the restart");
  });

  it("fencing: a member frozen past its lease cannot overwrite its successor, and drops its partitions when it wakes", async function () {
    this.timeout(90_000);
    const owners = (await cluster.settled())!;
    const victim = m("m3");
    const before = await cluster.leases();
    const parts = before.filter((l) => l.owner === victim.id);
    assert.ok(parts.length > 0, "m3 owns partitions");
    const theirs = allIds().filter((id) => ownerOf(owners, id) === victim.id);
    assert.ok(theirs.length > 0, "m3 owns devices");
    // A command in flight on it when it freezes: answered while it is frozen (the successor's),
    // and timed out by its own overdue timer when it wakes (which must not be written).
    const freezeMs = HEARTBEAT_TIMEOUT_S * 1000 + 1500;
    const holds: string[] = [];
    for (const id of theirs) {
      const res = await command(m("m1"), id, { command: "hold", params: { ms: LEASE_MS + 3000 }, timeout: (LEASE_MS + 5000) / 1000 });
      assert.equal(res.status, 202, JSON.stringify(res.body));
      holds.push(res.body.id);
    }
    for (const [i, id] of theirs.entries()) {
      const device = mqttDevices.get(id) ?? wsDevices.get(id)!;
      await until(() => device.commands.has(holds[i]!), `${id} holding its command`, 5000);
    }
    // Stored as sent before the freeze (see the SIGKILL case): the successor waits for its answer.
    for (const id of holds) await until(async () => (await commandStatus(id)).status === "sent", `command ${id} stored as sent`, 5000);

    mark("the restarted members' shares taken back");
    const frozenAt = Date.now();
    mark("the SIGSTOP of m3");
    victim.signal("SIGSTOP");
    try {
      await until(() => cluster.settled(["m1", "m2"]), "m1 and m2 own every partition", LEASE_MS + 5000);
      figures.freezeTakeoverMs = Date.now() - frozenAt;
      mark("m3's partitions taken over");
      // The successors write: a change to each device, a command answered.
      for (const id of theirs) {
        const res = await call(m("m1").api, "PATCH", `/devices/${id}`, { name: `successor ${id}` });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        patched(id);
        const c = await command(m("m2"), id, { command: "echo", params: { successor: true }, wait: true, timeout: 10 });
        assert.equal(c.status, 200, `${id}: ${JSON.stringify(c.body)}`);
      }
      for (const id of holds) {
        await until(async () => (await commandStatus(id)).status === "succeeded", `held command ${id} answered to the successor`, LEASE_MS + 8000);
      }
      const left = freezeMs - (Date.now() - frozenAt);
      if (left > 0) await new Promise((resolve) => setTimeout(resolve, left));
    } finally {
      mark("the SIGCONT of m3");
      victim.signal("SIGCONT");
    }
    const wokeAt = Date.now();
    const floor = await sequences(m("m1"));
    // Whatever the woken member still had to do (heartbeat deadlines long past, a command's
    // timeout, writes it held) comes now: for a few lease periods nothing of it may show.
    while (Date.now() - wokeAt < 2 * LEASE_MS) {
      for (const id of theirs) {
        for (const member of [m("m1"), m("m2")]) {
          const d = await call(member.api, "GET", `/devices/${id}`);
          assert.equal(d.body.name, `successor ${id}`, `${id} through ${member.id}: the successor's change stays`);
          assert.notEqual(d.body.status, "offline", `${id} through ${member.id}: not offline`);
        }
      }
      for (const id of holds) assert.equal((await commandStatus(id)).status, "succeeded", `held command ${id} stays the successor's`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const after = await cluster.leases();
    for (const l of parts) {
      const now = after.find((x) => x.partition === l.partition)!;
      assert.ok(now.epoch > l.epoch, `partition ${l.partition} was taken over (epoch ${l.epoch} → ${now.epoch})`);
    }
    await balanced(["m1", "m2", "m3"], 3 * LEASE_MS + 2000);
    figures.wokenRebalanceMs = Date.now() - wokeAt;
    console.log(`    SIGSTOP: taken over in ${figures.freezeTakeoverMs} ms; frozen ${freezeMs} ms; the woken member back in balance ${figures.wokenRebalanceMs} ms after SIGCONT`);
    for (const id of theirs) {
      const s = await call(m("m3").api, "GET", `/devices/${id}/state?history=100`);
      const statuses = s.body.history.map((h: Json) => h.to?.status).filter(Boolean);
      assert.ok(!statuses.includes("offline"), `${id}: ${statuses.join(" → ")}`);
      const d = await call(m("m3").api, "GET", `/devices/${id}`);
      assert.equal(d.body.name, `successor ${id}`, `${id} through the woken member`);
    }
    await moving(floor, "after the wake");
    await noneOffline("after the wake");
  });

  it("keeps each device event once, cluster-wide", async () => {
    const stored = async (id: string): Promise<Json[]> => (await call(m("m2").api, "GET", `/events?deviceId=${id}&limit=10000`)).body.events;
    const succeeded = new Map<string, number>();
    for (const id of allIds()) {
      const events = await stored(id);
      const count = (type: string) => events.filter((e: Json) => e.type === type).length;
      assert.equal(count("device.registered"), 1, `${id}: device.registered once`);
      assert.equal(count("device.online"), 1, `${id}: device.online once (it never went offline)`);
      assert.equal(count("device.offline"), 0, `${id}: never offline`);
      assert.equal(count("device.updated"), patches.get(id) ?? 0, `${id}: one device.updated per change`);
      for (const e of events) if (e.type === "command.succeeded") succeeded.set(e.data.command.id, (succeeded.get(e.data.command.id) ?? 0) + 1);
    }
    const twice = [...succeeded].filter(([, n]) => n > 1);
    assert.deepEqual(twice, [], "each command.succeeded once");
    const offline = await call(m("m1").api, "GET", `/events?type=device.offline&limit=10000`);
    assert.deepEqual(offline.body.events.filter((e: Json) => allIds().includes(e.deviceId)), [], "no device.offline event anywhere");
    for (const d of [...mqttDevices.values(), ...wsDevices.values()]) {
      const again = [...d.commands].filter(([, n]) => n > 1).map(([id]) => id);
      assert.deepEqual(again, [], `${d.id}: no command delivered twice`);
    }
  });

  it("loses nothing acknowledged: every PUBACKed report is a point (once, in order) and every acknowledged command completed", async function () {
    this.timeout(90_000);
    mark("the end of the run");
    for (const d of mqttDevices.values()) await d.stop();
    for (const d of wsDevices.values()) await d.stop();
    mark("the devices' stop");
    const reader = m("m1");
    const series = async (id: string): Promise<{ ts: string; value: number }[]> => {
      const res = await call(reader.api, "GET", `/devices/${id}/telemetry?keys=seq&from=${encodeURIComponent(startedAt)}&limit=10000`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return res.body.series.seq;
    };
    const points = async (id: string): Promise<number[]> => (await series(id)).map((p) => p.value);
    let acked = 0;
    let stored = 0;
    const missing: string[] = [];
    let lostReports = 0;
    const lost = async (d: MqttDevice) => {
      const have = new Set(await points(d.id));
      return [...d.acked].filter((n) => !have.has(n));
    };
    // The write-behind may still hold the last ones for a moment.
    const deadline = Date.now() + 15_000;
    while ((await Promise.all([...mqttDevices.values()].map(lost))).some((l) => l.length > 0) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    for (const d of mqttDevices.values()) {
      acked += d.acked.size;
      const seqs = await points(d.id);
      stored += seqs.length;
      const gone = await lost(d);
      lostReports += gone.length;
      if (gone.length > 0) {
        // The stored points around the first one lost, with their times: for the failure message.
        const near = (await series(d.id)).filter((p) => Math.abs(p.value - gone[0]!) <= 3 || Math.abs(p.value - gone[gone.length - 1]!) <= 3);
        missing.push(`${d.id} lost ${runs(gone, (n) => phase(d.id, n))} (stored near them: ${near.map((p) => `${p.value}@${p.ts.slice(11)}`).join(" ")})`);
      }
      const twice = seqs.filter((n, i) => seqs.indexOf(n) !== i);
      if (twice.length > 0) {
        const copies = (await series(d.id)).filter((p) => p.value === twice[0]).map((p) => p.ts.slice(11));
        missing.push(`${d.id} stored twice ${runs(twice, (n) => phase(d.id, n))} (${twice[0]} at ${copies.join(" and ")})`);
      }
      const late = seqs.filter((n, i) => i > 0 && n < seqs[i - 1]!);
      if (late.length > 0) missing.push(`${d.id} stored out of order ${runs(late, (n) => phase(d.id, n))}`);
    }
    figures.telemetryAcked = acked;
    figures.telemetryLost = lostReports;
    assert.deepEqual(missing, [], "every acknowledged report is a stored point, once, in the order sent");
    // A WebSocket device's reports have no acknowledgement, and frames a frozen member read only
    // when it woke come late: for these, once each.
    for (const d of wsDevices.values()) {
      const seqs = await points(d.id);
      assert.ok(seqs.length > 0, `${d.id} has points`);
      assert.equal(new Set(seqs).size, seqs.length, `${d.id}: each report stored once`);
    }
    figures.pointsStored = stored;
    const unfinished: string[] = [];
    for (const c of acknowledged) {
      const s = await commandStatus(c.id);
      if (held.has(c.id) ? !(s.status === "succeeded" || s.status === "timed_out") : s.status !== "succeeded") unfinished.push(`${c.command} ${c.id} for ${c.deviceId} via ${c.via}: ${s.status}`);
    }
    figures.commandsAcknowledged = acknowledged.length;
    console.log(`    ${acked} acknowledged MQTT reports, all stored; ${acknowledged.length} acknowledged commands`);
    assert.deepEqual(unfinished, [], "every acknowledged command completed");
  });
});
