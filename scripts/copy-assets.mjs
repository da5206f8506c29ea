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
for (const [from, to] of copies) {
  if (existsSync(from)) cpSync(from, to, { recursive: true });
}
