/** Starts a real local stack (Redis and one gateway, no exchanges) for the vitest run. */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:net";
import { createInterface } from "node:readline";
import type { TestProject } from "vitest/node";
import { REPO, requirePython } from "./gateway";

let stack: ChildProcess | undefined;
let stateDir = "";

export async function setup(project: TestProject): Promise<void> {
  stateDir = mkdtempSync(join(tmpdir(), "fanout-vitest-"));
  const port = await freePort();
  const args = ["-m", "stack", "--exchanges", "", "--port", String(port), "--redis-port", "0", "--state-dir", stateDir];
  // No leeway, so a short-lived token really expires when it says.
  const child = spawn(requirePython(), args, {
    cwd: REPO,
    env: { ...process.env, GATEWAY_JWT_LEEWAY_S: "0" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  stack = child;
  const log: string[] = [];
  const ready = await new Promise<Record<string, unknown>>((resolveReady, reject) => {
    const timer = setTimeout(() => reject(new Error(`the stack was not ready in 60 s:\n${log.join("\n")}`)), 60_000);
    child.on("exit", (code) => reject(new Error(`the stack exited (${code}):\n${log.join("\n")}`)));
    createInterface({ input: child.stderr! }).on("line", (line) => {
      log.push(line);
      if (!line.startsWith("{")) return;
      const record = JSON.parse(line) as Record<string, unknown>;
      if (record.msg === "ready") {
        clearTimeout(timer);
        resolveReady(record);
      }
    });
  });
  project.provide("gatewayUrl", String(ready.url));
  project.provide("redisUrl", String(ready.redis_url));
  project.provide("jwtSecret", readFileSync(join(stateDir, "secret"), "utf8").trim());
}

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (address && typeof address === "object" ? resolvePort(address.port) : reject(new Error("no port"))));
    });
  });
}

export async function teardown(): Promise<void> {
  if (stack && stack.exitCode === null) {
    const exited = new Promise((resolveExit) => stack?.once("exit", resolveExit));
    stack.kill("SIGTERM");
    await exited;
  }
  rmSync(stateDir, { recursive: true, force: true });
}
