import { beforeDeadline, type Clock, type TimerHandle } from "../clock";
import type { CommandTracker } from "../commands";
import { TethralError, errorMessage, isTethralError } from "../errors";
import type { ClusterInfo } from "../hub-options";
import { type ClusterLink, type ClusterStore, type Fence, type ForwardedMessage, type HeldLease, isFenced, isNoAnswer, leaseHoldMs } from "../ports/cluster";
import type { DeviceMessage, PartitionHost, PartitionedIntake, ProtocolAdapter, ReceiveResult } from "../ports/protocol";
import { type InboundMessage, parseInbound } from "../inbound";
import type { Presence } from "../presence";
import type { DeviceRegistry } from "../registry";
import type { StateManager } from "../state";
import type { DeviceTokens } from "../tokens";
import { applyChanges, follow } from "./follow";
import { Leases, type LeaseStatistics } from "./leases";
import { partitionOf } from "./partition";
import { RecentMessages } from "./recent";
import { RemoteAdapters } from "./remote-adapter";
import { type ReplayHost, fingerprintOf, replay } from "./replay";

/** What the member needs of the hub it is part of. */
export interface MemberHost {
  registry: DeviceRegistry;
  state: StateManager;
  presence: Presence;
  tokens: DeviceTokens;
  commands: CommandTracker;
  clock: Clock;
  /** Applies a device message here (this member owns the device). */
  receive(message: DeviceMessage): ReceiveResult;
  /** Runs a routed request here (this member owns the device, or holds its connection for `deliver`). */
  apply(method: string, args: Record<string, unknown>): Promise<unknown>;
  /** The running local adapter of a protocol. */
  adapter(protocol: string): ProtocolAdapter | undefined;
  /** Every adapter, started or not. */
  adapters(): ProtocolAdapter[];
  /** See `Persistence.writtenMark`. */
  writtenMark(): number | null;
  /** See `Persistence.onWritten`. */
  onWritten(listener: (index: number) => void): () => void;
  /** Writes everything the write-behind holds now. */
  flush(): Promise<void>;
  /** Resolves once the write-behind's batches taken so far are written or refused (see `Persistence.inFlight`). */
  writesInFlight(): Promise<void>;
  /** Drops what the write-behind holds of these devices (see `Persistence.discard`): the rows dropped. */
  discardWrites(theirs: (deviceId: string) => boolean): number;
  /** Hands a device's twin to the adapters here (it changed on its owner). */
  deliverTwin(deviceId: string): void;
  warn(message: string): void;
}

export interface MemberOptions {
  member: string;
  partitions: number;
  leaseMs: number;
  /** How often devices owned elsewhere are read back from the database. */
  followMs: number;
}

export interface ClusterStatistics extends LeaseStatistics {
  member: string;
  partitions: number;
  members: number;
  unowned: number;
  forwardedCalls: number;
  forwardedMessages: number;
  appliedForwarded: number;
  replayed: number;
  /** Messages held while a late renewal made this member's leases look lapsed, applied when it came. */
  resumed: number;
  held: number;
  heldDropped: number;
  followLagSeconds: number;
  linkConnected: boolean;
}

/**
 * Changes are read back from a little before the last read: rows are stamped by their writers'
 * clocks, and committed a little after they were stamped. Most rounds re-read one second (a write
 * round and its commit); every tenth re-reads five, for writers whose clocks run behind.
 */
const FOLLOW_MARGIN_MS = 5_000;
const FOLLOW_SHORT_MARGIN_MS = 1_000;
const FOLLOW_FULL_EVERY = 10;
/** No held message skipped (see `resume`). */
const NONE: ReadonlySet<number> = new Set();

const MOVED = "moved";

/** The owner has changed: the caller asks again (nothing was done). */
export function movedError(deviceId: string): TethralError {
  return new TethralError("UNAVAILABLE", `device ${deviceId} is not this cluster member's now: try again`, [{ field: "cluster", message: MOVED }]);
}

export function isMoved(err: unknown): boolean {
  return isTethralError(err) && err.code === "UNAVAILABLE" && err.details.some((d) => d.field === "cluster" && d.message === MOVED);
}

