import type { Metadata } from "next";
import Link from "next/link";
import type { ReactNode } from "react";
import { ConnectionBadge } from "../components/ConnectionBadge";
import { NotificationBell } from "../components/NotificationBell";
import { gatewayUrl } from "../lib/stack";
import "./globals.css";
import { Providers } from "./providers";

export const metadata: Metadata = { title: "fanout example", description: "Market data, notifications, executions" };
// The gateway URL is read per request, so one build runs against any stack.
export const dynamic = "force-dynamic";

export default function RootLayout({ children }: { children: ReactNode }): ReactNode {
  return (
    <html lang="en">
      <body>
        <Providers url={gatewayUrl()}>
          <header>
            <nav>
              <Link href="/">Market</Link>
              <Link href="/notifications">Notifications</Link>
              <Link href="/executions">Executions</Link>
            </nav>
            <NotificationBell />
            <ConnectionBadge />
          </header>
          <main>{children}</main>
        </Providers>
      </body>
    </html>
  );
}
