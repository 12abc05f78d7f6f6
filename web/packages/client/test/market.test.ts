import { describe, expect, it } from "vitest";
import type { Book, Candle, Trade } from "../src/contract.generated";
import { loadCandleHistory, mergeHistory, upsertCandle, type CandleHistory } from "../src/candles";
import { applyBook, EMPTY_BOOK, isSaneBook } from "../src/orderbook";
import { addTrade } from "../src/trades";

const book = (seq: number, bids: [string, string][], asks: [string, string][], resync = false): Book => ({
  type: "book", exchange: "binance", symbol: "BTC/USDT", ts: seq, recv_ts: seq, seq, bids, asks, resync,
});  // prettier-ignore

const candle = (open_time: number, close: string): Candle => ({
  type: "candle", exchange: "binance", symbol: "BTC/USDT", timeframe: "1m", ts: open_time, recv_ts: open_time,
  seq: 1, open_time, open: "1", high: "2", low: "0.5", close, volume: "3", closed: false,
});  // prettier-ignore

describe("order book", () => {
  it("takes each view whole and counts seq jumps and restarts", () => {
    let state = applyBook(EMPTY_BOOK, book(1, [["10", "1"]], [["11", "1"]]));
    state = applyBook(state, book(2, [["10.5", "1"], ["10", "2"]], [["11", "1"]]));
    expect(state.bids).toEqual([["10.5", "1"], ["10", "2"]]);
    expect(state.gaps).toBe(0);
    state = applyBook(state, book(6, [["10", "1"]], [["11", "1"]]));
    expect(state.gaps).toBe(3);
    state = applyBook(state, book(1, [["10", "1"]], [["11", "1"]]));
    expect(state.resyncs).toBe(1);
    state = applyBook(state, book(2, [["10", "1"]], [["11", "1"]], true));
    expect(state.resyncs).toBe(2);
  });

  it("refuses crossed or unsorted views and keeps the last good one", () => {
    const good = applyBook(EMPTY_BOOK, book(1, [["10", "1"]], [["11", "1"]]));
    expect(isSaneBook(book(2, [["12", "1"]], [["11", "1"]]))).toBe(false);
    const crossed = applyBook(good, book(2, [["12", "1"]], [["11", "1"]]));
    expect(crossed.bids).toEqual(good.bids);
    expect(crossed.rejected).toBe(1);
    expect(applyBook(good, book(3, [["9", "1"], ["10", "1"]], [])).rejected).toBe(1);
    expect(applyBook(good, book(3, [], [["12", "1"], ["11", "1"]])).rejected).toBe(1);
  });

  it("keeps at most `depth` levels a side", () => {
    const levels: [string, string][] = Array.from({ length: 30 }, (_, i) => [String(100 - i), "1"]);
    expect(applyBook(EMPTY_BOOK, book(1, levels, []), 10).bids).toHaveLength(10);
  });
});

describe("trades tape", () => {
  it("puts the newest first, once, and stays bounded", () => {
    const trade = (id: string): Trade => ({
      type: "trade", exchange: "binance", symbol: "BTC/USDT", ts: 1, recv_ts: 1, seq: 1, trade_id: id,
      price: "1", size: "1", side: "buy",
    });  // prettier-ignore
    let tape = addTrade([], trade("a"), 2);
    tape = addTrade(tape, trade("b"), 2);
    expect(addTrade(tape, trade("b"), 2)).toBe(tape);
    tape = addTrade(tape, trade("c"), 2);
    expect(tape.map((t) => t.trade_id)).toEqual(["c", "b"]);
  });
});

describe("candles", () => {
  it("updates the forming candle, appends new ones, inserts late ones in order", () => {
    let series = upsertCandle([], candle(60_000, "1"));
    series = upsertCandle(series, candle(60_000, "2"));
    expect(series.map((c) => c.close)).toEqual(["2"]);
    series = upsertCandle(series, candle(180_000, "3"));
    series = upsertCandle(series, candle(120_000, "4"));
    expect(series.map((c) => c.open_time)).toEqual([60_000, 120_000, 180_000]);
    series = upsertCandle(series, candle(120_000, "5"));
    expect(series.map((c) => c.close)).toEqual(["2", "5", "3"]);
  });

  it("keeps at most `limit` candles, dropping the oldest", () => {
    let series: readonly Candle[] = [];
    for (let i = 1; i <= 5; i++) series = upsertCandle(series, candle(i * 60_000, String(i)), 3);
    expect(series.map((c) => c.close)).toEqual(["3", "4", "5"]);
  });

  it("merges history with live candles received meanwhile, live winning", () => {
    const merged = mergeHistory([candle(120_000, "2"), candle(60_000, "1")], [candle(120_000, "20")]);
    expect(merged.map((c) => c.close)).toEqual(["1", "20"]);
  });

  it("validates what a history source returns and keeps only the requested series", async () => {
    const request = { exchange: "binance", symbol: "BTC/USDT", timeframe: "1m", limit: 2 } as const;
    const other = { ...candle(1, "9"), symbol: "ETH/USDT" };
    const source = async () => [candle(180_000, "3"), other, candle(60_000, "1"), candle(120_000, "2")];
    const loaded = await loadCandleHistory(source, request, new AbortController().signal);
    expect(loaded.map((c) => c.close)).toEqual(["2", "3"]);
    // A source is application code reading some server: what it returns is checked, whatever its type says.
    const hostile = (async () => [{ type: "candle" }]) as unknown as CandleHistory;
    await expect(loadCandleHistory(hostile, request, new AbortController().signal)).rejects.toThrow(/missing/);
  });
});
