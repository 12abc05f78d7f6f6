/**
 * Market topics shared by everything on a page: reference-counted, one `subscribe` per topic.
 *
 * Components acquire and release topics as they mount and unmount; the registry
 * compares what is wanted with what the gateway holds and sends only the
 * difference, batched at the end of the current task. So a topic wanted by ten
 * components is subscribed once, a StrictMode mount-unmount-mount sends nothing
 * extra, and the last release unsubscribes. After a reconnect the wanted topics
 * are restored through `auth.subscriptions` (see connection.ts).
 */
import type { MarketEvent, Topic } from "./contract.generated";
import type { SubscribeReply } from "./protocol";
import { isTopic } from "./validate";

export type TopicStatus =
  | { readonly state: "pending" }
  | { readonly state: "active" }
  | { readonly state: "error"; readonly code: string; readonly message: string };

export type MarketListener = (event: MarketEvent) => void;

/** How the registry reaches the gateway (the connection implements it). */
export interface TopicTransport {
  /** True once the socket is connected and its `sync` has arrived. */
  ready(): boolean;
  request(event: "subscribe" | "unsubscribe", topics: readonly string[]): Promise<SubscribeReply>;
}

interface Entry {
  count: number;
  readonly listeners: Set<MarketListener>;
  readonly watchers: Set<() => void>;
  latest: MarketEvent | undefined;
  status: TopicStatus;
}

const PENDING: TopicStatus = { state: "pending" };
const ACTIVE: TopicStatus = { state: "active" };
const RETRY_MS = 2000;

export class TopicRegistry {
  readonly #entries = new Map<string, Entry>();
  /** Topics the gateway holds for this socket, as far as its replies said. */
  readonly #held = new Set<string>();
  #flushing = false;
  #again = false;
  #retry: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly transport: TopicTransport) {}

  /**
   * Want `topic` until the returned function is called; `listener` gets each of its events,
   * starting with the latest one already received (so a late subscriber starts where the others are).
   */
  acquire(topic: Topic, listener?: MarketListener): () => void {
    if (!isTopic(topic)) throw new TypeError(`not a topic: ${String(topic)}`);
    const entry = this.#entry(topic);
    entry.count += 1;
    if (listener) {
      entry.listeners.add(listener);
      if (entry.latest !== undefined) listener(entry.latest);
    }
    this.schedule();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      entry.count -= 1;
      if (listener) entry.listeners.delete(listener);
      if (entry.count === 0 && entry.watchers.size === 0) this.#entries.delete(topic);
      this.schedule();
    };
  }

  /** Calls `watcher` when the topic's latest event or status changes (for React's useSyncExternalStore). */
  watch(topic: string, watcher: () => void): () => void {
    const entry = this.#entry(topic);
    entry.watchers.add(watcher);
    return () => {
      entry.watchers.delete(watcher);
      if (entry.count === 0 && entry.watchers.size === 0) this.#entries.delete(topic);
    };
  }

  latest(topic: string): MarketEvent | undefined {
    return this.#entries.get(topic)?.latest;
  }

  status(topic: string): TopicStatus {
    return this.#entries.get(topic)?.status ?? PENDING;
  }

  /** The topics wanted now, as sent in `auth.subscriptions` on (re)connect. */
  wanted(): string[] {
    return [...this.#entries].filter(([, entry]) => entry.count > 0).map(([topic]) => topic);
  }

  /** A validated market event of `topic` arrived. */
  deliver(topic: string, event: MarketEvent): void {
    const entry = this.#entries.get(topic);
    if (entry === undefined || entry.count === 0) return; // a late event of a released topic
    entry.latest = event;
    for (const listener of entry.listeners) listener(event);
    this.#notify(entry);
  }

  /** The socket (re)connected with `sent` in auth.subscriptions, and the gateway answered `reply`. */
  synced(sent: readonly string[], reply: SubscribeReply | undefined): void {
    this.#held.clear();
    if (reply?.ok) {
      this.#record(reply, sent);
    } else {
      for (const topic of sent) this.#setStatus(topic, PENDING); // asked again by the next flush
    }
    this.schedule();
  }

  /** The socket is gone: the gateway holds nothing for it any more. */
  disconnected(): void {
    this.#held.clear();
    for (const topic of this.#entries.keys()) this.#setStatus(topic, PENDING);
  }

  /** Send the difference between wanted and held topics, once the current task is done. */
  schedule(): void {
    if (this.#flushing) {
      this.#again = true;
      return;
    }
    this.#flushing = true;
    queueMicrotask(() => void this.#flush());
  }

  async #flush(): Promise<void> {
    try {
      do {
        this.#again = false;
        if (!this.transport.ready()) return;
        const wanted = new Set(this.wanted());
        const add = [...wanted].filter((t) => !this.#held.has(t) && this.status(t).state !== "error");
        const remove = [...this.#held].filter((t) => !wanted.has(t));
        if (add.length > 0) this.#record(await this.transport.request("subscribe", add), add);
        if (remove.length > 0) {
          const reply = await this.transport.request("unsubscribe", remove);
          if (reply.ok) for (const topic of remove) this.#held.delete(topic);
          else this.#retryLater();
        }
      } while (this.#again);
    } catch {
      this.#retryLater(); // no answer in time, or a disconnect midway
    } finally {
      this.#flushing = false;
    }
  }

  #record(reply: SubscribeReply, asked: readonly string[]): void {
    if (!reply.ok) {
      this.#retryLater();
      return;
    }
    for (const result of reply.results) {
      if (!asked.includes(result.topic)) continue;
      if (result.ok) {
        this.#held.add(result.topic);
        this.#setStatus(result.topic, ACTIVE);
      } else if (result.error === "unavailable") {
        this.#retryLater();
      } else {
        this.#setStatus(result.topic, { state: "error", code: result.error, message: result.message });
      }
    }
  }

  #retryLater(): void {
    if (this.#retry !== undefined) return;
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      this.schedule();
    }, RETRY_MS);
  }

  #entry(topic: string): Entry {
    let entry = this.#entries.get(topic);
    if (entry === undefined) {
      entry = { count: 0, listeners: new Set(), watchers: new Set(), latest: undefined, status: PENDING };
      this.#entries.set(topic, entry);
    }
    return entry;
  }

  #setStatus(topic: string, status: TopicStatus): void {
    const entry = this.#entries.get(topic);
    if (entry === undefined || entry.status === status) return;
    entry.status = status;
    this.#notify(entry);
  }

  #notify(entry: Entry): void {
    for (const watcher of entry.watchers) watcher();
  }

  close(): void {
    clearTimeout(this.#retry);
    this.#entries.clear();
    this.#held.clear();
  }
}
