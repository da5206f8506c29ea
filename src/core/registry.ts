import type { Clock } from "./clock";
import { TethralError, notFound } from "./errors";
import type { EventBus } from "./events";
import type { HeartbeatTracker } from "./heartbeat";
import { ChainIndex, Interner, type ListGroup, ListIndex, type Members, type ValueIndex, orderedPage } from "./indexes";
import { cloneJson, isEmptyObject, iso, isoOrNull, jsonEqual } from "./json";
import { type Condition, type DeviceFilter, compareBy, filterSchema, listCondition, pageOf, textMatch, unionCondition } from "./registry-query";
import type { StateRecord } from "./state-record";
import {
  type DeviceInput,
  type DevicePatch,
  deviceInputSchema,
  devicePatchSchema,
  parseInput,
} from "./validation";
import { emptyObject, plainConstructor } from "./plain";
import type { Device, DeviceRow, DeviceStatus, EventMap, JsonObject } from "./types";

/** The registry's own copy of a device: numbers for times, shared empty lists, no per-read cost. */
export interface DeviceRecord {
  readonly id: string;
  /** Registration order: the stable tie-break of every sort. */
  readonly seq: number;
  name: string;
  protocol: string;
  address: string | undefined;
  manufacturer: string | undefined;
  model: string | undefined;
  firmware: string | undefined;
  capabilities: readonly string[];
  tags: readonly string[];
  heartbeatTimeout: number | undefined;
  metadata: JsonObject | undefined;
  status: DeviceStatus;
  /** Epoch ms of the last message; 0 when never seen. */
  lastSeen: number;
  createdAt: number;
  updatedAt: number;
  /**
   * Per-device data of the heartbeat monitor and the state manager, kept on the record so a
   * device costs one map entry and a message one lookup. The registry only makes room for them.
   */
  heartbeat: HeartbeatTracker | undefined;
  state: StateRecord | undefined;
  /** SHA-256 of the device's token, as latin1 text (see DeviceTokens); undefined without one. */
  tokenHash: string | undefined;
  /** Links of the status, protocol and manufacturer indexes (see ChainIndex). */
  statusPrev: DeviceRecord | null;
  statusNext: DeviceRecord | null;
  protocolPrev: DeviceRecord | null;
  protocolNext: DeviceRecord | null;
  makerPrev: DeviceRecord | null;
  makerNext: DeviceRecord | null;
  /** The group of the capability list and of the tag list, and the links there (see ListIndex). */
  capGroup: ListGroup | null;
  capPrev: DeviceRecord | null;
  capNext: DeviceRecord | null;
  tagGroup: ListGroup | null;
  tagPrev: DeviceRecord | null;
  tagNext: DeviceRecord | null;
}

const EMPTY: readonly string[] = [];

export type { DeviceFilter, DeviceSortField } from "./registry-query";

export interface DeviceList {
  devices: Device[];
  total: number;
}

export interface DeviceStatistics {
  total: number;
  byStatus: Record<string, number>;
  byProtocol: Record<string, number>;
  byManufacturer: Record<string, number>;
  byCapability: Record<string, number>;
  byTag: Record<string, number>;
}

export const DEFAULT_PAGE_SIZE = 100;

/** Who made a change, and how: `silent` leaves the event to the caller (`announce*`). */
export interface ChangeOptions {
  causeId?: string | null;
  parentCauseId?: string | null;
  source?: string;
  silent?: boolean;
  /** The change's time (default: the clock's now). */
  now?: number;
}

type ChangeCause = Pick<ChangeOptions, "causeId" | "parentCauseId" | "source">;

/**
 * The device registry: every device's record, indexed by status, protocol, manufacturer,
 * capability and tag. Register, update and remove are validated with zod; a rejected input
 * changes nothing.
 */
export class DeviceRegistry {
  private readonly records = new Map<string, DeviceRecord>();
  private readonly byStatus = new ChainIndex(["statusPrev", "statusNext"], false);
  // Statuses and protocol names are lower case by validation; filters fold theirs.
  private readonly byProtocol = new ChainIndex(["protocolPrev", "protocolNext"], false);
  private readonly byManufacturer = new ChainIndex(["makerPrev", "makerNext"]);
  private readonly byCapability = new ListIndex(["capGroup", "capPrev", "capNext"]);
  private readonly byTag = new ListIndex(["tagGroup", "tagPrev", "tagNext"]);
  private readonly interner = new Interner();
  private seq = 0;

