// Mocha's settings for `npm test` (the README's test command; .ci/run runs it in both legs).
// Two spec files run at a time (parallel, jobs 2). Mocha hands files to its two workers in the
// order given here, so the files that take longest go first: started last, one of them would run
// on alone at the end while the other worker sat idle (up to 50 s of a suite's 4-5 minutes on a
// 2-core VM). The rest follow in path order. A file named below that is gone is left out; a new
// file is run with the rest.
const { readdirSync } = require("node:fs");

/** The slowest spec files, slowest first (seconds each, alone, on a 2-core AMD EPYC VM, 2026-12-06). */
const SLOWEST_FIRST = [
  "test/runtime/packed-install.test.ts", // Node 22 only (leg 2): npm pack, npm install, Node-RED's start
  "test/runtime/cluster.test.ts", // 49
  "test/store/sqlite.test.ts", // 34
  "test/runtime/end-to-end.test.ts", // 26
  "test/examples.test.ts", // 25
  "test/browser/editor.test.ts", // 23
  "test/cluster/member.test.ts", // 20
  "test/store/postgres.test.ts", // 17
  "test/runtime/twin.test.ts", // 16
  "test/store/cluster.test.ts", // 13
  "test/protocols/mqtt-external.test.ts", // 9
  "test/runtime/simulate.test.ts", // 8
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
