/**
 * The user's notifications in this tab: the listed ones plus live ones, the unread count, read marks.
 *
 * The list from `notifications:list` is the source of truth; live and replayed
 * notifications are merged into it by position, so a record delivered twice
 * (replayed after a reconnect, then listed) is shown once. Read marks made on
 * any tab or device arrive as `notifications_read` and are applied here.
 */
import type { Notification, ReadMarks } from "./contract.generated";
import type { ListReply, ListedNotification, UnreadReply } from "./protocol";
import { Store } from "./store";
import { comparePositions } from "./validate";

export interface NotificationsState {
  /** Newest first, at most `maxItems`. */
  readonly items: readonly ListedNotification[];
  readonly unread: number;
  /** True once the first list arrived. */
  readonly loaded: boolean;
  readonly error: string | null;
}

/** How the feed reaches the gateway (the connection implements it). */
export interface NotificationsTransport {
  list(limit: number): Promise<ListReply>;
  markRead(request: { positions: readonly string[] } | { all: true }): Promise<UnreadReply>;
  unread(): Promise<UnreadReply>;
}

const EMPTY: NotificationsState = { items: [], unread: 0, loaded: false, error: null };

export class NotificationFeed {
  readonly store = new Store<NotificationsState>(EMPTY);

  constructor(
    private readonly transport: NotificationsTransport,
    readonly maxItems = 100,
  ) {}

  /** After a (re)connect: list again unless this tab's items are known to be complete. */
  synced(stale: boolean): void {
    if (stale || !this.store.get().loaded) void this.reload();
  }

  async reload(): Promise<void> {
    try {
      const reply = await this.transport.list(Math.min(this.maxItems, 100));
      if (!reply.ok) return this.#fail(reply.error.message);
      const state = this.store.get();
      const items = this.#merge(state.items, reply.items, true);
      const unread = reply.unread ?? items.filter((item) => !item.notification.read).length;
      this.store.set({ items, unread, loaded: true, error: null });
    } catch (error) {
      this.#fail(error instanceof Error ? error.message : String(error));
    }
  }

  /** A live or replayed notification. */
  received(notification: Notification, position: string): void {
    const state = this.store.get();
    if (state.items.some((item) => item.position === position)) return;
    const items = this.#merge(state.items, [{ notification, position }], false);
    this.store.set({ ...state, items, unread: state.unread + (notification.read ? 0 : 1) });
  }

  /** Some tab of the user marked notifications read. */
  markedRead(marks: ReadMarks): void {
    const state = this.store.get();
    const positions = new Set(marks.positions);
    const items = state.items.map((item) =>
      !item.notification.read && (marks.all || positions.has(item.position))
        ? { ...item, notification: { ...item.notification, read: true } }
        : item,
    );
    this.store.set({ ...state, items, unread: marks.all ? 0 : state.unread });
    if (!marks.all) void this.#refreshUnread(); // only the gateway knows about unlisted ones
  }

  /** Marks read here at once, then at the gateway; a failure (e.g. disconnected) shows in `error`, never throws. */
  async markRead(positions: readonly string[]): Promise<void> {
    if (positions.length === 0) return;
    this.markedRead({ positions: [...positions], all: false });
    await this.#send({ positions });
  }

  async markAllRead(): Promise<void> {
    this.markedRead({ positions: [], all: true });
    await this.#send({ all: true });
  }

  async #send(request: { positions: readonly string[] } | { all: true }): Promise<void> {
    try {
      this.#applyUnread(await this.transport.markRead(request));
    } catch (error) {
      this.#fail(error instanceof Error ? error.message : String(error));
    }
  }

  async #refreshUnread(): Promise<void> {
    try {
      this.#applyUnread(await this.transport.unread());
    } catch {
      // Disconnected: the next sync lists again.
    }
  }

  #applyUnread(reply: UnreadReply): void {
    if (reply.ok) this.store.set({ ...this.store.get(), unread: reply.unread });
    else this.#fail(reply.error.message);
  }

  #merge(
    current: readonly ListedNotification[],
    incoming: readonly ListedNotification[],
    incomingWins: boolean,
  ): ListedNotification[] {
    const byPosition = new Map<string, ListedNotification>();
    for (const item of incomingWins ? current : incoming) byPosition.set(item.position, item);
    for (const item of incomingWins ? incoming : current) byPosition.set(item.position, item);
    return [...byPosition.values()]
      .sort((a, b) => comparePositions(b.position, a.position))
      .slice(0, this.maxItems);
  }

  #fail(message: string): void {
    this.store.set({ ...this.store.get(), error: message });
  }
}
