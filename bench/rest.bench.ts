/**
 * REST API benchmark, in one run against the same runtime (the build's dist/runtime/start.js, as
 * `npm start` runs it, in a child process, on a SQLite file; needs `npm run build`):
 * - baseline: a bare `http in` → `http response` flow added for the run — what Node-RED itself
 *   serves on this machine, the limit;
 * - the REST API's routes: `GET /api/devices/{id}`, `GET /api/devices?limit=10`, and HTTP device
 *   reports `POST /api/devices/{id}/telemetry` (token checked, heartbeat, state merge, events,
 *   written behind), each as a ratio to the baseline of the same method;
 * - for the record (no target): the list's page (the same bytes) answered by a function node in a
 *   plain flow, as a ratio to the same baseline: what answering that body costs Node-RED itself.
 * 32 keep-alive connections keep requests in flight for BENCH_SECONDS (default 5) per route, in
 * five one-second turns with the other routes, after 2 s of unmeasured load on each route.
 * Run with `npm run bench:rest`; writes bench/results/rest.json. Not a test: nothing asserts a time.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { Agent, request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { percentile } from "./stats";
import { targetOf, writeResults } from "./results";
import { call } from "../test/runtime/spawn-runtime";
import { startBuiltRuntime } from "./runtime-process";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
/** Unmeasured load on each route first (see main). */
const WARM_UP_SECONDS = 2;
/** Each route's SECONDS, in this many turns (see main). */
const SLICES = 5;
const CONNECTIONS = 32;
const DEVICES = 200;
/** Devices in the listed page (`GET /api/devices?limit=10`, as the phase names say). */
const PAGE = 10;

interface Phase {
  name: string;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  ratio?: number;
}

type Route = (i: number) => { method: string; path: string; body?: string; headers?: Record<string, string> };

/** What one stretch of load measured. */
interface Sample {
  latencies: number[];
  elapsed: number;
  errors: number;
}

/** Keeps CONNECTIONS requests in flight for `seconds`; each worker sends its next request when the last is answered. */
async function load(base: URL, next: Route, expect: number, seconds: number): Promise<Sample> {
  const agent = new Agent({ keepAlive: true, maxSockets: CONNECTIONS });
  const latencies: number[] = [];
  let errors = 0;
  let sent = 0;
  const end = performance.now() + seconds * 1000;
  const one = (i: number) =>
    new Promise<void>((resolve) => {
      const r = next(i);
      const started = performance.now();
      const req = request(
        { agent, host: base.hostname, port: base.port, method: r.method, path: r.path, headers: { ...(r.body && { "content-type": "application/json", "content-length": Buffer.byteLength(r.body) }), ...r.headers } },
        (res) => {
          res.resume();
          res.on("end", () => {
            if (res.statusCode !== expect) errors++;
            latencies.push(performance.now() - started);
            resolve();
          });
        },
      );
      req.on("error", () => {
        errors++;
        resolve();
      });
      req.end(r.body);
    });
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONNECTIONS }, async () => {
      while (performance.now() < end) await one(sent++);
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  agent.destroy();
  return { latencies, elapsed, errors };
}

/** A phase from its slices: requests over the time they took, latency percentiles over all of them. */
function phaseOf(name: string, samples: Sample[]): Phase {
  const latencies = samples.flatMap((s) => s.latencies).sort((a, b) => a - b);
  const elapsed = samples.reduce((t, s) => t + s.elapsed, 0);
  const at = (p: number) => (latencies.length === 0 ? 0 : Number(percentile(latencies, p).toFixed(2)));
  return { name, requestsPerSec: Math.round(latencies.length / elapsed), p50Ms: at(50), p99Ms: at(99), errors: samples.reduce((n, s) => n + s.errors, 0) };
}

