/** The hooks in a DOM (happy-dom), against the real gateway started by the global setup. */
import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import type { Candle, FanoutClient, Topic } from "@fanout/client";
import { StrictMode, useEffect, useState, type ReactNode } from "react";
import { afterEach, describe, expect, it } from "vitest";
import { gatewayUrl, mintToken, publish, uniqueUser } from "../../client/test/gateway";
import {
  FanoutProvider,
  useCandles,
  useConnectionState,
  useExecutions,
  useFanoutClient,
  useNotifications,
  useOrderBook,
  useTicker,
  useTopics,
  useTrades,
} from "../src";

const WAIT = { timeout: 15_000 };

/** Records what the test needs to see from the outside: each client instance and every event it emits. */
interface Probe {
  clients: Set<FanoutClient>;
  sent: string[];
  /** Topics asked for with a `subscribe` event. */
  subscribed: string[];
  socketIds: Set<string>;
}

/** Every time a topic was asked for: in `subscribe` events, and in the CONNECT's auth.subscriptions. */
function requests(probe: Probe): string[] {
  const inAuth = [...probe.clients].flatMap((client) => {
    const reply = client.lastSync.get()?.subscriptions;
    return reply?.ok ? reply.results.map((result) => result.topic) : [];
  });
  return [...inAuth, ...probe.subscribed].sort();
}

function ProbeClient({ probe }: { probe: Probe }): null {
  const client = useFanoutClient();
  useEffect(() => {
    if (client === null || probe.clients.has(client)) return;
    probe.clients.add(client);
    client.socket.onAnyOutgoing((event: string, topics: unknown) => {
      probe.sent.push(event);
      if (event === "subscribe" && Array.isArray(topics)) probe.subscribed.push(...topics.map(String));
    });
    client.socket.on("connect", () => probe.socketIds.add(client.socket.id ?? "?"));
  }, [client, probe]);
  return null;
}

function newProbe(): Probe {
  return { clients: new Set(), sent: [], subscribed: [], socketIds: new Set() };
}

function Status(): ReactNode {
  const state = useConnectionState();
  return <p data-testid="status">{state.status === "connected" && state.synced ? "synced" : state.status}</p>;
}

function App({ user, teams, probe, children }: { user: string; teams?: string[]; probe: Probe; children?: ReactNode }) {
  // An inline token provider, new on every render, as applications write it.
  return (
    <FanoutProvider url={gatewayUrl()} getToken={() => mintToken(user, { teams })} socket={{ transports: ["websocket"] }}>
      <ProbeClient probe={probe} />
      <Status />
      {children}
    </FanoutProvider>
  );
}

function ticker(symbol: string, seq: number, bid: string) {
  return { type: "ticker", exchange: "okx", symbol, ts: Date.now(), recv_ts: Date.now(), seq, bid };
}

afterEach(cleanup);

describe("provider and subscriptions", () => {
  it("opens one connection and one subscription under StrictMode's double mount", async () => {
    publish("market", ticker("STRICT/USDT", 1, "42.5"));
    function Price(): ReactNode {
      const { event, status } = useTicker("okx", "STRICT/USDT");
      return <p data-testid="price">{event ? `${event.bid} ${status.state}` : "none"}</p>;
    }
    const probe = newProbe();
    const user = uniqueUser("strict");
    const page = (prices: boolean) => (
      <StrictMode>
        <App user={user} probe={probe}>
          {prices && <Price />}
          {prices && <Price />}
        </App>
      </StrictMode>
    );
    const { rerender } = render(page(false));
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("synced"), WAIT);
    rerender(page(true)); // mounted (twice, by StrictMode) on a live connection
    await waitFor(() => expect(screen.getAllByTestId("price")[0]?.textContent).toBe("42.5 active"), WAIT);
    expect(probe.clients.size).toBe(1);
    expect(probe.socketIds.size).toBe(1);
    expect(requests(probe)).toEqual(["okx:ticker:STRICT/USDT"]);
    expect(probe.sent).not.toContain("unsubscribe");
  });

  it("does not resubscribe or reconnect when re-rendered with inline arrays and functions", async () => {
    const probe = newProbe();
    const seen: string[] = [];
    function Watcher({ tick }: { tick: number }): ReactNode {
      // A new array and a new function on every render.
      useTopics(["okx:ticker:INLA/USDT", "okx:ticker:INLB/USDT"] as Topic[], (event) => seen.push(`${tick}:${event.symbol}`));
      return <p data-testid="tick">{tick}</p>;
    }
    function Ticking(): ReactNode {
      const [tick, setTick] = useState(0);
      useEffect(() => {
        const timer = setInterval(() => setTick((value) => (value < 20 ? value + 1 : value)), 10);
        return () => clearInterval(timer);
      }, []);
      return <Watcher tick={tick} />;
    }
    render(
      <App user={uniqueUser("inline")} probe={probe}>
        <Ticking />
      </App>,
    );
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("synced"), WAIT);
    await waitFor(() => expect(screen.getByTestId("tick").textContent).toBe("20"), WAIT);
    publish("market", ticker("INLB/USDT", 1, "1"));
    await waitFor(() => expect(seen).toContain("20:INLB/USDT"), WAIT); // the latest callback is the one called
    expect(requests(probe)).toEqual(["okx:ticker:INLA/USDT", "okx:ticker:INLB/USDT"]);
    expect(probe.sent).not.toContain("unsubscribe");
    expect(probe.socketIds.size).toBe(1);
    expect(probe.clients.size).toBe(1);
  });
});

