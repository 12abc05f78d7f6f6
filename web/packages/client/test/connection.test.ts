/** FanoutClient against a real gateway (started by global-setup.ts), with the official socket.io-client. */
import { afterEach, describe, expect, it } from "vitest";
import { FanoutClient } from "../src/connection";
import { gatewayUrl, mintToken, publish, uniqueUser, until } from "./gateway";

const clients: FanoutClient[] = [];

function client(getToken: () => string | Promise<string>, storage: Storage | null = null): FanoutClient {
  const made = new FanoutClient({ url: gatewayUrl(), getToken, storage, socket: { transports: ["websocket"] } });
  clients.push(made);
  return made;
}

/** Every event the client emits, in order (socket.io-client's own outgoing hook). */
function outgoing(made: FanoutClient): string[] {
  const events: string[] = [];
  made.socket.onAnyOutgoing((event: string) => events.push(event));
  return events;
}

const synced = (made: FanoutClient) => () => {
  const state = made.state.get();
  return state.status === "connected" && state.synced;
};

function ticker(symbol: string, seq: number, bid: string) {
  return { type: "ticker", exchange: "kraken", symbol, ts: Date.now(), recv_ts: Date.now(), seq, bid };
}

function notification(user: string, id: string) {
  return { id, user_id: user, type: "info", title: `title ${id}`, message: "m", created_at: Date.now() };
}

afterEach(() => {
  for (const made of clients.splice(0)) made.close();
});

describe("subscriptions", () => {
  it("subscribes once per topic however many want it, and unsubscribes after the last", async () => {
    const topic = "kraken:ticker:SUBA/USD";
    publish("market", ticker("SUBA/USD", 1, "10.5"));
    const made = client(() => mintToken(uniqueUser("sub")));
    const sent = outgoing(made);
    made.connect();
    await until(synced(made), "sync");
    const releaseOne = made.subscribe(topic);
    const releaseTwo = made.subscribe(topic);
    await until(() => made.topics.latest(topic) !== undefined, "the snapshot");
    expect(made.topics.latest(topic)).toMatchObject({ bid: "10.5", seq: 1 });
    expect(made.topics.status(topic)).toEqual({ state: "active" });
    releaseOne();
    publish("market", ticker("SUBA/USD", 2, "11"));
    await until(() => made.topics.latest(topic)?.seq === 2, "a live ticker");
    releaseTwo();
    await until(() => sent.includes("unsubscribe"), "the unsubscribe");
    expect(sent.filter((event) => event === "subscribe")).toHaveLength(1);
    expect(sent.filter((event) => event === "unsubscribe")).toHaveLength(1);
  });

  it("acquire then release in the same task (a StrictMode remount) sends nothing", async () => {
    const made = client(() => mintToken(uniqueUser("strict")));
    const sent = outgoing(made);
    made.connect();
    await until(synced(made), "sync");
    made.subscribe("kraken:ticker:STRICT/USD")();
    const keep = made.subscribe("kraken:ticker:KEEP/USD");
    await until(() => made.topics.status("kraken:ticker:KEEP/USD").state === "active", "the kept topic");
    expect(sent.filter((event) => event === "subscribe" || event === "unsubscribe")).toEqual(["subscribe"]);
    keep();
  });

  it("restores topics after a lost connection through auth.subscriptions, not another subscribe", async () => {
    const topic = "kraken:ticker:BACK/USD";
    const made = client(() => mintToken(uniqueUser("back")));
    const sent = outgoing(made);
    made.subscribe(topic); // wanted before connecting: goes in the first CONNECT
    made.connect();
    await until(synced(made), "sync");
    expect(made.lastSync.get()?.subscriptions).toMatchObject({ ok: true, results: [{ topic, ok: true }] });
    made.socket.io.engine.close(); // the transport drops, as when a gateway restarts
    await until(() => made.state.get().status === "disconnected", "the disconnect");
    await until(synced(made), "the resync", 20_000);
    expect(made.lastSync.get()?.subscriptions).toMatchObject({ ok: true, results: [{ topic, ok: true }] });
    publish("market", ticker("BACK/USD", 7, "3"));
    await until(() => made.topics.latest(topic)?.seq === 7, "live data after the reconnect");
    expect(sent.filter((event) => event === "subscribe")).toEqual([]);
  });

  it("reports a topic the gateway refuses, and never asks for an invalid one", async () => {
    const made = client(() => mintToken(uniqueUser("bad")));
    expect(() => made.subscribe("nasdaq:ticker:AAPL/USD" as never)).toThrow(/not a topic/);
  });
});

