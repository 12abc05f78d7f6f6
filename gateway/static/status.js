// The status page: /status.json every 2 s; rates are computed here from the counters of two reads.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const EVERY_MS = 2000;
  let previous = null;


  const ago = (ms) => (ms ? `${Math.max(0, Math.round((Date.now() - ms) / 1000))} s ago` : "never");

  function rate(node, key, seconds) {
    const before = previous && previous.nodes.find((n) => n.id === node.id);
    if (!before || seconds <= 0) return "";
    return Math.round((node[key] - before[key]) / seconds).toLocaleString();
  }

  function draw(status) {
    const seconds = previous ? (status.ts - previous.ts) / 1000 : 0;
    renderRows($("nodes"), ["node", "connections", "topics", "in/s", "out/s", "redis", "seen"], status.nodes.map((n) => [
      n.id, n.connections, n.topics, rate(n, "messages_in", seconds), rate(n, "messages_out", seconds),
      [n.redis ? "up" : "down", n.redis ? "good" : "bad"], ago(n.ts),
    ]));
    renderRows($("collectors"), ["collector", "exchange", "feed", "state", "connections", "topics", "stale streams", "seen"],
      status.collectors.map((c) => [
        c.id, c.exchange, c.simulated ? "simulated" : "live", [c.state, c.state === "connected" ? "good" : "bad"],
        c.connections, c.topics, c.stale, ago(c.ts),
      ]));
    renderRows($("topics"), ["topic", "subscribers"], status.topics.map((t) => [t.topic, t.subscribers]));
    renderRows($("errors"), ["time", "level", "where", "message"], status.errors.map((e) => [
      new Date(e.ts).toLocaleTimeString(), e.level, e.logger, e.message,
    ]));
    previous = status;
  }

  async function poll() {
    const token = sessionStorage.getItem("fanout-admin-token") || "";
    try {
      const response = await fetch("/status.json", { headers: token ? { Authorization: `Bearer ${token}` } : {} });
      if (response.status === 401 || response.status === 403) {
        $("login").hidden = false;
        $("state").textContent = (await response.json()).error;
        return;
      }
      $("login").hidden = true;
      draw(await response.json());
      $("state").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      $("state").textContent = `unreachable: ${err.message}`;
    }
  }

  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("fanout-admin-token", $("token").value.trim());
    poll();
  });
  poll();
  setInterval(poll, EVERY_MS);
})();
