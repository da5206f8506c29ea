import type { Hub } from "../core";
import type { Device, JsonValue } from "../core/types";

/** What the editor's Devices sidebar shows of a device. */
export interface DeviceSummary {
  id: string;
  name: string;
  protocol: string;
  status: string;
  lastSeen: string | null;
  /** A few reported values, the first ones the device reported. */
  properties: Record<string, JsonValue>;
}

const SHOWN_PROPERTIES = 4;

export function summarize(hub: Hub, device: Device): DeviceSummary {
  const properties: Record<string, JsonValue> = {};
  let n = 0;
  for (const [key, value] of Object.entries(hub.getState(device.id).properties)) {
    if (n++ >= SHOWN_PROPERTIES) break;
    // Objects would not fit a table cell: the sidebar shows scalars only.
    if (value === null || typeof value !== "object") properties[key] = value;
  }
  return { id: device.id, name: device.name, protocol: device.protocol, status: device.status, lastSeen: device.lastSeen, properties };
}

export interface FeedUpdate {
  hub: string;
  changed: DeviceSummary[];
  removed: string[];
}

/**
 * Pushes the devices that changed to open editors, at most once per interval: a fleet that
 * reports every second costs one message a second, carrying only the devices that moved.
 */
export class DevicesFeed {
  private readonly dirty = new Set<string>();
  private readonly removed = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private readonly owner: string;
  private unwatch: (() => void) | null = null;

  constructor(
    private readonly hub: Hub,
    private readonly hubId: string,
    private readonly publish: (update: FeedUpdate) => void,
    private readonly intervalMs = 1000,
  ) {
    this.owner = `devices-feed:${hubId}`;
  }

  start(): void {
    this.hub.subscribe({ types: ["device.*"], owner: this.owner, name: "devices sidebar" }, (event) => {
      if (!event.deviceId) return;
      if (event.type === "device.removed") {
        this.dirty.delete(event.deviceId);
        this.removed.add(event.deviceId);
        this.schedule();
      } else {
        this.changed(event.deviceId);
      }
    });
    // State changes only mark the device: a state.changed event (a copy of the whole state) per
    // report would cost every report a tenth of its time, editor open or not.
    this.unwatch = this.hub.state.watchChanges((id) => this.changed(id));
  }

  private changed(id: string): void {
    this.removed.delete(id);
    this.dirty.add(id);
    this.schedule();
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, this.intervalMs);
  }

  private flush(): void {
    if (!this.hub.isRunning || (this.dirty.size === 0 && this.removed.size === 0)) return;
    const changed: DeviceSummary[] = [];
    for (const id of this.dirty) {
      try {
        changed.push(summarize(this.hub, this.hub.getDevice(id)));
      } catch {
        this.removed.add(id);
      }
    }
    const update = { hub: this.hubId, changed, removed: [...this.removed] };
    this.dirty.clear();
    this.removed.clear();
    this.publish(update);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.unwatch?.();
    this.unwatch = null;
    this.hub.events.unsubscribeOwner(this.owner);
  }
}