describe("tokens", () => {
  it("refreshes the token over the open socket before it expires and stays connected", async () => {
    const user = uniqueUser("fresh");
    let minted = 0;
    const made = client(() => {
      minted += 1;
      return mintToken(user, { ttlS: 3 });
    });
    const sent = outgoing(made);
    made.connect();
    await until(synced(made), "sync");
    const socketId = made.socket.id;
    await new Promise((resolve) => setTimeout(resolve, 7000)); // more than twice the token's lifetime
    expect(made.state.get()).toEqual({ status: "connected", synced: true });
    expect(made.socket.id).toBe(socketId);
    expect(sent.filter((event) => event === "refresh").length).toBeGreaterThanOrEqual(2);
    expect(minted).toBeGreaterThanOrEqual(3);
  });

  it("shows a refusal with its code, then connects with the next token", async () => {
    const user = uniqueUser("late");
    let calls = 0;
    const made = client(() => (calls++ === 0 ? mintToken(user, { ttlS: -60 }) : mintToken(user)));
    const states: string[] = [];
    made.state.subscribe(() => {
      const state = made.state.get();
      states.push(state.status === "refused" ? `refused:${state.code}` : state.status);
    });
    made.connect();
    await until(synced(made), "the second attempt", 20_000);
    expect(states).toContain("refused:token_expired");
  });
});

describe("notifications", () => {
  it("lists on first sync, adds live ones, and mark-read in one tab reaches the other", async () => {
    const user = uniqueUser("ann");
    const first = publish("notification", notification(user, "n1"));
    const tabA = client(() => mintToken(user));
    const tabB = client(() => mintToken(user));
    tabA.connect();
    tabB.connect();
    await until(() => tabA.notifications.store.get().loaded && tabB.notifications.store.get().loaded, "the lists");
    expect(tabA.notifications.store.get()).toMatchObject({ unread: 1, items: [{ position: first }] });
    const second = publish("notification", notification(user, "n2"));
    await until(() => tabB.notifications.store.get().unread === 2, "the live notification");
    expect(tabB.notifications.store.get().items.map((item) => item.position)).toEqual([second, first]);
    await tabA.notifications.markRead([second]);
    await until(() => tabB.notifications.store.get().unread === 1, "the read mark in the other tab");
    expect(tabB.notifications.store.get().items[0]?.notification.read).toBe(true);
  });

  it("after a gateway-side disconnect, shows what was missed once, without listing again", async () => {
    const user = uniqueUser("bo");
    const made = client(() => mintToken(user), localStorage);
    const sent = outgoing(made);
    made.connect();
    await until(() => made.notifications.store.get().loaded, "the first list");
    const before = publish("notification", notification(user, "before"));
    await until(() => made.notifications.store.get().items.length === 1, "the live one");
    made.socket.io.reconnection(false);
    made.socket.io.engine.close();
    await until(() => made.state.get().status === "disconnected", "the disconnect");
    const missed = ["m1", "m2", "m3"].map((id) => publish("notification", notification(user, id)));
    made.socket.io.reconnection(true);
    made.connect();
    await until(() => made.notifications.store.get().items.length === 4, "the missed ones", 20_000);
    const status = made.lastSync.get();
    expect(status?.notifications).toMatchObject({ recovered: 3, complete: true });
    expect(made.notifications.store.get().items.map((item) => item.position)).toEqual([...missed].reverse().concat(before));
    expect(made.notifications.store.get().unread).toBe(4);
    expect(sent.filter((event) => event === "notifications:list")).toHaveLength(1);
  });

  it("lists again when another tab moved the shared position past what this tab saw", async () => {
    const user = uniqueUser("cy");
    localStorage.clear();
    const tabA = client(() => mintToken(user), localStorage);
    const tabB = client(() => mintToken(user), localStorage);
    const sentB = outgoing(tabB);
    tabA.connect();
    tabB.connect();
    await until(() => tabA.notifications.store.get().loaded && tabB.notifications.store.get().loaded, "the lists");
    tabB.socket.io.reconnection(false);
    tabB.socket.io.engine.close();
    await until(() => tabB.state.get().status === "disconnected", "tab B's disconnect");
    const position = publish("notification", notification(user, "while-b-was-away"));
    await until(() => tabA.notifications.store.get().items.length === 1, "tab A's live notification");
    tabB.socket.io.reconnection(true);
    tabB.connect(); // resumes from tab A's position: nothing is replayed to B, so B must list
    await until(() => tabB.notifications.store.get().items.length === 1, "tab B's list", 20_000);
    expect(tabB.lastSync.get()?.notifications?.recovered).toBe(0);
    expect(tabB.notifications.store.get().items[0]?.position).toBe(position);
    expect(sentB.filter((event) => event === "notifications:list")).toHaveLength(2);
  });
});

describe("executions", () => {
  it("gets the team's current states on connect and live updates after", async () => {
    const team = uniqueUser("team");
    const update = (id: string, version: number, status: string) => ({
      execution_id: id, team_id: team, status, progress: version * 10, updated_at: Date.now(), version,
    });  // prettier-ignore
    publish("execution", update("e1", 1, "running"));
    publish("execution", update("e1", 2, "running"));
    const made = client(() => mintToken(uniqueUser("exec"), { teams: [team] }));
    made.connect();
    await until(() => made.executions.store.get().get("e1")?.version === 2, "the current state");
    publish("execution", update("e1", 3, "completed"));
    await until(() => made.executions.store.get().get("e1")?.status === "completed", "the live update");
  });
});
