"""A second load client, of another make: picows (a Cython WebSocket client) under the same tally.

`load_client.SocketIOClient` walks frames in Python; this one lets picows do the WebSocket work
(upgrade, masking, frame parsing, pongs) and sees one `on_ws_frame` call per frame, so a result
that holds with both clients does not depend on how either reads. It speaks the same part of
Engine.IO v4 / Socket.IO v5: OPEN -> CONNECT with the JWT -> subscribe with an ack -> count
`market` events, answering the server's ping `2` with `3`, and sampling `recv_ts` from every Nth
event into the same `Stats` as the raw client. `relay_bench --client picows` selects it.
"""

from __future__ import annotations

import asyncio
from typing import cast

from picows import WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from loadtests.load_client import (
    MARKET,
    ClientError,
    ClientSpec,
    SocketIOConversation,
    Stats,
    client_socket,
    until_ready,
)


class PicowsClient(SocketIOConversation, WSListener):
    """One connection: CONNECT with the token, subscribe, then count market events."""

    def __init__(self, spec: ClientSpec, stats: Stats) -> None:
        super().__init__()
        self._spec = spec
        self._stats = stats
        self._transport: WSTransport | None = None
        self._closing = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(MARKET):
                stats = self._stats
                stats.received += 1
                stats.countdown -= 1
                if not stats.countdown:
                    stats.countdown = stats.every
                    stats.sample(payload, 0, len(payload))
            else:
                self._packet(payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            self._fail("closed by server")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self._closing:
            self._fail("closed before ready")

    def _send(self, text: str) -> None:
        assert self._transport is not None
        self._transport.send(WSMsgType.TEXT, text.encode())

    def _stall(self) -> None:
        assert self._transport is not None
        self._transport.underlying_transport.pause_reading()

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.disconnect(graceful=False)


async def open_client(spec: ClientSpec, host: str, port: int, stats: Stats) -> PicowsClient:
    """Connect from `spec.source` and return once subscribed (or connected, without a topic)."""
    sock = await client_socket(spec, host, port)
    try:
        _, listener = await ws_connect(
            lambda: PicowsClient(spec, stats),
            f"ws://{host}:{port}/socket.io/?EIO=4&transport=websocket",
            socket_factory=lambda _url: sock,
        )
    except WSError as exc:  # a refused or malformed upgrade
        raise ClientError(f"upgrade failed: {type(exc).__name__}") from exc
    return await until_ready(cast(PicowsClient, listener))
