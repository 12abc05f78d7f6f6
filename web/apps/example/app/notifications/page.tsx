"use client";
import { useNotifications } from "@fanout/react";
import type { ReactNode } from "react";

export default function NotificationsPage(): ReactNode {
  const { items, unread, loaded, error, markRead, markAllRead } = useNotifications();
  return (
    <div className="panel">
      <div style={{ display: "flex", justifyContent: "space-between", alignItems: "center" }}>
        <h2>Notifications · {unread} unread</h2>
        <button onClick={() => void markAllRead()} disabled={unread === 0} data-testid="mark-all-read">
          Mark all read
        </button>
      </div>
      {error && <p className="sell">{error}</p>}
      {!loaded && <p className="muted">Loading…</p>}
      <ul className="list" data-testid="notifications">
        {items.map(({ notification, position }) => (
          <li key={position} className={notification.read ? "" : "unread"} data-position={position}>
            <span className={notification.type === "error" ? "sell" : notification.type === "success" ? "buy" : ""}>
              {notification.title}
            </span>{" "}
            <span className="muted">{notification.message}</span>{" "}
            <span className="muted">· {new Date(notification.created_at).toLocaleTimeString()}</span>{" "}
            {notification.action && (
              <a href={notification.action.url} rel="noreferrer">
                {notification.action.label}
              </a>
            )}{" "}
            {!notification.read && <button onClick={() => void markRead([position])}>Mark read</button>}
          </li>
        ))}
      </ul>
    </div>
  );
}
