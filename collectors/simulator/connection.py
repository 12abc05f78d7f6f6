"""One client connection: a bounded send queue drained by a single writer, and its counters.

Everything the server sends to a client (data, acks, control-frame pings and pongs, the
close frame) goes through the queue, so frames keep their order and only one coroutine
writes to the socket. A client that lets the queue fill up is disconnected as a slow
consumer, which is what the real exchanges do rather than dropping data silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

if TYPE_CHECKING:
    from collectors.simulator.protocols.base import Feed

logger = logging.getLogger(__name__)

# Incoming frame times kept for a per-second rate limit (Binance allows 5).
RATE_WINDOW: Final = 64


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    TRY_AGAIN_LATER = 1013


class CloseReason(StrEnum):
    """Why the server ended a connection; counted per exchange in the stats."""

    CLIENT = "client closed"
    FAULT = "dropped by fault injection"
    SLOW_CONSUMER = "slow consumer"
    RATE_LIMIT = "too many incoming messages"
    PONG_TIMEOUT = "no pong"
    IDLE = "idle"
    NO_SUBSCRIBE = "no subscription in time"
    SHUTDOWN = "server shutdown"
    WRITE_FAILED = "write failed"


class ControlKind(StrEnum):
    PING = "ping"
    PONG = "pong"


@dataclass(frozen=True, slots=True)
class _Control:
    kind: ControlKind
    data: bytes


class Connection:
    """Server-side state of one WebSocket client."""

    def __init__(
        self, *, conn_id: str, ws: web.WebSocketResponse, request: web.Request, max_queue: int, now: float
    ) -> None:
        self.id = conn_id
        self.ws = ws
        self.path = request.path
        self.query = request.query_string
        self.remote = request.remote or ""
        self._transport = request.transport
        self.opened = now
        self.last_in = now
        self.last_out = now
        self.feeds: dict[str, Feed] = {}
        self.subscribe_messages = 0
        self.messages_in = 0
        self.messages_out = 0
        self.stall_dropped = 0
        self.ever_subscribed = False
        self.stalled_until: float | None = None
        self.close_reason: CloseReason | None = None
        # Per-connection message counter (Coinbase's sequence_num).
        self.seq = 0
        # Binance: wrap payloads as {"stream":...,"data":...}.
        self.combined = False
        self.incoming: deque[float] = deque(maxlen=RATE_WINDOW)
        # Binance: payload of the ping awaiting its pong, and when it is overdue.
        self.ping_payload: bytes | None = None
        self.pong_due: float | None = None
        self.last_ping = now
        self._max_queue = max_queue
        self._queue: deque[str | _Control] = deque()
        self._wakeup = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"Connection({self.id} {self.path})"

    def is_stalled(self, now: float) -> bool:
        if self.stalled_until is None:
            return False
        if now >= self.stalled_until:
            self.stalled_until = None
            return False
        return True

    @property
    def closing(self) -> bool:
        return self.close_reason is not None

    def send(self, text: str) -> None:
        """Queue a text frame; a full queue disconnects the client as a slow consumer."""
        if self.closing:
            return
        now = time.monotonic()
        if self.is_stalled(now):
            self.stall_dropped += 1
            return
        if len(self._queue) >= self._max_queue:
            logger.warning("slow consumer disconnected", extra={"conn_id": self.id, "queued": len(self._queue)})
            self.abort(CloseReason.SLOW_CONSUMER)
            return
        self.last_out = now
        self._queue.append(text)
        self._wakeup.set()

    def send_control(self, kind: ControlKind, data: bytes = b"") -> None:
        if self.closing or self.is_stalled(time.monotonic()):
            return
        self._queue.append(_Control(kind, data))
        self._wakeup.set()

    def close(self, reason: CloseReason, code: int = CloseCode.NORMAL, message: str = "") -> None:
        """Send a close frame after what is already queued."""
        if self.closing:
            return
        self.close_reason = reason
        self._close = (int(code), message)
        self._wakeup.set()

    def abort(self, reason: CloseReason) -> None:
        """Drop the TCP connection at once, without a close frame, as a crashing server does."""
        if self.close_reason is None:
            self.close_reason = reason
        self._queue.clear()
        if self._transport is not None:
            self._transport.abort()
        self._wakeup.set()

    async def run_writer(self) -> None:
        """Drain the queue to the socket until closed; runs as the connection's only writer."""
        ws = self.ws
        try:
            while not self._stopped:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue and self._close is None and not self._aborted() and not self._stopped:
                    item = self._queue.popleft()
                    if self.is_stalled(time.monotonic()):
                        self.stall_dropped += 1
                        continue
                    if isinstance(item, str):
                        await ws.send_str(item)
                        self.messages_out += 1
                    elif item.kind is ControlKind.PING:
                        await ws.ping(item.data)
                    else:
                        await ws.pong(item.data)
                if self._aborted():
                    return
                if self._close is not None:
                    code, message = self._close
                    await ws.close(code=code, message=message.encode())
                    return
        except ConnectionError:
            # aiohttp raises ClientConnectionResetError (a ConnectionResetError) once the
            # peer is gone; the reader sees the same and ends the connection.
            if self.close_reason is None:
                self.close_reason = CloseReason.WRITE_FAILED

    def stop(self) -> None:
        """End the writer once the reader is done."""
        self._stopped = True
        self._wakeup.set()

    def _aborted(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def stats(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "remote": self.remote,
            "age_s": round(time.monotonic() - self.opened, 3),
            "subscribe_messages": self.subscribe_messages,
            "subscriptions": list(self.feeds),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "queued": len(self._queue),
            "stall_dropped": self.stall_dropped,
            "stalled": self.is_stalled(time.monotonic()),
            "closed": self.close_reason.value if self.close_reason else None,
        }
