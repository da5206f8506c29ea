import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { freshDatabase } from "../../bench/pg-database";
import { type Mosquitto, startMosquitto } from "../mosquitto";

/** What README "Cluster mode" asks of the broker (mosquitto.conf). */
export const CLUSTER_BROKER_SETTINGS = ["max_inflight_messages 1000", "max_queued_messages 100000"];
import { type Json, type RuntimeChild, call, fixedPorts, spawnRuntime } from "./spawn-runtime";

// A cluster of `npm start` runtimes (CONTRACT §8) on a fresh database of the PostgreSQL server and
// a Mosquitto of its own, for the end-to-end test and bench:cluster. Each member keeps its user
// dir and ports across restarts, as a member behind a load balancer would.

export interface ClusterSettings {
  members: number;
  partitions: number;
  leaseSeconds: number;
  /** Prefix of the database's name. */
  prefix: string;
  /** TETHRAL_CLUSTER for the members ("on" unless a benchmark measures a single runtime). */
  cluster?: "on" | "off";
  /** More environment for every member. */
  env?: NodeJS.ProcessEnv;
  /** What the members run: the sources through tsx (tests, the default) or the build, as `npm start` does (benchmarks). */
  from?: "sources" | "build";
}

export class Member {
  child: RuntimeChild | null = null;
  /** SIGSTOPped and not continued yet. */
  frozen = false;

  constructor(
    readonly id: string,
    readonly userDir: string,
    readonly env: NodeJS.ProcessEnv,
    readonly from: "sources" | "build" = "sources",
  ) {}

