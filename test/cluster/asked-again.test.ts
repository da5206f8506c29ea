import assert from "node:assert/strict";
import { assignPartitions, partitionOf } from "../../src/core/cluster/partition";
import { isTethralError } from "../../src/core/errors";
import type { Hub } from "../../src/core";
import { PostgresStore } from "../../src/store/postgres";
import { startProxy, type TestProxy } from "../store/pg-harness";
import { LocalBroker } from "./local-link";
import { type SharedAdapter, clusterDatabase, memberHub, ownedBy, until } from "./members";

const PARTITIONS = 4;
const LEASE_MS = 1_000;

interface Pair {
  broker: LocalBroker;
  a: { hub: Hub; shared: SharedAdapter; store: PostgresStore };
  b: { hub: Hub; shared: SharedAdapter; store: PostgresStore };
  proxy: TestProxy;
  /** A device id in one of b's partitions (not yet registered). */
  idOfB: (prefix: string) => string;
  stop: () => Promise<void>;
}

/** A device id (`prefix-n`) in one of the partitions the hub's member owns now. */
function idOwnedBy(hub: Hub, prefix: string): string {
  const mine = ownedBy(hub);
  for (let i = 0; i < 1000; i++) if (mine.includes(partitionOf(`${prefix}-${i}`, PARTITIONS))) return `${prefix}-${i}`;
  throw new Error(`${hub.memberId} owns no partition`);
}

/**
 * A request that a member routes to a device's owner, which does it and dies before it answers
 * (its answer lost, then cut off from the database and the broker): the member asks the
 * partition's next owner, itself here, once the dead owner's lease has run out. The request must
 * not be done twice, nor refused for having been done.
 */