describe("market hooks", () => {
  it("shows the book sorted, the trades tape and candles from history plus live", async () => {
    const now = Date.now();
    const base = { exchange: "bybit", symbol: "HOOK/USDT", recv_ts: now };
    publish("market", { ...base, type: "book", ts: now, seq: 1, bids: [["10", "1"], ["9", "2"]], asks: [["11", "1"]] });
    const candle = (open_time: number, close: string): Candle => ({
      ...base, type: "candle", exchange: "bybit", timeframe: "1m", ts: now, seq: 1, open_time, open: "1", high: "2",
      low: "0.5", close, volume: "1", closed: true,
    });  // prettier-ignore
    function Market(): ReactNode {
      const book = useOrderBook("bybit", "HOOK/USDT");
      const trades = useTrades("bybit", "HOOK/USDT", { limit: 2 });
      // An inline history source: a new function each render, loaded once.
      const { candles, loading } = useCandles("bybit", "HOOK/USDT", "1m", {
        history: async () => [candle(60_000, "1.5"), candle(120_000, "1.7")],
      });
      return (
        <div>
          <p data-testid="book">{book.bids.map(([price]) => price).join(",") + "|" + book.asks.map(([p]) => p).join(",")}</p>
          <p data-testid="trades">{trades.map((trade) => trade.trade_id).join(",")}</p>
          <p data-testid="candles">{loading ? "loading" : candles.map((c) => `${c.open_time / 60_000}:${c.close}`).join(",")}</p>
        </div>
      );
    }
    render(
      <App user={uniqueUser("market")} probe={newProbe()}>
        <Market />
      </App>,
    );
    await waitFor(() => expect(screen.getByTestId("book").textContent).toBe("10,9|11"), WAIT);
    await waitFor(() => expect(screen.getByTestId("candles").textContent).toBe("1:1.5,2:1.7"), WAIT);
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("synced"), WAIT);
    for (const id of ["t1", "t2", "t3"]) {
      publish("market", { ...base, type: "trade", ts: now, seq: 1, trade_id: id, price: "10", size: "1", side: "buy" });
    }
    publish("market", candle(120_000, "1.9"));
    publish("market", candle(180_000, "2.1"));
    await waitFor(() => expect(screen.getByTestId("trades").textContent).toBe("t3,t2"), WAIT);
    await waitFor(() => expect(screen.getByTestId("candles").textContent).toBe("1:1.5,2:1.9,3:2.1"), WAIT);
  });
});

describe("notifications and executions", () => {
  it("counts unread, adds live ones, and marks read", async () => {
    const user = uniqueUser("bell");
    const note = (id: string) => ({ id, user_id: user, type: "info", title: id, message: "m", created_at: Date.now() });
    publish("notification", note("first"));
    let markAll: () => Promise<void> = async () => undefined;
    function Bell(): ReactNode {
      const { items, unread, loaded, markAllRead } = useNotifications();
      markAll = markAllRead;
      return <p data-testid="bell">{loaded ? `${unread}:${items.map((i) => i.notification.title).join(",")}` : "…"}</p>;
    }
    render(
      <App user={user} probe={newProbe()}>
        <Bell />
      </App>,
    );
    await waitFor(() => expect(screen.getByTestId("bell").textContent).toBe("1:first"), WAIT);
    publish("notification", note("second"));
    await waitFor(() => expect(screen.getByTestId("bell").textContent).toBe("2:second,first"), WAIT);
    await act(() => markAll());
    await waitFor(() => expect(screen.getByTestId("bell").textContent).toBe("0:second,first"), WAIT);
  });

  it("shows the team's executions, newest state only", async () => {
    const team = uniqueUser("crew");
    const update = (version: number, status: string) => ({
      execution_id: "job-1", team_id: team, status, progress: version * 25, updated_at: Date.now(), version,
    });  // prettier-ignore
    publish("execution", update(1, "running"));
    function Panel(): ReactNode {
      const executions = useExecutions();
      return <p data-testid="panel">{executions.map((e) => `${e.execution_id}:${e.status}:${e.progress}`).join(",")}</p>;
    }
    render(
      <App user={uniqueUser("member")} teams={[team]} probe={newProbe()}>
        <Panel />
      </App>,
    );
    await waitFor(() => expect(screen.getByTestId("panel").textContent).toBe("job-1:running:25"), WAIT);
    publish("execution", update(4, "completed"));
    await waitFor(() => expect(screen.getByTestId("panel").textContent).toBe("job-1:completed:100"), WAIT);
  });
});
