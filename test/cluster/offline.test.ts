import { Hub } from "../../src/core";
import { partitionOf } from "../../src/core/cluster/partition";
import { PostgresStore } from "../../src/store/postgres";
import type { TestPostgres } from "../store/pg-harness";
import { LocalBroker } from "./local-link";
import { clusterPostgres, memberHub, ownedBy, until } from "./members";

const PARTITIONS = 8;
/** Longer than the margin members follow changes by (5 s at most): the stored lastSeen is older than any of their reads looks back. */
const HEARTBEAT_TIMEOUT_S = 7;

describe("cluster members: a status set by its owner's heartbeat deadline (engine, one PostgreSQL)", function () {
  this.timeout(60_000);
  let db: TestPostgres;
  const hubs: Hub[] = [];

  before(async function () {
    db = await clusterPostgres(this);
  });

  after(async () => {
    for (const hub of hubs.splice(0)) await hub.stop().catch(() => undefined);
    await db?.stop();
  });

  it("a device that goes offline on its owner reads offline through the other member within about a second", async () => {
    const broker = new LocalBroker();
    const member = async (id: string) => {
      const m = memberHub(new PostgresStore({ url: db.url }), { member: id, partitions: PARTITIONS, leaseMs: 2_000, link: broker.link() }, { heartbeat: { resolutionMs: 100 } });
      await m.hub.start();
      hubs.push(m.hub);
      return m;
    };
    const a = await member("a");
    const b = await member("b");
    await until("the members own half each", () => ownedBy(a.hub).length === PARTITIONS / 2 && ownedBy(b.hub).length === PARTITIONS / 2, 15_000);
    const id = Array.from({ length: 32 }, (_, i) => `dev-${i}`).find((x) => ownedBy(a.hub).includes(partitionOf(x, PARTITIONS)))!;
    await a.hub.registerDevice({ id, protocol: "mqtt", heartbeatTimeout: HEARTBEAT_TIMEOUT_S });
    const status = (hub: Hub) => (hub.listDevices({ limit: 1000 }).devices.find((d) => d.id === id)?.status ?? "unknown");
    for (const m of [a, b]) m.shared.context.receive({ protocol: "mqtt", deviceId: id, kind: "telemetry", payload: Buffer.from('{"t":1}') });
    await until("B reads it online", () => status(b.hub) === "online", 5_000);
    // Nothing more from it: its owner takes it offline once the timeout has passed.
    await until("A takes it offline", () => status(a.hub) === "offline", (HEARTBEAT_TIMEOUT_S + 3) * 1000);
    const lag = await until("B reads it offline", () => status(b.hub) === "offline", 3_000);
    console.log(`      offline through the other member ${lag} ms after its owner`);
  });
});
