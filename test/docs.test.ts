import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { DEFAULT_COMMAND_OPTIONS } from "../src/core/command-input";
import { DEFAULT_GATEWAY_OPTIONS } from "../src/core/gateway";
import { LIMITS } from "../src/core/validation";
import { MAX_CLIENT_ID_LENGTH, MAX_CONNECTIONS_PER_DEVICE, MAX_PERSISTENT_SESSIONS_PER_DEVICE } from "../src/protocols/mqtt-sessions";
import { TopicScheme } from "../src/protocols/mqtt-topics";
import { DEVICE_MESSAGE_KINDS, KIND_OF_STEP } from "../src/protocols/types";
import { CLOSE_POLICY_VIOLATION, CLOSE_REPLACED, DEFAULT_WEBSOCKET_PATH } from "../src/protocols/websocket";

/**
 * The device protocol guide (docs/) is what firmware is written from: a topic, path, frame type,
 * answer code or limit it names that the code does not have sends a firmware writer astray. Each
 * check reads the guide's own text and compares it with the code's constants.
 */
const ROOT = resolve(__dirname, "..");
const DOCS = join(ROOT, "docs");
const read = (path: string): string => readFileSync(join(ROOT, path), "utf8");
const GUIDE_FILES = ["docs/devices.md", ...readdirSync(join(DOCS, "protocols")).filter((f) => f.endsWith(".md")).map((f) => `docs/protocols/${f}`)];
const guide = (): string => GUIDE_FILES.map(read).join("\n");

/** The twin's step in CoAP paths and WebSocket frame types (CONTRACT §2); MQTT's is checked against the topic scheme itself. */
const TWIN_STEP = "desired";

/** The level the MQTT page uses to show what an unknown topic of a device's own does. */
const REFUSED_EXAMPLE_LEVEL = "foo";

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
function anchorOf(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, "")
    .replace(/ /g, "-");
}

function tableRows(markdown: string, firstHeader: string): Map<string, string> {
  const lines = markdown.split("\n");
  const start = lines.findIndex((l) => l.startsWith(`| ${firstHeader} |`));
  assert.notEqual(start, -1, `a table headed "${firstHeader}"`);
  const rows = new Map<string, string>();
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith("|")) break;
    const cells = line.split("|").map((c) => c.trim());
    rows.set(cells[1]!, cells[2]!);
  }
  return rows;
}

