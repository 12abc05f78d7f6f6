/** @fanout/client: a typed socket.io-client for fanout-gateway. See docs/frontend.md. */
export * from "./contract.generated";
export { FanoutClient, type ConnectionState, type FanoutClientOptions } from "./connection";
export { ExecutionBoard, type ExecutionsState } from "./executions";
export { NotificationFeed, type NotificationsState } from "./notifications";
export { applyBook, EMPTY_BOOK, isSaneBook, type Level, type OrderBookState } from "./orderbook";
export {
  DEFAULT_CANDLE_LIMIT,
  loadCandleHistory,
  mergeHistory,
  upsertCandle,
  type CandleHistory,
  type CandleRequest,
} from "./candles";
export { PositionStore } from "./positions";
export type {
  ClientToServerEvents,
  FanoutSocket,
  ListedNotification,
  PresenceReply,
  PresenceTeamResult,
  PresenceTopicResult,
  ServerToClientEvents,
  StreamStatus,
  SubscribeReply,
  SyncStatus,
  TopicResult,
} from "./protocol";
export { Store } from "./store";
export { TopicRegistry, type MarketListener, type TopicStatus } from "./subscriptions";
export { readClaims, refreshDelayMs, type TokenClaims, type TokenProvider } from "./tokens";
export { bookTopic, candlesTopic, tickerTopic, topic, topicOf, tradesTopic } from "./topics";
export { addTrade } from "./trades";
export { comparePositions, InvalidPayload, isPosition, isTopic, parseMarketEvent } from "./validate";
