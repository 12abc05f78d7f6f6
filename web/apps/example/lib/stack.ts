/**
 * Where the gateway is and how to sign tokens for it, read on the server at request time.
 *
 * Environment first (FANOUT_GATEWAY_URL, FANOUT_JWT_SECRET), else the files that
 * `./run.sh` keeps in the repository's `.fanout-local/` (stack.json, secret). A real
 * application has its own auth service instead; the secret never reaches the browser.
 */
import "server-only";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";

const STATE_DIR = process.env.FANOUT_STATE_DIR ?? resolve(process.cwd(), "../../../.fanout-local");

function readState(name: string): string | null {
  try {
    return readFileSync(/*turbopackIgnore: true*/ resolve(STATE_DIR, name), "utf8");
  } catch {
    return null;
  }
}

export function gatewayUrl(): string {
  if (process.env.FANOUT_GATEWAY_URL) return process.env.FANOUT_GATEWAY_URL;
  const stack: unknown = JSON.parse(readState("stack.json") ?? "{}");
  const url = typeof stack === "object" && stack !== null && "url" in stack ? stack.url : null;
  return typeof url === "string" ? url : "http://127.0.0.1:8000";
}

export function jwtSecret(): string | null {
  return process.env.FANOUT_JWT_SECRET ?? readState("secret")?.trim() ?? null;
}

/** Who the example signs in as: the stack's demo user and team unless told otherwise. */
export function demoIdentity(): { user: string; teams: string[]; ttlS: number } {
  return {
    user: process.env.FANOUT_USER ?? "demo",
    teams: (process.env.FANOUT_TEAMS ?? "demo").split(",").filter(Boolean),
    ttlS: Number(process.env.FANOUT_TOKEN_TTL_S ?? 3600),
  };
}
