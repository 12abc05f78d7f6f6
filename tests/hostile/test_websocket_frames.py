"""Hostile WebSocket frames: every shape costs time linear in its bytes and is refused with its close code."""

from __future__ import annotations

import struct

import pytest

from gateway.protocol.websocket import (
    MAX_FRAGMENTS,
    CloseCode,
    FrameParser,
    Opcode,
    WebSocketError,
)
from tests.harness import ws_frame
from tests.hostile.conftest import assert_linear, cpu_budget

MAX_SIZE = 1 << 20


def test_empty_continuations_are_capped_and_cost_linear_time() -> None:
    """Audit finding 1: FIN=0 then tens of thousands of empty continuations froze the node for 9 s."""
    flood = ws_frame("4", fin=False) + ws_frame(b"", opcode=0x0, fin=False) * 40_000  # about 240 KB
    parser = FrameParser(MAX_SIZE)
    with cpu_budget(1.0), pytest.raises(WebSocketError) as caught:
        parser.feed(flood)
    assert caught.value.code == CloseCode.TOO_BIG
    assert "fragments" in str(caught.value)


def test_fragments_under_the_cap_cost_linear_time() -> None:
    """Many messages of the most fragments allowed, all in one read and again a few bytes at a time."""
    message = ws_frame("4", fin=False) + ws_frame(b"", opcode=0x0, fin=False) * (MAX_FRAGMENTS - 2)
    message += ws_frame("2", opcode=0x0)

    def in_one_read(data: bytes) -> list[tuple[Opcode, bytes]]:
        return FrameParser(MAX_SIZE).feed(data)

    def five_bytes_a_read(data: bytes) -> list[tuple[Opcode, bytes]]:
        parser = FrameParser(MAX_SIZE)
        return [m for i in range(0, len(data), 5) for m in parser.feed(data[i : i + 5])]

    assert in_one_read(message * 3) == five_bytes_a_read(message * 3) == [(Opcode.TEXT, b"42")] * 3
    # 96 messages at the larger size: about 600 KB, 98,304 frames.
    assert_linear(lambda count: message * count, in_one_read, 12)
    assert_linear(lambda count: message * count, five_bytes_a_read, 12)


def test_a_large_frame_dripped_byte_by_byte_costs_linear_time() -> None:
    """An incomplete frame is never copied again on each read (that would be quadratic)."""

    def byte_by_byte(data: bytes) -> list[tuple[Opcode, bytes]]:
        parser = FrameParser(MAX_SIZE)
        got = [m for i in range(len(data)) for m in parser.feed(data[i : i + 1])]
        assert parser.buffered == 0
        return got

    assert byte_by_byte(ws_frame(b"x" * 1000)) == [(Opcode.TEXT, b"x" * 1000)]
    assert_linear(lambda size: ws_frame(b"x" * size), byte_by_byte, 37_500)  # up to 300,000 bytes


def test_fragment_bytes_are_counted_as_they_arrive() -> None:
    parser = FrameParser(1000)
    parser.feed(ws_frame(b"a" * 600, fin=False))
    assert parser.buffered == 600
    with pytest.raises(WebSocketError) as caught:
        parser.feed(ws_frame(b"b" * 401, opcode=0x0, fin=False)[:8])  # refused from the header alone
    assert caught.value.code == CloseCode.TOO_BIG


def test_a_control_frame_between_fragments_of_a_nearly_full_message_is_fine() -> None:
    parser = FrameParser(1000)
    data = ws_frame(b"a" * 990, fin=False) + ws_frame(b"ping" * 5, opcode=0x9) + ws_frame(b"b" * 10, opcode=0x0)
    assert parser.feed(data) == [(Opcode.PING, b"ping" * 5), (Opcode.TEXT, b"a" * 990 + b"b" * 10)]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", CloseCode.PROTOCOL_ERROR),  # one byte: half a code
        (struct.pack("!H", 999), CloseCode.PROTOCOL_ERROR),
        (struct.pack("!H", 1004), CloseCode.PROTOCOL_ERROR),  # reserved
        (struct.pack("!H", 1005), CloseCode.PROTOCOL_ERROR),  # never on the wire
        (struct.pack("!H", 1006), CloseCode.PROTOCOL_ERROR),
        (struct.pack("!H", 1015), CloseCode.PROTOCOL_ERROR),
        (struct.pack("!H", 2000), CloseCode.PROTOCOL_ERROR),
        (struct.pack("!H", 5000), CloseCode.PROTOCOL_ERROR),
        (struct.pack("!H", 1000) + b"\xff\xfe", CloseCode.INVALID_DATA),
    ],
)
def test_bad_close_frames_are_answered_with_1002_or_1007(payload: bytes, code: CloseCode) -> None:
    with pytest.raises(WebSocketError) as caught:
        FrameParser(MAX_SIZE).feed(ws_frame(payload, opcode=0x8))
    assert caught.value.code == code


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999])
def test_valid_close_frames_are_returned(code: int) -> None:
    payload = struct.pack("!H", code) + "bye ✓".encode()
    assert FrameParser(MAX_SIZE).feed(ws_frame(payload, opcode=0x8)) == [(Opcode.CLOSE, payload)]


def test_an_oversized_control_frame_is_refused_from_its_header() -> None:
    header = bytes([0x89, 0x80 | 126]) + struct.pack("!H", 60_000)
    with pytest.raises(WebSocketError) as caught:
        FrameParser(MAX_SIZE).feed(header)
    assert caught.value.code == CloseCode.PROTOCOL_ERROR
