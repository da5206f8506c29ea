import { createHash, timingSafeEqual } from "node:crypto";
import type { Client } from "aedes";
import { TethralError } from "../core/errors";

/**
 * Sessions of the embedded broker. A device is its user name (its device id); the client id is
 * whatever its firmware sends (mosquitto_pub's random one, Tasmota's `DVES_…`, Node-RED's, an
 * empty one). aedes keys everything by the client id: the takeover of an older connection with
 * the same id, a persistent session's subscriptions and queued packets, the stored will. So the
 * broker is never shown the client id alone: once a connection has authenticated, its id becomes
 * `{device id}/{client id}`. No device id contains `/`, so the name is unambiguous, and whatever
 * client id a device sends, it names only sessions of its own.
 */
export function sessionName(owner: string, clientId: string): string {
  return `${owner}/${clientId}`;
}

/** Owner of the service account's sessions: `$` is in no device id, so no device can name one of them. */
export const SERVICE_OWNER = "$service";

/**
 * The service account (Node-RED's own mqtt nodes), which may publish and subscribe anywhere. Its
 * password is kept as a hash and compared in constant time.
 */
export class ServiceAccount {
  private readonly hash: Buffer;

  private constructor(
    readonly username: string,
    password: string,
  ) {
    this.hash = sha256(password);
  }

  /** The account the broker's options name, or null: both or neither, non-empty. */
  static from(username: string | undefined, password: string | undefined): ServiceAccount | null {
    if ((username === undefined) !== (password === undefined) || username === "" || password === "") {
      throw new TethralError("INVALID", "MQTT service account: give both serviceUsername and servicePassword, non-empty, or neither");
    }
    return username === undefined || password === undefined ? null : new ServiceAccount(username, password);
  }

  accepts(password: Buffer | undefined): boolean {
    return password ? timingSafeEqual(sha256(password), this.hash) : false;
  }
}

function sha256(value: string | Buffer): Buffer {
  return createHash("sha256").update(value).digest();
}

/** Longest client id taken. MQTT 3.1.1 lets a server refuse long ones; the common ones are under 64. */
export const MAX_CLIENT_ID_LENGTH = 256;
/** Connections one device may hold at once (a firmware, a listener and a publisher script fit easily). */
export const MAX_CONNECTIONS_PER_DEVICE = 8;
/**
 * Persistent sessions (clean session off) kept per device. A firmware that picks a new client id
 * at every boot would otherwise leave a new one, with its subscriptions, each time.
 */
export const MAX_PERSISTENT_SESSIONS_PER_DEVICE = 4;

/** One connection that passed authentication at CONNECT. */
export interface Session {
  readonly client: Client;
  /** Null for the service account. */
  readonly deviceId: string | null;
  /** False for a self-registering device until its `register` message is accepted. */
  known: boolean;
  /** The password of a device not yet known: the hub keeps it as the token of the registration. */
  token: string | undefined;
  /** Between clientReady and clientDisconnect. */
  live: boolean;
  /** When it became live, in the order of the broker's connections: commands go to the newest. */
  readyOrder: number;
  /** The device's subscriptions that match its commands topic. */
  readonly commandFilters: Set<string>;
}

export function newSession(client: Client, deviceId: string | null, known: boolean, token?: string): Session {
  return { client, deviceId, known, token, live: false, readyOrder: 0, commandFilters: new Set() };
}

/** What the broker keeps about one device: its connections and its persistent sessions. */
export class DeviceSessions {
  /** Every connection authenticated for the device, from CONNECT until its socket closes. */
  readonly open = new Set<Session>();
  /** Whether the hub was last told the device can take commands. */
  announced = false;
  /** Whether one of its connections is live (counted in the broker's `connected`). */
  live = false;
  /** Names of its persistent sessions, least recently connected first. */
  private readonly persistent: string[] = [];

  /** No connection and no persistent session: nothing worth keeping. */
  get empty(): boolean {
    return this.open.size === 0 && this.persistent.length === 0;
  }

  /** Connections other than one under `name` (which a new connection under `name` takes over). */
  othersThan(name: string): number {
    let n = 0;
    for (const s of this.open) if (s.client.id !== name) n++;
    return n;
  }

  hasLive(): boolean {
    for (const s of this.open) if (s.live) return true;
    return false;
  }

  /** Where a command goes: the newest live connection of the known device that subscribed to its commands. */
  commandSession(): Session | null {
    let best: Session | null = null;
    for (const s of this.open) {
      if (!s.live || !s.known || s.commandFilters.size === 0 || s.client.closed) continue;
      if (!best || s.readyOrder > best.readyOrder) best = s;
    }
    return best;
  }

  /**
   * Notes a connection under `name` and whether it keeps its session; returns the names of
   * persistent sessions past the limit (the least recently used with no connection now), which
   * the broker should forget.
   */
  connecting(name: string, persistent: boolean): string[] {
    const at = this.persistent.indexOf(name);
    if (at !== -1) this.persistent.splice(at, 1);
    // A clean session ends any persistent one of the same name (the broker drops it at CONNECT).
    if (!persistent) return [];
    this.persistent.push(name);
    const forgotten: string[] = [];
    for (let i = 0; i < this.persistent.length && this.persistent.length > MAX_PERSISTENT_SESSIONS_PER_DEVICE; ) {
      const candidate = this.persistent[i]!;
      if (candidate !== name && !this.isOpen(candidate)) {
        this.persistent.splice(i, 1);
        forgotten.push(candidate);
      } else {
        i++;
      }
    }
    return forgotten;
  }

  private isOpen(name: string): boolean {
    for (const s of this.open) if (s.client.id === name) return true;
    return false;
  }
}