  /**
   * Why a device of a protocol cannot have an address (its adapter's check, see
   * ProtocolAdapter.checkAddress), or null; the hub sets it.
   */
  addressProblem: ((protocol: string, address: string) => string | null) | null = null;

  constructor(
    private readonly bus: EventBus,
    private readonly clock: Clock,
  ) {}

  get size(): number {
    return this.records.size;
  }

  has(id: string): boolean {
    return this.records.has(id);
  }

  /**
   * Whether the device `id` is as the registration `input` makes one: every field it gives, and
   * the defaults of those it leaves out (a cluster's registration asked again, with device tokens
   * off, finding the device its first time made; see Hub.registerDevice).
   */
  registers(id: string, input: unknown): boolean {
    const r = this.records.get(id);
    const parsed = deviceInputSchema.safeParse(input);
    if (r === undefined || !parsed.success) return false;
    const d = parsed.data;
    return (
      d.id === id &&
      r.name === (d.name ?? d.id) &&
      r.protocol === d.protocol &&
      r.address === d.address &&
      r.manufacturer === d.manufacturer &&
      r.model === d.model &&
      r.firmware === d.firmware &&
      jsonEqual(r.capabilities, [...new Set(d.capabilities ?? [])]) &&
      jsonEqual(r.tags, [...new Set(d.tags ?? [])]) &&
      r.heartbeatTimeout === d.heartbeatTimeout &&
      jsonEqual(r.metadata ?? {}, d.metadata ?? {})
    );
  }

  /** The live record, for the engine's own hot paths. Callers outside the engine use `get`. */
  record(id: string): DeviceRecord | undefined {
    return this.records.get(id);
  }

  /** Every live record, in registration order. */
  allRecords(): IterableIterator<DeviceRecord> {
    return this.records.values();
  }

  register(input: unknown, options: ChangeOptions = {}): Device {
    const data = parseInput(deviceInputSchema, input, "device");
    if (data.address !== undefined) this.checkAddress("device", data.protocol, data.address);
    if (this.records.has(data.id)) {
      throw new TethralError("CONFLICT", `device "${data.id}" is already registered`, [
        { field: "id", message: "is already registered" },
      ]);
    }
    const record = this.insert(data, options.now ?? this.clock.now());
    if (!options.silent) this.announceRegistered(record.id, options);
    // The caller's own copy: changing it must not change the event kept in history.
    return toDevice(record);
  }

  /** Publishes `device.registered` (for a change made with `silent`, once it is durable). */
  announceRegistered(id: string, cause: ChangeCause = {}): void {
    const record = this.records.get(id);
    if (!record) return;
    this.bus.publish("device.registered", new RegisteredData(toDevice(record)), {
      deviceId: id,
      source: cause.source ?? "registry",
      causeId: cause.causeId ?? null,
      parentCauseId: cause.parentCauseId ?? null,
    });
  }

  /** Publishes `device.updated` (for a change made with `silent`, once it is durable). */
  announceUpdated(id: string, changes: string[], cause: ChangeCause = {}): void {
    const record = this.records.get(id);
    if (!record || changes.length === 0) return;
    this.bus.publish("device.updated", new UpdatedData(toDevice(record), changes), {
      deviceId: id,
      source: cause.source ?? "registry",
      causeId: cause.causeId ?? null,
      parentCauseId: cause.parentCauseId ?? null,
    });
  }

  /** The record as a store row. */
  row(id: string): DeviceRow | null {
    const r = this.records.get(id);
    if (!r) return null;
    return {
      id: r.id,
      name: r.name,
      protocol: r.protocol,
      address: r.address ?? null,
      manufacturer: r.manufacturer ?? null,
      model: r.model ?? null,
      firmware: r.firmware ?? null,
      capabilities: r.capabilities.slice(),
      tags: r.tags.slice(),
      heartbeatTimeout: r.heartbeatTimeout ?? null,
      metadata: r.metadata ? cloneJson(r.metadata) : {},
      status: r.status,
      lastSeen: r.lastSeen,
      createdAt: r.createdAt,
      updatedAt: r.updatedAt,
    };
  }

