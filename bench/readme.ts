/**
 * `npm run bench:readme`: the README's performance table, generated from the latest
 * bench/results/*.json and bench/targets.json, between the `bench:start` and `bench:end`
 * markers. `npm run bench` ends with it.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Checked, checkAll, figureAt, fmtFigure, missBy, readResults, showTarget } from "./results";

const README = join(__dirname, "..", "README.md");
const START = /<!-- bench:start[^>]*-->/;
const END = "<!-- bench:end -->";

function result(r: Checked): string {
  if (r.value === undefined) return "not measured";
  if (r.pass) return "met";
  return `**missed** (${missBy(r)})`;
}

export function table(rows: Checked[]): string {
  const lines = [
    "| benchmark | figure | measured | target | compared with | result |",
    "|---|---|---|---|---|---|",
    ...rows.map(
      (r) =>
        `| \`bench:${r.target.bench}\` | ${r.target.label} | ${r.value === undefined ? "—" : fmtFigure(r.value)} | ${showTarget(r.target)} | ${r.target.anchor}${r.anchorValue === undefined ? "" : `: ${fmtFigure(r.anchorValue)}`} | ${result(r)} |`,
    ),
  ];
  const machines = new Map<string, string[]>();
  for (const r of rows) {
    if (!r.machine) continue;
    const m = `${r.machine.cpu}, ${r.machine.cores} cores, ${r.machine.memoryGiB} GiB, Node ${r.machine.node}, ${r.machine.platform}`;
    const benches = machines.get(m) ?? [];
    const when = `${r.target.bench} ${r.measuredAt?.slice(0, 10) ?? "?"}`;
    if (!benches.includes(when)) benches.push(when);
    machines.set(m, benches);
  }
  const met = rows.filter((r) => r.pass).length;
  lines.push("", `${met} of ${rows.length} figures meet their targets.`);
  for (const [m, benches] of machines) lines.push(`Measured on ${m} (${benches.join(", ")}).`);
  const faults = [...new Set(rows.map((r) => r.machine?.pageFaultUs).filter((us): us is number => us !== undefined))].sort((a, b) => a - b);
  if (faults.length > 0) {
    const range = faults.length === 1 ? `${faults[0]}` : `${faults[0]}–${faults.at(-1)}`;
    lines.push(
      `The first write to a fresh 4 KiB page of memory cost ${range} µs in these runs (usually well under one): figures that grow the heap pay it for every page.`,
    );
  }
  const scavenges = filterScavenges();
  if (scavenges) {
    const s = scavenges;
    lines.push(
      `The filter's p99 (\`bench:core\`): ${s.hit} of its 200 queries met a scavenge, V8's young-generation collection (median pause ${s.scavengeP50Ms} ms), and ${s.hitByOthers} met a step of a full collection; the p99 of those that met none was ${s.p99WithoutMs} ms. A scavenge with nothing to keep took ${s.emptyScavengeMs} ms there: V8 visits every page of the old generation (${s.oldGenerationMB.toLocaleString("en-US")} MB) on each one.`,
    );
  }
  const commands = [
    ["the embedded broker", commandCollections("")],
    ["Mosquitto", commandCollections("mosquitto.")],
  ] as const;
  const told = commands.flatMap(([where, c]) =>
    c ? [`on ${where}, ${c.hit} of ${c.operations.toLocaleString("en-US")} met a scavenge (median pause ${c.scavengeP50Ms} ms) and ${c.hitByOthers} a mark-compact or a step of one (${c.others} in all), and the p99 of those that met none was ${c.p99WithoutMs} ms`] : [],
  );
  if (told.length > 0) lines.push(`The command round trips' p99 (\`bench:comm\`, 1,000 a second): ${told.join("; ")}.`);
  const written = commandDiskBytes();
  if (written) {
    lines.push(
      `Written to storage per command in those runs (the SQLite database and its write-ahead log: the command's row before it is sent, its status changes, the devices' presence), for the record (no target): ${written.commandDiskBytes.toLocaleString("en-US")} bytes on the embedded broker, ${written["mosquitto.commandDiskBytes"].toLocaleString("en-US")} on Mosquitto.`,
    );
  }
  const d = mosquittoDefaults();
  if (d) {
    lines.push(
      `\`bench:comm\`'s Mosquitto figures come from a Mosquitto of its own with \`set_tcp_nodelay true\`, as "Mosquitto and command latency" recommends. The same run on a Mosquitto with its defaults, for the record (no target): hub ÷ bare subscriber ${d.ingestRatio}, command round trip p50 / p99 ${d.commandP50Ms} / ${d.commandP99Ms} ms at 1,000 a second, and a median of ${d.singleCommandP50Ms} ms one at a time.`,
    );
  }
  const page = samePage();
  if (page) {
    lines.push(
      `\`bench:rest\`'s list answers a page of 10 devices (${page.pageBytes.toLocaleString("en-US")} bytes) where the bare flow answers \`{}\`. The same run's plain Node-RED flow answering that same page from a function node (\`http in\` → \`function\` → \`http response\`), for the record (no target): ${page["ratios.samePageFunction"]} of the bare flow, against ${page["ratios.listDevices"]} for \`GET /api/devices?limit=10\`.`,
    );
  }
  return lines.join("\n");
}

/** bench:rest's figures for the page answered by a plain flow, when its result has them. */
const samePage = () => figuresAt("rest", "", ["pageBytes", "ratios.samePageFunction", "ratios.listDevices"]);

