// Copy the OpenSeadragon build from node_modules into the Flask static folder (git-ignored).
// Runs after `npm ci` (postinstall) and as `npm run build`.
import { cpSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "node_modules", "openseadragon", "build", "openseadragon");
const dest = join(here, "..", "static", "vendor", "openseadragon");

if (!existsSync(join(src, "openseadragon.min.js"))) {
  console.error(`openseadragon build not found at ${src}: run "npm ci" in api/assets/ first`);
  process.exit(1);
}
rmSync(dest, { recursive: true, force: true });
mkdirSync(dest, { recursive: true });
cpSync(src, dest, { recursive: true });
console.log(`copied ${src} -> ${dest}`);
