/**
 * `npm run bench:check`: every figure of bench/targets.json against the latest results in
 * bench/results/*.json: figure, target, value, pass or miss. Exits 1 on any miss, a figure not
 * measured included. Not part of `npm test`: timings do not belong in tests.
 */
import { checkAll, fmtFigure, missBy, showTarget } from "./results";

const rows = checkAll();
const width = Math.max(...rows.map((r) => r.target.label.length + r.target.bench.length + 3));
console.log(`${"figure".padEnd(width)}  ${"target".padStart(14)}  ${"value".padStart(12)}  result`);
for (const r of rows) {
  const name = `${r.target.bench}: ${r.target.label}`;
  const target = showTarget(r.target);
  const value = r.value === undefined ? "not measured" : fmtFigure(r.value);
  const how =
    r.value === undefined
      ? r.machine === undefined
        ? "MISS (no result: run npm run bench)"
        : "MISS (not reached: the result has no value)"
      : r.pass
        ? "pass"
        : `MISS (${missBy(r)})`;
  console.log(`${name.padEnd(width)}  ${target.padStart(14)}  ${value.padStart(12)}  ${how}`);
}
const missed = rows.filter((r) => !r.pass);
const machines = new Set(rows.filter((r) => r.machine).map((r) => `${r.machine!.cpu}, ${r.machine!.cores} cores, Node ${r.machine!.node}`));
console.log(`\n${rows.length - missed.length} of ${rows.length} figures meet their targets${machines.size > 0 ? `; measured on ${[...machines].join("; ")}` : ""}`);
process.exit(missed.length > 0 ? 1 : 0);