/**
 * This runtime as a cluster member (CONTRACT §8). It holds partition leases (`Leases`) and, with
 * them, the devices it owns: their messages are applied here, and only here. Messages of devices
 * owned elsewhere are kept a while for a takeover (`RecentMessages`); those that came by a
 * connection this member holds (WebSocket, CoAP, HTTP) go to every member over the broker.
 * Writes, commands and user events naming a device are routed to the device's owner; reads are
 * served here from a copy of the fleet the member keeps by reading back, every `followMs`, what
 * changed in the database. On a takeover the partition's devices get a full heartbeat timeout
 * from now, their queued commands are loaded and sent, and the messages the previous owner had
 * not written are replayed, in order, before any newer one.
 */
export class ClusterMember {
  readonly leases: Leases;
  private readonly recent: RecentMessages;
  private readonly remote: RemoteAdapters;
  private readonly cache = new Map<string, number>();
  /** The member holding a device's connection, by its forwarded messages. */
  private readonly via = new Map<string, string>();
  private followTimer: TimerHandle | null = null;
  private following: Promise<void> | null = null;
  /** The database's clock at the last read of changes; the next reads from a margin before it. */
  private lastRead = 0;
  private followRounds = 0;
  private lastFollow = 0;
  private running = false;
  /**
   * A fingerprint of the last message applied to each device (here, or by its owner as read back),
   * written with its presence for a successor's replay. Kept here, not on the device record: a
   * single runtime pays nothing for it.
   */
  private readonly lastMessages = new Map<string, number>();
  /** What this member holds already: the follower re-reads a margin, and most of it it has. */
  private readonly known = {
    deviceUpdatedAt: (id: string) => this.host.registry.record(id)?.updatedAt,
    stateRev: (id: string) => this.host.registry.record(id)?.state?.rev,
  };
  private readonly stats = { forwardedCalls: 0, forwardedMessages: 0, appliedForwarded: 0, replayed: 0, resumed: 0 };
  /** Adapters that take each partition's messages on a session of its own (see `PartitionedIntake`). */
  private intakes: PartitionedIntake[] = [];
  /** The packet id of the message being applied from a partition's session (0: none). */
  private packetId = 0;
  /**
   * The device whose message a partition's session is applying now (null: none): its ownership was
   * decided once, when the session handed it over, and holds while it is applied. Asked again, a
   * lease that ran out in between would have it forwarded as another member's, and acknowledged.
   */
  private applyingFromSession: string | null = null;
  /** Partitions claimed back after another member held them, whose fingerprints the takeover forgets (see `acquire`). */
  private readonly superseded = new Set<number>();

  constructor(
    private readonly host: MemberHost,
    private readonly store: ClusterStore,
    private readonly link: ClusterLink,
    readonly options: MemberOptions,
  ) {
    this.leases = new Leases(store, host.clock, options.member, options.partitions, options.leaseMs, {
      acquire: (leases) => this.acquire(leases),
      claimed: () => void this.nudge(),
      owned: (p) => this.replay(p),
      superseded: (p) => {
        const dropped = host.discardWrites((id) => this.partitionOf(id) === p);
        // As for fenced rows (see `fenced`): what was dropped is stored nowhere, unless that member
        // stored it. Its devices' fingerprints are forgotten at the takeover's load, in one pass.
        this.superseded.add(p);
        if (dropped > 0) {
          host.warn(`cluster: partition ${p} was another member's since this member last held it: ${dropped} rows still waiting here to be written for it are older than what that member stored, and were dropped`);
        }
      },
      handOver: (ps) => this.handOver(ps),
      lost: (ps) => this.lose(ps),
      resumed: (ps) => this.resume(ps),
      warn: (m) => host.warn(m),
    });
    this.remote = new RemoteAdapters({
      member: options.member,
      link,
      via: this.via,
      adapter: (protocol) => host.adapter(protocol),
      forwarded: () => this.stats.forwardedCalls++,
      owns: (id) => this.owns(id),
    });
    // Two lease periods and a few seconds: the gap a dead owner leaves, and the takeover's load.
    this.recent = new RecentMessages(options.partitions, 2 * options.leaseMs + 5_000, 200_000);
  }

  get member(): string {
    return this.options.member;
  }

