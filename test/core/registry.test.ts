import assert from "node:assert/strict";
import { ManualClock } from "../../src/core/clock";
import { TethralError } from "../../src/core/errors";
import { EventBus } from "../../src/core/events";
import { Hub } from "../../src/core/hub";
import type { Members, ValueIndex } from "../../src/core/indexes";
import { DEFAULT_PAGE_SIZE, type DeviceFilter, DeviceRegistry } from "../../src/core/registry";
import type { Device, DeviceStatus, TethralEvent } from "../../src/core/types";
import { assertCode } from "../helpers";

const START = Date.UTC(2026, 10, 27, 10, 0, 0);

function setup() {
  const clock = new ManualClock(START);
  const bus = new EventBus(clock, { historySize: 10_000 });
  const registry = new DeviceRegistry(bus, clock);
  const events: TethralEvent[] = [];
  bus.subscribe("device.*", (e) => {
    events.push(e);
  });
  return { clock, bus, registry, events };
}

type Setup = ReturnType<typeof setup>;

/** An update as the hub makes it: applied, then announced with the fields that changed. */
function update(t: Setup, id: string, patch: unknown, cause: { causeId?: string | null; source?: string } = {}): Device {
  const { device, changes } = t.registry.applyUpdate(id, patch);
  t.registry.announceUpdated(id, changes, cause);
  return device;
}

/** Asserts `fn` is refused with INVALID naming `field`, and that nothing in the registry moved. */
function assertRefused(t: Setup, fn: () => unknown, field: string): void {
  const size = t.registry.size;
  const stats = t.registry.statistics();
  const all = t.registry.list({ limit: 100_000 });
  const published = t.events.length;
  assertCode(fn, "INVALID", field);
  assert.equal(t.registry.size, size);
  assert.deepEqual(t.registry.statistics(), stats);
  assert.deepEqual(t.registry.list({ limit: 100_000 }), all);
  assert.equal(t.events.length, published, "no event is published for a refused input");
}

/** Statistics as plain JSON (the registry counts into null-prototype objects). */
const statsOf = (registry: DeviceRegistry) => JSON.parse(JSON.stringify(registry.statistics())) as ReturnType<DeviceRegistry["statistics"]>;

const ids = (list: { devices: Device[] }): string[] => list.devices.map((d) => d.id);

/** A small mixed fleet, registered in this order. */
function fleet(t: Setup): void {
  const r = t.registry;
  r.register({ id: "t1", name: "Boiler Room", protocol: "mqtt", manufacturer: "Acme", model: "T-100", capabilities: ["temperature", "humidity"], tags: ["floor-1", "hvac"] });
  r.register({ id: "t2", name: "Attic", protocol: "coap", manufacturer: "Globex", model: "G-7", capabilities: ["temperature"], tags: ["floor-2"] });
  r.register({ id: "h1", name: "Cellar", protocol: "mqtt", manufacturer: "Acme", model: "H-1", capabilities: ["humidity"], tags: ["floor-1"] });
  r.register({ id: "cam", name: "Gate camera", protocol: "http", address: "http://10.0.0.9/cmd", capabilities: ["video"], tags: ["outdoor"] });
  r.register({ id: "lock", name: "Front lock", protocol: "websocket", manufacturer: "Initech", model: "boiler-proof", tags: ["outdoor", "security"] });
  r.register({ id: "t3", name: "Garage", protocol: "coap", manufacturer: "Acme", model: "T-100", capabilities: ["temperature", "humidity", "pressure"], tags: ["floor-2", "hvac"] });
}

function setStatus(t: Setup, id: string, status: DeviceStatus): void {
  t.registry.setStatus(t.registry.record(id)!, status);
}

function nested(levels: number): Record<string, unknown> {
  let v: Record<string, unknown> = {};
  for (let i = 1; i < levels; i++) v = { a: v };
  return v;
}