  get api(): string {
    return `http://127.0.0.1:${this.env.TETHRAL_TEST_RUNTIME_PORT}/api`;
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.env.TETHRAL_TEST_RUNTIME_PORT}/tethral/ws`;
  }

  get running(): boolean {
    return this.child !== null;
  }

  get pid(): number {
    if (!this.child) throw new Error(`${this.id} is not running`);
    return this.child.pid;
  }

  async start(): Promise<void> {
    this.child = await spawnRuntime(this.userDir, this.env, this.from);
  }

  /** SIGTERM: a clean stop (it hands its partitions over); resolves at the exit, rejects on a bad one. */
  async stop(): Promise<void> {
    if (!this.child) return;
    if (this.frozen) this.signal("SIGCONT");
    const child = this.child;
    this.child = null;
    await child.stop();
  }

  /** SIGKILL: nothing runs on the way out. Resolves at the exit. */
  async kill(): Promise<void> {
    if (!this.child) return;
    const child = this.child;
    this.child = null;
    this.frozen = false;
    await child.kill();
  }

  signal(signal: "SIGSTOP" | "SIGCONT"): void {
    process.kill(this.pid, signal);
    this.frozen = signal === "SIGSTOP";
  }

  output(): string {
    return this.child?.output() ?? "";
  }
}

export interface ClusterView {
  member: string;
  partitions: number;
  members: { id: string; since: string; lastSeen: string; partitions: number[] }[];
}

export interface LeaseRow {
  partition: number;
  owner: string | null;
  epoch: number;
}

export class TestCluster {
  private constructor(
    readonly settings: ClusterSettings,
    readonly members: Member[],
    readonly mosquitto: Mosquitto,
    readonly dbUrl: string,
    private readonly dropDb: () => Promise<void>,
    private readonly scratch: string,
  ) {}

  /** The database, the broker and the members' settings; no member runs yet (`startAll`). */
  static async create(server: string, settings: ClusterSettings): Promise<TestCluster> {
    const scratch = mkdtempSync(path.join(tmpdir(), "tethral-cluster-"));
    const db = await freshDatabase(server, settings.prefix);
    let mosquitto: Mosquitto;
    try {
      // The broker settings the README asks of a cluster's broker: a partition's session may have
      // a write round of messages in flight, and a lease period of them queued.
      mosquitto = await startMosquitto(CLUSTER_BROKER_SETTINGS);
    } catch (err) {
      await db.drop();
      rmSync(scratch, { recursive: true, force: true });
      throw err;
    }
    const members: Member[] = [];
    for (let i = 1; i <= settings.members; i++) {
      const id = `m${i}`;
      const env: NodeJS.ProcessEnv = {
        ...(await fixedPorts()),
        TETHRAL_DB: db.url,
        TETHRAL_TEST_RUNTIME_MQTT_URL: mosquitto.url,
        TETHRAL_CLUSTER: settings.cluster ?? "on",
        TETHRAL_MEMBER_ID: id,
        TETHRAL_PARTITIONS: String(settings.partitions),
        TETHRAL_LEASE_SECONDS: String(settings.leaseSeconds),
        ...settings.env,
      };
      members.push(new Member(id, path.join(scratch, id), env, settings.from));
    }
    return new TestCluster(settings, members, mosquitto, db.url, db.drop, scratch);
  }

  get leaseMs(): number {
    return this.settings.leaseSeconds * 1000;
  }

  member(id: string): Member {
    const m = this.members.find((x) => x.id === id);
    if (!m) throw new Error(`no member ${id}`);
    return m;
  }

  /** Members running and not frozen. */
  live(): Member[] {
    return this.members.filter((m) => m.running && !m.frozen);
  }

  async startAll(): Promise<void> {
    await Promise.all(this.members.map((m) => m.start()));
  }

  async view(member: Member): Promise<ClusterView> {
    const res = await call(member.api, "GET", "/cluster");
    if (res.status !== 200) throw new Error(`GET /api/cluster on ${member.id}: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body as ClusterView;
  }

  /**
   * Partition → owner as `member` sees it, counting only owners in `among`; null when some
   * partition has no such owner or two.
   */
  static owners(view: ClusterView, among: string[]): Map<number, string> | null {
    const owners = new Map<number, string>();
    for (const m of view.members) {
      if (!among.includes(m.id)) continue;
      for (const p of m.partitions) {
        if (owners.has(p)) return null;
        owners.set(p, m.id);
      }
    }
    return owners.size === view.partitions ? owners : null;
  }

  /**
   * The owner map once every live member agrees that every partition is owned by one of `among`
   * (default: the live members); null while they do not.
   */
  async settled(among: string[] = this.live().map((m) => m.id)): Promise<Map<number, string> | null> {
    let first: Map<number, string> | null = null;
    for (const m of this.live()) {
      let view: ClusterView;
      try {
        view = await this.view(m);
      } catch {
        return null;
      }
      const owners = TestCluster.owners(view, among);
      if (!owners) return null;
      if (first && [...owners].some(([p, o]) => first!.get(p) !== o)) return null;
      first ??= owners;
    }
    return first;
  }

  /** The lease rows as the database has them (the fencing epochs are not in /api/cluster). */
  async leases(): Promise<LeaseRow[]> {
    const client = new pg.Client({ connectionString: this.dbUrl });
    await client.connect();
    try {
      const rows = await client.query<{ part: number; owner: string | null; epoch: string }>("SELECT part, owner, epoch FROM cluster_leases ORDER BY part");
      return rows.rows.map((r) => ({ partition: Number(r.part), owner: r.owner, epoch: Number(r.epoch) }));
    } finally {
      await client.end();
    }
  }

  /** The last of each running member's log, for a failure message. */
  logs(chars = 4000): string {
    return this.members.map((m) => `--- ${m.id} ---\n${m.output().slice(-chars)}`).join("\n");
  }

  async stop(): Promise<void> {
    // Profiled members (TETHRAL_TEST_NODE_ARGS) stop cleanly, so Node writes their profiles.
    for (const m of this.members) if (m.running) await (process.env.TETHRAL_TEST_NODE_ARGS ? m.stop() : m.kill());
    await this.mosquitto.stop();
    await this.dropDb();
    rmSync(this.scratch, { recursive: true, force: true });
  }
}

/** CPU time (user + system) of a process so far, in microseconds, from /proc/<pid>/stat. */
export function cpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) is in parentheses and may hold spaces: count from after it.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14 and 15 (utime, stime), in clock ticks; Linux's USER_HZ is 100 on every platform Node runs on.
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks * 10_000;
}

/** Registers a device through `member` and answers its token (device tokens are on). */
export async function register(member: Member, body: Json): Promise<{ device: Json; token: string }> {
  const res = await call(member.api, "POST", "/devices", body);
  if (res.status !== 201) throw new Error(`register ${body.id} on ${member.id}: ${res.status} ${JSON.stringify(res.body)}`);
  if (typeof res.body.token !== "string") throw new Error(`register ${body.id}: no token in the answer (device tokens must be on)`);
  return { device: res.body, token: res.body.token };
}
