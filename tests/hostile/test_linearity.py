"""Every parser's cost is linear in its input: each pathological shape, at scale, within a generous budget.

The WebSocket frame parser's shapes are in test_websocket_frames. Budgets are CPU seconds of this
process (see `cpu_budget`), many times what linear work needs and far below what quadratic work costs
at these sizes; where linear work itself is long, the cost of 8x the input is compared (`assert_linear`).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from gateway.protocol.sio import MAX_JSON_DEPTH, ProtocolFault, decode_data, read_header
from gateway.pubsub import PubSubError, RespParser
from shared import codec
from shared.errors import PayloadError
from shared.nesting import deeper_than
from tests.harness import make_token, running_node
from tests.hostile.conftest import assert_linear, cpu_budget
from tests.hostile.edge import open_polling


def test_a_large_redis_message_dripped_in_small_reads_costs_linear_time() -> None:
    payload = b"x" * 2_000_000
    data = b"*3\r\n$7\r\nmessage\r\n$5\r\nmd:xy\r\n$%d\r\n%s\r\n" % (len(payload), payload)
    parser = RespParser()
    with cpu_budget(3.0):
        replies = [r for i in range(0, len(data), 512) for r in parser.feed(data[i : i + 512])]
    assert replies == [[b"message", b"md:xy", payload]]


def test_many_small_redis_messages_in_one_read_cost_linear_time() -> None:
    message = b"*3\r\n$7\r\nmessage\r\n$5\r\nmd:xy\r\n$2\r\nhi\r\n"
    assert RespParser().feed(message * 3) == [[b"message", b"md:xy", b"hi"]] * 3
    assert_linear(lambda count: message * count, lambda data: RespParser().feed(data), 12_500)  # up to 100,000


@pytest.mark.parametrize(
    "data",
    [
        b"*1\r\n" * 10_000,  # arrays nested past any pub/sub reply
        b"*100000\r\n",  # an array longer than any pub/sub reply
        b"+" + b"x" * 100_000,  # a line that never ends
    ],
)
def test_redis_replies_no_pubsub_connection_gets_are_refused_at_once(data: bytes) -> None:
    with cpu_budget(1.0), pytest.raises(PubSubError):
        RespParser().feed(data)


def test_socketio_packets_at_the_size_limit_cost_linear_time() -> None:
    shapes = [
        '42["x",' + json.dumps(["a" * 10] * 1400) + "]",  # many strings
        '42["x",' + json.dumps(list(range(3000))) + "]",  # many numbers
        '42["x","' + "\\u00e9" * 2500 + '"]',  # escapes
        '42["x",' + "[" * 31 + "]" * 31 + "]",  # as deep as allowed (the event list is a level)
    ]
    with cpu_budget(3.0):
        for _ in range(200):
            for text in shapes:
                header = read_header(text[1:])
                decode_data(header, text[1:])
    too_deep = '2["x",' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "]"
    with pytest.raises(ProtocolFault):
        decode_data(read_header(too_deep), too_deep)


def test_measuring_json_depth_is_linear_in_its_size() -> None:
    def wide(size: int) -> list[object]:
        return [[i, {"k": [i]}] for i in range(size)]

    assert not deeper_than(wide(10), 32)
    assert_linear(wide, lambda value: deeper_than(value, 32), 12_500)


async def test_a_polling_post_is_bounded_in_packets(redis_url: str) -> None:
    """A megabyte of tiny packets in one POST would cost a handler call each in one loop turn."""
    async with running_node(redis_url, max_packet_bytes=1 << 20) as node, aiohttp.ClientSession() as http:
        polling = await open_polling(http, node.url)
        assert (await polling.post("40" + json.dumps({"token": make_token()})))[0] == 200
        while not any(p.startswith("40{") for p in (await polling.get())[1]):
            pass
        with cpu_budget(3.0):
            assert (await polling.post(*(["6"] * 1000)))[0] == 200  # a thousand NOOPs is fine
            assert (await polling.post(*(["6"] * 100_000)))[0] == 400  # a hundred thousand is not
        await asyncio.sleep(0)
        assert not node.node.server.engine.sessions


async def test_a_request_head_dripped_byte_by_byte_costs_linear_time(redis_url: str) -> None:
    async with running_node(redis_url) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(node.url.rsplit(":", 1)[1]))
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 7000 + b"\r\n\r\n"
        with cpu_budget(3.0):
            for i in range(len(head)):
                writer.write(head[i : i + 1])
                if i % 64 == 0:
                    await writer.drain()
            response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert response.startswith(b"HTTP/1.1 200")
        writer.close()


async def test_header_lines_of_blanks_ending_in_a_refused_byte_cost_linear_time(redis_url: str) -> None:
    """Found by review: h11's header pattern took 142 ms for one such line at the head size bound."""
    line = b"X-Pad:" + b" " * 7900 + b"\x01\x00"
    heads = {
        "plain upgrade form": b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
        "any other request (h11)": b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
    }
    async with running_node(redis_url) as node:
        port = int(node.url.rsplit(":", 1)[1])
        for name, start in heads.items():
            with cpu_budget(2.0):  # 40 heads: about 6 s of CPU before the fix
                for _ in range(40):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(start + line + b"\r\n\r\n")
                    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    assert response.startswith(b"HTTP/1.1 400"), (name, response)
                    writer.close()


@pytest.mark.parametrize("last", ["1", "1x"])
def test_a_deep_book_of_long_near_decimals_costs_linear_time(last: str) -> None:
    """The contract's largest book, every value as long as a decimal may be, checked in one match."""
    near = "9" * 30 + "." + "9" * 30 + "e-999"
    levels = ",".join([f'["{near}","{near}"]'] * 999 + [f'["{near}","{last}"]'])
    head = '{"type":"book","exchange":"bybit","symbol":"BTC/USDT","ts":1,"recv_ts":1,"asks":[],"bids":['
    payload = (head + levels + "]}").encode()
    with cpu_budget(1.0):
        if last == "1":
            assert len(codec.decode_market(payload).bids) == 1000
        else:
            with pytest.raises(PayloadError, match="'1x' is not a decimal string"):
                codec.decode_market(payload)
