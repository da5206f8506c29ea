import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { PACKAGE_ROOT } from "../../src/runtime/start";

/**
 * This package as Node-RED sees it, built from the sources rather than dist/: the same
 * package.json name and editor files, with a node file that loads the TypeScript through the
 * tsx hook this mocha process already has.
 */
export function sourcePackage(dir: string): string {
  const pkg = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, "package.json"), "utf8")) as {
    name: string;
    version: string;
    "node-red": { nodes: Record<string, string>; plugins: Record<string, string> };
  };
  // Every node and plugin package.json lists, each a file that requires its TypeScript source.
  const entries = (kind: "nodes" | "plugins") =>
    Object.fromEntries(Object.keys(pkg["node-red"][kind]).map((name) => [name, `${name}.js`]));
  writeFileSync(
    path.join(dir, "package.json"),
    JSON.stringify({ name: pkg.name, version: pkg.version, "node-red": { nodes: entries("nodes"), plugins: entries("plugins") } }),
  );
  for (const kind of ["nodes", "plugins"] as const) {
    for (const name of Object.keys(pkg["node-red"][kind])) {
      const source = path.join(PACKAGE_ROOT, "src", kind, `${name}.ts`);
      writeFileSync(path.join(dir, `${name}.js`), `module.exports = require(${JSON.stringify(source)});\n`);
      const html = path.join(PACKAGE_ROOT, "nodes", kind === "plugins" ? "plugins" : "", `${name}.html`);
      if (existsSync(html)) cpSync(html, path.join(dir, `${name}.html`));
    }
  }
  mkdirSync(path.join(dir, "locales"), { recursive: true });
  cpSync(path.join(PACKAGE_ROOT, "nodes", "locales"), path.join(dir, "locales"), { recursive: true });
  cpSync(path.join(PACKAGE_ROOT, "nodes", "plugins", "locales"), path.join(dir, "locales"), { recursive: true });
  cpSync(path.join(PACKAGE_ROOT, "icons"), path.join(dir, "icons"), { recursive: true });
  return dir;
}

