"""The gateway's edge: everything between a client's bytes and a Socket.IO event.

Four layers, each knowing only the one below it:

- `http`: a strict HTTP/1.1 server on h11 that can hand a connection to a WebSocket.
- `websocket`: RFC 6455 framing (server frames built once, an incremental parser of client frames).
- `engineio` / `session`: Engine.IO v4 (handshake, CORS, heartbeat) and its sessions
  (long-polling, WebSocket, the upgrade between them, slow-client conflation).
- `sio`: Socket.IO v5 on the default namespace (CONNECT, events, acks, rooms).

Every limit a client can push on is set here and documented in docs/protocol.md.
"""
