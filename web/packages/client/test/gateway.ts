/**
 * Test helpers around the real gateway that global-setup.ts starts: tokens and publishing.
 *
 * Publishing goes through the Python publisher (shared/publisher.py), the same code a
 * backend service uses, so the records reach the gateway exactly as in production.
 */
import { execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { inject } from "vitest";

export const REPO = resolve(import.meta.dirname, "../../../..");
export const PYTHON = process.env.FANOUT_PYTHON ?? resolve(REPO, ".venv/bin/python");

export function requirePython(): string {
  if (!existsSync(PYTHON)) throw new Error(`no Python at ${PYTHON}: run ./test.sh once, or set FANOUT_PYTHON`);
  return PYTHON;
}

declare module "vitest" {
  export interface ProvidedContext {
    gatewayUrl: string;
    redisUrl: string;
    jwtSecret: string;
  }
}

export const gatewayUrl = (): string => inject("gatewayUrl");

const base64url = (data: string | Buffer): string => Buffer.from(data).toString("base64url");

/** An HS256 token the test gateway accepts. */
export function mintToken(sub: string, options: { teams?: string[]; ttlS?: number } = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub, teams: options.teams ?? [], iat: now, exp: now + (options.ttlS ?? 300) };
  const body = `${header}.${base64url(JSON.stringify(claims))}`;
  return `${body}.${createHmac("sha256", inject("jwtSecret")).update(body).digest("base64url")}`;
}

const PUBLISH = `
import sys, redis
from shared import codec
from shared.publisher import SyncPublisher
publisher = SyncPublisher(redis.Redis.from_url(sys.argv[1]))
kind, data = sys.argv[2], sys.argv[3]
if kind == "market":
    publisher.publish_market([codec.decode_market(data)])
else:
    decode = codec.decode_notification if kind == "notification" else codec.decode_execution
    print(publisher.publish(decode(data)) or "")
`;

/** Publish one record with the Python publisher; returns its position (notifications, executions). */
export function publish(kind: "market" | "notification" | "execution", record: object): string {
  return execFileSync(requirePython(), ["-c", PUBLISH, inject("redisUrl"), kind, JSON.stringify(record)], {
    cwd: REPO,
    encoding: "utf8",
  }).trim();
}

/** Waits until `condition` holds, polling; generous by default (the machine may be busy). */
export async function until(condition: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolveWait) => setTimeout(resolveWait, 20));
  }
}

let counter = 0;
/** A user id of its own for each test, so tests never see each other's notifications. */
export const uniqueUser = (name: string): string => `${name}-${process.pid}-${Date.now()}-${++counter}`;
