"use client";
/**
 * Hooks on the provider's client. Each reads its state with useSyncExternalStore
 * (so every component sees the same snapshot) and keys its effects on stable
 * values: topic strings, not arrays or callbacks. Callbacks are kept in refs, so
 * an inline function or array never resubscribes. On the server they return
 * their empty state.
 */
import {
  addTrade,
  applyBook,
  bookTopic,
  candlesTopic,
  DEFAULT_CANDLE_LIMIT,
  EMPTY_BOOK,
  loadCandleHistory,
  mergeHistory,
  tickerTopic,
  tradesTopic,
  upsertCandle,
  type Candle,
  type CandleHistory,
  type ConnectionState,
  type Exchange,
  type ExecutionUpdate,
  type ListedNotification,
  type MarketEvent,
  type OrderBookState,
  type Ticker,
  type Timeframe,
  type Topic,
  type TopicStatus,
  type Trade,
} from "@fanout/client";
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { useFanoutClient } from "./provider";

const IDLE: ConnectionState = { status: "idle" };
const PENDING: TopicStatus = { state: "pending" };
const noSubscription = (): (() => void) => () => undefined;

/** A ref that always holds the latest value (for callbacks read by long-lived subscriptions). */
function useLatest<T>(value: T): { readonly current: T } {
  const ref = useRef(value);
  useEffect(() => {
    ref.current = value;
  });
  return ref;
}

export function useConnectionState(): ConnectionState {
  const client = useFanoutClient();
  return useSyncExternalStore(
    client?.state.subscribe ?? noSubscription,
    client?.state.get ?? (() => IDLE),
    () => IDLE,
  );
}

/**
 * Want every topic of `topics` while mounted; `onEvent` gets each of their events.
 * An inline array is fine: the subscription follows the topics' names, not the array.
 */
export function useTopics(topics: readonly Topic[], onEvent?: (event: MarketEvent) => void): void {
  const client = useFanoutClient();
  const handler = useLatest(onEvent);
  const key = [...new Set(topics)].sort().join("\n");
  useEffect(() => {
    if (client === null || key === "") return;
    const releases = key.split("\n").map((topic) => client.subscribe(topic as Topic, (event) => handler.current?.(event)));
    return () => releases.forEach((release) => release());
  }, [client, key, handler]);
}

export interface TopicState<T extends MarketEvent> {
  /** The latest event of the topic (the snapshot at first), or undefined until one arrives. */
  readonly event: T | undefined;
  readonly status: TopicStatus;
}

/** The latest event of one topic, and whether the gateway accepted the subscription. */
export function useTopic<T extends MarketEvent = MarketEvent>(topic: Topic | null): TopicState<T> {
  const client = useFanoutClient();
  useTopics(topic === null ? [] : [topic]);
  const subscribe = useCallback(
    (onChange: () => void) => (client !== null && topic !== null ? client.topics.watch(topic, onChange) : () => undefined),
    [client, topic],
  );
  const event = useSyncExternalStore(
    subscribe,
    () => (client !== null && topic !== null ? client.topics.latest(topic) : undefined),
    () => undefined,
  );
  const status = useSyncExternalStore(
    subscribe,
    () => (client !== null && topic !== null ? client.topics.status(topic) : PENDING),
    () => PENDING,
  );
  return { event: event as T | undefined, status };
}

export function useTicker(exchange: Exchange, symbol: string): TopicState<Ticker> {
  return useTopic<Ticker>(tickerTopic(exchange, symbol));
}

/** Folds a topic's events into state with `reduce`, starting over from `initial` when the topic changes. */
function useFold<S>(topic: Topic, initial: S, reduce: (state: S, event: MarketEvent) => S): S {
  const [folded, setFolded] = useState({ topic, state: initial });
  const reducer = useLatest(reduce);
  useTopics([topic], (event) =>
    setFolded((held) => ({ topic, state: reducer.current(held.topic === topic ? held.state : initial, event) })),
  );
  return folded.topic === topic ? folded.state : initial;
}

/** The order book of a symbol (see `applyBook`: seq gaps, resyncs, refused crossed views). */
export function useOrderBook(exchange: Exchange, symbol: string, options: { depth?: number } = {}): OrderBookState {
  const depth = options.depth ?? 20;
  return useFold(bookTopic(exchange, symbol), EMPTY_BOOK, (state, event) =>
    event.type === "book" ? applyBook(state, event, depth) : state,
  );
}