describe("a request asked again of a partition's next owner after its first owner's answer was lost (engine, PostgreSQL)", function () {
  this.timeout(60_000);
  const database = clusterDatabase();

  async function pair(deviceTokens: boolean): Promise<Pair> {
    const broker = new LocalBroker();
    const proxy = await startProxy(database().url);
    const options = { deviceTokens };
    const storeA = new PostgresStore({ url: database().url });
    const a = { ...memberHub(storeA, { member: "a", partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() }, options), store: storeA };
    const storeB = new PostgresStore({ url: proxy.url, connectTimeoutMs: 500 });
    const b = { ...memberHub(storeB, { member: "b", partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() }, options), store: storeB };
    await a.hub.start();
    await b.hub.start();
    await until("both members own half", () => ownedBy(a.hub).length === PARTITIONS / 2 && ownedBy(b.hub).length === PARTITIONS / 2, 20_000);
    const idOfB = (prefix: string) => idOwnedBy(b.hub, prefix);
    const stop = async () => {
      // b back first: a member stopping with its database away waits for it (seconds).
      proxy.restore();
      broker.cut.delete("b");
      await Promise.all([a.hub.stop().catch(() => undefined), b.hub.stop().catch(() => undefined)]);
      await proxy.close();
    };
    return { broker, a, b, proxy, idOfB, stop };
  }

  /** b does the next `method` asked of it (and with `stored`, writes what it did), then dies before answering. */
  function dieAfter(p: Pair, method: string, stored = false): void {
    p.broker.loseAnswer = async (member, m) => {
      if (member !== "b" || m !== method) return false;
      if (stored) await p.b.hub.flush();
      p.proxy.cut();
      p.broker.cut.add("b");
      return true;
    };
  }

  for (const deviceTokens of [true, false]) {
    it(`a registration is answered as done, ${deviceTokens ? "with a token that works" : "device tokens off"}: not 409 for the device it made`, async () => {
      const p = await pair(deviceTokens);
      try {
        const id = p.idOfB(`reg-${deviceTokens ? "tokens" : "plain"}`);
        dieAfter(p, "register");
        let registered;
        try {
          registered = await p.a.hub.registerDevice({ id, protocol: "mqtt", name: "Boiler", tags: ["floor-1"] });
        } catch (err) {
          assert.fail(`the registration b made was refused when asked again: ${isTethralError(err) ? `${err.code} ${err.message}` : String(err)}`);
        }
        assert.equal(registered.id, id);
        assert.equal(registered.name, "Boiler");
        assert.ok(ownedBy(p.a.hub).includes(partitionOf(id, PARTITIONS)), "a asked itself, the partition's next owner");
        if (deviceTokens) {
          assert.equal(typeof registered.token, "string");
          const withToken = p.a.hub.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: Buffer.from('{"t":1}'), token: registered.token! });
          assert.equal(withToken.ok, true, "the token in the answer is the device's");
          const wrong = p.a.hub.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: Buffer.from('{"t":2}'), token: "not-the-token" });
          assert.equal(wrong.ok, false);
        } else {
          assert.equal(registered.token, undefined);
        }
        // Someone else's registration of the same id is still refused.
        await assert.rejects(p.a.hub.registerDevice({ id, protocol: "mqtt" }), (err: unknown) => isTethralError(err) && err.code === "CONFLICT");
      } finally {
        await p.stop();
      }
    });
  }

  for (const deviceTokens of [true, false]) {
    it(`another's registration of the id is still 409 (${deviceTokens ? "its token not this one's" : "device tokens off: it differs from this one"})`, async () => {
    const p = await pair(deviceTokens);
    try {
      const id = p.idOfB(`other-${deviceTokens ? "tokens" : "plain"}`);
      // Registered by someone else first, through b; then this caller's, with another name.
      await p.b.hub.registerDevice({ id, protocol: "mqtt", name: "Theirs" });
      await until("a follows it", () => p.a.hub.listDevices({ limit: 1000 }).devices.some((d) => d.id === id));
      dieAfter(p, "register");
      await assert.rejects(p.a.hub.registerDevice({ id, protocol: "mqtt", name: deviceTokens ? "Theirs" : "Mine" }), (err: unknown) => isTethralError(err) && err.code === "CONFLICT");
      assert.ok(ownedBy(p.a.hub).includes(partitionOf(id, PARTITIONS)), "a asked itself, the partition's next owner");
    } finally {
      await p.stop();
    }
    });
  }

  it("a command is sent once: the next owner answers the command the first one stored, not a second one", async () => {
    const p = await pair(false);
    try {
      const id = p.idOfB("cmd");
      await p.a.hub.registerDevice({ id, protocol: "mqtt" });
      // Not connected anywhere: the command waits in the device's queue.
      p.a.shared.links.set(id, false);
      p.b.shared.links.set(id, false);
      dieAfter(p, "command");
      const command = await p.a.hub.sendCommand(id, { command: "reboot" });
      assert.equal(command.status, "queued");
      assert.ok(ownedBy(p.a.hub).includes(partitionOf(id, PARTITIONS)), "a asked itself, the partition's next owner");
      const all = await p.a.hub.deviceCommands(id);
      assert.deepEqual(all.map((c) => c.id), [command.id], "one command, the one answered");
      assert.deepEqual(p.a.hub.pendingCommands(id).map((c) => c.id), [command.id]);
    } finally {
      await p.stop();
    }
  });

  it("with wait, the command the first owner stored is waited for, not a second one", async () => {
    const p = await pair(false);
    try {
      const id = p.idOfB("cmd-wait");
      await p.a.hub.registerDevice({ id, protocol: "mqtt" });
      p.a.shared.links.set(id, false);
      p.b.shared.links.set(id, false);
      dieAfter(p, "command", true);
      // The device stays away: the caller gets the command as it is once its attempts' time is up.
      const command = await p.a.hub.sendCommand(id, { command: "reboot", wait: true, timeout: 0.2 });
      const all = await p.a.hub.deviceCommands(id);
      assert.deepEqual(all.map((c) => c.id), [command.id], "one command, the one answered");
    } finally {
      await p.stop();
    }
  });

  it("a command not asked again is not looked up in the store first", async () => {
    const p = await pair(false);
    try {
      const id = p.idOfB("cmd-plain");
      const ownId = idOwnedBy(p.a.hub, "own");
      await p.a.hub.registerDevice({ id, protocol: "mqtt" });
      await p.a.hub.registerDevice({ id: ownId, protocol: "mqtt" });
      let reads = 0;
      for (const store of [p.a.store, p.b.store]) {
        const getCommand = store.getCommand.bind(store);
        store.getCommand = (commandId: string) => {
          reads++;
          return getCommand(commandId);
        };
      }
      for (let i = 0; i < 5; i++) {
        await p.a.hub.sendCommand(ownId, { command: "reboot" });
        await p.a.hub.sendCommand(id, { command: "reboot" });
      }
      assert.equal(reads, 0);
    } finally {
      await p.stop();
    }
  });

  it("asked again of a third member, the next owner: registrations answered with their devices and working tokens", async () => {
    const broker = new LocalBroker();
    const proxy = await startProxy(database().url);
    const options = { deviceTokens: true };
    // Names whose shares (assignPartitions, 4 partitions) send one of b's two partitions to a and
    // the other to c when b dies: b0 holds 0 and 2, then 0 goes to a0 and 2 to c0.
    const cluster = (member: string) => ({ member, partitions: PARTITIONS, leaseMs: LEASE_MS, link: broker.link() });
    const a = memberHub(new PostgresStore({ url: database().url }), cluster("a0"), options);
    const b = memberHub(new PostgresStore({ url: proxy.url, connectTimeoutMs: 500 }), cluster("b0"), options);
    const c = memberHub(new PostgresStore({ url: database().url }), cluster("c0"), options);
    try {
      for (const m of [a, b, c]) await m.hub.start();
      // The three hold exactly their shares (rendezvous hashing), so which of b's partitions c
      // takes when b dies is known: a spread caught on its way there (b holding one a would
      // take) failed this test on a loaded CI run (2026-12-08).
      const shares = assignPartitions(PARTITIONS, ["a0", "b0", "c0"]);
      const after = assignPartitions(PARTITIONS, ["a0", "c0"]);
      const share = (member: string) => shares.flatMap((owner, part) => (owner === member ? [part] : []));
      assert.ok(share("b0").some((part) => after[part] === "c0"), "a partition of b's is c's next (fixed by the member ids)");
      await until(
        "the three hold their shares",
        () => [a, b, c].every((m) => JSON.stringify([...ownedBy(m.hub)].sort((x, y) => x - y)) === JSON.stringify(share(m.hub.memberId))),
        20_000,
      ).catch((err: unknown) => {
        throw new Error(`${String(err)}: a ${ownedBy(a.hub)}, b ${ownedBy(b.hub)}, c ${ownedBy(c.hub)}`);
      });
      // One device in each of b's partitions, registered through a at once; b does them all and
      // dies before answering any.
      const ids = ownedBy(b.hub).map((part) => {
        for (let i = 0; i < 1000; i++) if (partitionOf(`trio-${i}`, PARTITIONS) === part) return `trio-${i}`;
        throw new Error(`no id for partition ${part}`);
      });
      let done = 0;
      broker.loseAnswer = (member, method) => {
        if (member !== "b0" || method !== "register") return false;
        if (++done === ids.length) {
          proxy.cut();
          broker.cut.add("b0");
        }
        return true;
      };
      const registered = await Promise.all(ids.map((id) => a.hub.registerDevice({ id, protocol: "mqtt" })));
      const byC = ids.filter((id) => ownedBy(c.hub).includes(partitionOf(id, PARTITIONS)));
      assert.ok(byC.length > 0, `a partition of b's went to c (a took ${ids.filter((id) => ownedBy(a.hub).includes(partitionOf(id, PARTITIONS))).join(", ")})`);
      for (const [i, id] of ids.entries()) {
        assert.equal(registered[i]!.id, id);
        const owner = byC.includes(id) ? c : a;
        const result = owner.hub.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: Buffer.from('{"t":1}'), token: registered[i]!.token! });
        assert.equal(result.ok, true, `the token answered for ${id} is its own`);
      }
    } finally {
      proxy.restore();
      broker.cut.delete("b0");
      await Promise.all([a, b, c].map((m) => m.hub.stop().catch(() => undefined)));
      await proxy.close();
    }
  });

  it("a removal is answered with the device removed, not 404", async () => {
    const p = await pair(false);
    try {
      const id = p.idOfB("rm");
      const never = p.idOfB("never");
      await p.a.hub.registerDevice({ id, protocol: "mqtt", name: "Gone soon" });
      await until("a follows it", () => p.a.hub.listDevices({ limit: 1000 }).devices.some((d) => d.id === id));
      dieAfter(p, "remove");
      const removed = await p.a.hub.removeDevice(id);
      assert.equal(removed.id, id);
      assert.equal(removed.name, "Gone soon");
      assert.equal(p.a.hub.listDevices({ limit: 1000 }).devices.some((d) => d.id === id), false);
      // A device that was never there is still 404.
      await assert.rejects(p.a.hub.removeDevice(never), (err: unknown) => isTethralError(err) && err.code === "NOT_FOUND");
    } finally {
      await p.stop();
    }
  });

  it("a state change with expectedVersion is answered with the state it made, not 409; another's change in between is still 409", async () => {
    const p = await pair(false);
    try {
      const id = p.idOfB("state");
      await p.a.hub.registerDevice({ id, protocol: "mqtt" });
      const before = await p.a.hub.setState(id, { desired: { level: 1 } });
      await until("a follows it", () => p.a.hub.getState(id).version === before.version);
      dieAfter(p, "setState");
      const after = await p.a.hub.setState(id, { desired: { level: 2 }, expectedVersion: before.version });
      assert.equal(after.version, before.version + 1);
      assert.deepEqual(after.desired, { level: 2 });
      // The same change asked with a version that is two behind now: someone's change in between.
      await p.a.hub.setState(id, { desired: { level: 3 } });
      await assert.rejects(p.a.hub.setState(id, { desired: { level: 3 }, expectedVersion: before.version + 1 }), (err: unknown) => isTethralError(err) && err.code === "CONFLICT");
    } finally {
      await p.stop();
    }
  });

  it("a cancel is answered with the cancelled command, not 409", async () => {
    const p = await pair(false);
    try {
      const id = p.idOfB("cancel");
      await p.a.hub.registerDevice({ id, protocol: "mqtt" });
      p.a.shared.links.set(id, false);
      p.b.shared.links.set(id, false);
      const command = await p.a.hub.sendCommand(id, { command: "reboot" });
      // Its cancel stored (a cancel b had not written is lost with b, and a's is the first).
      dieAfter(p, "cancel", true);
      const cancelled = await p.a.hub.cancelCommand(command.id);
      assert.equal(cancelled.id, command.id);
      assert.equal(cancelled.status, "cancelled");
    } finally {
      await p.stop();
    }
  });
});
