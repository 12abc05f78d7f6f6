"use client";
import { useConnectionState, useFanoutClient } from "@fanout/react";
import type { ReactNode } from "react";

/** Where the connection stands, as a user should see it (the code of a refusal included). */
export function ConnectionBadge(): ReactNode {
  const state = useConnectionState();
  const client = useFanoutClient();
  const label =
    state.status === "connected"
      ? state.synced ? "live" : "syncing"
      : state.status === "refused"
        ? `refused: ${state.code}`
        : state.status;  // prettier-ignore
  const ok = state.status === "connected";
  return (
    <span className={`badge ${ok ? "ok" : "bad"}`} data-testid="connection" data-socket-id={ok ? client?.socket.id : ""}>
      {label}
    </span>
  );
}
