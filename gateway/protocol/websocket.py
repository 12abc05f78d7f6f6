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
    return frame(Opcode.CLOSE, struct.pack("!H", code) + reason.encode()[:120])


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, done on one big integer instead of byte by byte."""
    length = len(payload)
    if not length:
        return payload
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


class FrameParser:
    """Incremental parser of client frames: masked, at most `max_size` bytes per message.

    `feed` returns complete messages as (opcode, payload); fragments are
    joined, control frames may arrive between fragments.
    """

    __slots__ = ("_buffer", "_fragments", "_fragments_opcode", "_max_size")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._fragments_opcode = Opcode.CONTINUATION

    def feed(self, data: bytes) -> list[tuple[Opcode, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        messages: list[tuple[Opcode, bytes]] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            if first & 0x70:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
            if not second & 0x80:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            length = second & 0x7F
            header = 6
            if length == 126:
                header = 8
                if end - offset < header:
                    break
                (length,) = struct.unpack_from("!H", buffer, offset + 2)
            elif length == 127:
                header = 14
                if end - offset < header:
                    break
                (length,) = struct.unpack_from("!Q", buffer, offset + 2)
            if length > self._max_size:
                raise WebSocketError(CloseCode.TOO_BIG, f"frames are limited to {self._max_size} bytes")
            if end - offset < header + length:
                break
            mask = buffer[offset + header - 4 : offset + header]
            payload = unmask(buffer[offset + header : offset + header + length], mask)
            offset += header + length
            code = first & 0x0F
            message = self._message(first & 0x80 != 0, Opcode(code) if code in _OPCODES else None, payload)
            if message is not None:
                messages.append(message)
        self._buffer = buffer[offset:]
        return messages

    def _message(self, fin: bool, opcode: Opcode | None, payload: bytes) -> tuple[Opcode, bytes] | None:
        if opcode is None:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "unknown opcode")
        if opcode >= Opcode.CLOSE:
            if not fin or len(payload) > 125:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "control frames must be short and unfragmented")
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
        self._fragments.append(payload)
        if sum(len(f) for f in self._fragments) > self._max_size:
            raise WebSocketError(CloseCode.TOO_BIG, f"messages are limited to {self._max_size} bytes")
        if not fin:
            return None
        whole = b"".join(self._fragments)
        self._fragments = []
        return self._fragments_opcode, whole


_OPCODES: Final = frozenset(int(o) for o in Opcode)
