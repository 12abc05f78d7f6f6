"""A lean RESP2 connection for pipelines built as bytes: one socket, replies parsed in C.

redis-py builds each command of a pipeline from Python arguments and runs it through
its pipeline, retry and connection-pool machinery; for a collector publishing tens of
thousands of small events a second that was about a quarter of its CPU. Here the caller
writes a whole pipeline's bytes at once (`command` builds them) and awaits its replies,
which hiredis parses straight from ``data_received``.

Failures are redis-py's exceptions, so callers catch them as they catch redis-py's: a
lost or unusable connection is `ConnectionError` (every request still waiting fails
with it, and the connection is closed for good), a refused AUTH `AuthenticationError`.
Error replies are returned in place, as `ResponseError` instances, for the caller to judge.

`send` writes a pipeline and hands back the future of its replies without waiting for
them, so the next pipeline can go before the last one's replies are read: one wake-up
per pipeline fewer. Callers bound how many they keep in flight (`pending`); a request
left unanswered for `reply_timeout_s` fails the connection, and with it every request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Any, Final, cast

import hiredis
import redis.exceptions

from shared.redis_target import RedisTarget

# Replies to a pipeline are small (PUBLISH counts, OK); a reader holding more than this is being fed garbage.
MAX_REPLY_BUFFER: Final = 16 * 1024 * 1024


def bulk(arg: bytes | str | int) -> bytes:
    """One argument as a RESP bulk string."""
    data = arg.encode() if isinstance(arg, str) else b"%d" % arg if isinstance(arg, int) else arg
    return b"$%d\r\n%s\r\n" % (len(data), data)


def command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings (what `bulk` builds, in one call of C).

    Every connect's Redis queries pass here, a dozen arguments each: hiredis packs them in about
    two fifths of the time of a Python loop (0.76 against 1.8 us for a connect's EVAL).
    """
    # Its stub types the tuple as one item long, and the result not at all.
    return cast(bytes, hiredis.pack_command(cast(Any, args)))


class _Pending:
    """One request's awaited replies."""

    __slots__ = ("future", "remaining", "replies", "sent")

    def __init__(self, future: asyncio.Future[list[object]], count: int) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[object] = []
        self.sent = time.monotonic()


class RespConnection(asyncio.Protocol):
    """One connection to one Redis; requests are answered in the order they were written."""

    def __init__(self, reply_timeout_s: float) -> None:
        self._reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)
        self._pending: deque[_Pending] = deque()
        self._transport: asyncio.Transport | None = None
        self._error: redis.exceptions.ConnectionError | None = None
        self._reply_timeout = reply_timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()  # made by the running loop's create_connection

    @classmethod
    async def open(cls, target: RedisTarget, *, timeout_s: float) -> RespConnection:
        """Connect to a single Redis, authenticate and select its database; raises ConnectionError.

        `timeout_s` bounds the connect and, from then on, the wait for each request's replies.
        """
        if target.cluster:
            raise ValueError("RespConnection serves a single Redis, not a cluster")
        seed = target.seeds[0]
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if target.tls else None
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(lambda: cls(timeout_s), seed.host, seed.port, ssl=context)
                setup = []
                if target.password is not None:
                    auth = (target.username, target.password) if target.username else (target.password,)
                    setup.append(command("AUTH", *auth))
                if target.db:
                    setup.append(command("SELECT", target.db))
                replies = await conn.execute(b"".join(setup), len(setup)) if setup else []
        except (OSError, TimeoutError) as exc:
            raise redis.exceptions.ConnectionError(f"cannot connect to Redis at {seed}: {exc!r}") from exc
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError):
                conn.close()
                raise redis.exceptions.AuthenticationError(f"Redis at {seed} refused the connection's setup: {reply}")
        return conn

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self._error is None

    @property
    def pending(self) -> int:
        """Requests written whose replies have not all arrived."""
        return len(self._pending)

    def send(self, payload: bytes, count: int) -> asyncio.Future[list[object]]:
        """Write `payload` (`count` commands); the future gets their replies, error replies included.

        It fails with ConnectionError if the connection is lost or no reply came within the
        reply timeout. Raises ConnectionError at once on a connection that failed before.
        """
        if self._error is not None:
            raise self._error
        assert self._transport is not None, "send() on a connection that is not open"
        future: asyncio.Future[list[object]] = self._loop.create_future()
        self._pending.append(_Pending(future, count))
        self._transport.write(payload)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._reply_timeout, self._watch)
        return future

    async def execute(self, payload: bytes, count: int) -> list[object]:
        """`send`, then wait for the replies.

        Cancelled (or timed out) while waiting, the connection is closed: the replies still
        on their way could not be told from those of the next request.
        """
        future = self.send(payload, count)
        try:
            return await future
        except asyncio.CancelledError:
            self._fail(redis.exceptions.ConnectionError("a request was abandoned before its replies"))
            raise

    def close(self) -> None:
        self._fail(redis.exceptions.ConnectionError("connection closed"))

    def _watch(self) -> None:
        """Fail the connection if its oldest request waited too long; look again when the next one is due."""
        self._watchdog = None
        if not self._pending or self._error is not None:
            return
        overdue = time.monotonic() - self._pending[0].sent - self._reply_timeout
        if overdue >= 0:
            self._fail(redis.exceptions.ConnectionError(f"no reply from Redis within {self._reply_timeout} s"))
            return
        self._watchdog = self._loop.call_later(-overdue, self._watch)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        reader, pending = self._reader, self._pending
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if not pending:
                    self._fail(redis.exceptions.ConnectionError("Redis sent a reply nobody asked for"))
                    return
                request = pending[0]
                request.replies.append(reply)
                request.remaining -= 1
                if request.remaining == 0:
                    pending.popleft()
                    if not request.future.done():
                        request.future.set_result(request.replies)
            if reader.len() > MAX_REPLY_BUFFER:
                self._fail(redis.exceptions.ConnectionError(f"a reply from Redis exceeds {MAX_REPLY_BUFFER} bytes"))
        except hiredis.ProtocolError as exc:
            self._fail(redis.exceptions.ConnectionError(f"unreadable reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.exceptions.ConnectionError(f"connection lost: {exc!r}" if exc else "closed by Redis"))

    def _fail(self, error: redis.exceptions.ConnectionError) -> None:
        if self._error is None:
            self._error = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._pending:
            future = self._pending.popleft().future
            if not future.done():
                future.set_exception(self._error)
        if self._transport is not None:
            self._transport.close()
