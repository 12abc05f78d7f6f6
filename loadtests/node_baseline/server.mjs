// The Node reference relay, as most teams write it: one socket.io 4.8 server,
// the JWT (HS256) checked in a middleware, `subscribe` joins rooms, and a
// node-redis pattern subscription that calls io.to(topic).emit() per message.
// It speaks the part of the gateway's client contract the benchmark uses.
//
// With CONNECT_CHECKS=contract, each connect also does the Redis work the gateway's contract
// asks of one (docs/protocol.md), as most teams would write it with node-redis: the revocation
// reads, the connection-cap claim (CLAIM_SCRIPT, the gateway's own script; renewed every 5 s and
// given back on disconnect), the user's channel subscribed (and their room joined), the
// notification stream's newest position read, and a `sync` event after the CONNECT answer.
//
//   PORT=8200 REDIS_URL=redis://127.0.0.1:6379 GATEWAY_JWT_SECRET=... node server.mjs
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { createClient } from "redis";
import { Server } from "socket.io";

const secret = process.env.GATEWAY_JWT_SECRET;
const port = Number(process.env.PORT);

const checks = process.env.CONNECT_CHECKS === "contract";
const claimScript = process.env.CLAIM_SCRIPT;
const cap = String(process.env.GATEWAY_MAX_CONNECTIONS_PER_USER ?? 5);
const CLAIM_TTL_MS = "15000";
const HEARTBEAT_MS = 5000;

// The token's claims if it is a valid, unexpired HS256 token; else null.
function verifiedClaims(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  const expected = createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  return typeof claims.exp === "number" && claims.exp > Date.now() / 1000 && typeof claims.sub === "string"
    ? claims
    : null;
}

const http = createServer((request, response) => {
  if (request.url === "/readyz") {
    response.writeHead(200, { "content-type": "application/json" }).end('{"ready":true}');
  }
});
const io = new Server(http, { transports: ["websocket"] });
const subscriber = createClient({ url: process.env.REDIS_URL });
await subscriber.connect();
const commands = checks ? createClient({ url: process.env.REDIS_URL }) : null;
if (commands) await commands.connect();
const channelUsers = new Map(); // the user channels subscribed, and how many sockets need each

const member = (socket) => `node ${socket.id}`;
const claim = (user, socket, limit) =>
  commands.eval(claimScript, { keys: [`connections:{${user}}`], arguments: [member(socket), CLAIM_TTL_MS, limit] });

async function subscribeUser(user) {
  const channel = `user:{${user}}`;
  const count = channelUsers.get(channel) ?? 0;
  channelUsers.set(channel, count + 1);
  if (count === 0) {
    await subscriber.subscribe(channel, (message) => io.to(channel).emit("notification", JSON.parse(message)));
  }
}

function unsubscribeUser(user) {
  const channel = `user:{${user}}`;
  const count = channelUsers.get(channel) ?? 0;
  if (count > 1) channelUsers.set(channel, count - 1);
  else {
    channelUsers.delete(channel);
    subscriber.unsubscribe(channel).catch(() => {});
  }
}

// The contract's Redis work for one connect; the refusal's code, or null when admitted.
async function admit(socket, claims) {
  const user = claims.sub;
  const [userMark, tokenMark] = await Promise.all([
    commands.get(`revoked:user:${user}`),
    typeof claims.jti === "string" ? commands.get(`revoked:token:${claims.jti}`) : null,
  ]);
  if (tokenMark !== null || (userMark !== null && (claims.iat ?? 0) * 1000 <= Number(userMark))) return "token_revoked";
  if ((await claim(user, socket, cap)) !== 1) return "too_many_connections";
  socket.data.user = user;
  await subscribeUser(user);
  const newest = await commands.xRevRange(`notifications:{${user}}`, "+", "-", { COUNT: 1 });
  socket.data.position = newest.length ? newest[0].id : "0-0";
  return null;
}

io.use((socket, next) => {
  const claims = verifiedClaims(socket.handshake.auth?.token);
  if (claims === null) return next(new Error("token_invalid"));
  if (!checks) return next();
  admit(socket, claims).then(
    (refusal) => next(refusal === null ? undefined : new Error(refusal)),
    () => next(new Error("unavailable")),
  );
});
io.on("connection", (socket) => {
  if (checks) {
    const user = socket.data.user;
    socket.join(`user:{${user}}`);
    const position = socket.data.position;
    socket.emit("sync", { notifications: { position, recovered: 0, complete: true }, executions: {}, complete: true });
    socket.on("disconnect", () => {
      unsubscribeUser(user);
      commands.zRem(`connections:{${user}}`, member(socket)).catch(() => {});
    });
  }
  socket.on("subscribe", (topics, ack) => {
    for (const topic of topics) socket.join(topic);
    ack?.({ ok: true, results: topics.map((topic) => ({ topic, ok: true })) });
  });
});

if (commands) {
  // Every held claim renewed each 5 s, as the gateway's presence heartbeat does.
  setInterval(() => {
    for (const socket of io.sockets.sockets.values()) claim(socket.data.user, socket, "2147483648").catch(() => {});
  }, HEARTBEAT_MS);
}
await subscriber.pSubscribe("md:*", (message, channel) => {
  const topic = channel.slice("md:".length);
  io.to(topic).emit("market", topic, JSON.parse(message));
});
http.listen(port, "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