  /** Adds a validated registration's record (no events: `register` publishes them). */
  private insert(data: DeviceInput, now: number): DeviceRecord {
    const metadata = data.metadata && !isEmptyObject(data.metadata) ? cloneJson(data.metadata) : undefined;
    return this.add(data.id, data.name ?? data.id, data.protocol, data.address, data.manufacturer, data.model, data.firmware, data.capabilities, data.tags,
      data.heartbeatTimeout, metadata, "unknown", 0, now, now);
  }

  /**
   * Adds a device as the store holds it (loading the fleet, a cluster member following another's
   * change), without validation or events: it was validated when it was registered. The row's
   * metadata object is the registry's from now on (kept, not copied; see `Store.loadDevices`);
   * its lists are interned, as a registration's are.
   */
  restore(row: DeviceRow): DeviceRecord {
    const metadata = row.metadata && !isEmptyObject(row.metadata) ? row.metadata : undefined;
    return this.add(row.id, row.name, row.protocol, row.address ?? undefined, row.manufacturer ?? undefined, row.model ?? undefined, row.firmware ?? undefined,
      row.capabilities, row.tags, row.heartbeatTimeout ?? undefined, metadata, row.status, row.lastSeen, row.createdAt, row.updatedAt);
  }

  private add(
    id: string, name: string, protocol: string, address: string | undefined, manufacturer: string | undefined, model: string | undefined,
    firmware: string | undefined, capabilities: string[] | undefined, tags: string[] | undefined, heartbeatTimeout: number | undefined,
    metadata: JsonObject | undefined, status: DeviceStatus, lastSeen: number, createdAt: number, updatedAt: number,
  ): DeviceRecord {
    const record: DeviceRecord = {
      id,
      seq: this.seq++,
      name,
      protocol,
      address,
      manufacturer,
      model: this.interner.string(model),
      firmware: this.interner.string(firmware),
      capabilities: EMPTY,
      tags: EMPTY,
      heartbeatTimeout,
      metadata,
      status,
      lastSeen,
      createdAt,
      updatedAt,
      heartbeat: undefined,
      state: undefined,
      tokenHash: undefined,
      statusPrev: null,
      statusNext: null,
      protocolPrev: null,
      protocolNext: null,
      makerPrev: null,
      makerNext: null,
      capGroup: null,
      capPrev: null,
      capNext: null,
      tagGroup: null,
      tagPrev: null,
      tagNext: null,
    };
    record.protocol = this.byProtocol.add(protocol, record);
    if (manufacturer !== undefined) record.manufacturer = this.byManufacturer.add(manufacturer, record);
    record.capabilities = this.indexList(this.byCapability, capabilities, record);
    record.tags = this.indexList(this.byTag, tags, record);
    this.byStatus.add(status, record);
    this.records.set(id, record);
    return record;
  }

  get(id: string): Device {
    const record = this.records.get(id);
    if (!record) throw notFound("device", id);
    return toDevice(record);
  }

  /**
   * Applies a partial update (`id` cannot change; `null` clears an optional field) without
   * publishing: returns the device and the fields that changed, for `announceUpdated`.
   */
  applyUpdate(id: string, patch: unknown, now?: number, checkAddress = true): { device: Device; changes: string[] } {
    const record = this.records.get(id);
    if (!record) throw notFound("device", id);
    const data: DevicePatch = parseInput(devicePatchSchema, patch, "device update");
    if (data.id !== undefined && data.id !== id) {
      throw new TethralError("INVALID", "invalid device update: id cannot be changed", [
        { field: "id", message: "is immutable" },
      ]);
    }
    // Only a protocol or address that changes: a device stored before the check (or a patch
    // sending the record back as it was read) keeps what it has.
    const protocol = data.protocol ?? record.protocol;
    const address = data.address === undefined ? record.address : (data.address ?? undefined);
    if (checkAddress && address !== undefined && (protocol !== record.protocol || address !== record.address)) {
      this.checkAddress("device update", protocol, address);
    }
    const changes: string[] = [];
    const set = <K extends keyof DeviceRecord>(key: K, value: DeviceRecord[K]) => {
      if (record[key] !== value) {
        (record as { [P in K]: DeviceRecord[K] })[key] = value;
        changes.push(key);
      }
    };
    if (data.name !== undefined) set("name", data.name ?? id);
    if (data.protocol !== undefined && data.protocol !== record.protocol) {
      this.byProtocol.delete(record.protocol, record);
      set("protocol", this.byProtocol.add(data.protocol, record));
    }
    if (data.address !== undefined) set("address", data.address ?? undefined);
    if (data.manufacturer !== undefined && data.manufacturer !== record.manufacturer) {
      if (record.manufacturer !== undefined) this.byManufacturer.delete(record.manufacturer, record);
      set("manufacturer", data.manufacturer === null ? undefined : this.byManufacturer.add(data.manufacturer, record));
    }
    if (data.model !== undefined) set("model", this.interner.string(data.model ?? undefined));
    if (data.firmware !== undefined) set("firmware", this.interner.string(data.firmware ?? undefined));
    if (data.capabilities !== undefined && !sameList(record.capabilities, data.capabilities ?? [])) {
      this.byCapability.delete(record);
      set("capabilities", this.indexList(this.byCapability, data.capabilities ?? undefined, record));
    }
    if (data.tags !== undefined && !sameList(record.tags, data.tags ?? [])) {
      this.byTag.delete(record);
      set("tags", this.indexList(this.byTag, data.tags ?? undefined, record));
    }
    if (data.heartbeatTimeout !== undefined) set("heartbeatTimeout", data.heartbeatTimeout ?? undefined);
    if (data.metadata !== undefined && !jsonEqual(record.metadata ?? {}, data.metadata)) {
      record.metadata = isEmptyObject(data.metadata) ? undefined : cloneJson(data.metadata);
      changes.push("metadata");
    }
    if (changes.length > 0) record.updatedAt = now ?? this.clock.now();
    return { device: toDevice(record), changes };
  }

