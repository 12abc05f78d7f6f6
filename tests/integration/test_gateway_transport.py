"""The gateway's own Engine.IO v4 layer: upgrade, heartbeat, HTTP and WebSocket errors, long-polling rules."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
import redis.asyncio
import socketio

from shared.events import Ticker
from shared.publisher import AsyncPublisher
from tests.harness import connected, make_token, new_client, raw_websocket, running_node, wait_until

TOPIC = "kraken:ticker:ETH/USD"


def ticker(seq: int) -> Ticker:
    return Ticker(exchange="kraken", symbol="ETH/USD", ts=1, recv_ts=1.0, seq=seq, bid="1.1", ask="1.2", last="1.15")


async def test_polling_client_upgrades_to_websocket_without_losing_messages(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    publisher = AsyncPublisher(redis_client)
    async with running_node(redis_url) as node:
        client = new_client()
        await client.sio.connect(
            node.url, auth={"token": make_token()}, transports=["polling", "websocket"], wait_timeout=5
        )
        try:
            await client.call("subscribe", [TOPIC])
            for seq in range(1, 51):
                await publisher.publish_market([ticker(seq)])
            engine = node.node.server.engine
            await wait_until(lambda: all(s.ws is not None for s in engine.sessions.values()))
            for seq in range(51, 101):
                await publisher.publish_market([ticker(seq)])
            received = [(await client.next("market"))[1]["seq"] for _ in range(100)]
            assert received == list(range(1, 101))
            assert client.sio.transport() == "websocket"
        finally:
            await client.close()


async def test_a_client_that_stops_answering_pings_is_dropped(redis_url: str) -> None:
    async with running_node(redis_url, ping_interval_s=0.2, ping_timeout_s=0.2) as node:
        silent = await raw_websocket(node.url)
        polite = await raw_websocket(node.url)
        for ws in (silent, polite):
            assert (await ws.receive_text()).startswith("0{")
            await ws.send("40" + json.dumps({"token": make_token()}))
            assert (await ws.receive_text()).startswith("40{")
        for _ in range(3):  # the polite one answers three pings and stays
            while await polite.receive_text() != "2":
                pass
            await polite.send("3")
        with pytest.raises(asyncio.IncompleteReadError):  # aborted: it was not reading anyway
            while True:
                await silent.receive(timeout=2)
        assert len(node.node.sessions) == 1
        polite.close()
        silent.close()


async def get(url: str, **kwargs: object) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.request(str(kwargs.pop("method", "GET")), url, **kwargs) as r:  # type: ignore[arg-type]
        return r.status, dict(r.headers), await r.text()


async def test_engineio_errors_carry_their_codes(redis_url: str) -> None:
    async with running_node(redis_url, max_packet_bytes=1000) as node:
        base = node.url + "/socket.io/"
        cases = [
            ("?EIO=3&transport=polling", 400, 5),
            ("?EIO=4&transport=carrier-pigeon", 400, 0),
            ("?EIO=4&transport=polling&sid=nope", 400, 1),
        ]
        for query, status, code in cases:
            got_status, _, body = await get(base + query)
            assert (got_status, json.loads(body)["code"]) == (status, code), query
        status, _, body = await get(base + "?EIO=4&transport=polling", method="POST", data="40")
        assert (status, json.loads(body)["code"]) == (400, 2)
        status, _, _ = await get(base + "?EIO=4&transport=polling", method="POST", data="x" * 2000)
        assert status == 413
        assert (await get(node.url + "/nowhere"))[0] == 404
        assert (await get(node.url + "/healthz", method="POST"))[0] == 405


async def test_malformed_http_is_answered_and_closed(redis_url: str) -> None:
    async with running_node(redis_url) as node:
        port = int(node.url.rsplit(":", 1)[1])
        for request, status in [
            (b"NONSENSE\r\n\r\n", b"400"),
            (b"POST /socket.io/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
        ]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            response = await asyncio.wait_for(reader.read(), 5)  # read() returns once the server closes
            assert response.split(b" ", 2)[1] == status, response[:80]
            writer.close()


async def test_head_and_pipelined_requests_share_a_keep_alive_connection(redis_url: str) -> None:
    async with running_node(redis_url) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(node.url.rsplit(":", 1)[1]))
        writer.write(
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        response = await asyncio.wait_for(reader.read(), 5)
        head, rest = response.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 15" in head
        assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b'{"status":"ok"}')  # HEAD had no body
        writer.close()


async def test_cors_preflight_and_forbidden_origin(redis_url: str) -> None:
    async with running_node(redis_url, cors_origins=["https://app.example"]) as node:
        status, headers, _ = await get(
            node.url + "/socket.io/?EIO=4&transport=polling",
            method="OPTIONS",
            headers={"Origin": "https://app.example", "Access-Control-Request-Headers": "authorization"},
        )
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert headers["Access-Control-Allow-Headers"] == "authorization"
        status, _, body = await get(
            node.url + "/socket.io/?EIO=4&transport=polling", headers={"Origin": "https://evil.example"}
        )
        assert status == 403 and json.loads(body)["code"] == 4


@pytest.mark.parametrize(
    ("frame_options", "payload", "code"),
    [
        ({"masked": False}, "40", 1002),
        ({}, b"\xff\xfe", 1007),
        ({}, "4" * 2000, 1009),
    ],
)
async def test_websocket_violations_close_with_their_code(
    redis_url: str, frame_options: dict[str, object], payload: str | bytes, code: int
) -> None:
    async with running_node(redis_url, max_packet_bytes=1000) as node:
        ws = await raw_websocket(node.url)
        await ws.receive_text()
        await ws.send(payload, **frame_options)
        opcode, body = await ws.receive()
        assert opcode == 0x8 and int.from_bytes(body[:2], "big") == code
        ws.close()


async def test_fragmented_messages_and_websocket_pings_are_understood(redis_url: str) -> None:
    async with running_node(redis_url) as node:
        ws = await raw_websocket(node.url)
        await ws.receive_text()
        await ws.send("40" + json.dumps({"token": make_token()}))
        assert (await ws.receive_text()).startswith("40")
        await ws.send(b"still there?", opcode=0x9)
        while (frame := await ws.receive())[0] == 0x1:  # the `sync` event may come first
            pass
        assert frame == (0xA, b"still there?")
        await ws.send('427["notifica', fin=False)
        await ws.send('tions:unread"]', opcode=0x0)
        while not (text := await ws.receive_text()).startswith("437"):
            pass
        assert json.loads(text[3:])[0]["ok"] is True
        ws.close()


async def test_overlapping_long_polls_end_the_session(redis_url: str) -> None:
    async with running_node(redis_url) as node, aiohttp.ClientSession() as http:
        base = node.url + "/socket.io/?EIO=4&transport=polling"
        async with http.get(base) as response:
            sid = json.loads((await response.text())[1:])["sid"]
        first = asyncio.ensure_future(http.get(f"{base}&sid={sid}"))
        await wait_until(lambda: node.node.server.engine.sessions[sid].waiter is not None)
        async with http.get(f"{base}&sid={sid}") as second:
            assert second.status == 400
        async with await first as response:
            assert response.status == 400
        assert sid not in node.node.server.engine.sessions


async def test_python_client_over_polling_only_gets_acks_and_events(redis_url: str) -> None:
    async with running_node(redis_url) as node:
        client = new_client()
        await client.sio.connect(node.url, auth={"token": make_token()}, transports=["polling"], wait_timeout=5)
        try:
            reply = await client.call("subscribe", [TOPIC, "nope"])
            assert [r["ok"] for r in reply["results"]] == [True, False]
            reply = await client.call("no-such-event", {})
            assert reply["error"]["code"] == "unknown_event"
            assert (await client.next("sync"))[0]["complete"] is True
        finally:
            await client.close()
        refused = new_client()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.sio.connect(node.url, auth={"token": "bad"}, transports=["polling"], wait_timeout=5)
        assert refused.connect_error["data"]["code"] == "token_malformed"
        await refused.sio.shutdown()


async def test_a_pipeline_of_messages_arrives_whole_and_in_order(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """Redis hands a pipeline's messages over in a few reads; each read's reach the client in one write."""
    publisher = AsyncPublisher(redis_client)
    async with running_node(redis_url) as node, connected(node.url, make_token()) as client:
        await client.call("subscribe", [TOPIC])
        await publisher.publish_market([ticker(seq) for seq in range(1, 201)])
        reply = await client.call("unsubscribe", ["binance:trades:BTC/USDT"])  # an ack after the batch
        assert reply["ok"]
        await publisher.publish_market([ticker(seq) for seq in range(201, 401)])
        received = [(await client.next("market"))[1]["seq"] for _ in range(400)]
        assert received == list(range(1, 401))


async def test_unknown_engineio_packet_type_closes_the_session(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_node(redis_url) as node:
        ws = await raw_websocket(node.url)
        await ws.receive_text()
        await ws.send("40" + json.dumps({"token": make_token()}))
        assert (await ws.receive_text()).startswith("40")
        await ws.send("9 not an Engine.IO packet type")
        while (frame := await ws.receive())[0] == 0x1:  # `sync` may come first
            pass
        assert frame[0] == 0x8
        await wait_until(lambda: not node.node.sessions)
        assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
        ws.close()
