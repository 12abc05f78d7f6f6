"""The pub/sub reply parser reads every well-formed reply as hiredis (Redis's own C parser) does, in any chunking.

Its bounds (array length and depth, line length, bulk size) are the hostile tests'
(tests/hostile/test_linearity.py); here only the reading itself, on generated replies within them.
"""

from __future__ import annotations

import random

import hiredis

from gateway.pubsub import MAX_ARRAY_ITEMS, MAX_NESTING, PubSubError, RespParser

REPLIES_PER_RUN = 300


def encode(value: object) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, PubSubError):
        return b"-%s\r\n" % str(value).encode()
    if isinstance(value, tuple):  # a status reply
        return b"+%s\r\n" % value[0]
    assert isinstance(value, list)
    return b"*%d\r\n" % len(value) + b"".join(encode(item) for item in value)


def reply(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth == 0 and roll < 0.3:  # a relayed message, the parser's fast path; now and then with odd elements
        kind = rng.choice((b"message", b"smessage"))
        channel = bytes(rng.choice(b"md:ab\r\n") for _ in range(rng.randint(0, 40)))
        elements = [channel, reply(rng, 1)] if rng.random() < 0.8 else [reply(rng, 1), reply(rng, 1)]
        return [kind, *elements]
    roll = rng.random()
    if roll < 0.35 and depth < MAX_NESTING:
        return [reply(rng, depth + 1) for _ in range(rng.randint(0, MAX_ARRAY_ITEMS))]
    if roll < 0.7:  # bulk strings carry any bytes, CR LF and '*' included
        return bytes(rng.choice(b"ab*$:\r\n\x00\xff") for _ in range(rng.randint(0, 300)))
    if roll < 0.8:
        return rng.randint(-(2**62), 2**62)
    if roll < 0.85:
        return None
    if roll < 0.93:
        return (bytes(rng.choice(b"OKQUEUED ") for _ in range(rng.randint(0, 20))),)
    return PubSubError("ERR " + "".join(rng.choice("abc xyz") for _ in range(rng.randint(0, 30))))


def comparable(value: object) -> object:
    """Replies as plain data: errors by their message, status replies as the bytes both parsers return."""
    if isinstance(value, PubSubError):
        return ("error", str(value))
    if isinstance(value, tuple):
        return value[0]
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


def test_generated_replies_in_random_chunks_read_as_hiredis_reads_them() -> None:
    rng = random.Random(1313)
    for _ in range(20):
        replies = [reply(rng) for _ in range(REPLIES_PER_RUN)]
        data = b"".join(encode(r) for r in replies)
        reference = hiredis.Reader(replyError=PubSubError)
        reference.feed(data)
        expected = []
        while (item := reference.gets()) is not False:
            expected.append(item)
        parser = RespParser()
        got: list[object] = []
        position = 0
        while position < len(data):
            size = rng.choice((1, 2, 7, 64, 1000, len(data)))
            got += parser.feed(data[position : position + size])
            position += size
        assert [comparable(r) for r in got] == [comparable(r) for r in expected] == [comparable(r) for r in replies]
