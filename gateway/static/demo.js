// The demo page: one socket, the topics of one symbol, notifications and executions, as docs/protocol.md describes.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_TRADES = 30;
  const MAX_NOTIFICATIONS = 20;
  let socket = null;
  let topics = [];

  function state(text, cls) {
    $("state").textContent = text;
    $("state").className = cls || "muted";
  }

  const trades = [];
  const notifications = [];
  const executions = new Map();

  function symbolTopics(topic) {
    const [exchange, , symbol] = topic.split(":");
    return ["ticker", "book", "trades"].map((kind) => `${exchange}:${kind}:${symbol}`);
  }

  async function show(topic) {
    if (!socket) return;
    const wanted = symbolTopics(topic);
    if (topics.length) socket.emit("unsubscribe", topics);
    topics = wanted;
    trades.length = 0;
    for (const id of ["ticker", "book", "trades"]) $(id).replaceChildren();
    const reply = await socket.timeout(5000).emitWithAck("subscribe", wanted);
    const failed = (reply.results || []).filter((r) => !r.ok);
    const uncollected = (reply.results || []).filter((r) => r.ok && r.collected === false);
    $("collected").textContent = failed.length
      ? `refused: ${failed.map((r) => `${r.topic} (${r.error})`).join(", ")}`
      : uncollected.length
        ? "not collected yet: the collector starts it if on-demand collection is on"
        : "";
  }

  function onMarket(topic, event) {
    if (!topics.includes(topic)) return;
    $("collected").textContent = "";
    if (event.type === "ticker") {
      renderRows($("ticker"), ["bid", "ask", "last", "24h volume"], [[[event.bid, "bid"], [event.ask, "ask"], event.last, event.volume_24h]]);
    } else if (event.type === "book") {
      const depth = Math.max(event.bids.length, event.asks.length, 0);
      const lines = [];
      for (let i = 0; i < Math.min(depth, 10); i++) {
        const bid = event.bids[i] || ["", ""];
        const ask = event.asks[i] || ["", ""];
        lines.push([bid[1], [bid[0], "bid"], [ask[0], "ask"], ask[1]]);
      }
      renderRows($("book"), ["size", "bid", "ask", "size"], lines);
    } else if (event.type === "trade") {
      trades.unshift([new Date(event.ts).toLocaleTimeString(), [event.side, event.side === "buy" ? "bid" : "ask"], event.price, event.size]);
      trades.length = Math.min(trades.length, MAX_TRADES);
      renderRows($("trades"), ["time", "side", "price", "size"], trades);
    }
  }

  function drawNotifications() {
    renderRows($("notifications"), ["", "title", "message"], notifications.map((n) => [n.read ? "" : "•", n.title, n.message]));
  }

  function drawExecutions() {
    const lines = [...executions.values()].map((u) => [u.execution_id, u.status, `${Math.round(u.progress)}%`, u.current_step || ""]);
    renderRows($("executions"), ["execution", "status", "progress", "step"], lines);
  }

  function connect(token) {
    if (socket) socket.close();
    state("connecting");
    socket = io({ auth: (cb) => cb({ token, subscriptions: topics }) });
    socket.on("connect", async () => {
      state("connected", "good");
      if (!topics.length) await show($("topic").value.trim());
      const list = await socket.timeout(5000).emitWithAck("notifications:list", { limit: MAX_NOTIFICATIONS });
      if (list.ok) {
        notifications.splice(0, notifications.length, ...list.items.map((item) => item.notification));
        $("unread").textContent = `${list.unread ?? 0} unread`;
        drawNotifications();
      }
    });
    socket.on("connect_error", (err) => state(`refused: ${err.message}`, "bad"));
    socket.on("disconnect", (reason) => state(`disconnected (${reason})`, "bad"));
    socket.on("market", onMarket);
    socket.on("notification", (n) => {
      notifications.unshift(n);
      notifications.length = Math.min(notifications.length, MAX_NOTIFICATIONS);
      drawNotifications();
    });
    socket.on("execution", (update) => {
      const held = executions.get(update.execution_id);
      if (!held || held.version < update.version) executions.set(update.execution_id, update);
      drawExecutions();
    });
  }

  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromUrl) sessionStorage.setItem("fanout-token", fromUrl);
  const token = fromUrl || sessionStorage.getItem("fanout-token") || "";
  $("token").value = token;
  $("connect").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("token").value.trim();
    sessionStorage.setItem("fanout-token", value);
    connect(value);
  });
  $("topic-form").addEventListener("submit", (e) => {
    e.preventDefault();
    show($("topic").value.trim());
  });
  if (token) connect(token);
})();
