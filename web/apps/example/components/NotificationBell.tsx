"use client";
import { useNotifications } from "@fanout/react";
import Link from "next/link";
import type { ReactNode } from "react";

/** The unread count; marking read in any tab clears it in every tab (the gateway tells them all). */
export function NotificationBell(): ReactNode {
  const { unread, loaded } = useNotifications();
  return (
    <Link href="/notifications" className="bell" aria-label={`${unread} unread notifications`} data-testid="bell">
      <svg width="18" height="18" viewBox="0 0 24 24" fill="currentColor" aria-hidden="true">
        <path d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3a1.5 1.5 0 0 0-3 0v1.16A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z" />
      </svg>
      {loaded && unread > 0 && <span className="count" data-testid="unread">{unread}</span>}
    </Link>
  );
}
