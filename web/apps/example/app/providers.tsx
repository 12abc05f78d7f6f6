"use client";
/** The page's one gateway connection; tokens come from this app's own /api/token. */
import { FanoutProvider } from "@fanout/react";
import type { ReactNode } from "react";

async function getToken(): Promise<string> {
  const response = await fetch("/api/token", { cache: "no-store" });
  const body: unknown = await response.json();
  const token = typeof body === "object" && body !== null && "token" in body ? body.token : null;
  if (!response.ok || typeof token !== "string") throw new Error(`no token from /api/token (${response.status})`);
  return token;
}

export function Providers({ url, children }: { url: string; children: ReactNode }): ReactNode {
  return (
    <FanoutProvider url={url} getToken={getToken}>
      {children}
    </FanoutProvider>
  );
}
