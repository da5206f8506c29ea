import { TethralError } from "../errors";
import type { ClusterLink } from "../ports/cluster";
import type { CommandFrame, ProtocolAdapter, SendOutcome } from "../ports/protocol";
import type { Device } from "../types";

/** What the adapters of a cluster member read of it. */
export interface RemoteAdapterHost {
  readonly member: string;
  readonly link: ClusterLink;
  /** The member holding a device's connection, by its forwarded messages. */
  readonly via: ReadonlyMap<string, string>;
  /** The running local adapter of a protocol. */
  adapter(protocol: string): ProtocolAdapter | undefined;
  /** A command went to the member holding the connection (counted as a forwarded call). */
  forwarded(): void;
  /** Whether this member owns the device now (a member whose lease ran out sends nothing). */
  owns(deviceId: string): boolean;
}

/**
 * Commands of a device whose connection another member holds (WebSocket, CoAP, HTTP): the
 * adapters commands use here, and the "deliver" requests they make of the member holding it.
 */
export class RemoteAdapters {
  private readonly wrapped = new Map<string, ProtocolAdapter>();

  constructor(private readonly host: RemoteAdapterHost) {}

  /**
   * The adapter commands use for a protocol: the local one, except for a device whose connection
   * another member holds, whose commands go through that member.
   */
  adapterFor(protocol: string, local: ProtocolAdapter | undefined): ProtocolAdapter {
    const { member, link, via } = this.host;
    const key = `${protocol}\u0000${local ? "1" : "0"}`;
    let w = this.wrapped.get(key);
    if (w && (w as { local?: ProtocolAdapter }).local === local) return w;
    const remote = (id: string): string | null => {
      const v = via.get(id);
      return v !== undefined && v !== member && local?.isConnected(id) !== true ? v : null;
    };
    w = {
      local,
      name: protocol,
      start: async () => undefined,
      stop: async () => undefined,
      health: () => local?.health() ?? { status: "stopped" },
      statistics: () => local?.statistics() ?? { connected: 0 },
      // A member that is no longer the owner (a lease that ran out while it was frozen) sends
      // nothing: the device's commands are its new owner's to send.
      isConnected: (id: string) => (!this.host.owns(id) ? false : remote(id) !== null ? true : local?.isConnected(id)),
      send: (device: Device, frame: CommandFrame, timeoutMs: number) => {
        if (!this.host.owns(device.id)) return Promise.reject(new TethralError("UNAVAILABLE", `device ${device.id} is not this cluster member's now`));
        const v = remote(device.id);
        if (v === null) {
          if (!local) return Promise.reject(new TethralError("UNAVAILABLE", `protocol ${protocol} does not run here`));
          return local.send(device, frame, timeoutMs);
        }
        this.host.forwarded();
        return link.call(v, "deliver", { protocol, device, frame, timeoutMs }, timeoutMs + 2_000) as Promise<SendOutcome>;
      },
    } as ProtocolAdapter & { local?: ProtocolAdapter };
    this.wrapped.set(key, w);
    return w;
  }

  /** The side of a "deliver" request on the member holding the connection. */
  async deliverHere(a: Record<string, unknown>): Promise<SendOutcome> {
    const adapter = this.host.adapter(String(a.protocol));
    if (!adapter) throw new TethralError("UNAVAILABLE", `protocol ${String(a.protocol)} does not run on cluster member ${this.host.member}`);
    return adapter.send(a.device as Device, a.frame as CommandFrame, Number(a.timeoutMs));
  }
}
