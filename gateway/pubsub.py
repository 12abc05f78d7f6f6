"""A lean Redis pub/sub connection: RESP2 over an asyncio Protocol.

Why not redis-py's PubSub: it parses one reply per await and stops reading
when no channel is subscribed. Here every socket read is parsed in one pass
and handed over as a batch, synchronously, so the relay pays no await per
message and a burst of messages becomes one fan-out batch.

One connection speaks classic (SUBSCRIBE, to a single Redis) or sharded
pub/sub (SSUBSCRIBE, to one master of a cluster: every channel of one
SSUBSCRIBE must be in one slot, which the relay sees to).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Final

from gateway.errors import GatewayError
from shared.redis_target import Endpoint, RedisTarget

logger = logging.getLogger(__name__)

# A channel name or payload larger than this is a protocol error, not data.
MAX_BULK_BYTES: Final = 16 * 1024 * 1024
# A subscribed connection's replies are short arrays of strings and numbers
# (["message", channel, payload], ["subscribe", channel, count]); anything
# longer, deeper or with a longer line is a protocol error, so a reply that
# arrives slowly is re-read from its start at a bounded cost.
MAX_ARRAY_ITEMS: Final = 8
MAX_NESTING: Final = 2
MAX_LINE_BYTES: Final = 1024
CONNECT_TIMEOUT_S: Final = 5.0

Message = tuple[bytes, bytes]  # (channel, payload)
_MESSAGE: Final = (b"message", b"smessage")
_SUBSCRIBE: Final = (b"subscribe", b"ssubscribe")


class PubSubError(GatewayError, ConnectionError):
    """The pub/sub connection failed or Redis answered with an error."""


def encode_command(*args: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespParser:
    """Incremental parser of the replies a subscribed connection receives."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[object]:
        self._buffer += data
        replies: list[object] = []
        position = 0
        while True:
            parsed = self._parse(position, 0)
            if parsed is None:
                break
            reply, position = parsed
            replies.append(reply)
        del self._buffer[:position]
        return replies

    def _array(self, count: int, after: int, depth: int) -> tuple[object, int] | None:
        if count > MAX_ARRAY_ITEMS or depth >= MAX_NESTING:
            raise PubSubError(f"an array of {count} items at depth {depth} is not a pub/sub reply")
        items: list[object] = []
        for _ in range(count):
            parsed = self._parse(after, depth + 1)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after

    def _parse(self, position: int, depth: int) -> tuple[object, int] | None:  # noqa: PLR0911 - one per RESP type
        buffer = self._buffer
        end = buffer.find(b"\r\n", position, position + MAX_LINE_BYTES)
        if end < 0:
            if len(buffer) - position >= MAX_LINE_BYTES:
                raise PubSubError(f"a reply line longer than {MAX_LINE_BYTES} bytes")
            return None
        kind, line = buffer[position : position + 1], bytes(buffer[position + 1 : end])
        after = end + 2
        if kind == b"*":
            return self._array(int(line), after, depth)
        if kind == b"$":
            length = int(line)
            if length < 0:
                return None, after
            if length > MAX_BULK_BYTES:
                raise PubSubError(f"bulk reply of {length} bytes")
            if len(buffer) < after + length + 2:
                return None
            return bytes(buffer[after : after + length]), after + length + 2
        if kind == b":":
            return int(line), after
        if kind == b"+":
            return line, after
        if kind == b"-":
            return PubSubError(line.decode(errors="replace")), after
        raise PubSubError(f"unexpected RESP type {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, connection: PubSubConnection) -> None:
        self._connection = connection
        self._parser = RespParser()

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except (PubSubError, ValueError) as exc:
            self._connection.fail(PubSubError(f"bad reply from Redis: {exc}"))
            return
        self._connection.handle_replies(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection.fail(PubSubError(f"connection lost: {exc}" if exc else "connection closed"))


class PubSubConnection:
    """One connection in subscribe mode; messages go to `on_messages` in batches."""

    def __init__(
        self,
        on_messages: Callable[[list[Message]], None],
        on_subscribed: Callable[[bytes], None],
        on_unsubscribed: Callable[[bytes], None],
        *,
        sharded: bool,
    ) -> None:
        self._on_messages = on_messages
        self._on_subscribed = on_subscribed
        self._on_unsubscribed = on_unsubscribed
        self._subscribe, self._unsubscribe = ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        self._transport: asyncio.BaseTransport | None = None
        self._auth_waiter: asyncio.Future[None] | None = None
        self._outgoing: list[bytes] = []  # commands written at the end of this turn
        self.closed: asyncio.Future[PubSubError] = asyncio.get_running_loop().create_future()

    async def connect(self, target: RedisTarget, address: Endpoint) -> None:
        """Connect to `address` (a single Redis, or one master of a cluster) with `target`'s credentials."""
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if target.tls else None
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), address.host, address.port, ssl=context),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            raise PubSubError(f"cannot connect to Redis at {address.host}:{address.port}: {exc}") from exc
        self._transport = transport
        if target.password is not None:
            self._auth_waiter = loop.create_future()
            auth = ("AUTH", target.username, target.password) if target.username else ("AUTH", target.password)
            self._write(encode_command(*auth))
            await asyncio.wait_for(self._auth_waiter, CONNECT_TIMEOUT_S)

    def subscribe(self, channels: Iterable[str]) -> None:
        self._command(self._subscribe, channels)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        self._command(self._unsubscribe, channels)

    def _command(self, name: str, channels: Iterable[str]) -> None:
        names = list(channels)
        if names and self._transport is not None and not self._transport.is_closing():
            self._write(encode_command(name, *names))

    def _write(self, data: bytes) -> None:
        # Commands of one turn go in one write: a connect storm subscribes a channel per connect.
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(data)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(outgoing))  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def fail(self, error: PubSubError) -> None:
        if self._auth_waiter is not None and not self._auth_waiter.done():
            self._auth_waiter.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(error)
        self.close()

    def handle_replies(self, replies: list[object]) -> None:
        messages: list[Message] = []
        for reply in replies:
            if isinstance(reply, list) and len(reply) == 3:
                kind, channel, payload = reply
                if kind in _MESSAGE and isinstance(channel, bytes) and isinstance(payload, bytes):
                    messages.append((channel, payload))
                elif kind in _SUBSCRIBE and isinstance(channel, bytes):
                    self._on_subscribed(channel)
                elif kind == b"sunsubscribe" and isinstance(channel, bytes):
                    # Also unsolicited: the channel's slot moved to another node (the relay tells which).
                    self._on_unsubscribed(channel)
            elif isinstance(reply, PubSubError):
                if messages:  # what arrived before the error is delivered
                    self._on_messages(messages)
                self.fail(reply)
                return
            elif reply == b"OK" and self._auth_waiter is not None and not self._auth_waiter.done():
                self._auth_waiter.set_result(None)
        if messages:
            self._on_messages(messages)
