"""Hostile Engine.IO clients: none can make the node buffer without bound, stall it, or open sessions without limit."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest

from tests.harness import make_token, raw_websocket, running_node, wait_until, ws_frame
from tests.hostile.edge import close_code, connected_websocket, next_text, open_polling

MIB = 1 << 20


async def test_a_ping_with_a_payload_closes_the_session_instead_of_being_echoed(redis_url: str) -> None:
    """Audit finding 2: `2` + 1 MB was echoed as a PONG outside every bound (+100 MB RSS in half a second)."""
    async with running_node(redis_url, max_packet_bytes=2 * MIB) as node:
        ws = await raw_websocket(node.url)
        await ws.receive_text()
        await ws.send("2" + "x" * MIB)
        assert await close_code(ws) == 1002  # heartbeats go from server to client in Engine.IO v4
        await wait_until(lambda: not node.node.server.engine.sessions)
        assert node.node.metrics.protocol_closes.labels("invalid_packet")._value.get() == 1
        ws.close()

        async with aiohttp.ClientSession() as http:
            polling = await open_polling(http, node.url)
            status, _ = await polling.post("2" + "x" * 100_000)
            assert status == 400
            assert not node.node.server.engine.sessions
            assert not node.node.server.engine._closing  # nothing kept for a GET that will not come


async def test_websocket_pings_are_budgeted(redis_url: str) -> None:
    """Each ping costs a pong: past 20 at once (then 5 a second) the connection is closed with 1008."""
    async with running_node(redis_url) as node:
        ws = await raw_websocket(node.url, rcvbuf=4096)
        await ws.receive_text()
        ws.writer.write(ws_frame(b"p" * 125, opcode=0x9) * 1000)
        await ws.writer.drain()
        assert await close_code(ws) in (1008, None)  # the close frame may sit behind unread pongs
        await wait_until(lambda: not node.node.server.engine.sessions)
        assert node.node.metrics.protocol_closes.labels("websocket_1008")._value.get() == 1
        ws.close()


async def test_a_polling_client_that_never_polls_is_bounded(redis_url: str) -> None:
    """Everything queued for a long-polling client counts against the same bound, acks included."""
    settings = {"conflate_above_bytes": 1_000, "max_buffered_bytes": 4_000}
    async with running_node(redis_url, **settings) as node, aiohttp.ClientSession() as http:
        polling = await open_polling(http, node.url)
        assert (await polling.post("40" + json.dumps({"token": make_token()})))[0] == 200
        await wait_until(lambda: any(s.queue for s in node.node.server.engine.sessions.values()))
        for batch in range(20):
            status, _ = await polling.post(*(f'42{batch * 10 + i}["notifications:unread"]' for i in range(10)))
            if status != 200:
                break
            await asyncio.sleep(0.02)
        await wait_until(lambda: not node.node.server.engine.sessions)
        assert node.node.metrics.slow_consumer_disconnects._value.get() == 1


async def test_handshakes_are_limited_per_address_and_per_ipv6_64(redis_url: str) -> None:
    """Lesser finding: 2,000 unauthenticated sessions in 0.5 s; and a /64 must count as one address."""
    settings = {"handshake_rate_per_ip": 0.01, "handshake_burst_per_ip": 3, "trust_forwarded_for": True}
    async with running_node(redis_url, **settings) as node, aiohttp.ClientSession() as http:
        url = node.url + "/socket.io/?EIO=4&transport=polling"

        async def handshake(address: str) -> int:
            async with http.get(url, headers={"X-Forwarded-For": address}) as response:
                if response.status != 200:
                    assert json.loads(await response.text())["code"] == 3
                return response.status

        # Three addresses of one /64 share its burst of three.
        assert [await handshake(f"2001:db8::{n}") for n in (1, 2, 3, 4)] == [200, 200, 200, 429]
        assert await handshake("2001:db8:0:1::1") == 200  # the next /64 is another client
        assert [await handshake("192.0.2.7") for _ in range(4)] == [200, 200, 200, 429]
        assert node.node.metrics.handshakes_refused._value.get() == 2


async def test_a_client_close_ends_a_pending_poll_cleanly(redis_url: str) -> None:
    """Protocol: a CLOSE sent by POST ends the pending GET with a clean response (NOOP), not a 400."""
    async with running_node(redis_url) as node, aiohttp.ClientSession() as http:
        polling = await open_polling(http, node.url)
        pending = asyncio.ensure_future(polling.get())
        await wait_until(lambda: node.node.server.engine.sessions[polling.sid].waiter is not None)
        assert await polling.post("1") == (200, "ok")
        assert await pending == (200, ["6"])
        assert not node.node.server.engine.sessions


async def test_any_origin_is_answered_without_credentials_and_refusals_are_logged_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Lesser finding: `*` reflected any origin together with Allow-Credentials: true."""
    url = "/socket.io/?EIO=4&transport=polling"
    async with (
        running_node(redis_url, cors_origins=["*"]) as node,
        aiohttp.ClientSession() as http,
        http.get(node.url + url, headers={"Origin": "https://evil.example"}) as response,
    ):
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers
    caplog.set_level(logging.WARNING, "gateway.protocol.engineio")
    async with running_node(redis_url, cors_origins=["https://app.example"]) as node, aiohttp.ClientSession() as http:
        for origin in ["https://evil.example"] * 3 + ["http://localhost:3000"]:
            async with http.get(node.url + url, headers={"Origin": origin}) as response:
                assert response.status == 403
        refusals = [r for r in caplog.records if r.getMessage().startswith("refused a browser origin")]
        assert [r.origin for r in refusals] == ["https://evil.example", "http://localhost:3000"]  # type: ignore[attr-defined]
        assert node.node.metrics.origins_refused._value.get() == 4


async def test_a_fragment_flood_neither_stalls_the_node_nor_stays_open(redis_url: str) -> None:
    """Audit finding 1, live: 240 KB of empty continuations froze /healthz for 9 s."""
    async with running_node(redis_url) as node, aiohttp.ClientSession() as http:
        ws = await raw_websocket(node.url)
        await ws.receive_text()
        ws.writer.write(ws_frame("4", fin=False) + ws_frame(b"", opcode=0x0, fin=False) * 40_000)
        started = time.monotonic()
        async with http.get(node.url + "/healthz") as response:
            assert response.status == 200
        # Closed with 1009; the close frame may be lost to a reset, the node's bytes unread by a writing client.
        assert await close_code(ws) in (1009, None)
        assert node.node.metrics.protocol_closes.labels("websocket_1009")._value.get() == 1
        assert time.monotonic() - started < 5  # was 9 s of a frozen loop; linear work takes milliseconds
        ws.close()


async def test_binary_messages_over_websocket_are_read_and_refused_with_an_ack(redis_url: str) -> None:
    """Protocol: binary events (attachments in binary frames) get an error ack, not a closed connection."""
    async with running_node(redis_url) as node:
        ws = await connected_websocket(node.url)
        await ws.send('451-7["subscribe",{"_placeholder":true,"num":0}]')
        await ws.send(b"\x00\x01\x02", opcode=0x2)
        ack = json.loads((await next_text(ws, "437"))[3:])
        assert ack == [{"ok": False, "error": {"code": "binary_not_supported", "message": ack[0]["error"]["message"]}}]
        await ws.send("42")  # a malformed event still closes the connection
        assert await close_code(ws) == 1002
        ws.close()
