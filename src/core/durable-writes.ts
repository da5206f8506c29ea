import type { AdapterSet } from "./adapter-set";
import type { Clock } from "./clock";
import type { CommandTracker } from "./commands";
import { TethralError, invalid, notFound } from "./errors";
import { KeyedLock } from "./keyed-lock";
import type { Presence } from "./presence";
import type { ChangeOptions, DeviceRegistry } from "./registry";
import type { ChangeCause, StatePlan, StateManager } from "./state";
import { patchOf } from "./stored-rows";
import { DeviceTokens } from "./tokens";
import type { Device, DeviceState } from "./types";
import { checkLabel } from "./validation";
import type { Persistence } from "./write-behind";

/** A device as registration answers it: with its token, the only time the token is shown. */
export type RegisteredDevice = Device & { token?: string };

/** A registration whose announcement the caller makes (`registered`), with the cause. */
const SILENT: ChangeOptions = Object.freeze({ silent: true });

/** How a device is once its change is settled (see `Persistence.release`). */
type Afterwards = "changed" | "unchanged" | "gone";

export type RemoveCause = ChangeCause & { reason?: "user" | "retention" };

/**
 * The changes a user (or a self-registering device) makes to the fleet: register, update,
 * remove, set the state, replace a token. With a store each is written before it takes effect
 * and before the caller is told, one change per device at a time; a write that fails changes
 * nothing (UNAVAILABLE). Without a store they take effect at once.
 */