describe("DeviceRegistry", () => {
  describe("register", () => {
    it("fills the defaults: name is the id, empty lists and metadata, status unknown, never seen", async () => {
      const t = setup();
      const d = t.registry.register({ id: "boiler-1", protocol: "mqtt" });
      assert.deepEqual(JSON.parse(JSON.stringify(d)), {
        id: "boiler-1", name: "boiler-1", protocol: "mqtt", capabilities: [], tags: [], metadata: {},
        status: "unknown", lastSeen: null, createdAt: "2026-11-27T10:00:00.000Z", updatedAt: "2026-11-27T10:00:00.000Z",
      });
      assert.equal(t.registry.size, 1);
      assert.deepEqual(t.registry.get("boiler-1"), d);
    });

    it("keeps every field it is given and publishes device.registered with the device", async () => {
      const t = setup();
      const input = {
        id: "a.b_c:d-1", name: "Boiler", protocol: "coap", address: "coap://10.0.0.5", manufacturer: "Acme", model: "T-100",
        firmware: "1.2.0", capabilities: ["temperature", "humidity"], tags: ["floor-2"], heartbeatTimeout: 60, metadata: { room: { n: 2 } },
      };
      const d = t.registry.register(input, { causeId: "c-1", source: "rest" });
      for (const [k, v] of Object.entries(input)) assert.deepEqual(d[k as keyof Device], v, k);
      assert.equal(t.events.length, 1);
      const e = t.events[0]!;
      assert.equal(e.type, "device.registered");
      assert.equal(e.deviceId, "a.b_c:d-1");
      assert.equal(e.source, "rest");
      assert.equal(e.causeId, "c-1");
      assert.deepEqual((e.data as { device: Device }).device, d);
    });

    it("refuses a duplicate id with CONFLICT and keeps the first record", async () => {
      const t = setup();
      t.registry.register({ id: "x", protocol: "mqtt", name: "first" });
      assertCode(() => t.registry.register({ id: "x", protocol: "coap", name: "second" }), "CONFLICT", "id");
      assert.equal(t.registry.get("x").name, "first");
      assert.equal(t.registry.size, 1);
      assert.deepEqual(statsOf(t.registry).byProtocol, { mqtt: 1 });
      assert.equal(t.events.length, 1);
    });
  });

  describe("get, update and remove", () => {
    it("answers NOT_FOUND (404) for unknown ids on get, update and remove", async () => {
      const t = setup();
      for (const fn of [() => t.registry.get("nope"), () => update(t, "nope", { name: "x" }), () => t.registry.remove("nope")]) {
        assertCode(fn, "NOT_FOUND");
        try {
          fn();
        } catch (err) {
          assert.equal((err as TethralError).status, 404);
        }
      }
      assert.equal(t.events.length, 0);
    });

    it("applies a partial update, moves updatedAt only and publishes the changed fields", async () => {
      const t = setup();
      t.registry.register({ id: "x", protocol: "mqtt", name: "old", model: "M1", tags: ["a"] });
      t.clock.advance(5000);
      const d = update(t, "x", { name: "new", firmware: "2.0", tags: ["b", "c"] }, { causeId: "c-2" });
      assert.equal(d.name, "new");
      assert.equal(d.firmware, "2.0");
      assert.deepEqual(d.tags, ["b", "c"]);
      assert.equal(d.model, "M1", "fields not in the patch are kept");
      assert.equal(d.protocol, "mqtt");
      assert.equal(d.createdAt, "2026-11-27T10:00:00.000Z");
      assert.equal(d.updatedAt, "2026-11-27T10:00:05.000Z");
      const e = t.events.at(-1)!;
      assert.equal(e.type, "device.updated");
      assert.equal(e.causeId, "c-2");
      const data = e.data as { device: Device; changes: string[] };
      assert.deepEqual([...data.changes].sort(), ["firmware", "name", "tags"]);
      assert.deepEqual(data.device, d);
    });

    it("accepts the same id in a patch but refuses a different one with INVALID on field id", async () => {
      const t = setup();
      t.registry.register({ id: "x", protocol: "mqtt" });
      assert.equal(update(t, "x", { id: "x", name: "ok" }).name, "ok");
      assertRefused(t, () => update(t, "x", { id: "y", name: "changed" }), "id");
      assert.equal(t.registry.get("x").name, "ok");
      assertCode(() => t.registry.get("y"), "NOT_FOUND");
    });

    it("clears optional fields with null and metadata with {}", async () => {
      const t = setup();
      t.registry.register({
        id: "x", protocol: "coap", address: "coap://h", manufacturer: "Acme", model: "M", firmware: "1", heartbeatTimeout: 30, metadata: { a: 1 },
      });
      const d = update(t, "x", { address: null, manufacturer: null, model: null, firmware: null, heartbeatTimeout: null, metadata: {} });
      for (const k of ["address", "manufacturer", "model", "firmware", "heartbeatTimeout"] as const) assert.equal(d[k], undefined, k);
      assert.deepEqual(d.metadata, {});
      assert.deepEqual(statsOf(t.registry).byManufacturer, {});
      assert.equal(t.registry.list({ manufacturer: "Acme" }).total, 0);
    });

    it("publishes nothing and keeps updatedAt when an update changes nothing", async () => {
      const t = setup();
      t.registry.register({ id: "x", protocol: "mqtt", name: "n", capabilities: ["a", "b"], metadata: { k: [1, { z: true }] } });
      t.clock.advance(1000);
      const before = t.registry.get("x");
      const published = t.events.length;
      for (const patch of [{}, { id: "x" }, { name: "n" }, { protocol: "mqtt" }, { capabilities: ["a", "b"] }, { capabilities: ["a", "b", "a"] },
        { address: null }, { metadata: { k: [1, { z: true }] } }]) {
        assert.deepEqual(update(t, "x", patch), before, JSON.stringify(patch));
      }
      assert.equal(t.events.length, published);
    });

    it("removes a device: returns it, publishes device.removed and frees its id", async () => {
      const t = setup();
      t.registry.register({ id: "x", protocol: "mqtt", tags: ["t"] });
      const d = t.registry.remove("x", { causeId: "c-3" });
      assert.equal(d.id, "x");
      assert.equal(t.registry.size, 0);
      assert.equal(t.registry.has("x"), false);
      assertCode(() => t.registry.get("x"), "NOT_FOUND");
      const e = t.events.at(-1)!;
      assert.equal(e.type, "device.removed");
      assert.equal(e.causeId, "c-3");
      assert.deepEqual(e.data, { device: d, reason: "user" });
      assertCode(() => t.registry.remove("x"), "NOT_FOUND");
      assert.equal(t.registry.register({ id: "x", protocol: "coap" }).protocol, "coap");
    });
  });

  describe("list: filters and search", () => {
    let t: Setup;
    beforeEach(async () => {
      t = setup();
      fleet(t);
    });

    it("lists every device in registration order with the total", async () => {
      assert.deepEqual(t.registry.list(), { devices: t.registry.list().devices, total: 6 });
      assert.deepEqual(ids(t.registry.list()), ["t1", "t2", "h1", "cam", "lock", "t3"]);
    });

    it("filters by status, protocol and manufacturer, and takes arrays as unions", async () => {
      setStatus(t, "t2", "online");
      setStatus(t, "cam", "offline");
      assert.deepEqual(ids(t.registry.list({ status: "online" })), ["t2"]);
      assert.deepEqual(ids(t.registry.list({ status: ["offline", "online"] })), ["t2", "cam"]);
      assert.deepEqual(ids(t.registry.list({ protocol: "coap" })), ["t2", "t3"]);
      assert.deepEqual(ids(t.registry.list({ protocol: ["http", "websocket"] })), ["cam", "lock"]);
      assert.deepEqual(ids(t.registry.list({ manufacturer: "Acme" })), ["t1", "h1", "t3"]);
      assert.deepEqual(ids(t.registry.list({ manufacturer: ["Globex", "Initech"] })), ["t2", "lock"]);
      assert.deepEqual(ids(t.registry.list({ manufacturer: "acme" })), ["t1", "h1", "t3"], "text filters ignore case (CONTRACT §3)");
    });

    it("lists a device once when a filter repeats a value", async () => {
      assert.deepEqual(t.registry.list({ status: ["unknown", "unknown"] }).total, 6);
      assert.deepEqual(ids(t.registry.list({ protocol: ["coap", "coap"] })), ["t2", "t3"]);
      assert.deepEqual(ids(t.registry.list({ capability: ["video", "video"], capabilityMatch: "any" })), ["cam"]);
    });

    it("takes a filter as users write it: comma lists, repeated values and any case, from the indexes", async () => {
      setStatus(t, "t2", "online");
      setStatus(t, "cam", "offline");
      assert.deepEqual(ids(t.registry.list({ status: "online,offline" })), ["t2", "cam"]);
      assert.deepEqual(ids(t.registry.list({ status: ["online", "OFFLINE, online"] })), ["t2", "cam"]);
      assert.deepEqual(ids(t.registry.list({ protocol: "HTTP, websocket" })), ["cam", "lock"]);
      assert.deepEqual(ids(t.registry.list({ manufacturer: "GLOBEX,initech" })), ["t2", "lock"]);
      assert.deepEqual(ids(t.registry.list({ capability: "Temperature,HUMIDITY" })), ["t1", "t3"]);
      assert.deepEqual(ids(t.registry.list({ capability: "Pressure,video", capabilityMatch: "any" })), ["cam", "t3"]);
      assert.deepEqual(ids(t.registry.list({ tag: ["FLOOR-2", "hvac"] })), ["t3"]);
      assert.deepEqual(ids(t.registry.list({ tag: "Floor-1", manufacturer: "acme", capability: "temperature" })), ["t1"], "a case-folded condition tests the others");
      // Blank means not given, as an empty query parameter does.
      assert.equal(t.registry.list({ status: "", tag: " , " }).total, 6);
      for (const [filter, field] of [[{ status: "online,asleep" }, "status"], [{ tag: ["a", 5] }, "tag"], [{ protocol: "x".repeat(65) }, "protocol"]] as const) {
        const err = assertCode(() => t.registry.list(filter as DeviceFilter), "INVALID", field);
        assert.equal(err.details[0]!.field, field, "the detail names the parameter, not an index into it");
      }
    });

    it("keeps a value's spelling in the record and counts spellings of one value together", async () => {
      t.registry.register({ id: "loud", protocol: "mqtt", manufacturer: "ACME", capabilities: ["Temperature"], tags: ["HVAC"] });
      const loud = t.registry.get("loud");
      assert.equal(loud.manufacturer, "ACME");
      assert.deepEqual(loud.capabilities, ["Temperature"]);
      const stats = statsOf(t.registry);
      assert.equal(stats.byManufacturer.Acme, 4, "shown as first spelt");
      assert.equal(stats.byProtocol.mqtt, 3);
      assert.equal(stats.byCapability.temperature, 4);
      assert.equal(stats.byTag.hvac, 3);
      assert.deepEqual(ids(t.registry.list({ manufacturer: "acme", tag: "hvac" })), ["t1", "t3", "loud"]);
      t.registry.remove("t1");
      t.registry.remove("loud");
      assert.equal(statsOf(t.registry).byTag.hvac, 1);
      assert.deepEqual(ids(t.registry.list({ tag: "HVAC" })), ["t3"]);
    });

    it("keeps capability and tag indexes true through lists in two spellings, updates and removals", async () => {
      t.registry.register({ id: "twice", protocol: "mqtt", capabilities: ["Video", "video", "sound"], tags: ["Gate"] });
      assert.equal(statsOf(t.registry).byCapability.video, 2, "one device listing one value in two spellings counts once");
      assert.deepEqual(ids(t.registry.list({ capability: "VIDEO" })), ["cam", "twice"], "and is found once");
      assert.deepEqual(ids(t.registry.list({ capability: ["video", "sound"] })), ["twice"]);
      assert.deepEqual(ids(t.registry.list({ capability: ["sound", "pressure"], capabilityMatch: "any" })), ["t3", "twice"]);
      t.registry.applyUpdate("twice", { capabilities: ["pressure"], tags: [] });
      let stats = statsOf(t.registry);
      assert.equal(stats.byCapability.video, 1);
      assert.equal(stats.byCapability.sound, undefined, "a value no device carries any more is gone from the counts");
      assert.equal(stats.byCapability.pressure, 2);
      assert.equal(stats.byTag.gate, undefined);
      assert.deepEqual(ids(t.registry.list({ capability: "pressure" })), ["t3", "twice"]);
      assert.equal(t.registry.list({ capability: "sound" }).total, 0);
      assert.equal(t.registry.list({ tag: "gate" }).total, 0);
      t.registry.remove("twice");
      t.registry.remove("t3");
      stats = statsOf(t.registry);
      assert.equal(stats.byCapability.pressure, undefined);
      assert.equal(t.registry.list({ capability: "pressure" }).total, 0);
      assert.deepEqual(ids(t.registry.list({ capability: "humidity" })), ["t1", "h1"]);
      t.registry.register({ id: "again", protocol: "mqtt", capabilities: ["Pressure"] });
      assert.deepEqual(ids(t.registry.list({ capability: "pressure" })), ["again"], "a value's index comes back with a new device");
      assert.equal(statsOf(t.registry).byCapability.Pressure, 1, "shown as the new first spelling");
    });

    it("filters by capability and tag, all values by default or any of them", async () => {
      assert.deepEqual(ids(t.registry.list({ capability: "humidity" })), ["t1", "h1", "t3"]);
      assert.deepEqual(ids(t.registry.list({ capability: ["temperature", "humidity"] })), ["t1", "t3"]);
      assert.deepEqual(ids(t.registry.list({ capability: ["temperature", "humidity"], capabilityMatch: "all" })), ["t1", "t3"]);
      assert.deepEqual(ids(t.registry.list({ capability: ["pressure", "video"], capabilityMatch: "any" })), ["cam", "t3"]);
      assert.deepEqual(t.registry.list({ capability: ["temperature", "nothing"] }).total, 0);
      assert.deepEqual(ids(t.registry.list({ capability: ["temperature", "nothing"], capabilityMatch: "any" })), ["t1", "t2", "t3"]);
      assert.deepEqual(ids(t.registry.list({ tag: ["outdoor", "security"] })), ["lock"]);
      assert.deepEqual(ids(t.registry.list({ tag: ["outdoor", "hvac"], tagMatch: "any" })), ["t1", "cam", "lock", "t3"]);
    });

    it("intersects different conditions", async () => {
      setStatus(t, "t3", "online");
      assert.deepEqual(ids(t.registry.list({ manufacturer: "Acme", protocol: "coap" })), ["t3"]);
      assert.deepEqual(ids(t.registry.list({ tag: "hvac", capability: "humidity", status: "unknown" })), ["t1"]);
      assert.deepEqual(ids(t.registry.list({ tag: "floor-1", q: "cellar" })), ["h1"]);
      assert.deepEqual(t.registry.list({ protocol: "http", manufacturer: "Acme" }).total, 0);
    });

    it("searches id, name, manufacturer and model case-insensitively with q", async () => {
      assert.deepEqual(ids(t.registry.list({ q: "T1" })), ["t1"], "id");
      assert.deepEqual(ids(t.registry.list({ q: "gate CAM" })), ["cam"], "name");
      assert.deepEqual(ids(t.registry.list({ q: "globe" })), ["t2"], "manufacturer");
      assert.deepEqual(ids(t.registry.list({ q: "t-10" })), ["t1", "t3"], "model");
      assert.deepEqual(ids(t.registry.list({ q: "boiler" })), ["t1", "lock"], "name of one, model of the other");
      assert.deepEqual(t.registry.list({ q: "floor" }).total, 0, "tags are not searched");
      assert.deepEqual(t.registry.list({ q: "temperature" }).total, 0, "capabilities are not searched");
      assert.deepEqual(ids(t.registry.list({ q: "  attic " })), ["t2"], "surrounding spaces are ignored");
    });
  });

  describe("indexed filters never walk the fleet", () => {
    it("answers status, protocol, manufacturer, capability and tag filters without touching the device table", () => {
      const s = setup();
      for (let i = 0; i < 2000; i++) {
        s.registry.register({ id: `d${i}`, protocol: i % 2 ? "mqtt" : "coap", manufacturer: `m${i % 100}`, capabilities: [`c${i % 50}`], tags: [`t${i % 40}`] });
      }
      // Count every way into the registry's table of all devices.
      const table = (s.registry as unknown as { records: Map<string, unknown> }).records;
      let walks = 0;
      for (const method of ["values", "keys", "entries", "forEach", Symbol.iterator] as const) {
        const original = (table as never as Record<PropertyKey, (...a: unknown[]) => unknown>)[method]!.bind(table);
        (table as never as Record<PropertyKey, unknown>)[method] = (...a: unknown[]) => {
          walks++;
          return original(...a);
        };
      }
      assert.equal(s.registry.list({ manufacturer: "m7" }).total, 20);
      assert.equal(s.registry.list({ protocol: "coap", manufacturer: "m8" }).total, 20);
      assert.equal(s.registry.list({ capability: ["c3", "c4"], capabilityMatch: "any" }).total, 80);
      assert.equal(s.registry.list({ tag: "t5", status: "unknown" }).total, 50);
      assert.equal(s.registry.list({ manufacturer: "m7", q: "d1" }).total, 11);
      assert.equal(walks, 0, "indexed filters start from an index bucket");
      s.registry.list({ q: "d1" });
      assert.ok(walks > 0, "a free-text search alone does walk the table (the probe works)");
    });
  });

  describe("indexes follow updates and removals", () => {
    it("moves a device between manufacturer, protocol, capability, tag and status buckets", async () => {
      const t = setup();
      fleet(t);
      update(t, "t1", { manufacturer: "Globex", protocol: "http", capabilities: ["video"], tags: ["outdoor"] });
      assert.deepEqual(ids(t.registry.list({ manufacturer: "Acme" })), ["h1", "t3"]);
      assert.deepEqual(ids(t.registry.list({ manufacturer: "Globex" })), ["t1", "t2"]);
      assert.deepEqual(ids(t.registry.list({ protocol: "mqtt" })), ["h1"]);
      assert.deepEqual(ids(t.registry.list({ protocol: "http" })), ["t1", "cam"]);
      assert.deepEqual(ids(t.registry.list({ capability: "temperature" })), ["t2", "t3"]);
      assert.deepEqual(ids(t.registry.list({ capability: "video" })), ["t1", "cam"]);
      assert.deepEqual(ids(t.registry.list({ tag: "hvac" })), ["t3"]);
      assert.deepEqual(ids(t.registry.list({ q: "globex" })), ["t1", "t2"]);
      setStatus(t, "t1", "online");
      setStatus(t, "t1", "offline");
      assert.equal(t.registry.list({ status: "online" }).total, 0);
      assert.deepEqual(ids(t.registry.list({ status: "offline" })), ["t1"]);
    });

    it("drops a removed device from every index and the statistics", async () => {
      const t = setup();
      fleet(t);
      setStatus(t, "t2", "online");
      t.registry.remove("t2");
      for (const f of [{ manufacturer: "Globex" }, { status: "online" }, { tag: "floor-2", q: "t2" }, { q: "attic" }] as DeviceFilter[]) {
        assert.equal(t.registry.list(f).total, 0, JSON.stringify(f));
      }
      assert.deepEqual(ids(t.registry.list({ protocol: "coap" })), ["t3"]);
      const s = t.registry.statistics();
      assert.equal(s.byManufacturer.Globex, undefined);
      assert.equal(s.byStatus.online, undefined);
      assert.equal(s.byTag["floor-2"], 1);
    });
  });

  describe("sort and pagination", () => {
    it("sorts by a field in either order and breaks ties by registration order", async () => {
      const t = setup();
      for (const [id, name] of [["d", "b"], ["a", "a"], ["c", "b"], ["b", "a"], ["e", "c"]]) t.registry.register({ id: id!, name: name!, protocol: "mqtt" });
      assert.deepEqual(ids(t.registry.list({ sort: "name" })), ["a", "b", "d", "c", "e"]);
      assert.deepEqual(ids(t.registry.list({ sort: "name", order: "desc" })), ["e", "d", "c", "a", "b"]);
      assert.deepEqual(ids(t.registry.list({ sort: "id" })), ["a", "b", "c", "d", "e"]);
      assert.deepEqual(ids(t.registry.list({ sort: "id", order: "desc" })), ["e", "d", "c", "b", "a"]);
      assert.deepEqual(ids(t.registry.list({ sort: "registered", order: "desc" })), ["e", "b", "c", "a", "d"]);
    });

    it("sorts by time fields from the clock and puts devices without a manufacturer first", async () => {
      const t = setup();
      t.registry.register({ id: "a", protocol: "mqtt", manufacturer: "Zeta" });
      t.clock.advance(10);
      t.registry.register({ id: "b", protocol: "mqtt" });
      t.clock.advance(10);
      t.registry.register({ id: "c", protocol: "mqtt", manufacturer: "Alpha" });
      t.clock.advance(10);
      update(t, "a", { name: "touched" });
      assert.deepEqual(ids(t.registry.list({ sort: "createdAt", order: "desc" })), ["c", "b", "a"]);
      assert.deepEqual(ids(t.registry.list({ sort: "updatedAt" })), ["b", "c", "a"]);
      assert.deepEqual(ids(t.registry.list({ sort: "manufacturer" })), ["b", "c", "a"]);
    });

    it("pages with limit and offset, counts every match in total and defaults to 100 per page", async () => {
      const t = setup();
      for (let i = 0; i < 150; i++) t.registry.register({ id: `d${String(i).padStart(3, "0")}`, protocol: i % 2 ? "coap" : "mqtt" });
      assert.equal(DEFAULT_PAGE_SIZE, 100);
      const first = t.registry.list();
      assert.equal(first.devices.length, 100);
      assert.equal(first.total, 150);
      assert.equal(t.registry.list({ protocol: "mqtt" }).devices.length, 75);
      assert.deepEqual(ids(t.registry.list({ limit: 3, offset: 10 })), ["d010", "d011", "d012"]);
      assert.deepEqual(ids(t.registry.list({ protocol: "coap", limit: 2, offset: 1 })), ["d003", "d005"]);
      assert.deepEqual(t.registry.list({ protocol: "coap", limit: 2, offset: 1 }).total, 75);
      assert.deepEqual(t.registry.list({ limit: 0 }), { devices: [], total: 150 });
      assert.deepEqual(t.registry.list({ offset: 149, sort: "id", order: "desc" }).devices.map((d) => d.id), ["d000"]);
      assert.deepEqual(t.registry.list({ offset: 500 }), { devices: [], total: 150 });
      assert.deepEqual(ids(t.registry.list({ limit: "2" as unknown as number, offset: "148" as unknown as number })), ["d148", "d149"]);
    });

    it("pages a list in registration order without collecting or sorting it, and keeps no array for a list that is not", () => {
      const t = setup();
      for (let i = 0; i < 3000; i++) t.registry.register({ id: `d${i}`, protocol: "mqtt", manufacturer: `m${i % 2}` });
      type Probe = Members & { snapshot: unknown };
      const indexes = t.registry as unknown as { byManufacturer: ValueIndex; byStatus: ValueIndex };
      const calls = { page: 0, collect: 0 };
      const probe = (members: Members): Probe => {
        const m = members as Probe;
        const page = m.page.bind(m);
        const collect = m.collect.bind(m);
        m.page = (...a) => (calls.page++, page(...a));
        m.collect = (...a) => (calls.collect++, collect(...a));
        return m;
      };
      const m0 = probe(indexes.byManufacturer.get("m0")!);
      const even = (from: number, n: number) => Array.from({ length: n }, (_, k) => `d${2 * (from + k)}`);
      assert.deepEqual(ids(t.registry.list({ manufacturer: "m0", limit: 3 })), even(0, 3));
      assert.deepEqual(ids(t.registry.list({ manufacturer: "m0", offset: 1490, limit: 20 })), even(1490, 10), "a long page, from the kept array");
      assert.ok(m0.snapshot !== null, "the array is kept");
      assert.deepEqual(ids(t.registry.list({ manufacturer: "m0", order: "desc", limit: 2 })), ["d2998", "d2996"]);
      assert.deepEqual(calls, { page: 3, collect: 0 }, "walked or read to the page, never collected");
      // A device moves in: the list is no longer in registration order, so it is collected and sorted.
      t.registry.applyUpdate("d1", { manufacturer: "m0" });
      assert.equal(m0.snapshot, null, "a change drops the array");
      assert.deepEqual(ids(t.registry.list({ manufacturer: "m0", limit: 3 })), ["d0", "d1", "d2"]);
      assert.deepEqual(calls, { page: 3, collect: 1 });
      // A status list changes with every online/offline move: collected without an array kept for it.
      for (let i = 0; i < 3000; i += 3) t.registry.setStatus(t.registry.record(`d${i}`)!, "online");
      t.registry.setStatus(t.registry.record("d0")!, "offline");
      t.registry.setStatus(t.registry.record("d0")!, "online");
      const online = probe(indexes.byStatus.get("online")!);
      assert.equal(t.registry.list({ status: "online", limit: 5000 }).total, 1000);
      assert.deepEqual(ids(t.registry.list({ status: "online", limit: 2 })), ["d0", "d3"]);
      assert.equal(online.snapshot, null);
      assert.deepEqual(calls, { page: 3, collect: 3 });
    });

    it("pages a short list in registration order from either end, and again once a device moved into it", () => {
      const t = setup();
      for (let i = 0; i < 30; i++) t.registry.register({ id: `d${i}`, protocol: "mqtt", manufacturer: `m${i % 3}` });
      const m0 = Array.from({ length: 10 }, (_, i) => `d${i * 3}`);
      const page = (offset: number, limit: number, order: "asc" | "desc") => t.registry.list({ manufacturer: "m0", order, offset, limit });
      for (const [offset, limit] of [[0, 100], [0, 3], [4, 3], [8, 5], [10, 1], [0, 0]] as const) {
        assert.deepEqual(ids(page(offset, limit, "asc")), m0.slice(offset, offset + limit), `asc ${offset}+${limit}`);
        assert.deepEqual(ids(page(offset, limit, "desc")), m0.slice().reverse().slice(offset, offset + limit), `desc ${offset}+${limit}`);
        assert.equal(page(offset, limit, "asc").total, 10);
      }
      // d1 (registered second) moves to m0: it is listed in registration order, not at the end.
      t.registry.applyUpdate("d1", { manufacturer: "m0" });
      const moved = ["d0", "d1", ...m0.slice(1)];
      assert.deepEqual(ids(page(0, 100, "asc")), moved);
      assert.deepEqual(ids(page(1, 2, "desc")), moved.slice().reverse().slice(1, 3));
      assert.equal(page(0, 1, "asc").total, 11);
    });

    it("answers filters, orders and pages as a scan and sort would, through moves, status changes and removals", () => {
      // Lists of over 1,000 members (m0–m2 of 4,200 devices have about 1,200 each) are read from a kept array and shorter pages walked, and a
      // list stays in registration order until a device moves into it: every path is compared
      // with a plain scan after each kind of change.
      const t = setup();
      let seed = 11;
      const rand = (n: number) => {
        seed = (seed * 1103515245 + 12345) % 2147483648;
        return Math.floor((seed / 2147483648) * n); // the high bits: the low ones of this generator repeat quickly
      };
      const pick = <T>(xs: readonly T[]): T => xs[rand(xs.length)]!;
      const subset = (xs: string[]) => xs.filter(() => rand(2) === 1);
      const order: string[] = []; // registration order of the live devices
      let next = 0;
      const register = () => {
        const id = `d${next++}`;
        t.registry.register({ id, name: `n${rand(9)}`, protocol: pick(["a", "b"]), manufacturer: pick(["m0", "m1", "m2", "m0", "m1", "m2", "m3"]), capabilities: subset(["c0", "c1"]), tags: subset(["t0", "t1"]) });
        order.push(id);
      };
      for (let i = 0; i < 4200; i++) register();
      const statuses = ["unknown", "online", "offline"] as const;
      const filters: (() => DeviceFilter)[] = [
        () => ({ manufacturer: pick(["m0", "m1", "m2", "m3"]) }),
        () => ({ manufacturer: pick(["m0", "m1", "m2", "m3"]) }),
        () => ({ manufacturer: ["m0", "m3"] }),
        () => ({ status: pick(statuses) }),
        () => ({ tag: pick(["t0", "t1"]) }),
        () => ({ capability: ["c0", "c1"], capabilityMatch: pick(["any", "all"] as const) }),
        () => ({ manufacturer: pick(["m0", "m1"]), status: pick(statuses) }),
        () => ({ manufacturer: "m1", q: "d1" }),
        () => ({ protocol: "b", tag: "t1" }),
      ];
      const matches = (d: Device, f: DeviceFilter): boolean => {
        const one = (v: unknown, want: unknown) => want === undefined || (Array.isArray(want) ? want.includes(v) : v === want);
        const list = (have: string[], want: unknown, match: unknown) =>
          want === undefined || (match === "any" ? (want as string[]).some((w) => have.includes(w)) : [want].flat().every((w) => have.includes(w as string)));
        return (
          one(d.manufacturer, f.manufacturer) && one(d.status, f.status) && one(d.protocol, f.protocol) &&
          list(d.tags, f.tag, f.tagMatch) && list(d.capabilities, f.capability, f.capabilityMatch) &&
          (f.q === undefined || d.id.includes(f.q as string))
        );
      };
      let queries = 0;
      const check = (what: string, count = 24) => {
        const all = order.map((id) => t.registry.get(id));
        for (let q = 0; q < count; q++) {
          const f = pick(filters)();
          const expected = all.filter((d) => matches(d, f));
          const byName = rand(4) === 0;
          const desc = rand(2) === 1;
          let want = expected.map((d, i) => ({ d, i }));
          if (byName) want.sort((a, b) => (a.d.name < b.d.name ? -1 : a.d.name > b.d.name ? 1 : a.i - b.i) * (desc && a.d.name !== b.d.name ? -1 : 1));
          else if (desc) want = want.reverse();
          const [offset, limit] = pick([[0, 10_000], [0, 10_000], [0, 50], [rand(900), 1200], [rand(100), 20], [expected.length - 3, 10], [5000, 10]] as const);
          const got = t.registry.list({ ...f, sort: byName ? "name" : "registered", order: desc ? "desc" : "asc", offset: Math.max(0, offset), limit });
          const label = `${what}: ${JSON.stringify(f)} ${byName ? "name" : "registered"} ${desc ? "desc" : "asc"} ${offset}+${limit}`;
          assert.equal(got.total, expected.length, label);
          assert.deepEqual(ids(got), want.slice(Math.max(0, offset), Math.max(0, offset) + limit).map((x) => x.d.id), label);
          queries++;
        }
      };
      check("registered", 300);
      for (let round = 0; round < 4; round++) {
        for (let i = 0; i < 150; i++) {
          const id = pick(order);
          const patch = pick([{ manufacturer: pick(["m0", "m1", "m2", "m3"]) }, { tags: subset(["t0", "t1"]) }, { capabilities: subset(["c0", "c1"]) }, { protocol: pick(["a", "b"]) }]);
          t.registry.applyUpdate(id, patch);
        }
        check(`round ${round}, after updates`);
        for (let i = 0; i < 300; i++) t.registry.setStatus(t.registry.record(pick(order))!, pick(statuses));
        check(`round ${round}, after status changes`);
        for (let i = 0; i < 100; i++) {
          const at = rand(order.length);
          t.registry.remove(order[at]!);
          order.splice(at, 1);
        }
        check(`round ${round}, after removals`);
        for (let i = 0; i < 100; i++) register();
        check(`round ${round}, after registrations`);
      }
      assert.equal(queries, 300 + 24 * 16);
    });

    it("gives the same pages from the bounded heap (small page) as from a full sort", async () => {
      const t = setup();
      let seed = 7;
      const rand = (n: number) => {
        seed = (seed * 1103515245 + 12345) % 2147483648;
        return seed % n;
      };
      const names: string[] = [];
      for (let i = 0; i < 400; i++) {
        const name = `n${rand(25)}`; // many ties
        names.push(name);
        t.registry.register({ id: `id-${rand(1_000_000)}-${i}`, name, protocol: "mqtt", manufacturer: rand(3) ? `m${rand(7)}` : undefined });
      }
      const all = t.registry.list({ limit: 1000 }).devices;
      const reference = (key: (d: Device) => string, order: "asc" | "desc") =>
        all
          .map((d, seq) => ({ d, seq }))
          .sort((a, b) => {
            const ka = key(a.d);
            const kb = key(b.d);
            if (ka !== kb) return (ka < kb ? -1 : 1) * (order === "desc" ? -1 : 1);
            return a.seq - b.seq;
          })
          .map((x) => x.d.id);
      const cases: [DeviceFilter["sort"], (d: Device) => string][] = [["name", (d) => d.name], ["id", (d) => d.id], ["manufacturer", (d) => d.manufacturer ?? ""]];
      for (const [sort, key] of cases) {
        for (const order of ["asc", "desc"] as const) {
          const expected = reference(key, order);
          const full = ids(t.registry.list({ sort, order, limit: 400 })); // 8k >= n: a full sort
          assert.deepEqual(full, expected, `full ${sort} ${order}`);
          for (const [offset, limit] of [[0, 1], [0, 10], [7, 5], [30, 19], [0, 49]] as const) {
            const page = t.registry.list({ sort, order, offset, limit }); // (offset+limit)*8 < 400: the heap
            assert.equal(page.total, 400);
            assert.deepEqual(ids(page), expected.slice(offset, offset + limit), `heap ${sort} ${order} ${offset}+${limit}`);
          }
        }
      }
      // Filtered matches take the same path.
      const some = t.registry.list({ q: "n1", sort: "name", limit: 1000 });
      assert.deepEqual(ids(t.registry.list({ q: "n1", sort: "name", offset: 3, limit: 4 })), ids(some).slice(3, 7));
      assert.equal(some.total, names.filter((n) => n.includes("n1")).length);
    });
  });

  describe("statistics", () => {
    it("counts by status, protocol, manufacturer, capability and tag, following updates and removals", async () => {
      const t = setup();
      fleet(t);
      setStatus(t, "t1", "online");
      assert.deepEqual(statsOf(t.registry), {
        total: 6,
        byStatus: { unknown: 5, online: 1 },
        byProtocol: { mqtt: 2, coap: 2, http: 1, websocket: 1 },
        byManufacturer: { Acme: 3, Globex: 1, Initech: 1 },
        byCapability: { temperature: 3, humidity: 3, video: 1, pressure: 1 },
        byTag: { "floor-1": 2, hvac: 2, "floor-2": 2, outdoor: 2, security: 1 },
      });
      update(t, "h1", { manufacturer: "Globex", capabilities: [], tags: ["floor-2"] });
      t.registry.remove("t1");
      assert.deepEqual(statsOf(t.registry), {
        total: 5,
        byStatus: { unknown: 5 },
        byProtocol: { mqtt: 1, coap: 2, http: 1, websocket: 1 },
        byManufacturer: { Acme: 1, Globex: 2, Initech: 1 },
        byCapability: { temperature: 2, humidity: 1, video: 1, pressure: 1 },
        byTag: { "floor-2": 3, outdoor: 2, security: 1, hvac: 1 },
      });
    });
  });

  describe("input validation", () => {
    const base = { id: "dev-1", protocol: "mqtt" };
    const cases: [string, Record<string, unknown>, string][] = [
      ["an id of 129 characters", { id: "a".repeat(129) }, "id"],
      ["an id with a space", { id: "a b" }, "id"],
      ["an empty id", { id: "" }, "id"],
      ["an id that is a number", { id: 5 }, "id"],
      ["a missing protocol", { protocol: undefined }, "protocol"],
      ["an upper-case protocol", { protocol: "MQTT" }, "protocol"],
      ["a protocol with a slash", { protocol: "mqtt/3" }, "protocol"],
      ["a name of 257 characters", { name: "n".repeat(257) }, "name"],
      ["a 1 MB name", { name: "x".repeat(1024 * 1024) }, "name"],
      ["a NUL character in the name", { name: "boiler\u0000room" }, "name"],
      ["a NUL character inside metadata", { metadata: { notes: ["ok", "bad\u0000"] } }, "metadata.notes.1"],
      ["a lone surrogate in the model", { model: "T-100 \udc00" }, "model"],
      ["a 1 MB model", { model: "x".repeat(1024 * 1024) }, "model"],
      ["an empty manufacturer", { manufacturer: "" }, "manufacturer"],
      ["an address that is not a URL", { address: "not a url" }, "address"],
      ["65 capabilities", { capabilities: Array.from({ length: 65 }, (_, i) => `c${i}`) }, "capabilities"],
      ["a capability of 65 characters", { capabilities: ["ok", "c".repeat(65)] }, "capabilities.1"],
      ["a tag that is not a string", { tags: [1] }, "tags.0"],
      ["a negative heartbeatTimeout", { heartbeatTimeout: -1 }, "heartbeatTimeout"],
      ["a zero heartbeatTimeout", { heartbeatTimeout: 0 }, "heartbeatTimeout"],
      ["a heartbeatTimeout over 30 days", { heartbeatTimeout: 30 * 24 * 3600 + 1 }, "heartbeatTimeout"],
      ["a heartbeatTimeout given as a string", { heartbeatTimeout: "60" }, "heartbeatTimeout"],
      ["an infinite heartbeatTimeout", { heartbeatTimeout: Infinity }, "heartbeatTimeout"],
      ["a NaN heartbeatTimeout", { heartbeatTimeout: NaN }, "heartbeatTimeout"],
      ["metadata that is an array", { metadata: [1] }, "metadata"],
      ["metadata that is a string", { metadata: "x" }, "metadata"],
      ["metadata that is null", { metadata: null }, "metadata"],
      ["metadata holding NaN", { metadata: { a: { v: NaN } } }, "metadata.a.v"],
      ["metadata holding Infinity in a list", { metadata: { l: [1, -Infinity] } }, "metadata.l.1"],
      ["metadata holding a function", { metadata: { f: () => 1 } }, "metadata.f"],
      ["metadata holding a Date", { metadata: { d: new Date(0) } }, "metadata.d"],
      ["metadata nested 17 levels deep", { metadata: nested(17) }, "metadata.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a"],
      ["an unknown field", { colour: "red" }, "colour"],
      ["a status, which is not writable", { status: "online" }, "status"],
      ["a nested __proto__ key in metadata", { metadata: JSON.parse('{"a": {"b": {"__proto__": {"polluted": true}}}}') }, "metadata.a.b.__proto__"],
      ["a top-level __proto__ key in metadata", { metadata: JSON.parse('{"__proto__": {"polluted": true}}') }, "metadata.__proto__"],
    ];
    for (const [what, change, field] of cases) {
      it(`refuses ${what} with INVALID on ${field}, changing nothing`, async () => {
        const t = setup();
        t.registry.register({ id: "other", protocol: "coap", tags: ["x"] });
        assertRefused(t, () => t.registry.register({ ...base, ...change }), field);
        assert.equal(t.registry.has("dev-1"), false);
        // A patch is checked by the same rules (a patch without a field leaves it alone).
        if (what !== "a missing protocol") assertRefused(t, () => update(t, "other", change), field);
        assert.equal(({} as Record<string, unknown>).polluted, undefined);
      });
    }

    it("says each refusal in the API's words, not zod's (\"must be text\", not \"Invalid input: expected string, received number\")", async () => {
      const t = setup();
      t.registry.register({ id: "other", protocol: "coap" });
      const said = (f: () => unknown): string => {
        try {
          f();
        } catch (err) {
          return ((err as TethralError).details ?? []).map((d) => `${d.field} ${d.message}`).join("; ");
        }
        return "taken";
      };
      assert.equal(said(() => t.registry.register({ id: 5, protocol: "mqtt" })), "id must be text");
      assert.equal(said(() => t.registry.register({ id: "d", protocol: "mqtt", tags: "x" })), "tags must be a list");
      assert.equal(said(() => t.registry.register({ id: "d", protocol: "mqtt", tags: [1] })), "tags.0 must be text");
      assert.equal(said(() => t.registry.register({ id: "d", protocol: "mqtt", heartbeatTimeout: "60" })), "heartbeatTimeout must be a number");
      assert.equal(said(() => t.registry.register({ id: "d", protocol: "mqtt", heartbeatTimeout: -1 })), "heartbeatTimeout must be more than 0");
      assert.equal(said(() => t.registry.register({ id: "d" })), "protocol is required");
      assert.equal(said(() => t.registry.list({ sort: "colour" } as unknown as DeviceFilter)), 'sort must be one of "registered", "id", "name", "createdAt", "updatedAt", "lastSeen", "status", "protocol", "manufacturer"');
      assert.equal(said(() => t.registry.list({ q: 5 } as unknown as DeviceFilter)), "q must be text");
      assert.equal(t.registry.has("d"), false);
    });

    it("refuses a body that is not an object", async () => {
      const t = setup();
      for (const body of [null, "dev-1", 42, [base]]) assertRefused(t, () => t.registry.register(body), "(body)");
    });

    it("accepts the limits themselves: a 128-character id, 64 capabilities, 30 days, 16 levels", async () => {
      const t = setup();
      const id = "a".repeat(128);
      const d = t.registry.register({
        id, protocol: "my-plugin_2", name: "n".repeat(256), heartbeatTimeout: 30 * 24 * 3600, address: "http://h:8080/x",
        capabilities: Array.from({ length: 64 }, (_, i) => `${i}`.padEnd(64, "c")), metadata: nested(16),
      });
      assert.equal(d.id, id);
      assert.deepEqual(t.registry.get(id).metadata, nested(16));
      assert.equal(t.registry.statistics().byProtocol["my-plugin_2"], 1);
    });

    it("accepts metadata of exactly 64 KiB of JSON and refuses one byte more", async () => {
      const t = setup();
      const of = (bytes: number) => ({ k: "x".repeat(bytes - '{"k":""}'.length) });
      assert.equal(Buffer.byteLength(JSON.stringify(of(64 * 1024))), 64 * 1024);
      assert.deepEqual(t.registry.register({ id: "fits", protocol: "mqtt", metadata: of(64 * 1024) }).metadata, of(64 * 1024));
      assertRefused(t, () => t.registry.register({ id: "big", protocol: "mqtt", metadata: of(64 * 1024 + 1) }), "metadata");
      assertRefused(t, () => update(t, "fits", { metadata: of(64 * 1024 + 1) }), "metadata");
      assert.deepEqual(t.registry.get("fits").metadata, of(64 * 1024));
    });

    it("keeps constructor and prototype keys in metadata as plain data without touching Object.prototype", async () => {
      const t = setup();
      const metadata = JSON.parse('{"constructor": {"prototype": {"polluted": true}}, "prototype": {"polluted": 1}, "x": {"constructor": "c"}}');
      const d = t.registry.register({ id: "p", protocol: "mqtt", metadata });
      assert.deepEqual(d.metadata, metadata);
      assert.deepEqual(t.registry.get("p").metadata, metadata);
      assert.deepEqual(update(t, "p", { name: "q" }).metadata, metadata);
      assert.ok(Object.hasOwn(t.registry.get("p").metadata, "constructor"));
      const probe = {} as Record<string, unknown>;
      assert.equal(probe.polluted, undefined);
      assert.equal(typeof probe.constructor, "function");
      assert.equal(Object.hasOwn(Object.prototype, "polluted"), false);
    });

    it("validates the filter: bad status, negative limit or offset, unknown key, unknown sort", async () => {
      const t = setup();
      fleet(t);
      const bad: [unknown, string][] = [
        [{ status: "sleeping" }, "status"],
        [{ status: ["online", "nope"] }, "status"],
        [{ limit: -1 }, "limit"],
        [{ limit: 1.5 }, "limit"],
        [{ limit: "many" }, "limit"],
        [{ offset: -1 }, "offset"],
        [{ colour: "red" }, "colour"],
        [{ sort: "colour" }, "sort"],
        [{ order: "up" }, "order"],
        [{ capabilityMatch: "some" }, "capabilityMatch"],
      ];
      for (const [filter, field] of bad) assertCode(() => t.registry.list(filter as DeviceFilter), "INVALID", field);
    });
  });

  describe("copies", () => {
    it("hands out copies: changing a returned device, its lists or metadata changes nothing inside", async () => {
      const t = setup();
      const input = { id: "x", protocol: "mqtt", capabilities: ["a"], tags: ["t"], metadata: { deep: { v: 1 }, list: [1] } };
      const returned = [t.registry.register(input), t.registry.get("x"), t.registry.list().devices[0]!];
      returned.push(update(t, "x", { name: "named" }));
      for (const d of returned) {
        d.name = "hacked";
        d.capabilities.push("b");
        d.tags.length = 0;
        (d.metadata.deep as { v: number }).v = 2;
        (d.metadata.list as number[]).push(2);
        d.status = "online";
      }
      input.capabilities.push("from-input");
      input.metadata.deep.v = 3;
      const d = t.registry.get("x");
      assert.equal(d.name, "named");
      assert.deepEqual(d.capabilities, ["a"]);
      assert.deepEqual(d.tags, ["t"]);
      assert.deepEqual(d.metadata, { deep: { v: 1 }, list: [1] });
      assert.equal(d.status, "unknown");
      assert.equal(t.registry.list({ capability: "b" }).total, 0);
      assert.deepEqual(statsOf(t.registry).byTag, { t: 1 });
    });

    it("does not share the returned device with the published event", async () => {
      const t = setup();
      const registered = t.registry.register({ id: "x", protocol: "mqtt", tags: ["t"] });
      const updated = update(t, "x", { name: "n" });
      const removed = t.registry.remove("x");
      for (const d of [registered, updated, removed]) {
        d.name = "hacked";
        d.tags.push("hacked");
      }
      const kept = t.bus.query({ type: "device.*" }).map((e) => (e.data as { device: Device }).device);
      assert.equal(kept.length, 3);
      for (const d of kept) {
        assert.notEqual(d.name, "hacked");
        assert.deepEqual(d.tags, ["t"]);
      }
    });
  });

  describe("through the Hub", () => {
    it("stamps createdAt and updatedAt from the injected clock and lastSeen only once the device is heard", async () => {
      const clock = new ManualClock(START);
      const hub = new Hub({ clock });
      clock.advance(1500);
      const d = await hub.registerDevice({ id: "x", protocol: "mqtt" });
      assert.equal(d.createdAt, "2026-11-27T10:00:01.500Z");
      assert.equal(d.updatedAt, d.createdAt);
      assert.equal(d.lastSeen, null);
      clock.advance(60_000);
      assert.equal((await hub.updateDevice("x", { tags: ["a"] })).updatedAt, "2026-11-27T10:01:01.500Z");
      assert.equal(hub.getDevice("x").lastSeen, null);
      clock.advance(1000);
      hub.ingest("x", { kind: "heartbeat" });
      const seen = hub.getDevice("x");
      assert.equal(seen.lastSeen, "2026-11-27T10:01:02.500Z");
      assert.equal(seen.updatedAt, "2026-11-27T10:01:01.500Z", "traffic is not an update of the record");
      assert.deepEqual(ids(hub.listDevices({ sort: "lastSeen", order: "desc" })), ["x"]);
    });

    it("registers, filters, counts and removes through the hub's own methods", async () => {
      const clock = new ManualClock(START);
      const hub = new Hub({ clock });
      await hub.registerDevice({ id: "a", protocol: "mqtt", manufacturer: "Acme" });
      await hub.registerDevice({ id: "b", protocol: "coap", manufacturer: "Acme" });
      hub.ingest("a", { kind: "heartbeat" });
      assert.deepEqual(ids(hub.listDevices({ status: "online" })), ["a"]);
      assert.deepEqual({ ...hub.deviceStatistics().byStatus }, { online: 1, unknown: 1 });
      await hub.updateDevice("b", { manufacturer: "Globex" });
      assert.deepEqual(ids(hub.listDevices({ manufacturer: "Acme" })), ["a"]);
      await hub.removeDevice("a");
      assert.deepEqual({ ...hub.deviceStatistics().byStatus }, { unknown: 1 });
      assert.deepEqual({ ...hub.deviceStatistics().byManufacturer }, { Globex: 1 });
      assertCode(() => hub.getDevice("a"), "NOT_FOUND");
      assert.deepEqual((await hub.eventHistory({ type: "device.removed" })).length, 1);
    });
  });
});
