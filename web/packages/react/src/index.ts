/** @fanout/react: React hooks on @fanout/client. See docs/frontend.md. */
export { FanoutProvider, useFanoutClient, type FanoutProviderProps } from "./provider";
export {
  useCandles,
  useConnectionState,
  useExecution,
  useExecutions,
  useNotifications,
  useOrderBook,
  useTicker,
  useTopic,
  useTopics,
  useTrades,
  type CandlesState,
  type NotificationsView,
  type TopicState,
} from "./hooks";
