/** Building topic names, and the topic a market event belongs to. */
import type { Channel, Exchange, MarketEvent, Timeframe, Topic } from "./contract.generated";

export function topic(exchange: Exchange, channel: Channel, symbol: string): Topic {
  return `${exchange}:${channel}:${symbol}` as Topic;
}

export const tickerTopic = (exchange: Exchange, symbol: string): Topic => topic(exchange, "ticker", symbol);
export const tradesTopic = (exchange: Exchange, symbol: string): Topic => topic(exchange, "trades", symbol);
export const bookTopic = (exchange: Exchange, symbol: string): Topic => topic(exchange, "book", symbol);
export const candlesTopic = (exchange: Exchange, symbol: string, timeframe: Timeframe): Topic =>
  topic(exchange, `candles.${timeframe}`, symbol);

/** The topic an event was published on; the client drops an event that arrives under another. */
export function topicOf(event: MarketEvent): Topic {
  switch (event.type) {
    case "ticker":
      return tickerTopic(event.exchange, event.symbol);
    case "trade":
      return tradesTopic(event.exchange, event.symbol);
    case "book":
      return bookTopic(event.exchange, event.symbol);
    case "candle":
      return candlesTopic(event.exchange, event.symbol, event.timeframe);
  }
}
