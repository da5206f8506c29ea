// Node-RED reads a node's .html, its icons/ and its locales/ from beside the node's .js file,
// so the build puts the editor side of every node next to the built runtime side in dist/nodes.
import { cpSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const target = join(root, "dist", "nodes");
mkdirSync(target, { recursive: true });

for (const file of readdirSync(join(root, "nodes"))) {
  if (file.endsWith(".html")) cpSync(join(root, "nodes", file), join(target, file));
}
const copies = [
  [join(root, "nodes", "locales"), join(target, "locales")],
  [join(root, "icons"), join(target, "icons")],
];
// Editor plugins (the Devices sidebar): their .html and locales/ beside the built plugin files.
const pluginTarget = join(root, "dist", "plugins");
const pluginSource = join(root, "nodes", "plugins");
if (existsSync(pluginSource)) {
  mkdirSync(pluginTarget, { recursive: true });
  for (const file of readdirSync(pluginSource)) {
    if (file.endsWith(".html")) cpSync(join(pluginSource, file), join(pluginTarget, file));
  }
  copies.push([join(pluginSource, "locales"), join(pluginTarget, "locales")]);
}
for (const [from, to] of copies) {
  if (existsSync(from)) cpSync(from, to, { recursive: true });
}
