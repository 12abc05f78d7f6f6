import { EXCHANGES, type Exchange } from "@fanout/client";
import type { ReactNode } from "react";
import { Market } from "../components/Market";

const SYMBOL = /^[A-Z0-9]{1,16}\/[A-Z0-9]{1,16}$/;

/** The market page: `/?exchange=kraken&symbol=ETH/USD` (defaults: binance BTC/USDT). */
export default async function MarketPage({
  searchParams,
}: {
  searchParams: Promise<Record<string, string | string[] | undefined>>;
}): Promise<ReactNode> {
  const params = await searchParams;
  const exchange = EXCHANGES.find((name) => name === params.exchange) ?? "binance";
  const symbol = typeof params.symbol === "string" && SYMBOL.test(params.symbol) ? params.symbol : defaultSymbol(exchange);
  return <Market exchange={exchange} symbol={symbol} />;
}

function defaultSymbol(exchange: Exchange): string {
  return exchange === "coinbase" || exchange === "kraken" ? "BTC/USD" : "BTC/USDT";
}