  partitionOf(deviceId: string): number {
    let p = this.cache.get(deviceId);
    if (p === undefined) {
      p = partitionOf(deviceId, this.options.partitions);
      if (this.cache.size > 1_000_000) this.cache.clear();
      this.cache.set(deviceId, p);
    }
    return p;
  }

  owns(deviceId: string): boolean {
    return deviceId === this.applyingFromSession || this.leases.owns(this.partitionOf(deviceId));
  }

  /** The fence the store checks every device write against. */
  fence(): Fence {
    return { member: this.member, holdMs: leaseHoldMs(this.options.leaseMs), leaseOf: (id) => this.leases.leaseOf(this.partitionOf(id)) };
  }

  /** Connects to the other members and joins (refusing another partition count); owns nothing yet (see `join`). */
  async connect(): Promise<void> {
    this.store.setFence(this.fence());
    const host = this.partitionHost();
    this.intakes = this.host.adapters().flatMap((a) => a.partitioned?.(host) ?? []);
    await this.link.start(this.member, { call: (method, args) => this.answer(method, args), message: (m) => this.forwarded(m) });
    this.running = true;
    try {
      const { now } = await this.store.clusterJoin(this.member, this.options.partitions);
      this.lastRead = now;
      this.lastFollow = performance.now();
    } catch (err) {
      this.running = false;
      await this.link.stop().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Takes this member's share of the partitions. Called once the adapters are up: every device
   * message from then on is applied here or kept, so a partition handed over meanwhile loses none
   * (a member that claimed before it subscribed missed what came between its predecessor's last
   * message and its own subscription).
   */
  async join(): Promise<void> {
    await this.leases.start();
    this.armFollow();
    this.nudge();
  }

  /** Hands every partition over (written first), leaves, and tells the others to take them now. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    if (this.followTimer !== null) this.host.clock.clearTimeout(this.followTimer);
    this.followTimer = null;
    await this.following;
    await this.leases.stop();
    await this.nudge(1_000);
    await this.link.stop();
    this.store.setFence(null);
  }

  // ── Device messages ────────────────────────────────────────────────────────────────────

  /**
   * A message every member sees (a shared broker subscription): true when it is another member's
   * device, kept for a takeover and not counted here.
   */
  heldElsewhere(message: DeviceMessage): boolean {
    if (typeof message?.deviceId !== "string") return false;
    const p = this.partitionOf(message.deviceId);
    if (this.leases.owns(p)) return false;
    this.recent.add(p, { at: this.host.clock.now(), message });
    return true;
  }

  /** A message of a device owned elsewhere, taken by a connection this member holds: to every member. */
  forward(message: DeviceMessage): void {
    let payload = message.payload;
    if (payload !== null && typeof payload !== "string" && !(payload instanceof Uint8Array)) payload = JSON.stringify(payload);
    this.stats.forwardedMessages++;
    this.link.forward({
      deviceId: message.deviceId,
      protocol: message.protocol,
      kind: message.kind,
      payload: (payload ?? null) as string | Uint8Array | null,
      ...(message.token !== undefined && { token: message.token }),
      ...(message.authenticated !== undefined && { authenticated: message.authenticated }),
      ...(message.retained !== undefined && { retained: message.retained }),
      via: this.member,
      at: this.host.clock.now(),
    });
  }

  /**
   * A message of a device owned here is applied: its fingerprint goes with the device's presence
   * to the database, so a successor replays exactly the kept messages after it.
   */
  applying(deviceId: string, kind: string, payload: unknown): void {
    this.lastMessages.set(deviceId, fingerprintOf(kind, payload, this.packetId));
  }

  /** What a partitioned intake needs of this member. */
  private partitionHost(): PartitionHost {
    return {
      partitions: this.options.partitions,
      partitionOf: (id) => this.partitionOf(id),
      ownsPartition: (p) => this.leases.owns(p),
      confirmOwnership: async (p) => {
        await this.leases.beatNow().catch(() => undefined);
        return this.leases.owns(p);
      },
      devicesOf: (p) => {
        const ids: string[] = [];
        for (const record of this.host.registry.allRecords()) if (this.partitionOf(record.id) === p) ids.push(record.id);
        return ids;
      },
      receive: (message, packetId) => {
        if (!this.leases.owns(this.partitionOf(message.deviceId))) return null;
        this.packetId = packetId;
        this.applyingFromSession = message.deviceId;
        try {
          return this.host.receive(message);
        } finally {
          this.packetId = 0;
          this.applyingFromSession = null;
        }
      },
      lastMessageOf: (id) => this.lastMessages.get(id),
      writtenMark: () => this.host.writtenMark(),
      onWritten: (listener) => this.host.onWritten(listener),
      warn: (m) => this.host.warn(m),
    };
  }

  lastMessageOf(deviceId: string): number | undefined {
    return this.lastMessages.get(deviceId);
  }

  /** A flow's report (`hub.ingest`) of a device owned elsewhere: checked here, applied on its owner. */
  forwardReport(deviceId: string, message: InboundMessage): void {
    parseInbound(message);
    const { kind, data, protocol } = message;
    const payload = data === undefined ? null : kind === "status" && typeof data === "string" ? data : JSON.stringify(data);
    this.forward({ protocol: protocol ?? "flow", deviceId, kind, payload, authenticated: true });
  }

  /** A device connected here but is owned elsewhere: its owner sends its commands through us. */
  connectedHere(deviceId: string): boolean {
    if (this.owns(deviceId)) return false;
    this.forward({ protocol: "cluster", deviceId, kind: "connected" as DeviceMessage["kind"], payload: null });
    return true;
  }

  private forwarded(m: ForwardedMessage): void {
    if (typeof m?.deviceId !== "string") return;
    const p = this.partitionOf(m.deviceId);
    if (!this.leases.owns(p)) {
      if (m.kind !== "connected") this.recent.add(p, { at: m.at, message: messageOf(m), via: m.via });
      else this.via.set(m.deviceId, m.via);
      return;
    }
    this.via.set(m.deviceId, m.via);
    if (m.kind === "connected") {
      this.host.commands.kick(m.deviceId);
      return;
    }
    this.stats.appliedForwarded++;
    this.host.receive(messageOf(m));
  }

  // ── Requests routed to owners ──────────────────────────────────────────────────────────

  /**
   * Runs `local` here when this member owns the device, else asks its owner to run `method`.
   * While no member owns it (a takeover under way), the owner has just changed, or the owner does
   * not answer and loses its lease meanwhile, asks again, for up to two lease periods and a few
   * seconds. An owner that did not answer may have done the request before it died: asked again
   * of the next owner, a request that was done is refused (a registration's CONFLICT) or done
   * twice, unless it carries its own identity (a command's id, a registration's token): the owner
   * is told it is asked again (`local(true)`, or `again` in the call's arguments), and
   * `askedAgain` tells the first time's outcome from an error (or rethrows it).
   */
  async route<T>(
    deviceId: string,
    method: string,
    args: Record<string, unknown>,
    local: (again: boolean) => Promise<T>,
    timeoutMs?: number,
    askedAgain?: (err: unknown) => Promise<T>,
  ): Promise<T> {
    // Long enough for a dead owner's lease to run out and another member to take the partition.
    const deadline = performance.now() + 2 * this.options.leaseMs + 5_000;
    const p = this.partitionOf(deviceId);
    let again = false;
    for (;;) {
      try {
        // Asked again, the owner is told so (`again`): a command looks for the one it may have made.
        if (this.leases.owns(p)) return await local(again);
        const owner = this.leases.ownerOf(p);
        if (owner !== null && owner !== this.member) {
          this.stats.forwardedCalls++;
          try {
            const answer = (await this.link.call(owner, method, again ? { ...args, again: true } : args, timeoutMs ?? this.options.leaseMs + 2_000)) as T;
            // Read your writes: this member's copy of the fleet has the change before the caller reads it.
            if (method !== "command" && method !== "wait" && method !== "publish") await this.follow().catch(() => undefined);
            return answer;
          } catch (err) {
            // No answer: the owner may have died. Once its lease has moved (fencing kept it from
            // writing after that), the new owner is asked; while it has not, the caller is told.
            if (!isNoAnswer(err)) throw err;
            await this.untilOwnerMoves(p, owner, deadline);
            if (this.leases.ownerOf(p) === owner) throw err;
            again = true;
            continue;
          }
        }
      } catch (err) {
        // Moved under our feet (a refused write): nothing was done, so asking again is safe.
        if (!isMoved(err) && !isFenced(err)) {
          if (again && askedAgain) return askedAgain(err);
          throw err;
        }
      }
      if (performance.now() >= deadline) throw new TethralError("UNAVAILABLE", `no cluster member owns device ${deviceId} now: try again shortly`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      await this.leases.beatNow().catch(() => undefined);
    }
  }

  /** Beats until the partition's lease is no longer `owner`'s (taken over), or the deadline. */
  private async untilOwnerMoves(partition: number, owner: string, deadline: number): Promise<void> {
    while (this.leases.ownerOf(partition) === owner && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(250, this.options.leaseMs / 4)));
      await this.leases.beatNow().catch(() => undefined);
    }
  }

  /** The owner's side of `route` (and `deliver` on the member holding a connection). */
  private async answer(method: string, args: unknown): Promise<unknown> {
    const a = (args ?? {}) as Record<string, unknown>;
    if (method === "rebalance") {
      void this.leases.beatNow();
      return null;
    }
    if (method === "deliver") return this.remote.deliverHere(a);
    const deviceId = await this.deviceOf(method, a);
    if (deviceId !== null && !this.owns(deviceId)) throw movedError(deviceId);
    try {
      return await this.host.apply(method, a);
    } catch (err) {
      if (isFenced(err)) throw movedError(deviceId ?? "");
      throw err;
    }
  }

  private async deviceOf(method: string, a: Record<string, unknown>): Promise<string | null> {
    if (method === "register") return typeof (a.input as { id?: unknown })?.id === "string" ? ((a.input as { id: string }).id) : null;
    if (method === "command") return String(a.deviceId);
    if (method === "publish") return typeof (a.options as { deviceId?: unknown })?.deviceId === "string" ? (a.options as { deviceId: string }).deviceId : null;
    return typeof a.deviceId === "string" ? a.deviceId : typeof a.id === "string" ? a.id : null;
  }

  /** The adapter commands use for a protocol (see RemoteAdapters). */
  adapterFor(protocol: string, local: ProtocolAdapter | undefined): ProtocolAdapter | undefined {
    if (!this.running) return local;
    return this.remote.adapterFor(protocol, local);
  }

  // ── Partitions coming and going ────────────────────────────────────────────────────────

  private async acquire(leases: HeldLease[]): Promise<void> {
    // A batch of this member's still being written was checked against its fence before the
    // claim: refused, it drops rows and fingerprints (see `fenced`), which must come before the
    // database's fingerprints are read below, not after. Batches taken later are checked against
    // the new lease. Bounded: a write that hangs (its connection dead without closing) must not
    // hold the beat, and with it every lease; the takeover is given up and tried again.
    const limitMs = Math.max(100, Math.round(this.options.leaseMs / 4));
    if ((await beforeDeadline(this.host.writesInFlight(), Date.now() + limitMs)) === "late") {
      throw new Error(`a write checked before the claim was still on its way after ${limitMs} ms`);
    }
    if (this.superseded.size > 0) {
      for (const id of this.lastMessages.keys()) if (this.superseded.has(this.partitionOf(id))) this.lastMessages.delete(id);
      this.superseded.clear();
    }
    // The previous owners' last writes are in the database: read them back first.
    await this.follow();
    const taken = new Set(leases.filter((l) => this.leases.leaseOf(l.partition)?.epoch === l.epoch).map((l) => l.partition));
    if (taken.size === 0) return;
    const now = this.host.clock.now();
    const mine = (id: string) => taken.has(this.partitionOf(id));
    await this.loadPresence(mine);
    for (const record of this.host.registry.allRecords()) {
      if (!mine(record.id)) continue;
      const alive = record.status === "online" || record.status === "error";
      // A full heartbeat timeout from the takeover: no device goes offline because its owner moved
      // (and an offline one counts as offline for retention from the takeover).
      if (alive || record.lastSeen > 0) this.host.presence.heartbeat.track(record.id, record.heartbeatTimeout, now, alive, { offlineSince: now });
    }
    await this.host.commands.loadWhere(mine);
  }

  /**
   * The claimed partitions' devices as their previous owner last stored them, read by id: once
   * the lease is claimed, every write of another previous owner is stored or refused (a release
   * comes after its writes; a claim fails while a fenced write holds the lease row, and is tried
   * again at the next beat). The fingerprint of the last message it applied decides which resent
   * or held messages are skipped; following may have missed it (a row whose commit came later
   * than its margin). A row older than this member's copy is this member's own, from before it
   * lost the lease: what it applied since is newer, and still to be written, so it is kept. Unless
   * it no longer knows what it applied last (its rows were dropped, see `fenced`): then the
   * database's fingerprint is taken, whatever the row's age.
   */
  private async loadPresence(mine: (id: string) => boolean): Promise<void> {
    const ids: string[] = [];
    for (const record of this.host.registry.allRecords()) if (mine(record.id)) ids.push(record.id);
    for (const row of await this.store.presenceOf(ids)) {
      const record = this.host.registry.record(row.id);
      if (!record) continue;
      if (row.lastMessage !== 0 && !this.lastMessages.has(row.id)) this.lastMessages.set(row.id, row.lastMessage);
      if (row.lastSeen >= record.lastSeen) follow(record, row, this.host.registry, this.lastMessages);
    }
  }

  /** Right after the partition became ours: what its previous owner had not written, in order (see replay.ts). */
  private replay(partition: number): void {
    replay(this.recent.take(partition, this.host.clock.now()), this.heldApplier("replayed"));
    for (const intake of this.intakes) intake.open(partition).catch((err: unknown) => this.host.warn(`cluster: partition ${partition}: ${errorMessage(err)}`));
    // Their commands were loaded while the partition was not yet ours, and waited: they go now.
    this.kickCommands([partition]);
  }

  /**
   * A late renewal kept the partitions: the messages held while the lease looked lapsed were
   * applied by nobody (no other member could own them), so all of them are applied now, in order,
   * before anything later: none skipped, as `alreadyApplied`'s guesses at what a predecessor
   * applied would skip a held message that repeats the device's last one.
   */
  private resume(partitions: number[]): void {
    const now = this.host.clock.now();
    const applier = this.heldApplier("resumed");
    for (const p of partitions) replay(this.recent.take(p, now), applier, NONE);
    // A device that connected to another member meanwhile had its commands held back: they go now.
    this.kickCommands(partitions);
  }

  /** How held messages are applied here, counted under `counter`. */
  private heldApplier(counter: "replayed" | "resumed"): ReplayHost {
    return {
      lastSeenOf: (id) => this.host.registry.record(id)?.lastSeen ?? 0,
      lastMessageOf: (id) => this.lastMessages.get(id),
      connectedVia: (id, member) => this.via.set(id, member),
      apply: (message) => {
        this.stats[counter]++;
        this.host.receive(message);
      },
    };
  }

  /** Sends what waits in the command queues of the partitions' devices. */
  private kickCommands(partitions: number[]): void {
    const set = new Set(partitions);
    for (const record of this.host.registry.allRecords()) if (set.has(this.partitionOf(record.id))) this.host.commands.kick(record.id);
  }

  private async handOver(partitions: number[]): Promise<void> {
    // Already not taking their messages (the lease is "leaving"): what waits is written, then they go.
    await this.host.flush();
    const gone = new Set(partitions);
    await this.host.commands.quiesce((id) => gone.has(this.partitionOf(id)), 3_000);
    await this.host.commands.flush();
    // Written: their sessions acknowledge what was stored and go to the next owner.
    await Promise.all(partitions.flatMap((p) => this.intakes.map((i) => i.close(p))));
    this.drop(partitions);
  }

  /** The leases are lost: their sessions go at once, acknowledging nothing more. */
  private lose(partitions: number[]): void {
    for (const p of partitions) for (const intake of this.intakes) intake.cut(p);
    this.drop(partitions);
  }

  private drop(partitions: number[]): void {
    const gone = new Set(partitions);
    const theirs = (id: string) => gone.has(this.partitionOf(id));
    this.host.commands.release(theirs);
    for (const record of this.host.registry.allRecords()) if (theirs(record.id) && record.heartbeat) this.host.presence.heartbeat.untrack(record.id);
    void this.nudge();
  }

  /** Asks every other live member to beat now (a partition is free, or a member came). */
  private async nudge(timeoutMs = 2_000): Promise<void> {
    const { members } = this.leases.snapshot();
    await Promise.all(members.filter((m) => m.id !== this.member).map((m) => this.link.call(m.id, "rebalance", {}, timeoutMs).catch(() => undefined)));
  }

  // ── Following devices owned elsewhere ──────────────────────────────────────────────────

  private armFollow(): void {
    if (!this.running) return;
    this.followTimer = this.host.clock.setTimeout(() => {
      this.followTimer = null;
      this.follow()
        .catch((err: unknown) => this.host.warn(`cluster: could not read the fleet's changes: ${errorMessage(err)}`))
        .finally(() => this.armFollow());
    }, this.options.followMs);
  }

  /** Reads what changed in the database since the last read and applies it to devices owned elsewhere. */
  follow(): Promise<void> {
    if (this.following) return this.following.then(() => this.followOnce());
    return this.followOnce();
  }

  private followOnce(): Promise<void> {
    if (this.following) return this.following;
    const started = performance.now();
    this.following = this.store
      .changedSince(this.lastRead - (this.followRounds++ % FOLLOW_FULL_EVERY === 0 ? FOLLOW_MARGIN_MS : FOLLOW_SHORT_MARGIN_MS), this.known)
      .then((changes) => {
        applyChanges(this.host, (id) => this.owns(id), changes, this.lastMessages);
        this.lastRead = changes.now;
        this.lastFollow = started;
      })
      .finally(() => {
        this.following = null;
      });
    return this.following;
  }

  // ── What it tells ──────────────────────────────────────────────────────────────────────

  info(): ClusterInfo {
    const { members, owners } = this.leases.snapshot();
    const iso = (ms: number) => new Date(ms).toISOString();
    const list = members.map((m) => ({
      id: m.id,
      since: iso(m.since),
      lastSeen: iso(m.lastSeen),
      partitions: owners.flatMap((o, p) => (o === m.id ? [p] : [])),
    }));
    list.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return { member: this.member, partitions: this.options.partitions, members: list };
  }

  get isLeader(): boolean {
    return this.leases.owns(0);
  }

  statistics(): ClusterStatistics {
    const { members, owners } = this.leases.snapshot();
    const held = this.recent.statistics();
    return {
      member: this.member,
      partitions: this.options.partitions,
      members: members.length,
      unowned: owners.filter((o) => o === null).length,
      ...this.leases.statistics(),
      ...this.stats,
      held: held.held,
      heldDropped: held.dropped,
      followLagSeconds: this.lastFollow === 0 ? 0 : (performance.now() - this.lastFollow) / 1000,
      linkConnected: this.link.connected,
    };
  }

  /**
   * Fenced writes: the leases are gone, and the rows of these devices were dropped. What this
   * member applied of them is stored nowhere, so the fingerprint of the last message it applied
   * no longer says what was stored: it is forgotten, and a takeover takes the database's (see
   * `loadPresence`), so the broker's resent copies of those messages are applied again.
   */
  fenced(partitions: number[], deviceIds: readonly string[] = [], epochs?: readonly number[]): string[] {
    this.leases.fenced(partitions, epochs);
    // A device of a partition this member owns now, claimed again since the write was checked,
    // keeps its fingerprint and its rows waiting: they are the new lease's. (A takeover waits for
    // the batch in flight before its partitions are owned, so this is for safety.)
    const dropped = deviceIds.filter((id) => !this.leases.owns(this.partitionOf(id)));
    for (const id of dropped) this.lastMessages.delete(id);
    return dropped;
  }
}

function messageOf(m: ForwardedMessage): DeviceMessage {
  return {
    protocol: m.protocol,
    deviceId: m.deviceId,
    kind: m.kind as DeviceMessage["kind"],
    payload: m.payload,
    ...(m.token !== undefined && { token: m.token }),
    ...(m.authenticated !== undefined && { authenticated: m.authenticated }),
    ...(m.retained !== undefined && { retained: m.retained }),
  };
}