const NO_TRADES: readonly Trade[] = [];

/** The latest trades, newest first, at most `limit`. */
export function useTrades(exchange: Exchange, symbol: string, options: { limit?: number } = {}): readonly Trade[] {
  const limit = options.limit ?? 50;
  return useFold(tradesTopic(exchange, symbol), NO_TRADES, (tape, event) =>
    event.type === "trade" ? addTrade(tape, event, limit) : tape,
  );
}

export interface CandlesState {
  readonly candles: readonly Candle[];
  /** True while `history` is loading. */
  readonly loading: boolean;
  readonly error: string | null;
}

/**
 * A candle series: `history` (any async source; optional) then live candles, updated or
 * appended by `open_time`, at most `limit`. An inline `history` function is fine.
 */
export function useCandles(
  exchange: Exchange,
  symbol: string,
  timeframe: Timeframe,
  options: { history?: CandleHistory; limit?: number } = {},
): CandlesState {
  const client = useFanoutClient();
  const limit = options.limit ?? DEFAULT_CANDLE_LIMIT;
  const history = useLatest(options.history);
  const hasHistory = options.history !== undefined;
  const topic = candlesTopic(exchange, symbol, timeframe);
  const [state, setState] = useState<CandlesState & { topic: Topic }>({ topic, candles: [], loading: false, error: null });

  useEffect(() => {
    if (client === null) return;
    const abort = new AbortController();
    let live: Candle[] | null = hasHistory ? [] : null; // buffered until history is in
    setState({ topic, candles: [], loading: hasHistory, error: null });
    const release = client.subscribe(topic, (event) => {
      if (event.type !== "candle") return;
      if (live !== null) live.push(event);
      else setState((held) => ({ ...held, candles: upsertCandle(held.candles, event, limit) }));
    });
    const source = history.current;
    if (source !== undefined) {
      loadCandleHistory(source, { exchange, symbol, timeframe, limit }, abort.signal)
        .then((candles) => {
          if (abort.signal.aborted) return;
          setState({ topic, candles: mergeHistory(candles, live ?? [], limit), loading: false, error: null });
          live = null;
        })
        .catch((error: unknown) => {
          if (abort.signal.aborted) return;
          setState({ topic, candles: mergeHistory([], live ?? [], limit), loading: false, error: String(error) });
          live = null;
        });
    }
    return () => {
      abort.abort();
      release();
    };
  }, [client, topic, exchange, symbol, timeframe, limit, hasHistory, history]);

  return state.topic === topic ? state : { candles: [], loading: hasHistory, error: null };
}

export interface NotificationsView {
  readonly items: readonly ListedNotification[];
  readonly unread: number;
  readonly loaded: boolean;
  readonly error: string | null;
  markRead(positions: readonly string[]): Promise<void>;
  markAllRead(): Promise<void>;
}

const NO_NOTIFICATIONS = { items: [], unread: 0, loaded: false, error: null } as const;

/** The user's notifications: listed, live, unread count; marking read reaches every tab of the user. */
export function useNotifications(): NotificationsView {
  const client = useFanoutClient();
  const feed = client?.notifications;
  const state = useSyncExternalStore(
    feed?.store.subscribe ?? noSubscription,
    feed?.store.get ?? (() => NO_NOTIFICATIONS),
    () => NO_NOTIFICATIONS,
  );
  return useMemo(
    () => ({
      ...state,
      markRead: async (positions: readonly string[]) => feed?.markRead(positions),
      markAllRead: async () => feed?.markAllRead(),
    }),
    [state, feed],
  );
}

const NO_EXECUTIONS: ReadonlyMap<string, ExecutionUpdate> = new Map();

function useExecutionMap(): ReadonlyMap<string, ExecutionUpdate> {
  const client = useFanoutClient();
  const board = client?.executions;
  return useSyncExternalStore(
    board?.store.subscribe ?? noSubscription,
    board?.store.get ?? (() => NO_EXECUTIONS),
    () => NO_EXECUTIONS,
  );
}

/** The executions of the user's teams, most recently updated first. */
export function useExecutions(): readonly ExecutionUpdate[] {
  const executions = useExecutionMap();
  return useMemo(() => [...executions.values()].sort((a, b) => b.updated_at - a.updated_at), [executions]);
}

export function useExecution(executionId: string): ExecutionUpdate | undefined {
  return useExecutionMap().get(executionId);
}
