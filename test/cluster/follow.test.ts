import assert from "node:assert/strict";
import { Hub, ManualClock } from "../../src/core";
import { applyChanges } from "../../src/core/cluster/follow";
import type { MemberHost } from "../../src/core/cluster/member";

describe("cluster: following another member's devices", () => {
  it("keeps a followed device's token hash when its owner edits it (the record is rebuilt, no token row comes)", async () => {
    const clock = new ManualClock();
    const hub = new Hub({ clock });
    await hub.start();
    try {
      const { token } = await hub.registerDevice({ id: "d1", protocol: "mqtt", name: "before", tags: ["a"] });
      assert.equal(hub.tokens.verify("d1", token), true);
      const row = { ...hub.registry.row("d1")!, name: "after", tags: ["b"], updatedAt: clock.now() + 1 };
      const host = { registry: hub.registry, state: hub.state, tokens: hub.tokens, presence: (hub as unknown as { presence: unknown }).presence, clock } as unknown as MemberHost;
      applyChanges(host, () => false, { now: clock.now(), devices: [row], presence: [], states: [], tokens: [], removed: [] }, new Map());
      assert.equal(hub.getDevice("d1").name, "after", "the record was rebuilt from the owner's row");
      assert.equal(hub.listDevices({ tag: "b" }).total, 1);
      assert.equal(hub.tokens.verify("d1", token), true, "its connections still authenticate here");
      assert.equal(hub.tokens.verify("d1", "another"), false);
    } finally {
      await hub.stop();
    }
  });
});
