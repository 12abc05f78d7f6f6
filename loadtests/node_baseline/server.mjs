// The Node reference relay, as most teams write it: one socket.io 4.8 server,
// the JWT (HS256) checked in a middleware, `subscribe` joins rooms, and a
// node-redis pattern subscription that calls io.to(topic).emit() per message.
// It speaks the part of the gateway's client contract the benchmark uses.
//
//   PORT=8200 REDIS_URL=redis://127.0.0.1:6379 GATEWAY_JWT_SECRET=... node server.mjs
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { createClient } from "redis";
import { Server } from "socket.io";

const secret = process.env.GATEWAY_JWT_SECRET;
const port = Number(process.env.PORT);

function validToken(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return false;
  const expected = createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return false;
  const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  return typeof claims.exp === "number" && claims.exp > Date.now() / 1000;
}

const http = createServer((request, response) => {
  if (request.url === "/readyz") {
    response.writeHead(200, { "content-type": "application/json" }).end('{"ready":true}');
  }
});
const io = new Server(http, { transports: ["websocket"] });
io.use((socket, next) => (validToken(socket.handshake.auth?.token) ? next() : next(new Error("token_invalid"))));
io.on("connection", (socket) => {
  socket.on("subscribe", (topics, ack) => {
    for (const topic of topics) socket.join(topic);
    ack?.({ ok: true, results: topics.map((topic) => ({ topic, ok: true })) });
  });
});

const subscriber = createClient({ url: process.env.REDIS_URL });
await subscriber.connect();
await subscriber.pSubscribe("md:*", (message, channel) => {
  const topic = channel.slice("md:".length);
  io.to(topic).emit("market", topic, JSON.parse(message));
});
http.listen(port, "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
