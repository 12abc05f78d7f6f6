"""The plain upgrade reader reads only heads h11 reads, and reads them as h11 does."""

from __future__ import annotations

import random
import re

import h11
import h11._abnf
import h11._readers

from gateway.protocol.http import MAX_HEAD_BYTES
from gateway.protocol.request_head import HEADER_FIELD, header_field, plain_upgrade

HANDSHAKE = (
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8000\r\n"
    b"Connection: Upgrade\r\n"
    b"Upgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"\r\n"
)
# Bytes that matter to a head's grammar, and a few that do not.
ALPHABET = [
    *(b"\x00", b"\t", b" ", b"\r", b"\n", b"\r\n", b":", b"a", b"Z"),
    *(b"\x7f", b"\x80", b"\xff", b"/", b"?", b"\x01"),
]
EXTRA_LINES = [
    b"Host: other",
    b"Content-Length: 0",
    b"Transfer-Encoding: chunked",
    b" folded",
    b"\tfolded",
    b"X-Empty:",
    b"X-Spaces:   v  ",
    b"Bad Name: x",
    b"upgrade: h2c",
    b"",
]


def h11_reading(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """What h11 reads from `data` as a whole bodiless request with nothing after it, or None."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.receive_data(data)
    try:
        head = conn.next_event()
        if not isinstance(head, h11.Request) or not isinstance(conn.next_event(), h11.EndOfMessage):
            return None
    except h11.RemoteProtocolError:
        return None
    if conn.trailing_data[0]:
        return None
    return head.method, head.target, list(head.headers)


def mutated(rng: random.Random) -> bytes:
    lines = HANDSHAKE[:-4].split(b"\r\n")
    for _ in range(rng.randint(0, 3)):
        choice = rng.random()
        index = rng.randrange(len(lines))
        if choice < 0.4:
            line = lines[index]
            at = rng.randint(0, len(line))
            lines[index] = line[:at] + rng.choice(ALPHABET) + line[at + rng.randint(0, 2) :]
        elif choice < 0.7:
            lines.insert(rng.randint(1, len(lines)), rng.choice(EXTRA_LINES))
        elif choice < 0.8 and len(lines) > 1:
            del lines[rng.randint(1, len(lines) - 1)]
        elif choice < 0.9:
            lines[0] = rng.choice([b"POST", b"get", b"GET", b"HEAD"]) + lines[0][3:]
        else:
            lines[0] = lines[0].replace(b"HTTP/1.1", rng.choice([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 "]))
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    if rng.random() < 0.1:
        data += rng.choice([b"x", b"GET / HTTP/1.1\r\n\r\n", b"\r\n"])
    return data


def test_every_head_read_plain_is_read_by_h11_the_same_way() -> None:
    rng = random.Random(20261202)
    read = refused = 0
    for _ in range(5000):
        data = mutated(rng)
        plain = plain_upgrade(data, MAX_HEAD_BYTES)
        if plain is None:
            refused += 1
            continue
        read += 1
        target, headers = plain
        assert h11_reading(data) == (b"GET", target, headers), data
    # Both outcomes are exercised: the comparison above ran on many heads.
    assert read > 500 and refused > 500, (read, refused)


def test_the_plain_form_is_narrow() -> None:
    assert plain_upgrade(HANDSHAKE, MAX_HEAD_BYTES) is not None
    assert plain_upgrade(HANDSHAKE, len(HANDSHAKE) - 1) is None  # over the size bound
    assert plain_upgrade(HANDSHAKE.replace(b"Upgrade: websocket\r\n", b""), MAX_HEAD_BYTES) is None
    assert plain_upgrade(HANDSHAKE.replace(b"\r\n", b"\n"), MAX_HEAD_BYTES) is None
    assert plain_upgrade(HANDSHAKE[:-2], MAX_HEAD_BYTES) is None  # incomplete
    assert plain_upgrade(HANDSHAKE + b"x", MAX_HEAD_BYTES) is None  # bytes after the head


def test_the_linear_header_pattern_and_the_plain_reader_read_every_line_as_h11s_own_pattern_does() -> None:
    h11_pattern = re.compile(h11._abnf.header_field.encode("ascii"))
    assert h11._readers.header_field_re is HEADER_FIELD  # installed by gateway.protocol.http
    rng = random.Random(7)
    pieces = [b" ", b"\t", b"a", b"-", b":", b"\x00", b"\x01", b"\x7f", b"\x80", b"\r", b"\x0b", b"  ", b"b c", b": "]
    pieces += [b"\n", b"\x0c", b"!", b"@"]
    matched = 0
    for _ in range(50_000):
        line = rng.choice([b"X", b"Host", b"", b"a b"]) + b"".join(rng.choices(pieces, k=rng.randint(0, 8)))
        ours, theirs = HEADER_FIELD.fullmatch(line), h11_pattern.fullmatch(line)
        assert (ours is None) == (theirs is None), line
        plain = header_field(line)  # the plain reader's, without a regex
        assert (plain is None) == (ours is None), line
        if ours is not None and theirs is not None:
            matched += 1
            assert ours.groupdict() == theirs.groupdict(), line
            assert plain == (ours["field_name"], ours["field_value"]), line
    assert matched > 1000
