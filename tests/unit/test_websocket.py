"""RFC 6455 framing: the handshake key, server frames, and the strict parser of client frames."""

from __future__ import annotations

import pytest

from gateway.protocol.websocket import CloseCode, FrameParser, Opcode, WebSocketError, accept_key, text_frame, valid_key
from tests.harness import ws_frame


def test_accept_key_is_the_rfc_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert valid_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not valid_key("short")
    assert not valid_key("not base64 at all!!!!!!!")


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_server_frames_use_the_shortest_length(size: int) -> None:
    frame = text_frame(b"x" * size)
    header = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(frame) == header + size
    assert frame[0] == 0x81  # FIN + text, unmasked
    assert frame[1] & 0x80 == 0


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536])
def test_parser_unmasks_every_length_even_one_byte_at_a_time(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    data = ws_frame(payload, opcode=0x2) + ws_frame("after")
    whole = FrameParser(1 << 20).feed(data)
    assert whole == [(Opcode.BINARY, payload), (Opcode.TEXT, b"after")]
    parser = FrameParser(1 << 20)
    drip = [message for i in range(len(data)) for message in parser.feed(data[i : i + 1])]
    assert drip == whole


def test_fragments_are_joined_and_control_frames_may_interleave() -> None:
    parser = FrameParser(1024)
    data = ws_frame("42[", fin=False) + ws_frame(b"hi", opcode=0x9) + ws_frame('"a"]', opcode=0x0)
    assert parser.feed(data) == [(Opcode.PING, b"hi"), (Opcode.TEXT, b'42["a"]')]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (ws_frame("x", masked=False), CloseCode.PROTOCOL_ERROR),
        (ws_frame("x", opcode=0x3), CloseCode.PROTOCOL_ERROR),
        (ws_frame("x", opcode=0x0), CloseCode.PROTOCOL_ERROR),
        (ws_frame("x", fin=False) + ws_frame("y"), CloseCode.PROTOCOL_ERROR),
        (ws_frame(b"p", opcode=0x9, fin=False), CloseCode.PROTOCOL_ERROR),
        (ws_frame(b"p" * 126, opcode=0x9), CloseCode.PROTOCOL_ERROR),
        (bytes([0xC1]) + ws_frame("x")[1:], CloseCode.PROTOCOL_ERROR),  # RSV1 without an extension
        (ws_frame("x" * 201), CloseCode.TOO_BIG),
        (ws_frame("x" * 120, fin=False) + ws_frame("y" * 120, opcode=0x0), CloseCode.TOO_BIG),
    ],
)
def test_protocol_violations_name_their_close_code(data: bytes, code: CloseCode) -> None:
    with pytest.raises(WebSocketError) as caught:
        FrameParser(200).feed(data)
    assert caught.value.code == code


def test_a_huge_declared_length_is_refused_before_its_bytes_arrive() -> None:
    header = bytes([0x81, 0x80 | 127]) + (1 << 40).to_bytes(8, "big") + b"mask"
    with pytest.raises(WebSocketError) as caught:
        FrameParser(1 << 20).feed(header)
    assert caught.value.code == CloseCode.TOO_BIG
