import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const CORE = resolve(__dirname, "../../src/core");

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

describe("the engine's boundary", () => {
  it("nothing in src/core imports from the stores, adapters, nodes or runtime: they implement its ports", () => {
    const outside: string[] = [];
    for (const file of sources(CORE)) {
      const text = readFileSync(file, "utf8");
      for (const m of text.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
        const target = resolve(dirname(file), m[1]!);
        if (relative(CORE, target).startsWith("..")) outside.push(`${relative(CORE, file)} -> ${m[1]}`);
      }
    }
    assert.ok(sources(CORE).length > 30, "read the engine's files");
    assert.deepEqual(outside, []);
  });
});
