// @vitest-environment node
/** Server rendering (as Next.js does for a client component's first HTML): no window, no connection. */
import { renderToString } from "react-dom/server";
import { describe, expect, it } from "vitest";
import { FanoutProvider, useConnectionState, useNotifications, useOrderBook, useTicker } from "../src";

function Page() {
  const state = useConnectionState();
  const ticker = useTicker("binance", "BTC/USDT");
  const book = useOrderBook("binance", "BTC/USDT");
  const { unread } = useNotifications();
  return (
    <p>
      {`${state.status} ${ticker.event?.bid ?? "-"} ${book.bids.length} ${unread}`}
    </p>
  );
}

describe("server rendering", () => {
  it("renders the empty state without touching window or opening a socket", () => {
    expect(typeof window).toBe("undefined");
    const html = renderToString(
      <FanoutProvider url="http://127.0.0.1:1" getToken={() => "never called"}>
        <Page />
      </FanoutProvider>,
    );
    expect(html).toBe("<p>idle - 0 0</p>");
  });
});