  /** INVALID, naming `address`, when the protocol's adapter cannot send commands to it. */
  private checkAddress(what: string, protocol: string, address: string): void {
    const problem = this.addressProblem?.(protocol, address) ?? null;
    if (problem !== null) throw new TethralError("INVALID", `invalid ${what}: address ${problem}`, [{ field: "address", message: problem }]);
  }

  remove(id: string, options: ChangeOptions & { reason?: "user" | "retention" } = {}): Device {
    const record = this.records.get(id);
    if (!record) throw notFound("device", id);
    this.records.delete(id);
    this.byStatus.delete(record.status, record);
    this.byProtocol.delete(record.protocol, record);
    if (record.manufacturer !== undefined) this.byManufacturer.delete(record.manufacturer, record);
    this.byCapability.delete(record);
    this.byTag.delete(record);
    if (!options.silent) {
      this.bus.publish("device.removed", new RemovedData(toDevice(record), options.reason ?? "user"), {
        deviceId: id,
        source: options.source ?? "registry",
        causeId: options.causeId ?? null,
        parentCauseId: options.parentCauseId ?? null,
      });
    }
    return toDevice(record);
  }

  /** Moves a record to another status bucket. The state manager calls this; it checks the rules. */
  setStatus(record: DeviceRecord, status: DeviceStatus): void {
    if (record.status === status) return;
    this.byStatus.delete(record.status, record);
    record.status = status;
    this.byStatus.add(status, record);
  }

  /** Records with a status, without copying: the state manager pages through these. */
  withStatus(status: DeviceStatus): Members | undefined {
    return this.byStatus.get(status);
  }

  /** Records of a protocol, without copying. */
  withProtocol(protocol: string): Members | undefined {
    return this.byProtocol.get(protocol);
  }

