/** GET /api/token: a short-lived gateway token for the signed-in user (here: the demo user). */
import { createHmac } from "node:crypto";
import { demoIdentity, jwtSecret } from "../../../lib/stack";

export const dynamic = "force-dynamic";

const base64url = (text: string): string => Buffer.from(text).toString("base64url");

export function GET(): Response {
  const secret = jwtSecret();
  if (secret === null) {
    return Response.json({ error: "no secret: start ./run.sh, or set FANOUT_JWT_SECRET" }, { status: 503 });
  }
  const { user, teams, ttlS } = demoIdentity();
  const now = Math.floor(Date.now() / 1000);
  const body = `${base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${base64url(
    JSON.stringify({ sub: user, teams, iat: now, exp: now + ttlS }),
  )}`;
  const token = `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
  return Response.json({ token }, { headers: { "Cache-Control": "no-store" } });
}
