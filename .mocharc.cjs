// Mocha's settings for `npm test` (the README's test command; .ci/run runs it in both legs).
// Two spec files run at a time (parallel, jobs 2). Three at a time ran leg 1's suite faster on a
// 2-core AMD EPYC VM (188, 213 and 189 s against 241 s for two, 2026-12-07; four: 203 s), but in
// one of two CI runs the browser test on Node-RED 5 then caught an error thrown by the editor's
// own code while it loaded on the busier machine ("Cannot read properties of undefined (reading
// 'html')"; no code of this package reads such a property), and that test fails on any page
// error. Mocha hands files to its workers in the order given here, so the files that take
// longest go first: started last, one of them would run on alone at the end while the other
// worker sat idle. The rest follow in path order. A file named below that is gone is left out; a
// new file is run with the rest.
const { readdirSync } = require("node:fs");

/** The slowest spec files, slowest first (seconds each, alone, on a 2-core AMD EPYC VM, 2026-12-07). */
const SLOWEST_FIRST = [
  "test/runtime/packed-install.test.ts", // Node 22 only (leg 2): npm pack, npm install, Node-RED's start
  "test/runtime/cluster.test.ts", // 53
  "test/store/sqlite.test.ts", // 48
  "test/runtime/end-to-end.test.ts", // 33
  "test/store/postgres.test.ts", // 31
  "test/examples.test.ts", // 26
  "test/browser/editor.test.ts", // 23 (with chromium)
  "test/cluster/member.test.ts", // 21
  "test/runtime/twin.test.ts", // 17
  "test/runtime/cluster-start.test.ts", // 16
  "test/store/cluster.test.ts", // 15
  "test/protocols/mqtt-external.test.ts", // 10
  "test/cluster/offline.test.ts", // 9 (waiting for a heartbeat deadline)
  "test/store/persistence.test.ts", // 9
];

const all = readdirSync("test", { recursive: true })
  .map((f) => `test/${f.split("\\").join("/")}`)
  .filter((f) => f.endsWith(".test.ts"))
  .sort();
// readdirSync's `recursive` (Node >= 20.1; package.json asks for 20.19) lists the subfolders' files:
// without it only test/*.test.ts would be found, and most of the suite would pass by not running.
if (!all.some((f) => f.split("/").length > 2)) throw new Error(".mocharc.cjs found no spec file under test/*/: is this Node older than 20.1?");

module.exports = {
  require: ["tsx/cjs", "test/setup.ts"],
  extension: ["ts"],
  spec: [...SLOWEST_FIRST.filter((f) => all.includes(f)), ...all.filter((f) => !SLOWEST_FIRST.includes(f))],
  timeout: 20000,
  parallel: true,
  jobs: 2,
  exit: false,
};
