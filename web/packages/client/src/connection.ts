/**
 * One connection to the gateway for a page: the official socket.io-client, typed, plus what
 * every application would otherwise write itself.
 *
 * - Tokens come from the application's `getToken`; `auth` is a function, so every
 *   reconnect sends a current token, the user's notification position and the
 *   wanted topics. A token is refreshed over the open socket (`refresh`) before it
 *   expires; a refused or expired session reconnects with a fresh token.
 * - Everything received is validated against the contract before anyone sees it.
 * - Notifications: after each `sync` this tab lists again when its own items may be
 *   incomplete (history lost, or another tab moved the shared position past what
 *   this tab saw); otherwise the replayed records complete it.
 * - Executions resume from this tab's own positions; a tab without one gets the
 *   teams' current states from the gateway instead (see positions.ts for why).
 */
import { io, type ManagerOptions, type SocketOptions } from "socket.io-client";
import type { Topic } from "./contract.generated";
import { ExecutionBoard } from "./executions";
import { NotificationFeed } from "./notifications";
import { PositionStore } from "./positions";
import {
  readListReply,
  readRefreshReply,
  readSessionEnded,
  readSubscribeReply,
  readSyncStatus,
  readUnreadReply,
  type FanoutSocket,
  type SyncStatus,
} from "./protocol";
import { Store } from "./store";
import { TopicRegistry } from "./subscriptions";
import { readClaims, refreshDelayMs, TokenSource, type TokenProvider } from "./tokens";
import { topicOf } from "./topics";
import {
  comparePositions,
  isPosition,
  isTopic,
  parseExecutionUpdate,
  parseMarketEvent,
  parseNotification,
  parseReadMarks,
} from "./validate";

export type ConnectionState =
  | { readonly status: "idle" }
  | { readonly status: "connecting" }
  | { readonly status: "connected"; readonly synced: boolean }
  | { readonly status: "disconnected"; readonly reason: string }
  /** The gateway refused the connection (`code` as in docs/protocol.md); the client retries. */
  | { readonly status: "refused"; readonly code: string; readonly message: string }
  /** The backend revoked this user's access; no retry. */
  | { readonly status: "revoked" };

export interface FanoutClientOptions {
  readonly url: string;
  readonly getToken: TokenProvider;
  /** Where the shared notification position is kept (default: localStorage when there is one). */
  readonly storage?: Storage | null;
  /** Passed on to socket.io-client (e.g. `transports: ["websocket"]`, `path`). */
  readonly socket?: Partial<ManagerOptions & SocketOptions>;
  /** Seconds to wait for an acknowledgement. */
  readonly ackTimeoutS?: number;
  /** Told about every record that failed validation (default: console.warn). */
  readonly onInvalid?: (error: unknown, what: string) => void;
}

const RETRY_BASE_MS = 1000;
const RETRY_MAX_MS = 30_000;
const REFRESH_RETRY_MS = 5000;

export class FanoutClient {
  readonly socket: FanoutSocket;
  readonly state = new Store<ConnectionState>({ status: "idle" });
  readonly topics: TopicRegistry;
  readonly notifications: NotificationFeed;
  readonly executions = new ExecutionBoard();
  /** The last `sync` status, for applications that want its details. */
  readonly lastSync = new Store<SyncStatus | null>(null);

  readonly #tokens: TokenSource;
  readonly #ackTimeoutMs: number;
  readonly #onInvalid: (error: unknown, what: string) => void;
  readonly #storage: Storage | null | undefined;
  #positions: PositionStore | null = null;
  #user: string | null = null;
  #token = "";
  #sentTopics: string[] = [];
  #resumedFrom: string | undefined;
  #seenNotification: string | undefined;
  /** What this tab had seen itself when it sent `#resumedFrom` (replays arrive before `sync`). */
  #seenAtAuth: string | undefined;
  readonly #executionPositions = new Map<string, string>();
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #attempts = 0;
  #revoked = false;
  #closed = false;

