"""Small hot-path encoders and parsers against the general code they stand in for."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import http
from shared import base64url, resp, stdjson


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


def outcome(read: Callable[[Any], Any], data: str | bytes) -> tuple[str, str]:
    """What a reader makes of `data`: the value's repr (NaN is equal to itself there), or the exception's type."""
    try:
        return "value", repr(read(data))
    except (ValueError, RecursionError) as exc:
        return "error", type(exc).__name__


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# Bytes that change how a JSON text reads: its structure, numbers' forms, escapes, surrogates, encodings.
_NOISE = st.sampled_from(
    [
        '"',
        "\\",
        ",",
        ":",
        "{",
        "}",
        "[",
        "]",
        " ",
        "\n",
        "\x00",
        "e",
        "E",
        "-",
        "+",
        ".",
        "0",
        "9",
        "1e999",
        "NaN",
        "Infinity",
        "\\u",
        "\\ud800",
        "\\udc00",
        "\\ud83d\\ude00",
        "é",
        "\ufeff",
        "\x7f",
        "//",
        "'",
    ]
)


@settings(max_examples=2000, deadline=None)
@given(
    document=_DOCUMENTS,
    ascii_only=st.booleans(),
    noise=st.lists(st.tuples(st.integers(min_value=0, max_value=200), _NOISE), max_size=3),
    encoding=st.sampled_from(["str", "utf-8", "utf-16", "utf-32-le", "latin-1"]),
)
def test_the_fast_json_reader_reads_every_document_as_the_standard_library_does(
    document: object, ascii_only: bool, noise: list[tuple[int, str]], encoding: str
) -> None:
    text = json.dumps(document, ensure_ascii=ascii_only)
    for at, piece in noise:  # damaged or unusual texts too: both must refuse them alike, or read them alike
        text = text[:at] + piece + text[at:]
    if encoding == "str":
        data: str | bytes = text
    else:
        data = text.encode(encoding, errors="surrogatepass" if encoding != "latin-1" else "replace")
    assert outcome(stdjson.loads, data) == outcome(json.loads, data)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=64), junk=st.binary(max_size=8))
def test_base64url_is_the_base64_modules_urlsafe_pair(data: bytes, junk: bytes) -> None:
    encoded = base64.urlsafe_b64encode(data)
    assert base64url.encode(data) == encoded
    for text in (encoded, encoded.rstrip(b"="), encoded + junk, junk + encoded):
        assert outcome(base64url.decode, text) == outcome(base64.urlsafe_b64decode, text)
