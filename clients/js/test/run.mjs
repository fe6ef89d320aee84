// `npm test`: type-checks the declarations, then runs every test file with Node's test runner,
// one file at a time (the loss test wants the machine to itself). Arguments pick files by name:
// `node test/run.mjs console admin-api` runs test/console.test.mjs and test/admin-api.test.mjs.
// Node 20 has WebSocket only behind --experimental-websocket; Node 22+ has it on by default.
import { spawnSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.resolve(here, "..");
const only = process.argv.slice(2);
const files = (only.length ? only : ["unit", "schemas", "integration", "redis", "browser", "console", "admin-api", "loss"]).map((f) =>
  path.join("test", f.endsWith(".mjs") ? path.basename(f) : `${f}.test.mjs`),
);

const tsc = spawnSync(process.execPath, [path.join(pkg, "node_modules/typescript/bin/tsc"), "-p", "test/tsconfig.json"], {
  cwd: pkg,
  stdio: "inherit",
});
if (tsc.status !== 0) {
  console.error("type check of the declarations failed");
  process.exit(tsc.status ?? 1);
}

const flags = typeof globalThis.WebSocket === "function" ? [] : ["--experimental-websocket"];
const run = spawnSync(process.execPath, [...flags, "--test", "--test-concurrency=1", ...files], {
  cwd: pkg,
  stdio: "inherit",
});
process.exit(run.status ?? 1);
