#!/usr/bin/env node
// `npm run example` (from web/): the local stack (./run.sh at the repository root), then this app's dev server on
// http://localhost:3000 once the stack logs `ready`. Ctrl-C stops both. Extra arguments go to run.sh.
import { spawn } from "node:child_process";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const app = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const stack = spawn(resolve(app, "../../../run.sh"), process.argv.slice(2), { stdio: ["ignore", "inherit", "pipe"] });
let next = null;

createInterface({ input: stack.stderr }).on("line", (line) => {
  process.stderr.write(line + "\n");
  if (next !== null || !line.startsWith("{")) return;
  const record = JSON.parse(line);
  if (record.msg !== "ready") return;
  next = spawn("npx", ["next", "dev", "--port", "3000"], {
    cwd: app,
    stdio: "inherit",
    env: { ...process.env, FANOUT_GATEWAY_URL: record.url },
  });
  next.on("exit", () => stack.kill("SIGTERM"));
  console.log(`\nexample app: http://localhost:3000 (gateway ${record.url}, user ${record.demo_user})\n`);
});

stack.on("exit", (code) => {
  next?.kill("SIGTERM");
  process.exitCode = code ?? 1;
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    next?.kill("SIGTERM");
    stack.kill("SIGTERM");
  });
}
