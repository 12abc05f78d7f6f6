/**
 * A candle series for charts: history from a pluggable async source, then live candles.
 *
 * Live candles replace the candle with the same `open_time` (the bucket still
 * forming) or are inserted in order; the series keeps at most `limit` candles,
 * dropping the oldest. History is any async function: today an application's
 * own endpoint, later the gateway's `candles:history`; live candles that arrive
 * while history loads are kept and win over history for the same bucket.
 */
import type { Candle, Exchange, Timeframe } from "./contract.generated";
import { InvalidPayload, parseMarketEvent } from "./validate";

export interface CandleRequest {
  readonly exchange: Exchange;
  readonly symbol: string;
  readonly timeframe: Timeframe;
  readonly limit: number;
}

/** Where history comes from; resolves to candles in any order (they are validated and sorted here). */
export type CandleHistory = (request: CandleRequest, signal: AbortSignal) => Promise<readonly Candle[]>;

export const DEFAULT_CANDLE_LIMIT = 500;

/** `candle` merged into `series` (sorted by open_time), at most `limit` long. */
export function upsertCandle(series: readonly Candle[], candle: Candle, limit = DEFAULT_CANDLE_LIMIT): readonly Candle[] {
  const last = series[series.length - 1];
  let next: Candle[];
  if (last === undefined || candle.open_time > last.open_time) {
    next = [...series, candle];
  } else if (candle.open_time === last.open_time) {
    next = [...series.slice(0, -1), candle];
  } else {
    const index = series.findIndex((held) => held.open_time >= candle.open_time);
    const replaces = series[index]?.open_time === candle.open_time;
    next = [...series.slice(0, index), candle, ...series.slice(replaces ? index + 1 : index)];
  }
  return next.length > limit ? next.slice(next.length - limit) : next;
}

/** History and the live candles received meanwhile, as one series (live wins per bucket). */
export function mergeHistory(
  history: readonly Candle[],
  live: readonly Candle[],
  limit = DEFAULT_CANDLE_LIMIT,
): readonly Candle[] {
  let series: readonly Candle[] = [];
  for (const candle of [...history].sort((a, b) => a.open_time - b.open_time)) series = upsertCandle(series, candle, limit);
  for (const candle of live) series = upsertCandle(series, candle, limit);
  return series;
}

/** Calls `history` and keeps what is valid and of the requested series (the last `limit` of it). */
export async function loadCandleHistory(
  history: CandleHistory,
  request: CandleRequest,
  signal: AbortSignal,
): Promise<readonly Candle[]> {
  const raw: unknown = await history(request, signal);
  if (!Array.isArray(raw)) throw new InvalidPayload("candle history", "expected an array");
  const candles = raw.map(parseMarketEvent).filter(
    (event): event is Candle =>
      event.type === "candle" &&
      event.exchange === request.exchange &&
      event.symbol === request.symbol &&
      event.timeframe === request.timeframe,
  );
  return candles.sort((a, b) => a.open_time - b.open_time).slice(-request.limit);
}
