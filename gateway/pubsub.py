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
from shared import resp
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
_ARRAY, _BULK, _INTEGER, _STATUS, _ERROR = b"*$:+-"  # RESP type bytes, as numbers
_SUBSCRIBE: Final = (b"subscribe", b"ssubscribe")
# What nearly every reply is, a relayed message (sharded or not): its head is matched whole, and only
# its channel and payload are parsed.
_MESSAGE_HEADS: Final = ((b"*3\r\n$7\r\nmessage\r\n", b"message"), (b"*3\r\n$8\r\nsmessage\r\n", b"smessage"))


class PubSubError(GatewayError, ConnectionError):
    """The pub/sub connection failed or Redis answered with an error."""


class RespParser:
    """Incremental parser of the replies a subscribed connection receives.

    Every relayed message passes through here, so it reads in place: a read that holds whole
    replies is parsed straight from its bytes (only an unfinished tail is kept), type bytes are
    compared as numbers and header lines are not copied; a message reply's fixed head is matched
    whole (`_MESSAGE_HEADS`) instead of being parsed as an array and a bulk string.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[object]:
        source: bytes | bytearray = data
        if self._buffer:
            self._buffer += data
            source = self._buffer
        replies: list[object] = []
        position = 0
        while True:
            for head, kind in _MESSAGE_HEADS:
                if source.startswith(head, position):
                    parsed = self._message(source, position + len(head), kind)
                    break
            else:
                parsed = self._parse(source, position, 0)
            if parsed is None:
                break
            reply, position = parsed
            replies.append(reply)
        if source is self._buffer:
            del self._buffer[:position]
        elif position < len(data):
            self._buffer += memoryview(data)[position:]
        return replies

    def _message(self, source: bytes | bytearray, after: int, kind: bytes) -> tuple[object, int] | None:
        """The rest of a message reply whose head was matched: its channel and payload, read as `_array` would."""
        channel = self._parse(source, after, 1)
        if channel is None:
            return None
        payload = self._parse(source, channel[1], 1)
        if payload is None:
            return None
        return [kind, channel[0], payload[0]], payload[1]

    def _array(self, source: bytes | bytearray, count: int, after: int, depth: int) -> tuple[object, int] | None:
        if count > MAX_ARRAY_ITEMS or depth >= MAX_NESTING:
            raise PubSubError(f"an array of {count} items at depth {depth} is not a pub/sub reply")
        items: list[object] = []
        for _ in range(count):
            parsed = self._parse(source, after, depth + 1)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after

    def _parse(self, source: bytes | bytearray, position: int, depth: int) -> tuple[object, int] | None:  # noqa: PLR0911 - one per RESP type
        end = source.find(b"\r\n", position, position + MAX_LINE_BYTES)
        if end < 0:
            if len(source) - position >= MAX_LINE_BYTES:
                raise PubSubError(f"a reply line longer than {MAX_LINE_BYTES} bytes")
            return None
        kind = source[position]
        after = end + 2
        if kind == _BULK:
            length = int(source[position + 1 : end])
            if length < 0:
                return None, after
            if length > MAX_BULK_BYTES:
                raise PubSubError(f"bulk reply of {length} bytes")
            if len(source) < after + length + 2:
                return None
            return bytes(source[after : after + length]), after + length + 2
        if kind == _ARRAY:
            return self._array(source, int(source[position + 1 : end]), after, depth)
        if kind == _INTEGER:
            return int(source[position + 1 : end]), after
        if kind == _STATUS:
            return bytes(source[position + 1 : end]), after
        if kind == _ERROR:
            return PubSubError(bytes(source[position + 1 : end]).decode(errors="replace")), after
        raise PubSubError(f"unexpected RESP type {bytes((kind,))!r}")


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
            self._write(resp.command(*auth))
            await asyncio.wait_for(self._auth_waiter, CONNECT_TIMEOUT_S)

    def subscribe(self, channels: Iterable[str]) -> None:
        self._command(self._subscribe, channels)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        self._command(self._unsubscribe, channels)

    def _command(self, name: str, channels: Iterable[str]) -> None:
        names = list(channels)
        if names and self._transport is not None and not self._transport.is_closing():
            self._write(resp.command(name, *names))

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
