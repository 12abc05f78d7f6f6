/** The trades tape: newest first, bounded, each trade once. */
import type { Trade } from "./contract.generated";

export function addTrade(tape: readonly Trade[], trade: Trade, limit = 50): readonly Trade[] {
  if (tape.some((held) => held.trade_id === trade.trade_id && held.ts === trade.ts)) return tape;
  return [trade, ...tape].slice(0, Math.max(1, limit));
}
