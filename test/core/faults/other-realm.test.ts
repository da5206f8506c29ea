import assert from "node:assert/strict";
import vm from "node:vm";
import { Hub } from "../../../src/core/hub";
import { isPlainObject } from "../../../src/core/validation";
import { FakeAdapter } from "../fake-adapter";

// A Node-RED function node runs in a vm context: the objects it builds have that context's
// Object.prototype. A flow that builds a record or params there must be taken like any other.
describe("objects built in another realm (a function node's vm context)", function () {
  const other = (source: string): unknown => vm.runInNewContext(`(${source})`);

  it("are plain objects when they are object literals there, and nothing else is", () => {
    assert.equal(isPlainObject(other("{ a: 1 }")), true);
    assert.equal(isPlainObject(other("Object.create(null)")), true);
    assert.equal(isPlainObject(other("[1, 2]")), false);
    assert.equal(isPlainObject(other("new Date()")), false);
    assert.equal(isPlainObject(other("new (class Thing {})()")), false);
    assert.equal(isPlainObject(other("new Map()")), false);
    // A chain rooted in a bare null-prototype object is no realm's Object.prototype (it could carry a toJSON).
    assert.equal(isPlainObject(Object.create(Object.create(null, { toJSON: { value: () => "x" } }))), false);
  });

  it("register a device, set state and send a command like this realm's objects", async () => {
    const adapter = new FakeAdapter();
    adapter.auto = { status: "answered", ok: true, result: { done: true } };
    const hub = new Hub({ protocols: [adapter], onWarning: () => undefined });
    await hub.start();
    try {
      const device = await hub.registerDevice(other('{ id: "fn-1", protocol: "fake", metadata: { room: "b" } }'));
      assert.deepEqual(device.metadata, { room: "b" });
      const state = await hub.setState("fn-1", other("{ desired: { mode: 'eco' } }"));
      assert.deepEqual(state.desired, { mode: "eco" });
      const command = await hub.sendCommand("fn-1", other('{ command: "go", params: {}, wait: true }'));
      assert.equal(command.status, "succeeded");
      await assert.rejects(hub.registerDevice(other('{ id: "fn-2", protocol: "fake", metadata: new (class X {})() }')), { code: "INVALID" });
    } finally {
      await hub.stop();
    }
  });
});