  constructor(options: FanoutClientOptions) {
    this.#tokens = new TokenSource(options.getToken);
    this.#ackTimeoutMs = (options.ackTimeoutS ?? 10) * 1000;
    this.#onInvalid = options.onInvalid ?? ((error, what) => console.warn(`fanout: dropped an invalid ${what}`, error));
    this.#storage = options.storage;
    this.socket = io(options.url, {
      ...options.socket,
      autoConnect: false,
      auth: (send) => void this.#auth().then(send),
    });
    this.topics = new TopicRegistry({
      ready: () => this.state.get().status === "connected" && this.lastSync.get() !== null,
      request: (event, topics) => this.#ask(event, topics).then(readSubscribeReply),
    });
    this.notifications = new NotificationFeed({
      list: (limit) => this.#ask("notifications:list", { limit }).then(readListReply),
      markRead: (request) => this.#ask("notifications:read", request).then(readUnreadReply),
      unread: () => this.#ask("notifications:unread", null).then(readUnreadReply),
    });
    this.#listen();
  }

  connect(): void {
    if (this.#closed || this.socket.connected) return;
    this.state.set({ status: "connecting" });
    this.socket.connect();
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#refreshTimer);
    clearTimeout(this.#retryTimer);
    this.socket.disconnect();
    this.topics.close();
    this.#positions?.close();
  }

  /** Want `topic` until the returned function is called (see TopicRegistry). */
  subscribe(topic: Topic, listener?: Parameters<TopicRegistry["acquire"]>[1]): () => void {
    return this.topics.acquire(topic, listener);
  }

  async #ask(event: string, payload: unknown): Promise<unknown> {
    // The typed emit cannot express "any event of the contract" generically; the reply is read by the caller.
    const socket = this.socket.timeout(this.#ackTimeoutMs) as unknown as {
      emitWithAck(event: string, payload: unknown): Promise<unknown>;
    };
    return socket.emitWithAck(event, payload);
  }

  /** The CONNECT payload: a current token, where this tab stands, and the wanted topics. */
  async #auth(): Promise<Record<string, unknown>> {
    try {
      this.#token = await this.#tokens.current();
    } catch (error) {
      this.#token = "";
      this.#onInvalid(error, "token from getToken");
    }
    this.#switchUser(readClaims(this.#token)?.sub ?? null);
    this.#resumedFrom = this.#positions?.notifications;
    this.#seenAtAuth = this.#seenNotification;
    this.#sentTopics = this.topics.wanted();
    const positions: Record<string, unknown> = { executions: Object.fromEntries(this.#executionPositions) };
    if (this.#resumedFrom !== undefined) positions.notifications = this.#resumedFrom;
    return { token: this.#token, positions, subscriptions: this.#sentTopics };
  }

  /** A token for another user (sign-out and in) must not resume the previous user's streams. */
  #switchUser(user: string | null): void {
    if (user === this.#user) return;
    this.#user = user;
    this.#positions?.close();
    this.#positions = user === null ? null : new PositionStore(user, this.#storage);
    this.#seenNotification = undefined;
    this.#executionPositions.clear();
  }

  #listen(): void {
    const socket = this.socket;
    socket.on("connect", () => {
      this.#attempts = 0;
      this.lastSync.set(null);
      this.state.set({ status: "connected", synced: false });
      this.#scheduleRefresh();
    });
    socket.on("sync", (raw) => this.#synced(raw));
    socket.on(
      "market",
      this.#guarded("market event", (topic: string, data: unknown) => {
        const event = parseMarketEvent(data);
        if (!isTopic(topic) || topicOf(event) !== topic) throw new Error(`an event of ${topicOf(event)} on ${topic}`);
        this.topics.deliver(topic, event);
      }),
    );
    socket.on(
      "notification",
      this.#guarded("notification", (raw: unknown, position: unknown) => {
        const notification = parseNotification(raw);
        if (!isPosition(position)) throw new Error(`bad position ${String(position)}`);
        this.#sawNotification(position);
        this.notifications.received(notification, position);
      }),
    );
    socket.on(
      "execution",
      this.#guarded("execution update", (raw: unknown, position: unknown) => {
        const update = parseExecutionUpdate(raw);
        if (!isPosition(position)) throw new Error(`bad position ${String(position)}`);
        this.#executionPositions.set(update.team_id, position);
        this.executions.apply(update);
      }),
    );
    socket.on(
      "notifications_read",
      this.#guarded("read marks", (raw: unknown) => this.notifications.markedRead(parseReadMarks(raw))),
    );
    socket.on("session_revoked", () => {
      this.#revoked = true;
    });
    socket.on("disconnect", (reason) => {
      clearTimeout(this.#refreshTimer);
      this.topics.disconnected();
      this.lastSync.set(null);
      if (this.#closed) return;
      if (this.#revoked) {
        this.state.set({ status: "revoked" });
      } else {
        this.state.set({ status: "disconnected", reason });
        // The client reconnects by itself after a transport loss, not after the server's disconnect
        // (an expired session): then connect again, with a fresh token.
        if (!socket.active) this.#retry();
      }
    });
    socket.on("connect_error", (error: Error & { data?: unknown }) => {
      const details = readSessionEnded(error.data);
      const code = details.code !== "unknown" ? details.code : error.message;
      this.state.set({ status: "refused", code, message: details.message || error.message });
      if (!socket.active) this.#retry(); // refused by the gateway: socket.io-client does not retry that
    });
  }

  /** `handler`, reporting (not throwing) what fails validation: one bad record must not stop the others. */
  #guarded<A extends unknown[]>(what: string, handler: (...args: A) => void): (...args: A) => void {
    return (...args) => {
      try {
        handler(...args);
      } catch (error) {
        this.#onInvalid(error, what);
      }
    };
  }

  #synced(raw: unknown): void {
    let status: SyncStatus;
    try {
      status = readSyncStatus(raw);
    } catch (error) {
      this.#onInvalid(error, "sync status");
      return;
    }
    const notifications = status.notifications;
    // This tab's items are complete only if it resumed from the position it had itself reached.
    const stale = !status.complete || notifications === undefined || this.#seenAtAuth !== this.#resumedFrom;
    if (notifications !== undefined) this.#sawNotification(notifications.position);
    for (const [team, part] of Object.entries(status.executions)) this.#executionPositions.set(team, part.position);
    this.lastSync.set(status);
    this.state.set({ status: "connected", synced: true });
    this.topics.synced(this.#sentTopics, status.subscriptions);
    this.notifications.synced(stale);
  }

  #sawNotification(position: string): void {
    if (this.#seenNotification === undefined || comparePositions(position, this.#seenNotification) > 0) {
      this.#seenNotification = position;
    }
    this.#positions?.advance(position);
  }

  #scheduleRefresh(): void {
    clearTimeout(this.#refreshTimer);
    const claims = readClaims(this.#token);
    if (claims === null) return;
    this.#refreshTimer = setTimeout(() => void this.#refresh(), refreshDelayMs(claims, Date.now()));
  }

  /** Replace the socket's token before it expires, without reconnecting. */
  async #refresh(): Promise<void> {
    try {
      const token = await this.#tokens.fresh();
      const reply = readRefreshReply(await this.#ask("refresh", { token }));
      if (reply.ok) {
        this.#token = token;
        this.#scheduleRefresh();
        return;
      }
      if (reply.error.code === "forbidden") {
        // The user's teams changed: only a new connection may carry them.
        this.socket.disconnect();
        this.connect();
        return;
      }
    } catch (error) {
      this.#onInvalid(error, "token refresh");
    }
    if (this.socket.connected) this.#refreshTimer = setTimeout(() => void this.#refresh(), REFRESH_RETRY_MS);
  }

  #retry(): void {
    clearTimeout(this.#retryTimer);
    const delay = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** this.#attempts) * (0.5 + Math.random() / 2);
    this.#attempts += 1;
    this.#retryTimer = setTimeout(() => this.connect(), this.#attempts === 1 ? 0 : delay);
  }
}
