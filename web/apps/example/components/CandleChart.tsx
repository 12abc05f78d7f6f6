"use client";
/** Live 1-minute candles drawn with TradingView's lightweight-charts. */
import type { Candle, Exchange } from "@fanout/client";
import { useCandles } from "@fanout/react";
import { CandlestickSeries, createChart, type IChartApi, type ISeriesApi, type UTCTimestamp } from "lightweight-charts";
import { useEffect, useRef, type ReactNode } from "react";

const bar = (candle: Candle) => ({
  time: (candle.open_time / 1000) as UTCTimestamp,
  open: Number(candle.open),
  high: Number(candle.high),
  low: Number(candle.low),
  close: Number(candle.close),
});

export function CandleChart({ exchange, symbol }: { exchange: Exchange; symbol: string }): ReactNode {
  // No history source yet: the gateway's `candles:history` will plug in here (see docs/frontend.md).
  const { candles } = useCandles(exchange, symbol, "1m", { limit: 300 });
  const container = useRef<HTMLDivElement>(null);
  const series = useRef<ISeriesApi<"Candlestick"> | null>(null);

  useEffect(() => {
    if (container.current === null) return;
    const chart: IChartApi = createChart(container.current, {
      autoSize: true,
      layout: { background: { color: "#171d24" }, textColor: "#d6dde5" },
      grid: { vertLines: { color: "#26303b" }, horzLines: { color: "#26303b" } },
      timeScale: { timeVisible: true, secondsVisible: false },
    });
    series.current = chart.addSeries(CandlestickSeries, { upColor: "#26a69a", downColor: "#ef5350", borderVisible: false });
    return () => {
      series.current = null;
      chart.remove();
    };
  }, []);

  useEffect(() => {
    series.current?.setData(candles.map(bar));
  }, [candles]);

  return <div ref={container} style={{ height: "100%" }} data-testid="chart" data-candles={candles.length} />;
}
