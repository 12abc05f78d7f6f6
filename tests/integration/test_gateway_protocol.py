"""Transport-level faults: raw Engine.IO clients that misbehave are closed, never crash a node."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import redis.asyncio

from tests.harness import connected, make_token, running_node


async def open_raw(url: str) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket")
    opening = await ws.receive_str()
    assert opening.startswith("0{")
    return session, ws


async def closed_within(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> bool:
    """Read until the server closes; true when that happens in time."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    return True
                if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "1":  # Engine.IO CLOSE
                    return True
    except TimeoutError:
        return False


async def test_transport_without_connect_is_closed(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    async with running_node(redis_url, connect_timeout_s=0.5) as node:
        session, ws = await open_raw(node.url)
        try:
            assert await closed_within(ws, 3.0)
        finally:
            await session.close()
        assert node.node.metrics.protocol_closes.labels("connect_timeout")._value.get() == 1


async def test_invalid_packets_close_the_transport(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    bad_packets = [
        "4garbage",  # not a Socket.IO packet
        '42{"not":"a list"}',  # EVENT payload must be a list
        "42[1,2]",  # event name must be a string
        '45-["x",{"_placeholder":true,"num":0}]',  # a binary packet without its attachment count
        '42/admin,["subscribe",["a"]]',  # an event for a namespace never joined
        '42["subscribe",["a"]]',  # event before CONNECT
    ]
    async with running_node(redis_url) as node:
        for bad in bad_packets:
            session, ws = await open_raw(node.url)
            try:
                if not bad.startswith('42["subscribe"'):
                    await ws.send_str("40" + json.dumps({"token": make_token()}))
                    assert (await ws.receive_str()).startswith("40{")
                await ws.send_str(bad)
                assert await closed_within(ws, 3.0), bad
            finally:
                await session.close()
        # The node still serves well-behaved clients.
        async with connected(node.url, make_token()) as client:
            assert (await client.call("subscribe", ["okx:trades:BTC/USDT"]))["ok"] is True


async def test_oversized_transport_message_closes_only_that_connection(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    async with running_node(redis_url, max_packet_bytes=65536) as node, connected(node.url, make_token()) as good:
        session, ws = await open_raw(node.url)
        try:
            await ws.send_str("40" + json.dumps({"token": make_token()}))
            await ws.receive_str()
            await ws.send_str('42["subscribe",["' + "x" * 200_000 + '"]]')
            assert await closed_within(ws, 3.0)
        finally:
            await session.close()
        assert (await good.call("subscribe", ["okx:trades:BTC/USDT"]))["ok"] is True
