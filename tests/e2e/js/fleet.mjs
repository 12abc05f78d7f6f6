// Many official socket.io-clients in one node process (one per client would not fit a small machine),
// each resuming by itself from the positions it saw, as docs/protocol.md's Next.js snippet does, and
// restoring its topics through auth.subscriptions. Prints what each sees as JSON lines for the test.
// usage: node fleet.mjs URL SPEC, SPEC a JSON list of { token, transport, address, topics }:
// transport is websocket, polling or upgrade (polling, then an upgrade); address is the local address
// the client connects from (clients of one host with several addresses).
// Closing stdin closes every client and ends the process.
import http from "node:http";
import { io } from "socket.io-client";

const [url, spec] = process.argv.slice(2);
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");
// "<ms>-<n>", compared as numbers: a client keeps the greatest position it has seen per stream
// (docs/protocol.md). A sync's position can be older than a live record sent just before it (one
// that arrived while another stream was still catching up), so taking it as is could go back.
const later = (a, b) => {
  if (a === undefined) return b;
  const [am, an] = a.split("-").map(BigInt);
  const [bm, bn] = b.split("-").map(BigInt);
  return bm > am || (bm === am && bn > an) ? b : a;
};

const sockets = JSON.parse(spec).map(({ token, transport, address, topics }, c) => {
  const positions = { executions: {} };
  const socket = io(url, {
    auth: (cb) => cb({ token, positions, subscriptions: topics }),
    transports: transport === "upgrade" ? ["polling", "websocket"] : [transport],
    // Both transports connect through this agent, so from this address.
    agent: new http.Agent({ keepAlive: true, localAddress: address }),
    forceNew: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 1000,
  });
  socket.on("connect", () => out({ c, e: "connect", transport: socket.io.engine.transport.name }));
  socket.on("connect_error", (err) => out({ c, e: "connect_error", message: err.message }));
  socket.on("disconnect", (reason) => out({ c, e: "disconnect", reason }));
  socket.on("sync", (status) => {
    positions.notifications = later(positions.notifications, status.notifications.position);
    for (const [team, stream] of Object.entries(status.executions)) {
      positions.executions[team] = later(positions.executions[team], stream.position);
    }
    out({ c, e: "sync", status });
  });
  socket.on("notification", (notification, position) => {
    positions.notifications = later(positions.notifications, position);
    out({ c, e: "notification", id: notification.id, position });
  });
  socket.on("execution", (update, position) => {
    positions.executions[update.team_id] = later(positions.executions[update.team_id], position);
    out({ c, e: "execution", id: `${update.execution_id}/${update.version}`, position });
  });
  socket.on("market", (topic, data) => out({ c, e: "market", seq: data.seq }));
  return socket;
});

process.stdin.resume();
process.stdin.on("end", () => {
  for (const socket of sockets) socket.close();
  process.exit(0);
});