  /**
   * Filters, searches, sorts and pages. Indexed conditions (status, protocol, manufacturer,
   * capability, tag) start from the smallest matching index bucket; only a filter with none
   * of them walks the whole registry. `q` is a case-insensitive substring of id, name,
   * manufacturer or model. Results are ordered by registration unless `sort` says otherwise.
   */
  list(filter: DeviceFilter = {}): DeviceList {
    const f = parseInput(filterSchema, filter, "filter");
    const limit = f.limit ?? DEFAULT_PAGE_SIZE;
    const offset = f.offset ?? 0;
    const conditions: Condition[] = [];
    // The schema leaves each list lower case and without repeats (a bucket visited twice would list its devices twice).
    const addValues = (index: ValueIndex, values: string[] | undefined, field: (r: DeviceRecord) => string | undefined) => {
      if (values) conditions.push(unionCondition(index, values, field));
    };
    addValues(this.byStatus, f.status, (r) => r.status);
    addValues(this.byProtocol, f.protocol, (r) => r.protocol);
    addValues(this.byManufacturer, f.manufacturer, (r) => r.manufacturer);
    if (f.capability) conditions.push(listCondition(this.byCapability, f.capability, f.capabilityMatch ?? "all"));
    if (f.tag) conditions.push(listCondition(this.byTag, f.tag, f.tagMatch ?? "all"));

    const matchesText = textMatch(f.q);

    // Fast path: the whole fleet in registration order, paged without collecting it.
    if (conditions.length === 0 && !matchesText && (f.sort === undefined || f.sort === "registered") && f.order !== "desc") {
      const devices: Device[] = [];
      let i = 0;
      for (const record of this.records.values()) {
        if (i >= offset + limit) break;
        if (i++ >= offset) devices.push(toDevice(record));
      }
      return { devices, total: this.records.size };
    }

    const sort = f.sort ?? "registered";
    const desc = f.order === "desc";
    conditions.sort((a, b) => a.size - b.size);
    const driver = conditions[0];
    // A single list in registration order, asked in that order: walked to the page, nothing collected or sorted.
    if (conditions.length === 1 && !matchesText && sort === "registered" && driver!.single?.inOrder) {
      const members = driver!.single;
      return { devices: members.page(offset, limit, desc).map(toDevice), total: members.size };
    }

    const matches: DeviceRecord[] = [];
    let inOrder = sort === "registered";
    if (driver === undefined) {
      for (const record of this.records.values()) if (!matchesText || matchesText(record)) matches.push(record);
    } else {
      const tests = conditions.slice(1).map((c) => c.test);
      if (matchesText) tests.push(matchesText);
      driver.collect(matches, tests.length === 0 ? null : tests.length === 1 ? tests[0]! : (r) => tests.every((t) => t(r)));
      inOrder &&= driver.single?.inOrder === true;
    }
    const page = inOrder ? orderedPage(matches, offset, limit, desc) : pageOf(matches, compareBy(sort, f.order ?? "asc"), offset, limit);
    return { devices: page.map(toDevice), total: matches.length };
  }

  statistics(): DeviceStatistics {
    return {
      total: this.records.size,
      byStatus: this.byStatus.counts(),
      byProtocol: this.byProtocol.counts(),
      byManufacturer: this.byManufacturer.counts(),
      byCapability: this.byCapability.counts(),
      byTag: this.byTag.counts(),
    };
  }

  private indexList(index: ListIndex, values: string[] | undefined, record: DeviceRecord): readonly string[] {
    const list = !values || values.length === 0 ? EMPTY : this.interner.list(values);
    index.add(list, record);
    return list;
  }
}

function sameList(a: readonly string[], b: string[]): boolean {
  const unique = [...new Set(b)];
  return a.length === unique.length && a.every((v, i) => v === unique[i]);
}

/**
 * The public, JSON-ready copy of a record (CONTRACT §1). Mutating it never touches the registry.
 * Every copy has the same keys (absent optional fields are undefined, which JSON leaves out), so
 * listing many devices builds objects of one shape. Made by a constructor, not a literal: the
 * event history keeps the copies its events carry (see plain.ts).
 */
export function toDevice(r: DeviceRecord): Device {
  return new DeviceCopy(r);
}

const DeviceCopy = plainConstructor(function (this: Device, r: DeviceRecord) {
  this.id = r.id;
  this.name = r.name;
  this.protocol = r.protocol;
  this.address = r.address;
  this.manufacturer = r.manufacturer;
  this.model = r.model;
  this.firmware = r.firmware;
  this.capabilities = r.capabilities.slice();
  this.tags = r.tags.slice();
  this.heartbeatTimeout = r.heartbeatTimeout;
  this.metadata = r.metadata ? cloneJson(r.metadata) : emptyObject();
  this.status = r.status;
  this.lastSeen = isoOrNull(r.lastSeen);
  this.createdAt = iso(r.createdAt);
  this.updatedAt = iso(r.updatedAt);
});

/** The data of device.registered, device.updated and device.removed (see plain.ts). */
const RegisteredData = plainConstructor(function (this: EventMap["device.registered"], device: Device) {
  this.device = device;
});
const UpdatedData = plainConstructor(function (this: EventMap["device.updated"], device: Device, changes: string[]) {
  this.device = device;
  this.changes = changes;
});
const RemovedData = plainConstructor(function (this: EventMap["device.removed"], device: Device, reason: "user" | "retention") {
  this.device = device;
  this.reason = reason;
});
