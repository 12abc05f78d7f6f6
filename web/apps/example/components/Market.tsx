"use client";
import { EXCHANGES, type Exchange } from "@fanout/client";
import { useOrderBook, useTicker, useTrades } from "@fanout/react";
import { useRouter } from "next/navigation";
import type { ReactNode } from "react";
import { CandleChart } from "./CandleChart";

const SYMBOLS: Record<Exchange, string[]> = {
  binance: ["BTC/USDT", "ETH/USDT"],
  coinbase: ["BTC/USD", "ETH/USD"],
  kraken: ["BTC/USD", "ETH/USD"],
  bybit: ["BTC/USDT", "ETH/USDT"],
  okx: ["BTC/USDT", "ETH/USDT"],
};

export function Market({ exchange, symbol }: { exchange: Exchange; symbol: string }): ReactNode {
  const router = useRouter();
  const markets = EXCHANGES.flatMap((name) => SYMBOLS[name].map((pair) => `${name} ${pair}`));
  return (
    <>
      <div style={{ display: "flex", gap: 16, alignItems: "center", marginBottom: 16 }}>
        <select
          aria-label="market"
          value={`${exchange} ${symbol}`}
          onChange={(event) => {
            const [name, pair] = event.target.value.split(" ");
            router.push(`/?exchange=${name}&symbol=${pair}`);
          }}
        >
          {markets.map((market) => (
            <option key={market}>{market}</option>
          ))}
        </select>
        <TickerLine exchange={exchange} symbol={symbol} />
      </div>
      <div className="grid">
        <div className="panel chart">
          <CandleChart exchange={exchange} symbol={symbol} />
        </div>
        <div className="panel">
          <h2>Order book</h2>
          <OrderBook exchange={exchange} symbol={symbol} />
        </div>
        <div className="panel">
          <h2>Trades</h2>
          <Trades exchange={exchange} symbol={symbol} />
        </div>
      </div>
    </>
  );
}

function TickerLine({ exchange, symbol }: { exchange: Exchange; symbol: string }): ReactNode {
  const { event, status } = useTicker(exchange, symbol);
  if (status.state === "error") return <span className="sell">{status.message}</span>;
  return (
    <div className="ticker" data-testid="ticker">
      <span className="last" data-testid="ticker-last">{event?.last ?? "…"}</span>
      <span>bid <b data-testid="ticker-bid">{event?.bid ?? "…"}</b></span>
      <span>ask <b data-testid="ticker-ask">{event?.ask ?? "…"}</b></span>
      <span className="muted">24h vol {event?.volume_24h ?? "…"}</span>
    </div>
  );
}

function OrderBook({ exchange, symbol }: { exchange: Exchange; symbol: string }): ReactNode {
  const book = useOrderBook(exchange, symbol, { depth: 12 });
  return (
    <table data-testid="book">
      <thead>
        <tr><th>price</th><th>size</th></tr>
      </thead>
      <tbody>
        {[...book.asks].reverse().map(([price, size]) => (
          <tr key={`a${price}`} className="sell" data-side="ask"><td>{price}</td><td>{size}</td></tr>
        ))}
        {book.bids.map(([price, size]) => (
          <tr key={`b${price}`} className="buy" data-side="bid"><td>{price}</td><td>{size}</td></tr>
        ))}
      </tbody>
      <tfoot>
        <tr>
          <td colSpan={2} className="muted">
            seq {book.seq} · gaps {book.gaps} · resyncs {book.resyncs}
          </td>
        </tr>
      </tfoot>
    </table>
  );
}

function Trades({ exchange, symbol }: { exchange: Exchange; symbol: string }): ReactNode {
  const trades = useTrades(exchange, symbol, { limit: 20 });
  return (
    <table data-testid="trades">
      <thead>
        <tr><th>price</th><th>size</th><th>time</th></tr>
      </thead>
      <tbody>
        {trades.map((trade) => (
          <tr key={`${trade.trade_id}-${trade.ts}`} className={trade.side}>
            <td>{trade.price}</td>
            <td>{trade.size}</td>
            <td className="muted">{new Date(trade.ts).toLocaleTimeString()}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