describe("device protocol guide (docs/)", () => {
  it("has every relative link and anchor it and the README use", () => {
    for (const file of [...GUIDE_FILES, "README.md"]) {
      for (const [, target] of read(file).matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target!)) continue;
        const [path, anchor] = target!.split("#");
        const linked = path ? resolve(ROOT, dirname(file), path) : join(ROOT, file);
        assert.ok(existsSync(linked), `${file} links to ${target}, which does not exist`);
        if (anchor) {
          const headings = [...readFileSync(linked, "utf8").matchAll(/^#+ (.+)$/gm)].map((m) => anchorOf(m[1]!));
          assert.ok(headings.includes(anchor), `${file} links to #${anchor}, not a heading of ${path || file}`);
        }
      }
    }
  });

  it("names only MQTT topics the hub uses", () => {
    const scheme = new TopicScheme();
    const topics = new Set(guide().match(/\btethral\/devices\/[^\s`'"|)]+/g) ?? []);
    assert.ok(topics.size >= 8, "the guide names the MQTT topics");
    for (const topic of topics) {
      // `{id}`, `%u` (a Mosquitto ACL) and example ids stand for a device id; `#` and `+` are filters.
      const level = topic.split("/")[3];
      if (level === "#" || level === "+" || level === REFUSED_EXAMPLE_LEVEL) continue;
      const asDevice = topic.replace(/^tethral\/devices\/[^/]+\//, "tethral/devices/boiler-1/");
      const parsed = scheme.parse(asDevice);
      assert.ok(parsed, `${topic} is no topic of the scheme`);
      const known = parsed.kind !== null || asDevice === scheme.commands("boiler-1") || asDevice === scheme.desired("boiler-1");
      assert.ok(known, `${topic}: the hub has no topic level "${parsed.level}"`);
    }
  });

  it("names only CoAP resources the hub serves", () => {
    const coap = read("docs/protocols/coap.md");
    const steps = new Set([...coap.matchAll(/\/devices\/(?:\{id\}|%7Bid%7D|[A-Za-z0-9._:-]+)\/([a-z]+)/g)].map((m) => m[1]!));
    steps.delete("commands"); // the device's own resource, {address}/commands
    assert.ok(steps.size >= 7);
    for (const step of steps) assert.ok(KIND_OF_STEP.has(step) || step === TWIN_STEP, `CoAP /devices/{id}/${step} is not served`);
  });

  it("quotes only CoAP response codes the adapter answers", () => {
    const source = readdirSync(join(ROOT, "src/protocols"))
      .filter((f) => f.startsWith("coap"))
      .map((f) => read(`src/protocols/${f}`))
      .join("\n");
    const answered = new Set(source.match(/"[245]\.\d\d"/g)!.map((c) => c.slice(1, -1)));
    const quoted = new Set([...read("docs/protocols/coap.md").matchAll(/^\| ([245]\.\d\d) /gm)].map((m) => m[1]!));
    assert.ok(quoted.size >= 10, "the guide's table of CoAP codes");
    for (const code of quoted) assert.ok(answered.has(code), `the guide quotes CoAP ${code}, which the adapter never answers`);
  });

  it("names only WebSocket frame types and close codes there are", () => {
    const ws = read("docs/protocols/websocket.md");
    const types = new Set([...ws.matchAll(/"type": "([a-z]+)"/g)].map((m) => m[1]!));
    // The hub's own frames: commands (CONTRACT §2), the twin, and refusals.
    const hubFrames = ["command", TWIN_STEP, "error"];
    for (const type of types) assert.ok((DEVICE_MESSAGE_KINDS as readonly string[]).includes(type) || hubFrames.includes(type), `frame type ${type}`);
    const closes = new Set([...ws.matchAll(/^\| (\d{4})\b/gm)].map((m) => Number(m[1])));
    // 1001 the hub stopping (the adapter's own), 1006/1007/1009 the ws library's (dropped, bad UTF-8, too big).
    const codes = new Set([CLOSE_REPLACED, CLOSE_POLICY_VIOLATION, 1001, 1006, 1007, 1009]);
    assert.ok(closes.has(CLOSE_REPLACED) && closes.has(CLOSE_POLICY_VIOLATION));
    for (const code of closes) assert.ok(codes.has(code), `close code ${code}`);
    assert.ok(ws.includes(`\`${DEFAULT_WEBSOCKET_PATH}\``), "the default path");
  });

  it("quotes the code's limits", () => {
    const limits = tableRows(read("docs/devices.md"), "limit");
    const expect = (row: string, text: string) => {
      const value = limits.get(row);
      assert.ok(value !== undefined, `the limits table has a "${row}" row`);
      assert.ok(value.includes(text), `limits: "${row}" is "${value}", expected it to say ${text}`);
    };
    expect("device id", `1-${LIMITS.idLength} characters`);
    expect("device payload (any protocol)", `${DEFAULT_GATEWAY_OPTIONS.maxPayloadBytes} bytes`);
    expect("reported properties per device", `${LIMITS.propertyKeys} keys, ${LIMITS.propertiesBytes / 1024} KiB`);
    expect("JSON nesting", `${LIMITS.jsonDepth} levels`);
    expect("property key", `${LIMITS.keyLength} characters`);
    expect("commands waiting per device", String(DEFAULT_COMMAND_OPTIONS.maxQueuedPerDevice));
    expect("commands in flight per device", String(DEFAULT_COMMAND_OPTIONS.maxInFlightPerDevice));
    expect("command timeout", `default ${DEFAULT_COMMAND_OPTIONS.defaultTimeoutSec}`);
    expect("MQTT client id", `${MAX_CLIENT_ID_LENGTH} characters`);
    expect("MQTT connections per device", String(MAX_CONNECTIONS_PER_DEVICE));
    expect("MQTT persistent sessions per device", String(MAX_PERSISTENT_SESSIONS_PER_DEVICE));
  });

  it("names only REST routes the shipped flows serve", () => {
    const flows = JSON.parse(read("flows/flows.json")) as { type: string; method?: string; url?: string }[];
    const served = flows.filter((n) => n.type === "http in").map((n) => ({ name: `${n.method!.toUpperCase()} ${n.url}`, re: new RegExp(`^${n.url!.replace(/:[a-z]+/gi, "[^/]+")}$`) }));
    const routeOf = (method: string, path: string): string => {
      const hit = served.find((s) => s.name.startsWith(`${method} `) && s.re.test(path));
      if (hit) return hit.name;
      return `${method} ${path.replace(/^\/(devices|commands)\/[^/]+/, "/$1/:id")}`;
    };
    const used = new Map<string, string>();
    const text = guide();
    // Method and path in prose and tables: `POST /api/devices/{id}/telemetry`.
    for (const m of text.matchAll(/\b(GET|POST|PUT|PATCH|DELETE) \/api(\/[^\s`|?)]+)/g)) used.set(routeOf(m[1]!, m[2]!.replace(/\{id\}/g, "x")), m[0]);
    // The examples: `curl ... [-X METHOD] $API/path`.
    for (const line of text.split("\n").filter((l) => /^\s*curl /.test(l) || / curl /.test(l))) {
      const url = /"?\$API(\/[^\s"'?]*)/.exec(line);
      if (!url || url[1]!.startsWith("/..")) continue;
      const method = /-X (\w+)/.exec(line)?.[1] ?? "GET";
      used.set(routeOf(method, url[1]!.replace(/\$\w+/g, "x")), line.trim());
    }
    assert.ok(used.size >= 10, "the guide's routes");
    for (const [route, where] of used) {
      const isServed = served.some((s) => s.name === route);
      assert.ok(isServed, `the guide uses ${route} (${where.slice(0, 120)}), which no flow serves`);
    }
  });
});

describe("docs/ARCHITECTURE.md", () => {
  it("names only files that exist", () => {
    const text = read("docs/ARCHITECTURE.md");
    const named = [...text.matchAll(/`((?:src|test)\/[\w./-]+\.ts)`/g)].map((m) => m[1]!);
    assert.ok(named.length > 20, "the map names the files");
    const missing = named.filter((path) => !existsSync(join(ROOT, path)));
    assert.deepEqual(missing, [], "files named in the architecture map");
  });
});
