"""Small hot-path encoders and parsers against the general code they stand in for."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl, urlsplit

import hiredis
import pytest

from gateway.protocol import http
from shared import resp


@pytest.mark.parametrize(
    "args",
    [
        ("PING",),
        ("GET", "revoked:user:alice"),
        ("EVAL", "return 1", 1, "connections:{alice}", b"node sid", 15_000, 2**31),
        ("SET", "k", "é ünïcode", "EX", 0),
        ("XREVRANGE", b"\x00\xffbinary", "+", "-", "COUNT", -1),
    ],
)
def test_a_command_is_what_redis_reads_and_what_bulk_builds(args: tuple[bytes | str | int, ...]) -> None:
    encoded = resp.command(*args)
    assert encoded == b"*%d\r\n" % len(args) + b"".join(resp.bulk(arg) for arg in args)
    reader = hiredis.Reader()
    reader.feed(encoded)
    expected = [arg.encode() if isinstance(arg, str) else b"%d" % arg if isinstance(arg, int) else arg for arg in args]
    assert reader.gets() == expected
    assert reader.gets() is False


def general_parse(target: bytes) -> tuple[str, dict[str, str]]:
    url = urlsplit(target.decode("latin-1"))
    return url.path, dict(parse_qsl(url.query, keep_blank_values=True))


def test_remembered_targets_parse_as_the_general_parser_does() -> None:
    rng = random.Random(7)
    pieces = ["/socket.io/", "?", "&", "=", "EIO", "4", "%20", "+", "%", "transport", "websocket", "é", ";", "#", "t"]
    targets = [b"/socket.io/?EIO=4&transport=websocket"] + [
        "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))).encode("latin-1", errors="replace")
        for _ in range(2000)
    ]
    for target in targets:
        path, pairs = http._read_target(target)
        assert (path, dict(pairs)) == general_parse(target)
        assert http._read_target(target) == (path, pairs)  # the same answer when remembered


def test_the_remembered_parses_are_bounded() -> None:
    for index in range(http.TARGETS_CACHED * 3):
        http._read_target(b"/socket.io/?EIO=4&transport=polling&t=%d" % index)
    assert http._read_target.cache_info().currsize <= http.TARGETS_CACHED


def test_a_target_that_is_not_a_url_is_refused_each_time() -> None:
    for _ in range(2):
        with pytest.raises(ValueError):
            http._read_target(b"http://[::1/x")
