/**
 * Tokens from the application's provider, and when to refresh them.
 *
 * The client reads a token's claims only to plan (when it expires, whose
 * positions to keep); the gateway is what verifies it.
 */
import { isRecord } from "./validate";

/** Returns a JWT for the current user; called at connect, on every reconnect and before expiry. */
export type TokenProvider = () => Promise<string> | string;

export interface TokenClaims {
  readonly sub: string;
  /** Seconds since the epoch. */
  readonly exp: number;
  readonly iat?: number;
}

function base64UrlDecode(text: string): string {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(text.length / 4) * 4, "=");
  const bytes = Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The claims the client plans with, or null when the token is not a readable JWT. */
export function readClaims(token: string): TokenClaims | null {
  const payload = token.split(".")[1];
  if (payload === undefined || payload.length > 8192) return null;
  let claims: unknown;
  try {
    claims = JSON.parse(base64UrlDecode(payload));
  } catch {
    return null;
  }
  if (!isRecord(claims) || typeof claims.sub !== "string" || typeof claims.exp !== "number") return null;
  return typeof claims.iat === "number"
    ? { sub: claims.sub, exp: claims.exp, iat: claims.iat }
    : { sub: claims.sub, exp: claims.exp };
}

/**
 * Milliseconds from `nowMs` until a token should be replaced: a fifth of its
 * lifetime before it expires, at most a minute before, and never less than a second from now.
 */
export function refreshDelayMs(claims: TokenClaims, nowMs: number): number {
  const expiresMs = claims.exp * 1000;
  const lifetimeMs = expiresMs - (claims.iat !== undefined ? claims.iat * 1000 : nowMs);
  const margin = Math.min(60_000, Math.max(lifetimeMs, 0) / 5);
  return Math.max(1000, expiresMs - margin - nowMs);
}

/** Caches the provider's token while it has time left; asks for a fresh one otherwise. */
export class TokenSource {
  #token: string | null = null;

  constructor(
    private readonly provider: TokenProvider,
    private readonly now: () => number = Date.now,
  ) {}

  /** A token that is not about to expire (the cached one, or a fresh one). */
  async current(): Promise<string> {
    const claims = this.#token === null ? null : readClaims(this.#token);
    if (this.#token !== null && claims !== null && refreshDelayMs(claims, this.now()) > 1000) return this.#token;
    return this.fresh();
  }

  /** Always asks the provider. */
  async fresh(): Promise<string> {
    const token = await this.provider();
    if (typeof token !== "string" || token === "") throw new Error("the token provider returned no token");
    this.#token = token;
    return token;
  }
}