export class DurableWrites {
  /** One durable change per device at a time. */
  private readonly locks = new KeyedLock();
  /** Devices whose registration is being written: they take no traffic until it is durable. */
  private readonly registering = new Set<string>();

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly state: StateManager,
    private readonly presence: Presence,
    private readonly tokens: DeviceTokens,
    private readonly commands: CommandTracker,
    private readonly adapters: AdapterSet,
    private readonly persistence: Persistence | null,
    private readonly clock: Clock,
    private readonly deviceTokens: boolean,
  ) {}

  /** A registration not durable yet: the device is refused like an unknown one meanwhile. */
  isRegistering(id: string): boolean {
    return this.registering.has(id);
  }

  /** Resolves once no change is being written. */
  async idle(): Promise<void> {
    await this.locks.idle();
  }

  /**
   * Registers a device, keeping the token it presented when it registered itself (the device
   * already knows it); announced only once it is durable.
   */
  register(input: unknown, cause: ChangeCause, presented?: string, made?: string): Promise<RegisteredDevice> {
    try {
      checkCause(cause);
      // `made`: made by the cluster member that took the request (see Hub.registerDevice), and
      // shown in the answer like one made here.
      const token = this.deviceTokens ? (presented ?? made ?? DeviceTokens.generate()) : undefined;
      const p = this.persistence;
      if (p) return this.registerDurably(p, input, cause, token, presented);
      // In memory only: done before this returns, without the promise chain of an async write
      // (a third of a registration's garbage was async frames and the tokens' promise).
      const device = this.registry.register(input, SILENT);
      if (token !== undefined) this.tokens.remember(device.id, token);
      return Promise.resolve(this.registered(device, token, presented, cause));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private async registerDurably(p: Persistence, input: unknown, cause: ChangeCause, token: string | undefined, presented: string | undefined): Promise<RegisteredDevice> {
    const id = typeof (input as { id?: unknown } | null)?.id === "string" ? (input as { id: string }).id : "";
    return this.locks.run(id, async () => {
      const device = this.registry.register(input, SILENT);
      // Until it is durable the device takes no traffic (ingest answers NOT_FOUND).
      this.registering.add(device.id);
      const write = async (): Promise<void> => {
        await p.writeDevice(this.registry.row(device.id)!);
        if (token === undefined) return;
        try {
          await this.tokens.save(device.id, token, this.clock.now());
        } catch (err) {
          await p.deleteDevice(device.id).catch(() => undefined);
          throw err;
        }
      };
      const undo = (): void => {
        this.registering.delete(device.id);
        this.forget(device.id, { silent: true });
      };
      await this.durably(p, device.id, write, "changed", "gone", () => this.registering.delete(device.id), undo);
      // Cluster mode: the device's partition session listens for it before anyone is told it exists.
      const listening = this.adapters.deviceAdded(device.id);
      if (listening !== null) await listening;
      return this.registered(device, token, presented, cause);
    });
  }

  /** A new token for a device (the old one stops working at once); shown only in this answer. */
  async rotateToken(id: string): Promise<{ deviceId: string; token: string }> {
    if (!this.registry.has(id)) throw notFound("device", String(id).slice(0, 128));
    // A token nobody checks would be a false promise of protection.
    if (!this.deviceTokens) {
      throw new TethralError(
        "CONFLICT",
        "device tokens are off on this hub, so devices connect without one: turn them on (TETHRAL_DEVICE_TOKENS=on, or the hub's settings) first",
      );
    }
    const token = DeviceTokens.generate();
    await this.locks.run(id, async () => {
      // Removed while waiting for the lock: no token for a device that is gone.
      if (!this.registry.has(id)) throw notFound("device", id);
      await this.tokens.save(id, token, this.clock.now());
    });
    this.adapters.disconnect(id, "token replaced");
    return { deviceId: id, token };
  }

  /** A partial update. */
  async update(id: string, patch: unknown, cause: ChangeCause): Promise<Device> {
    checkCause(cause);
    const p = this.persistence;
    if (!p) return this.applyUpdate(id, patch, cause, null);
    return this.locks.run(id, () => this.applyUpdate(id, patch, cause, p));
  }

  /** Removes a device with its state, history, token and commands. */
  async remove(id: string, cause: RemoveCause): Promise<Device> {
    checkCause(cause);
    const p = this.persistence;
    if (!p) return this.forget(id, cause);
    return this.locks.run(id, async () => {
      if (!this.registry.has(id)) throw notFound("device", id);
      let commands: { resume(): void } | undefined;
      const write = async (): Promise<void> => {
        // No command status of this device may be written after its rows are deleted.
        commands = await this.commands.holdDevice(id);
        await p.deleteDevice(id);
      };
      return this.durably(p, id, write, "gone", "changed", () => this.forget(id, cause), () => commands?.resume());
    });
  }

  /**
   * Sets desired values and/or the status (CONTRACT: PUT state). A status set by hand keeps
   * presence honest: see `Presence.userChanged`.
   */
  async setState(id: string, input: unknown, cause: ChangeCause): Promise<DeviceState> {
    checkCause(cause);
    const p = this.persistence;
    if (!p) return this.applyState(this.state.planSet(id, input), cause);
    return this.locks.run(id, async () => {
      const plan = this.state.planSet(id, input);
      if (!plan.changed) return this.state.get(id);
      const record = this.registry.record(id)!;
      const presence = plan.to.status !== undefined ? { id, status: plan.to.status, lastSeen: record.lastSeen } : null;
      // While the change is written, batches leave this device alone: a report meanwhile must
      // not overwrite the stored desired state with the old one.
      return this.durably(p, id, () => p.writeState(plan.row, presence), "changed", "unchanged", () => this.applyState(plan, cause));
    });
  }

  /**
   * One change made durable: the batcher leaves the device alone while `write` runs; then the
   * change is applied, or, if the write failed, undone; and the device is released as it is then.
   */
  private async durably<T>(
    p: Persistence,
    id: string,
    write: () => Promise<void>,
    done: Afterwards,
    failed: Afterwards,
    apply: () => T,
    undo?: () => void,
  ): Promise<T> {
    p.hold(id);
    try {
      await write();
    } catch (err) {
      undo?.();
      p.release(id, failed);
      throw err;
    }
    const result = apply();
    p.release(id, done);
    return result;
  }

  /** A registration has taken effect: announced, and its token shown unless the device chose it. */
  private registered(device: Device, token: string | undefined, presented: string | undefined, cause: ChangeCause): RegisteredDevice {
    this.registry.announceRegistered(device.id, cause);
    // Connections made while the id was unknown (self-registration) must prove the token anew.
    // After the adapter's handler returns: a registration in memory ends inside it, and a
    // broker closing the connection there would drop its acknowledgement of the register
    // message (an MQTT QoS 2 PUBREC).
    // No adapter running, no connection to drop: no closure and no microtask a registration.
    if (this.adapters.anyStarted) {
      const id = device.id;
      queueMicrotask(() => this.adapters.disconnect(id, "registered: connect again with the device's token"));
    }
    if (token === undefined || presented !== undefined) return device;
    // The caller's own copy (see DeviceRegistry.register): a spread of it cost a tenth of a registration.
    const shown = device as RegisteredDevice;
    shown.token = token;
    return shown;
  }

  private async applyUpdate(id: string, patch: unknown, cause: ChangeCause, p: Persistence | null): Promise<Device> {
    const before = this.registry.row(id);
    if (!before) throw notFound("device", id);
    const { device, changes } = this.registry.applyUpdate(id, patch);
    if (changes.length === 0) return device;
    if (p) {
      // No hold: the row is the device as it now is, and reports meanwhile may be batched.
      try {
        await p.writeDevice(this.registry.row(id)!);
      } catch (err) {
        // Back as it was, unchecked: an address stored before today's checks is put back too.
        this.registry.applyUpdate(id, patchOf(before), before.updatedAt, false);
        throw err;
      }
      // The row carried status and lastSeen as they were when it was built; a batch may have
      // written newer ones meanwhile. Write them again, so the newest lands last.
      p.markPresence(id);
    }
    this.registry.announceUpdated(id, changes, cause);
    if (changes.includes("heartbeatTimeout")) this.presence.timeoutChanged(id, device.heartbeatTimeout);
    if (changes.includes("protocol")) this.adapters.protocolChanged(id, before.protocol);
    return device;
  }

  private applyState(plan: StatePlan, cause: ChangeCause): DeviceState {
    const before = this.registry.record(plan.deviceId)?.status;
    const full = { source: "user", ...cause };
    const state = this.state.applySet(plan, full);
    if (before !== undefined) this.presence.userChanged(plan.deviceId, before, full);
    return state;
  }

  private forget(id: string, cause: RemoveCause & { silent?: boolean }): Device {
    const record = this.registry.record(id);
    if (record) {
      this.presence.forget(id);
      this.state.forget(record);
      this.tokens.forget(id);
      this.commands.deviceRemoved(id);
      // A registration that failed never had a twin anywhere.
      if (!cause.silent) this.adapters.deliverTwin(id, true);
      this.adapters.disconnect(id, "device removed");
      this.adapters.deviceRemoved(id);
    }
    return this.registry.remove(id, { ...cause, reason: cause.reason ?? "user" });
  }
}

/** A cause from a flow ends up in events and history rows: plain, short text only. */
function checkCause(cause: ChangeCause): void {
  const problem =
    checkLabel(cause.causeId, "causeId") ?? checkLabel(cause.parentCauseId, "parentCauseId") ?? checkLabel(cause.source, "source", 64);
  if (problem) throw invalid(problem.field, problem.message);
}
