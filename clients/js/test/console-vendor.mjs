// The console's copy of the JavaScript client: the compiled ES modules of clients/js/dist,
// vendored into crates/server/console/client/ (the server compiles them into its binary and serves
// them at /console/client/<file>). One transformation, here, used both by `scripts/console-vendor`
// (which writes the copy) and by the test that fails when the copy differs from a fresh build:
// a header line is added and the `sourceMappingURL` comment dropped (the maps are not served).
//
// Usage: node test/console-vendor.mjs write   (after `npm run build`)
import { readdirSync, readFileSync, writeFileSync, mkdirSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const pkgDir = path.resolve(here, "..");
export const distDir = path.join(pkgDir, "dist");
export const vendorDir = path.resolve(pkgDir, "../../crates/server/console/client");

export const HEADER =
  "// Vendored from clients/js/dist (the @cortex/realtime client) by scripts/console-vendor: do not edit.\n";

/** The vendored text of one compiled module. */
export function vendorText(js) {
  return HEADER + js.replace(/\n?\/\/# sourceMappingURL=[^\n]*\n?$/, "\n");
}

/** `name -> text` of every module the vendored copy must hold, from a build in `dist`. */
export function expectedFiles(dist = distDir) {
  const out = new Map();
  for (const name of readdirSync(dist).sort()) {
    if (name.endsWith(".js")) out.set(name, vendorText(readFileSync(path.join(dist, name), "utf8")));
  }
  if (!out.has("index.js")) throw new Error(`${dist} holds no index.js: run \`npm run build\` first`);
  return out;
}

/** `name -> text` of the vendored copy as it is. */
export function vendoredFiles(dir = vendorDir) {
  const out = new Map();
  let names = [];
  try {
    names = readdirSync(dir).sort();
  } catch {
    return out;
  }
  for (const name of names) out.set(name, readFileSync(path.join(dir, name), "utf8"));
  return out;
}

/** The differences between the vendored copy and a fresh build, as sentences; empty when equal. */
export function drift(dist = distDir, dir = vendorDir) {
  const want = expectedFiles(dist);
  const have = vendoredFiles(dir);
  const problems = [];
  for (const [name, text] of want) {
    if (!have.has(name)) problems.push(`${name} is missing from the vendored copy`);
    else if (have.get(name) !== text) problems.push(`${name} differs from the fresh build`);
  }
  for (const name of have.keys()) {
    if (!want.has(name)) problems.push(`${name} is in the vendored copy but not in the build`);
  }
  return problems;
}

/** Replaces the vendored copy with the build in `dist`. */
export function write(dist = distDir, dir = vendorDir) {
  const want = expectedFiles(dist);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const [name, text] of want) writeFileSync(path.join(dir, name), text);
  return [...want.keys()];
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const cmd = process.argv[2];
  if (cmd === "write") {
    const names = write();
    console.log(`vendored ${names.join(", ")} into ${path.relative(process.cwd(), vendorDir) || vendorDir}`);
  } else if (cmd === "check") {
    const problems = drift();
    if (problems.length) {
      console.error(`the console's vendored client is stale (run scripts/console-vendor):\n  ${problems.join("\n  ")}`);
      process.exit(1);
    }
    console.log("the console's vendored client matches the build");
  } else {
    console.error("usage: node test/console-vendor.mjs write|check");
    process.exit(2);
  }
}