/** Figures of one result under `prefix`, by name, when the result has every one of them. */
function figuresAt<F extends string>(bench: string, prefix: string, fields: readonly F[]): Record<F, number> | undefined {
  const result = readResults(bench);
  const figures = fields.map((f) => figureAt(result, `${prefix}${f}`));
  return figures.every((n) => n !== undefined) ? (Object.fromEntries(fields.map((f, i) => [f, figures[i]])) as Record<F, number>) : undefined;
}

/** bench:comm's bytes written to storage per command (Linux only), when its result has them. */
const commandDiskBytes = () => figuresAt("comm", "", ["commandDiskBytes", "mosquitto.commandDiskBytes"]);

/** bench:comm's run on a Mosquitto with its defaults, when its result has one. */
const mosquittoDefaults = () => figuresAt("comm", "mosquitto.defaults.", ["ingestRatio", "commandP50Ms", "commandP99Ms", "singleCommandP50Ms"]);

/** bench:comm's account of the collections during its counted commands (see bench/gc.ts), at `prefix` ("" for the embedded broker), when its result has one. */
const commandCollections = (prefix: string) =>
  figuresAt("comm", `${prefix}commandCollections.`, ["operations", "hit", "hitByOthers", "others", "scavengeP50Ms", "p99WithoutMs"]);

/** bench:core's account of the collections during its filter queries (see FilterScavenges there), when its result has one. */
const filterScavenges = () => figuresAt("core", "filterScavenges.", ["hit", "hitByOthers", "scavengeP50Ms", "p99WithoutMs", "emptyScavengeMs", "oldGenerationMB"]);

const text = readFileSync(README, "utf8");
const start = START.exec(text);
const to = start ? text.indexOf(END, start.index) : -1;
if (!start || to < 0) {
  console.error("README.md has no <!-- bench:start --> … <!-- bench:end --> section");
  process.exit(1);
}
const rows = checkAll();
// The README's table is a whole run's: results missing (a fresh clone, a benchmark skipped) would
// replace measured figures with blanks. TETHRAL_BENCH_README_PARTIAL=1 writes it anyway.
const missing = rows.filter((r) => r.machine === undefined).map((r) => r.target.bench);
if (missing.length > 0 && !process.env.TETHRAL_BENCH_README_PARTIAL) {
  console.error(`README.md not written: no results for ${[...new Set(missing)].map((b) => `bench:${b}`).join(", ")} (run them, or set TETHRAL_BENCH_README_PARTIAL=1)`);
  process.exit(1);
}
const end = start.index + start[0].length;
writeFileSync(README, `${text.slice(0, end)}\n${table(rows)}\n${text.slice(to)}`);
console.log("README.md: performance table written from bench/results");
