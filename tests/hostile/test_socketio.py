"""Hostile Socket.IO clients: every packet the protocol defines is answered as it says, or refused with a code."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest

from tests.harness import connected, make_token, raw_websocket, running_node, wait_until, ws_frame
from tests.hostile.edge import close_code, connected_websocket, next_text, open_polling


def ack_of(text: str, ack_id: int) -> list[object]:
    prefix = f"43{ack_id}"
    assert text.startswith(prefix), text
    return json.loads(text[len(prefix) :])  # type: ignore[no-any-return]


async def test_a_connect_to_another_namespace_is_refused_as_the_protocol_says(redis_url: str) -> None:
    """The official client reconnected in a loop when the transport was closed instead."""
    async with running_node(redis_url) as node:
        ws = await raw_websocket(node.url)
        await ws.receive_text()
        await ws.send('40/admin,{"token":"x"}')
        assert await ws.receive_text() == '44/admin,{"message":"Invalid namespace"}'
        await ws.send("40" + json.dumps({"token": make_token()}))  # the default namespace still works
        assert (await next_text(ws, "40")).startswith("40{")
        ws.close()


async def test_an_oversized_token_gets_a_connect_error(redis_url: str) -> None:
    """Lesser finding: a 20-100 KB token was dropped silently and the socket closed at the connect timeout."""
    async with running_node(redis_url) as node:
        ws = await raw_websocket(node.url)
        await ws.receive_text()
        await ws.send("40" + json.dumps({"token": "x" * 50_000}))
        refusal = json.loads((await ws.receive_text(timeout=2))[2:])
        assert refusal["message"] == "payload_too_large" and refusal["data"]["code"] == "payload_too_large"
        ws.close()


async def test_binary_events_over_polling_are_read_and_refused_with_an_ack(redis_url: str) -> None:
    """Protocol: `b`-prefixed base64 attachments on long-polling."""
    async with running_node(redis_url) as node, aiohttp.ClientSession() as http:
        polling = await open_polling(http, node.url)
        assert (await polling.post("40" + json.dumps({"token": make_token()})))[0] == 200
        while not any(p.startswith("40{") for p in (await polling.get())[1]):
            pass
        attachment = "b" + base64.b64encode(b"\x00\xff").decode()
        assert await polling.post('451-3["subscribe",{"_placeholder":true,"num":0}]', attachment) == (200, "ok")
        received: list[str] = []
        while not any(p.startswith("433") for p in received):
            status, packets = await polling.get()
            assert status == 200
            received += packets
        ack = ack_of(next(p for p in received if p.startswith("433")), 3)
        assert ack[0]["error"]["code"] == "binary_not_supported"  # type: ignore[index]
        assert (await polling.post("bnot base64!"))[0] == 400  # an attachment nobody announced, badly encoded
        polling = await open_polling(http, node.url)
        assert (await polling.post("b\u06d9"))[0] == 400  # found by the fuzzer: not even ASCII (was a 500)


@pytest.mark.parametrize(
    "packets",
    [
        [b"\x01"],  # an attachment without a binary packet
        ['451-["x",{"_placeholder":true,"num":0}]', '42["x"]'],  # text while an attachment is due
        ['4511-["x"]'],  # more attachments than a packet may carry
        ["42" + "[" * 40 + "]" * 40],  # JSON nested past the limit
    ],
)
async def test_broken_binary_and_deep_packets_close_the_connection(redis_url: str, packets: list[str | bytes]) -> None:
    async with running_node(redis_url) as node:
        ws = await connected_websocket(node.url)
        for packet in packets:
            await ws.send(packet, opcode=0x2 if isinstance(packet, bytes) else 0x1)
        assert await close_code(ws) == 1002
        ws.close()


async def test_events_with_several_arguments_are_answered(redis_url: str) -> None:
    async with running_node(redis_url) as node:
        ws = await connected_websocket(node.url)
        await ws.send('425["subscribe",["okx:ticker:BTC/USDT"],"extra"]')
        ack = ack_of(await next_text(ws, "435"), 5)
        assert ack[0]["error"]["code"] == "bad_request"  # type: ignore[index]
        await ws.send('426["notifications:unread"]')  # no argument at all is fine
        assert ack_of(await next_text(ws, "436"), 6)[0]["ok"] is True  # type: ignore[index]
        ws.close()


async def test_acks_count_against_the_packet_rate(redis_url: str) -> None:
    """Lesser finding: ACK packets skipped the event rate limit."""
    async with running_node(redis_url, event_rate=0.01, event_burst=20) as node:
        ws = await connected_websocket(node.url)
        for i in range(30):
            await ws.send(f"43{i}[{{}}]")  # acks nobody asked for
        await ws.send('427["notifications:unread"]')
        assert ack_of(await next_text(ws, "437"), 7)[0]["error"]["code"] == "rate_limited"  # type: ignore[index]
        ws.close()


async def test_a_valid_topic_beside_a_non_string_item_gets_per_item_results(redis_url: str) -> None:
    """Audit finding 5: `[{}, topic]` raised TypeError, answered internal_error, and subscribed the topic anyway."""
    async with running_node(redis_url) as node, connected(node.url, make_token()) as client:
        reply = await client.call("subscribe", [{}, "binance:ticker:BTC/USDT", 7, None])
        assert reply["ok"] is True
        assert [(r["ok"], r.get("error")) for r in reply["results"]] == [
            (False, "invalid_topic"),
            (True, None),
            (False, "invalid_topic"),
            (False, "invalid_topic"),
        ]
        reply = await client.call("unsubscribe", [["nested"], "binance:ticker:BTC/USDT"])
        assert [r["ok"] for r in reply["results"]] == [False, True]


async def test_the_node_stays_responsive_while_a_client_floods_packets(redis_url: str) -> None:
    """A burst of packets past the limits costs the node a header read each, and others are served."""
    async with running_node(redis_url, event_rate=1, event_burst=5) as node, connected(node.url, make_token()) as good:
        ws = await connected_websocket(node.url)
        ws.writer.write(b"".join(ws_frame(f'42{i}["subscribe",["x"]]') for i in range(5000)))
        await ws.writer.drain()
        assert (await good.call("notifications:unread", None))["ok"] is True
        # 200 refusals in a row, each costing an error ack: closed (1002, or a reset if its bytes sat unread).
        assert await close_code(ws) in (1002, None)
        await wait_until(lambda: node.node.metrics.protocol_closes.labels("invalid_packet")._value.get() == 1)
        ws.close()
