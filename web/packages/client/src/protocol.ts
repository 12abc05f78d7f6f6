/**
 * The gateway's Socket.IO events and replies (docs/protocol.md, "Client contract").
 *
 * Records (market events, notifications, execution updates) are generated from the
 * Python contract; the replies below are the gateway's own shapes, written here by
 * hand, each with the reader that checks a reply before the client uses it.
 */
import type { Socket } from "socket.io-client";
import type { ExecutionUpdate, MarketEvent, Notification, ReadMarks } from "./contract.generated";
import { isPosition, isRecord, parseNotification } from "./validate";

export interface ErrorReply {
  readonly ok: false;
  readonly error: { readonly code: string; readonly message: string };
}
export type TopicResult =
  /** `collected`: whether a collector serves the topic (absent while the node does not know yet). */
  | { readonly topic: string; readonly ok: true; readonly collected?: boolean }
  | { readonly topic: string; readonly ok: false; readonly error: string; readonly message: string };
export type SubscribeReply = { readonly ok: true; readonly results: readonly TopicResult[] } | ErrorReply;
export type RefreshReply = { readonly ok: true; readonly expires_at: number } | ErrorReply;
export interface ListedNotification {
  readonly notification: Notification;
  readonly position: string;
}
export type ListReply =
  | {
      readonly ok: true;
      readonly items: readonly ListedNotification[];
      readonly cursor: string | null;
      readonly unread?: number;
    }
  | ErrorReply;
export type UnreadReply = { readonly ok: true; readonly unread: number } | ErrorReply;
/** Subscribers of a topic on every gateway node, refreshed every 5 s (docs/protocol.md, `presence`). */
export type PresenceTopicResult =
  | { readonly topic: string; readonly ok: true; readonly subscribers: number }
  | { readonly topic: unknown; readonly ok: false; readonly error: string; readonly message: string };
/** Users of one of the client's teams online on any node: `online` counts all, `users` lists up to 100. */
export type PresenceTeamResult =
  | { readonly team: string; readonly ok: true; readonly online: number; readonly users: readonly string[] }
  | { readonly team: unknown; readonly ok: false; readonly error: string; readonly message: string };
export type PresenceReply =
  | {
      readonly ok: true;
      readonly topics: readonly PresenceTopicResult[];
      readonly teams: readonly PresenceTeamResult[];
    }
  | ErrorReply;

/** Where one stream stands after a (re)connect. */
export interface StreamStatus {
  readonly position: string;
  readonly recovered: number;
  readonly complete: boolean;
}
/** The `sync` event: every stream caught up (or not: `complete: false` means list again). */
export interface SyncStatus {
  readonly complete: boolean;
  readonly notifications?: StreamStatus;
  readonly executions: Readonly<Record<string, StreamStatus>>;
  readonly subscriptions?: SubscribeReply;
}
export interface SessionEnded {
  readonly code: string;
  readonly message: string;
}

/** What the gateway emits. Arguments are what the contract promises; the client validates them anyway. */
export interface ServerToClientEvents {
  market: (topic: string, data: MarketEvent) => void;
  notification: (notification: Notification, position: string) => void;
  execution: (update: ExecutionUpdate, position: string) => void;
  sync: (status: SyncStatus) => void;
  notifications_read: (marks: ReadMarks) => void;
  session_expired: (reason: SessionEnded) => void;
  session_revoked: (reason: SessionEnded) => void;
}

/** What a client may emit; every event is acknowledged. */
export interface ClientToServerEvents {
  subscribe: (topics: readonly string[], ack: (reply: SubscribeReply) => void) => void;
  unsubscribe: (topics: readonly string[], ack: (reply: SubscribeReply) => void) => void;
  refresh: (request: { token: string }, ack: (reply: RefreshReply) => void) => void;
  "notifications:list": (
    request: { limit?: number; cursor?: string | null },
    ack: (reply: ListReply) => void,
  ) => void;
  "notifications:read": (
    request: { positions: readonly string[] } | { all: true },
    ack: (reply: UnreadReply) => void,
  ) => void;
  "notifications:unread": (request: null, ack: (reply: UnreadReply) => void) => void;
  presence: (
    request: { topics?: readonly string[]; teams?: readonly string[] },
    ack: (reply: PresenceReply) => void,
  ) => void;
}