async function main(): Promise<void> {
  const scratch = mkdtempSync(join(tmpdir(), "tethral-bench-rest-"));
  const rt = await startBuiltRuntime(join(scratch, "user"), {}, scratch).catch((err: unknown) => {
    // A stale build (or a runtime that would not start): nothing to stop, the folder to remove.
    rmSync(scratch, { recursive: true, force: true });
    throw err;
  });
  try {
    const base = new URL(rt.url);
    // The baseline routes: what a bare http in → http response answers on this machine.
    const flow = {
      label: "bench baseline",
      nodes: [
        { id: "b1", type: "http in", url: "/bench/echo", method: "get", upload: false, swaggerDoc: "", x: 100, y: 40, wires: [["b2"]] },
        { id: "b2", type: "http response", statusCode: "200", headers: {}, x: 300, y: 40, wires: [] },
        { id: "b3", type: "http in", url: "/bench/echo", method: "post", upload: false, swaggerDoc: "", x: 100, y: 80, wires: [["b4"]] },
        { id: "b4", type: "http response", statusCode: "204", headers: {}, x: 300, y: 80, wires: [] },
      ],
    };
    const added = await fetch(new URL("flow", rt.url), { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(flow) });
    if (!added.ok) throw new Error(`could not add the baseline flow: ${added.status} ${await added.text()}`);

    const tokens: string[] = [];
    for (let i = 0; i < DEVICES; i++) {
      // Through the test harness's call: the answer is checked against the OpenAPI document too.
      const res = await call(rt.api, "POST", "/devices", { id: `bench-${i}`, protocol: "http", heartbeatTimeout: 3600 });
      if (res.status !== 201) throw new Error(`registration failed: ${res.status} ${JSON.stringify(res.body)}`);
      tokens.push(res.body.token as string);
    }
    // For the record (no target): the list's page as a plain flow would answer it, the same bytes
    // from a function node, beside the bare flow's `{}`. The page's devices report first, as the
    // telemetry phase makes them do (online, a lastSeen): its length stays the same after.
    for (let i = 0; i < PAGE; i++) {
      const res = await fetch(new URL(`api/devices/bench-${i}/telemetry`, rt.url), {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${tokens[i]}` },
        body: JSON.stringify({ temperature: 20, humidity: 40 }),
      });
      if (res.status !== 204) throw new Error(`report failed: ${res.status} ${await res.text()}`);
    }
    const page = await fetch(new URL(`api/devices?limit=${PAGE}`, rt.url));
    if (page.status !== 200) throw new Error(`could not read the page: ${page.status}`);
    const pageJson = await page.text();
    const pageFlow = {
      label: "bench same page",
      nodes: [
        { id: "p1", type: "http in", url: "/bench/page", method: "get", upload: false, swaggerDoc: "", x: 100, y: 40, wires: [["p2"]] },
        { id: "p2", type: "function", name: "the same page", func: `msg.payload = ${pageJson};\nreturn msg;`, outputs: 1, timeout: 0, noerr: 0, initialize: "", finalize: "", libs: [], x: 300, y: 40, wires: [["p3"]] },
        { id: "p3", type: "http response", statusCode: "200", headers: {}, x: 500, y: 40, wires: [] },
      ],
    };
    const pageAdded = await fetch(new URL("flow", rt.url), { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(pageFlow) });
    if (!pageAdded.ok) throw new Error(`could not add the page flow: ${pageAdded.status} ${await pageAdded.text()}`);
    const report = JSON.stringify({ temperature: 21.5, humidity: 40 });
    const getDevice = (i: number) => ({ method: "GET", path: `/api/devices/bench-${i % DEVICES}` });
    const postTelemetry = (i: number) => ({
      method: "POST",
      path: `/api/devices/bench-${i % DEVICES}/telemetry`,
      body: JSON.stringify({ temperature: 20 + (i % 10), humidity: 40 }),
      headers: { authorization: `Bearer ${tokens[i % DEVICES]}` },
    });
    const getEcho: Route = () => ({ method: "GET", path: "/api/bench/echo" });
    const listDevices: Route = () => ({ method: "GET", path: `/api/devices?limit=${PAGE}` });
    const postEcho: Route = () => ({ method: "POST", path: "/api/bench/echo", body: report });
    // Each route with its status and, for the API's, the index of its baseline here.
    const routes: [string, Route, number, number | null][] = [
      ["GET baseline (http in → http response)", getEcho, 200, null],
      ["GET /api/devices/{id}", getDevice, 200, 0],
      ["GET /api/devices?limit=10", listDevices, 200, 0],
      ["POST baseline (http in → http response)", postEcho, 204, null],
      ["POST /api/devices/{id}/telemetry", postTelemetry, 204, 3],
      ["GET the same page from a function node (http in → function → http response)", () => ({ method: "GET", path: "/api/bench/page" }), 200, 0],
    ];
    // Every route under load before anything is measured: the first phase of a cold runtime ran
    // unoptimised code, which cost the GET baseline a third of its rate. Then the routes take
    // turns in one-second slices, SLICES rounds: a route and its baseline see the same machine,
    // where five-second phases one after the other saw its load come and go (ratios moved by 0.2
    // between runs).
    for (const [, route, expect] of routes) await load(base, route, expect, WARM_UP_SECONDS);
    const samples: Sample[][] = routes.map(() => []);
    for (let round = 0; round < SLICES; round++) {
      for (let r = 0; r < routes.length; r++) samples[r]!.push(await load(base, routes[r]![1], routes[r]![2], SECONDS / SLICES));
    }
    const measured = routes.map(([name], r) => phaseOf(name, samples[r]!));
    const phases = measured.map((p, r): Phase => {
      const baseline = routes[r]![3];
      return baseline === null ? p : { ...p, ratio: Number((p.requestsPerSec / measured[baseline]!.requestsPerSec).toFixed(2)) };
    });

    console.table(phases.map((p) => ({ phase: p.name, "req/s": p.requestsPerSec, "ratio to baseline": p.ratio ?? "", "p50 ms": p.p50Ms, "p99 ms": p.p99Ms, errors: p.errors })));
    const ratio = (name: string) => phases.find((p) => p.name.startsWith(name))!.ratio!;
    const ratios = {
      getDevice: ratio("GET /api/devices/{id}"),
      listDevices: ratio("GET /api/devices?limit=10"),
      postTelemetry: ratio("POST /api/devices/{id}/telemetry"),
      samePageFunction: ratio("GET the same page"),
    };
    const target = targetOf("rest", "ratios.getDevice");
    console.log(`ratios to the bare flow: ${JSON.stringify(ratios)} (target ≥ ${target} each)`);
    writeResults("rest", { seconds: SECONDS, connections: CONNECTIONS, devices: DEVICES, pageBytes: Buffer.byteLength(pageJson), phases, ratios });
  } finally {
    await rt.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
