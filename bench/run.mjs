/**
 * Runs a benchmark on the code as the package's build compiles it: `node [flags] bench/run.mjs core`
 * bundles bench/core.bench.ts with the sources it imports (node_modules stay outside, as the
 * package's own build leaves them) into bench/.build/ with esbuild, and runs the bundle in this
 * process, so the flags given to node here (--expose-gc, --max-old-space-size) are the
 * benchmark's. The SQLite store's database thread is bundled beside it, where the store looks for
 * it in a build.
 *
 * Why not tsx, which runs the tests: tsx compiles every file it loads, packages' ES modules
 * included, with esbuild's `keepNames`, which wraps each function the code creates in a call that
 * sets its name. aedes (an ES module) creates a function per MQTT packet, so under tsx the
 * embedded broker's thread spent 12% of its time setting function names and 15% collecting
 * garbage where the build spent none and 5%, and it had 4% of its time idle against 27% when
 * the devices published as fast as they could. The build, and so `npm start` and Node-RED, has
 * none of those calls.
 *
 * Plain JavaScript, run by node itself: it must not load through the loader it replaces.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import esbuild from "esbuild";

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = join(BENCH_DIR, "..");
const OUT = join(BENCH_DIR, ".build");

const name = process.argv[2];
const entry = name && join(BENCH_DIR, `${name}.bench.ts`);
if (!name || !existsSync(entry)) {
  console.error(`usage: node bench/run.mjs <name>, for bench/<name>.bench.ts`);
  process.exit(2);
}

// The package's build settings (tsup.config.ts): CommonJS for Node 20, node_modules not bundled.
const common = { bundle: true, platform: "node", format: "cjs", target: "node20", packages: "external", sourcemap: true, logLevel: "warning" };

/**
 * The benchmarks' files and the test helpers they use keep their own folder as __dirname (they
 * find targets.json, results/, the runtime's build and the device simulator from it); the
 * sources get the bundle's, as in the package's build.
 */
const ownDirname = {
  name: "own-dirname",
  setup(build) {
    const benchOrTest = new RegExp(`^${escape(join(ROOT, "bench"))}|^${escape(join(ROOT, "test"))}`);
    build.onLoad({ filter: /\.ts$/ }, (args) => {
      if (!benchOrTest.test(args.path)) return undefined;
      const source = readFileSync(args.path, "utf8").replace(/\b__dirname\b/g, JSON.stringify(dirname(args.path)));
      return { contents: source, loader: "ts" };
    });
  },
};

function escape(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * Writes what esbuild made, each file only when it changed, through a temporary file renamed into
 * place: another benchmark running meanwhile may be starting a thread from it.
 */
function writeChanged(result) {
  for (const file of result.outputFiles) {
    mkdirSync(dirname(file.path), { recursive: true });
    if (existsSync(file.path) && readFileSync(file.path).equals(Buffer.from(file.contents))) continue;
    const temporary = `${file.path}.${process.pid}.tmp`;
    writeFileSync(temporary, file.contents);
    renameSync(temporary, file.path);
  }
}

try {
  // The database thread where a build keeps it: <bundle's folder>/../store/sqlite-worker.js.
  writeChanged(esbuild.buildSync({ ...common, sourcemap: false, write: false, entryPoints: [join(ROOT, "src", "store", "sqlite-worker.ts")], outfile: join(OUT, "store", "sqlite-worker.js") }));
  // The simulated devices of bench:comm and bench:peer (bench/devices-worker.ts), built too, so the
  // load they make is not held back by tsx either.
  writeChanged(esbuild.buildSync({ ...common, sourcemap: false, write: false, entryPoints: [join(BENCH_DIR, "comm-devices.ts")], outfile: join(OUT, "bench", "comm-devices.js") }));
} catch (err) {
  console.error(err);
  process.exit(1);
}
const outfile = join(OUT, "bench", `${name}.js`);
esbuild
  .build({ ...common, entryPoints: [entry], outfile, plugins: [ownDirname] })
  // esbuild's service process is not needed once the bundle is written.
  .then(() => esbuild.stop())
  // The bundle is CommonJS, as the package's build is.
  .then(() => createRequire(import.meta.url)(outfile))
  .catch((err) => {
    console.error(err);
    process.exit(1);
  });
