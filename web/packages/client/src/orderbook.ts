/**
 * An order book from the gateway's book views, with what a trader must know about its freshness.
 *
 * Every book message is a complete top-N view, so applying one replaces the
 * book. A `seq` jump means views were skipped (the book shown is still exact,
 * but updates were missed: counted in `gaps`); a `seq` decrease means the
 * collector restarted; `resync` marks the first view after the collector rebuilt
 * its book. A view whose sides are unsorted or crossed is rejected, not shown.
 */
import type { Book } from "./contract.generated";

export type Level = readonly [price: string, size: string];

export interface OrderBookState {
  readonly bids: readonly Level[];
  readonly asks: readonly Level[];
  readonly seq: number;
  readonly ts: number;
  /** Views skipped since the first one (sum of seq jumps). */
  readonly gaps: number;
  /** Times the stream restarted or the collector resynced its book. */
  readonly resyncs: number;
  /** Views refused because they were unsorted or crossed. */
  readonly rejected: number;
}

export const EMPTY_BOOK: OrderBookState = { bids: [], asks: [], seq: 0, ts: 0, gaps: 0, resyncs: 0, rejected: 0 };

function sorted(levels: readonly Level[], descending: boolean): boolean {
  for (let i = 1; i < levels.length; i++) {
    const previous = Number(levels[i - 1]?.[0]);
    const price = Number(levels[i]?.[0]);
    if (descending ? price >= previous : price <= previous) return false;
  }
  return true;
}

/** Whether a view is usable: bids strictly descending, asks strictly ascending, best bid below best ask. */
export function isSaneBook(book: Pick<Book, "bids" | "asks">): boolean {
  const bestBid = book.bids[0];
  const bestAsk = book.asks[0];
  const crossed = bestBid !== undefined && bestAsk !== undefined && Number(bestBid[0]) >= Number(bestAsk[0]);
  return !crossed && sorted(book.bids, true) && sorted(book.asks, false);
}

/** The state after `book`, limited to `depth` levels a side. */
export function applyBook(state: OrderBookState, book: Book, depth = 50): OrderBookState {
  if (state.seq > 0 && book.seq === state.seq && book.ts === state.ts) return state; // the same view again
  if (!isSaneBook(book)) return { ...state, rejected: state.rejected + 1 };
  const restarted = state.seq > 0 && book.seq > 0 && book.seq <= state.seq;
  const skipped = state.seq > 0 && book.seq > state.seq + 1 ? book.seq - state.seq - 1 : 0;
  return {
    bids: book.bids.slice(0, depth),
    asks: book.asks.slice(0, depth),
    seq: book.seq,
    ts: book.ts,
    gaps: state.gaps + skipped,
    resyncs: state.resyncs + (restarted || book.resync ? 1 : 0),
    rejected: state.rejected,
  };
}
