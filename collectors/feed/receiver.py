"""The receiving side of one exchange WebSocket: frames in, whole messages out to the connection.

picows parses frames in Cython and calls `Receiver.on_ws_frame` from the
transport's ``data_received``; the message goes to the adapter right there,
so a frame costs no task wake-up and no queue. Frames from an exchange are
untrusted: a message is bounded (`MAX_MESSAGE_BYTES`, fragments included),
text must be UTF-8, and a fragment out of place is a protocol error. Any of
these closes the socket with the matching close code and ends the connection
with `ConnectionLost` naming the fault; the run loop reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, Protocol

import picows
from picows import WSCloseCode, WSMsgType

from collectors.book import CollectorError

# Books of a thousand levels a side run to a few hundred kB; anything far larger is not a market message.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024


class ConnectionLost(CollectorError, ConnectionError):
    """The socket closed, failed, or went silent; the run loop reconnects."""


class Sink(Protocol):
    """What the receiver hands messages to (the connection)."""

    def received(self, data: str | bytes) -> None: ...

    def alive(self) -> None: ...


class Receiver(picows.WSListener):
    """One socket's listener; `ended` completes when the socket is gone (with ConnectionLost unless we closed it)."""

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self._sink = sink
        self._parts: list[bytes] = []  # the frames so far of a fragmented message
        self._size = 0
        self._text = False
        self._fault = ""  # why we closed the socket, if we did
        self._closing = False
        self.ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if self._parts:
                self._fail(transport, WSCloseCode.PROTOCOL_ERROR, "a new message inside a fragmented one")
            elif frame.fin:
                self._deliver(transport, frame.get_payload_as_bytes(), text=kind is WSMsgType.TEXT)
            else:
                self._text = kind is WSMsgType.TEXT
                self._add(transport, frame)
        elif kind is WSMsgType.CONTINUATION:
            if not self._parts:
                self._fail(transport, WSCloseCode.PROTOCOL_ERROR, "a continuation frame with no message to continue")
            elif self._add(transport, frame) and frame.fin:
                data = b"".join(self._parts)
                self._parts, self._size = [], 0
                self._deliver(transport, data, text=self._text)
        elif kind is WSMsgType.CLOSE:
            with contextlib.suppress(Exception):  # answering is a courtesy: the socket goes either way
                transport.send_close(frame.get_close_code())
            transport.disconnect()
        else:  # a pong (pings are answered by picows)
            self._sink.alive()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        if self.ended.done():
            return
        if self._closing:
            self.ended.set_result(False)
            return
        received = transport.close_handshake.recv if transport.close_handshake is not None else None
        code = received.code.value if received is not None else None
        reason = self._fault or f"closed by the exchange (code {code})"
        self.ended.set_exception(ConnectionLost(reason))

    async def close(self, transport: picows.WSTransport, timeout_s: float) -> None:
        """Close the socket from our side, waiting at most `timeout_s` for it to go."""
        self._closing = True
        if not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await transport.wait_disconnected()
            if not transport.is_disconnected:
                transport.disconnect(graceful=False)
        if not self.ended.done():
            self.ended.set_result(False)
        elif not self.ended.cancelled():
            self.ended.exception()  # retrieved: the socket ended while we were closing it for another reason

    def _add(self, transport: picows.WSTransport, frame: picows.WSFrame) -> bool:
        self._size += frame.payload_size
        if self._size > MAX_MESSAGE_BYTES:
            self._fail(transport, WSCloseCode.MESSAGE_TOO_BIG, f"a message over {MAX_MESSAGE_BYTES} bytes")
            return False
        self._parts.append(frame.get_payload_as_bytes())
        return True

    def _deliver(self, transport: picows.WSTransport, data: bytes, *, text: bool) -> None:
        if not text:
            self._sink.received(data)
            return
        try:
            message = data.decode()
        except UnicodeDecodeError:
            self._fail(transport, WSCloseCode.INVALID_TEXT, "a text message that is not UTF-8")
            return
        self._sink.received(message)

    def _fail(self, transport: picows.WSTransport, code: WSCloseCode, fault: str) -> None:
        self._fault = f"protocol error from the exchange: {fault}"
        self._parts, self._size = [], 0
        transport.send_close(code)
        transport.disconnect()
