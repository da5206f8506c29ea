/**
 * REST API benchmark, in one run against the same runtime (started as `npm start` runs it, in a
 * child process, on a SQLite file):
 * - baseline: a bare `http in` → `http response` flow added for the run — what Node-RED itself
 *   serves on this machine, the limit;
 * - the REST API's routes: `GET /api/devices/{id}`, `GET /api/devices?limit=10`, and HTTP device
 *   reports `POST /api/devices/{id}/telemetry` (token checked, heartbeat, state merge, events,
 *   written behind), each as a ratio to the baseline of the same method.
 * 32 keep-alive connections keep requests in flight for BENCH_SECONDS (default 5) per phase.
 * Run with `npm run bench:rest`; writes bench/results/rest.json. Not a test: nothing asserts a time.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { Agent, request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { call, spawnRuntime } from "../test/runtime/spawn-runtime";
import { percentile } from "./stats";
import { targetOf, writeResults } from "./results";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CONNECTIONS = 32;
const DEVICES = 200;

interface Phase {
  name: string;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  ratio?: number;
}

/** Keeps CONNECTIONS requests in flight for SECONDS; each worker sends its next request when the last is answered. */
async function load(name: string, base: URL, next: (i: number) => { method: string; path: string; body?: string; headers?: Record<string, string> }, expect: number): Promise<Phase> {
  const agent = new Agent({ keepAlive: true, maxSockets: CONNECTIONS });
  const latencies: number[] = [];
  let errors = 0;
  let sent = 0;
  const end = performance.now() + SECONDS * 1000;
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
  latencies.sort((a, b) => a - b);
  const at = (p: number) => (latencies.length === 0 ? 0 : Number(percentile(latencies, p).toFixed(2)));
  return { name, requestsPerSec: Math.round(latencies.length / elapsed), p50Ms: at(50), p99Ms: at(99), errors };
}

async function main(): Promise<void> {
  const scratch = mkdtempSync(join(tmpdir(), "tethral-bench-rest-"));
  const rt = await spawnRuntime(join(scratch, "user"), { TETHRAL_TEST_LOG: "error" });
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
      const res = await call(rt.api, "POST", "/devices", { id: `bench-${i}`, protocol: "http", heartbeatTimeout: 3600 });
      if (res.status !== 201) throw new Error(`registration failed: ${res.status} ${JSON.stringify(res.body)}`);
      tokens.push(res.body.token as string);
    }
    const report = JSON.stringify({ temperature: 21.5, humidity: 40 });
    const phases: Phase[] = [];
    const getBase = await load("GET baseline (http in → http response)", base, () => ({ method: "GET", path: "/api/bench/echo" }), 200);
    phases.push(getBase);
    for (const p of [
      await load("GET /api/devices/{id}", base, (i) => ({ method: "GET", path: `/api/devices/bench-${i % DEVICES}` }), 200),
      await load("GET /api/devices?limit=10", base, () => ({ method: "GET", path: "/api/devices?limit=10" }), 200),
    ]) phases.push({ ...p, ratio: Number((p.requestsPerSec / getBase.requestsPerSec).toFixed(2)) });
    const postBase = await load("POST baseline (http in → http response)", base, () => ({ method: "POST", path: "/api/bench/echo", body: report }), 204);
    phases.push(postBase);
    const telemetry = await load(
      "POST /api/devices/{id}/telemetry",
      base,
      (i) => ({ method: "POST", path: `/api/devices/bench-${i % DEVICES}/telemetry`, body: JSON.stringify({ temperature: 20 + (i % 10), humidity: 40 }), headers: { authorization: `Bearer ${tokens[i % DEVICES]}` } }),
      204,
    );
    phases.push({ ...telemetry, ratio: Number((telemetry.requestsPerSec / postBase.requestsPerSec).toFixed(2)) });

    console.table(phases.map((p) => ({ phase: p.name, "req/s": p.requestsPerSec, "ratio to baseline": p.ratio ?? "", "p50 ms": p.p50Ms, "p99 ms": p.p99Ms, errors: p.errors })));
    const ratio = (name: string) => phases.find((p) => p.name.startsWith(name))!.ratio!;
    const ratios = { getDevice: ratio("GET /api/devices/{id}"), listDevices: ratio("GET /api/devices?limit=10"), postTelemetry: ratio("POST /api/devices/{id}/telemetry") };
    const target = targetOf("rest", "ratios.getDevice");
    console.log(`ratios to the bare flow: ${JSON.stringify(ratios)} (target ≥ ${target} each)`);
    writeResults("rest", { seconds: SECONDS, connections: CONNECTIONS, devices: DEVICES, phases, ratios });
  } finally {
    await rt.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
