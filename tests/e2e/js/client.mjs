// Drives the official socket.io-client the way a Next.js app does, and
// prints what it sees as JSON lines for the Python test to check.
// usage: node client.mjs URL TOKEN TRANSPORT TOPIC...
// TRANSPORT is websocket, polling, or upgrade (the client's default: polling,
// then an upgrade to WebSocket).
// With RESUME=1 it reconnects by itself, resuming from the positions it saw,
// as the Next.js snippet in docs/protocol.md does.
import { io } from "socket.io-client";

const [url, token, transport, ...topics] = process.argv.slice(2);
const resume = process.env.RESUME === "1";
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");
const positions = { executions: {} };

const socket = io(url, {
  auth: resume ? (cb) => cb({ token, positions }) : { token },
  transports: transport === "upgrade" ? ["polling", "websocket"] : [transport],
  reconnection: resume,
  reconnectionDelay: 100,
  reconnectionDelayMax: 500,
});

socket.io.on("open", () => {
  socket.io.engine.on("upgrade", (upgraded) => out({ event: "upgrade", transport: upgraded.name }));
});
socket.on("connect_error", (err) => {
  out({ event: "connect_error", message: err.message, data: err.data });
  if (!resume) process.exit(0);
});
socket.on("sync", (status) => {
  positions.notifications = status.notifications?.position ?? positions.notifications;
  out({ event: "sync", status });
});
// A request with an ack, as an app makes one. When the node goes away before it answers (a restart
// test stops it at any moment), the promise rejects with "socket has been disconnected"; unhandled,
// that rejection would end this process, which is how a resume test once failed under load.
async function request(event, data, name) {
  try {
    out({ event: name, reply: await socket.timeout(5000).emitWithAck(event, data) });
  } catch (err) {
    out({ event: "request_failed", request: event, message: err.message });
  }
}

socket.on("connect", () => {
  out({ event: "connect", transport: socket.io.engine.transport.name });
  request("subscribe", topics, "subscribed");
});
socket.on("market", (topic, data) => out({ event: "market", topic, data }));
socket.on("notification", (notification, position) => {
  positions.notifications = position;
  out({ event: "notification", notification, position });
});
socket.on("execution", (update, position) => out({ event: "execution", update, position }));
socket.on("disconnect", (reason) => out({ event: "disconnect", reason }));

// Each line on stdin names an event to send with an ack; the test closes stdin to end the client.
let pending = "";
process.stdin.on("data", (chunk) => {
  const lines = (pending + chunk).split("\n");
  pending = lines.pop();
  for (const line of lines) if (line) request(line, null, "reply");
});
process.stdin.on("end", () => {
  socket.close();
  process.exit(0);
});