export type FanoutSocket = Socket<ServerToClientEvents, ClientToServerEvents>;

export class BadReply extends Error {
  constructor(what: string) {
    super(`unexpected ${what} from the gateway`);
    this.name = "BadReply";
  }
}

function errorReply(value: Record<string, unknown>): ErrorReply | undefined {
  const error = value.error;
  if (value.ok === false && isRecord(error) && typeof error.code === "string") {
    return { ok: false, error: { code: error.code, message: typeof error.message === "string" ? error.message : "" } };
  }
  return undefined;
}

function count(value: unknown): number | undefined {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 ? value : undefined;
}

export function readSubscribeReply(value: unknown): SubscribeReply {
  if (!isRecord(value)) throw new BadReply("subscribe reply");
  const failed = errorReply(value);
  if (failed) return failed;
  if (value.ok !== true || !Array.isArray(value.results)) throw new BadReply("subscribe reply");
  const results = value.results.map((result: unknown): TopicResult => {
    if (!isRecord(result) || typeof result.topic !== "string") throw new BadReply("subscribe result");
    if (result.ok === true) {
      return typeof result.collected === "boolean"
        ? { topic: result.topic, ok: true, collected: result.collected }
        : { topic: result.topic, ok: true };
    }
    return {
      topic: result.topic,
      ok: false,
      error: typeof result.error === "string" ? result.error : "unknown",
      message: typeof result.message === "string" ? result.message : "",
    };
  });
  return { ok: true, results };
}

export function readRefreshReply(value: unknown): RefreshReply {
  if (!isRecord(value)) throw new BadReply("refresh reply");
  const failed = errorReply(value);
  if (failed) return failed;
  const expiresAt = count(value.expires_at);
  if (value.ok !== true || expiresAt === undefined) throw new BadReply("refresh reply");
  return { ok: true, expires_at: expiresAt };
}

export function readUnreadReply(value: unknown): UnreadReply {
  if (!isRecord(value)) throw new BadReply("unread reply");
  const failed = errorReply(value);
  if (failed) return failed;
  const unread = count(value.unread);
  if (value.ok !== true || unread === undefined) throw new BadReply("unread reply");
  return { ok: true, unread };
}

export function readListReply(value: unknown): ListReply {
  if (!isRecord(value)) throw new BadReply("notifications list");
  const failed = errorReply(value);
  if (failed) return failed;
  if (value.ok !== true || !Array.isArray(value.items)) throw new BadReply("notifications list");
  const items = value.items.map((item: unknown): ListedNotification => {
    if (!isRecord(item) || !isPosition(item.position)) throw new BadReply("notifications list item");
    return { notification: parseNotification(item.notification), position: item.position };
  });
  const cursor = typeof value.cursor === "string" ? value.cursor : null;
  const unread = count(value.unread);
  return unread === undefined ? { ok: true, items, cursor } : { ok: true, items, cursor, unread };
}

function readStreamStatus(value: unknown): StreamStatus | undefined {
  if (!isRecord(value) || !isPosition(value.position)) return undefined;
  return { position: value.position, recovered: count(value.recovered) ?? 0, complete: value.complete === true };
}

export function readSyncStatus(value: unknown): SyncStatus {
  if (!isRecord(value)) throw new BadReply("sync status");
  const executions: Record<string, StreamStatus> = {};
  if (isRecord(value.executions)) {
    for (const [team, part] of Object.entries(value.executions)) {
      const status = readStreamStatus(part);
      if (status) executions[team] = status;
    }
  }
  const notifications = readStreamStatus(value.notifications);
  const subscriptions = value.subscriptions === undefined ? undefined : readSubscribeReply(value.subscriptions);
  return {
    complete: value.complete === true,
    executions,
    ...(notifications ? { notifications } : {}),
    ...(subscriptions ? { subscriptions } : {}),
  };
}

export function readSessionEnded(value: unknown): SessionEnded {
  return isRecord(value) && typeof value.code === "string"
    ? { code: value.code, message: typeof value.message === "string" ? value.message : "" }
    : { code: "unknown", message: "" };
}

