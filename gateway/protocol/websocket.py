"""RFC 6455 framing: the handshake key, server frames and a strict parser of client frames.

Server frames are unmasked, so one frame's bytes can be written to every
recipient as they are; that is what makes fan-out cost one write per client.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from enum import IntEnum
from typing import Final

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_FIN: Final = 0x80


# Close codes a client may send (RFC 6455 7.4.1 and the IANA registry); 1005, 1006 and 1015 are never on the wire.
_VALID_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)}) | frozenset(range(3000, 5000))
# A message may arrive in this many frames at most. Fragments cost a list
# entry each even when empty, so their number is bounded as well as their bytes.
MAX_FRAGMENTS: Final = 1024
# RFC 6455 5.5: control frames carry at most 125 bytes and are never fragmented.
MAX_CONTROL_PAYLOAD: Final = 125


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009


class WebSocketError(Exception):
    """A client broke the protocol; the connection is closed with `code`."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value answering a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()  # noqa: S324 - RFC 6455


def valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def frame(opcode: Opcode, payload: bytes) -> bytes:
    """One unmasked, unfragmented server frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN | opcode, length)
    elif length < 65536:
        header = struct.pack("!BBH", _FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, length)
    return header + payload


def text_frame(payload: bytes) -> bytes:
    return frame(Opcode.TEXT, payload)


def close_frame(code: CloseCode, reason: str = "") -> bytes:
    # Cut to the 125 bytes a control frame may carry, on a character boundary.
    text = reason.encode()[: MAX_CONTROL_PAYLOAD - 2].decode(errors="ignore").encode()
    return frame(Opcode.CLOSE, struct.pack("!H", code) + text)


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR with the 4-byte mask, done on one big integer instead of byte by byte."""
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


class FrameParser:
    """Incremental parser of client frames: masked, at most `max_size` bytes per message.

    `feed` returns complete messages as (opcode, payload); fragments are
    joined, control frames may arrive between fragments. Its cost is linear
    in the bytes fed, however they are split: an incomplete frame waits in a
    bytearray (appends and front deletes are amortized O(1)) and is looked at
    again only for its header, and fragments keep a running total.
    """

    __slots__ = ("_buffer", "_fragments", "_fragments_bytes", "_fragments_opcode", "_max_size")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragments_bytes = 0
        self._fragments_opcode = Opcode.CONTINUATION

    @property
    def buffered(self) -> int:
        """Bytes held for messages not complete yet (an incomplete frame and earlier fragments)."""
        return len(self._buffer) + self._fragments_bytes

    def feed(self, data: bytes) -> list[tuple[Opcode, bytes]]:
        buffer: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        else:
            buffer = data  # the common case: whole frames, parsed without a copy
        messages: list[tuple[Opcode, bytes]] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            sizes = self._frame_size(buffer, offset, end)
            if sizes is None:
                break
            header, length = sizes
            if end - offset < header + length:
                break
            start = offset + header
            payload = unmask(buffer[start : start + length], buffer[start - 4 : start])
            first = buffer[offset]
            offset = start + length
            message = self._message(first & 0x80 != 0, _OPCODE_OF.get(first & 0x0F), payload)
            if message is not None:
                messages.append(message)
        if buffer is self._buffer:
            del self._buffer[:offset]
        elif offset < end:
            self._buffer = bytearray(memoryview(buffer)[offset:])
        return messages

    def _frame_size(self, buffer: bytes | bytearray, offset: int, end: int) -> tuple[int, int] | None:
        """(header, payload) lengths of the frame at `offset`, None until its header is complete.

        Checks what the header alone can tell, so an oversized frame is refused before its bytes arrive.
        """
        first, second = buffer[offset], buffer[offset + 1]
        if first & 0x70:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        if not second & 0x80:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
        length = second & 0x7F
        if first & 0x08 and length > MAX_CONTROL_PAYLOAD:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "control frames carry at most 125 bytes")
        header = 6
        if length == 126:
            header = 8
            if end - offset < header:
                return None
            (length,) = struct.unpack_from("!H", buffer, offset + 2)
        elif length == 127:
            header = 14
            if end - offset < header:
                return None
            (length,) = struct.unpack_from("!Q", buffer, offset + 2)
        if not first & 0x08 and length > self._max_size - self._fragments_bytes:
            raise WebSocketError(CloseCode.TOO_BIG, f"messages are limited to {self._max_size} bytes")
        return header, length

    def _message(self, fin: bool, opcode: Opcode | None, payload: bytes) -> tuple[Opcode, bytes] | None:
        if opcode is None:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "unknown opcode")
        if opcode >= Opcode.CLOSE:
            if not fin:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "control frames must not be fragmented")
            if opcode == Opcode.CLOSE:
                _check_close(payload)
            return opcode, payload
        if opcode == Opcode.CONTINUATION:
            if not self._fragments:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "continuation without a first fragment")
        elif self._fragments:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "a new message before the last one ended")
        else:
            self._fragments_opcode = opcode
        if fin and not self._fragments:
            return opcode, payload
        if len(self._fragments) >= MAX_FRAGMENTS:
            raise WebSocketError(CloseCode.TOO_BIG, f"a message may have at most {MAX_FRAGMENTS} fragments")
        self._fragments.append(payload)
        self._fragments_bytes += len(payload)
        if not fin:
            return None
        whole = b"".join(self._fragments)
        self._fragments = []
        self._fragments_bytes = 0
        return self._fragments_opcode, whole


def _check_close(payload: bytes) -> None:
    """A client's close frame: empty, or a valid code and a UTF-8 reason (RFC 6455 5.5.1, 7.4)."""
    if not payload:
        return
    if len(payload) == 1:
        raise WebSocketError(CloseCode.PROTOCOL_ERROR, "a close payload has a two-byte code")
    (code,) = struct.unpack_from("!H", payload)
    if code not in _VALID_CLOSE_CODES:
        raise WebSocketError(CloseCode.PROTOCOL_ERROR, f"close code {code} is not one a client may send")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise WebSocketError(CloseCode.INVALID_DATA, "a close reason must be UTF-8") from None


_OPCODE_OF: Final = {int(o): o for o in Opcode}  # a dict lookup: calling the enum costs a microsecond a frame
