"""Hostile HTTP: requests no parser expects are answered 400, never a dropped connection or an error log."""

from __future__ import annotations

import asyncio

import pytest

from gateway.protocol.http import HttpServer, Request, RequestIntake, Response
from tests.harness import running_node


@pytest.mark.parametrize(
    "target",
    [
        b"http://[::1/healthz",  # audit finding 6: urlsplit's ValueError dropped the connection
        b"http://[zz::1]/healthz",
        b"//[::1/x",
    ],
)
async def test_a_target_no_url_parser_can_read_is_answered_400(redis_url: str, target: bytes) -> None:
    async with running_node(redis_url) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(node.url.rsplit(":", 1)[1]))
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 5)
        assert response.startswith(b"HTTP/1.1 400 "), response[:80]
        assert b"bad request target" in response
        writer.close()


async def test_a_burst_of_connections_is_read_a_few_per_turn_in_order() -> None:
    """A burst of requests is spread over turns of the loop (deliveries run between them), first come first read."""
    intake = RequestIntake(per_turn=8)
    turn = 0
    started: list[tuple[int, int]] = []

    def tick() -> None:
        nonlocal turn
        turn += 1
        if turn < 50:
            asyncio.get_running_loop().call_soon(tick)

    asyncio.get_running_loop().call_soon(tick)
    await asyncio.sleep(0)
    first_turn = turn
    for n in range(30):
        if intake.take():
            started.append((n, turn))
        else:

            def start(n: int = n) -> None:
                started.append((n, turn))

            intake.wait(start)
    while len(started) < 30 and turn < 50:
        await asyncio.sleep(0)
    assert [n for n, _ in started] == list(range(30))
    per_turn: dict[int, int] = {}
    for _, at in started:
        per_turn[at] = per_turn.get(at, 0) + 1
    assert per_turn[first_turn] == 8 and max(per_turn.values()) == 8
    assert len(per_turn) == 4  # 8 + 8 + 8 + 6
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert intake.take()  # a new turn has starts to give again


async def test_a_burst_of_connections_is_answered_every_one(redis_url: str) -> None:
    async with running_node(redis_url) as node:
        port = int(node.url.rsplit(":", 1)[1])
        streams = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(300)))
        for _, writer in streams:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in streams)), 20)
        assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
        for _, writer in streams:
            writer.close()


async def test_connections_over_an_address_accept_rate_are_reset_before_a_byte_is_read(redis_url: str) -> None:
    """Attack bench finding: each refused handshake cost a parse, a task and a response, and a 429
    written and lingered over still cost a write, a shutdown and a timer; past the accept rate a
    connection is now reset at once, and nothing of it is kept."""
    async with running_node(redis_url, accept_rate_per_ip=0.01, accept_burst_per_ip=3) as node:
        port = int(node.url.rsplit(":", 1)[1])

        async def healthz() -> bytes | str:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            try:
                return await asyncio.wait_for(reader.read(), 5) or "closed without an answer"
            except ConnectionResetError:
                return "reset"
            finally:
                writer.close()

        answers = [await healthz() for _ in range(5)]
        assert [answer[:12] for answer in answers[:3]] == [b"HTTP/1.1 200"] * 3
        assert answers[3:] == ["reset", "reset"]
        assert node.node.metrics.accepts_refused._value.get() == 2
        assert not node.node.http._connections  # nothing of a refused connection is kept


async def test_behind_a_trusted_proxy_accepts_are_not_limited_by_the_peer_address(redis_url: str) -> None:
    """Every connection comes from the proxy: limiting its address would refuse everyone."""
    settings = {"accept_rate_per_ip": 0.01, "accept_burst_per_ip": 1, "trust_forwarded_for": True}
    async with running_node(redis_url, **settings) as node:
        port = int(node.url.rsplit(":", 1)[1])
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
            writer.close()
        assert node.node.metrics.accepts_refused._value.get() == 0


async def test_thousands_of_pipelined_requests_answered_at_once_are_all_answered_in_order(redis_url: str) -> None:
    """Requests answered without a task (no await) take the next one in turn: no recursion, none lost."""
    count = 3000
    async with running_node(redis_url) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(node.url.rsplit(":", 1)[1]))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * (count - 1))
        writer.write(b"GET /nothing-here HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 20)
        writer.close()
    assert response.count(b"HTTP/1.1 200 ") == count - 1
    assert response.rindex(b"HTTP/1.1 200 ") < response.index(b"HTTP/1.1 404 ")


async def test_a_head_that_never_completes_and_an_idle_keep_alive_are_closed_after_the_request_timeout() -> None:
    """Slowloris: a head dripped too slowly, or a connection left idle after its answer, is closed in time."""
    timeout_s = 0.5

    def answer(request: Request) -> Response:
        return Response(200, b"ok")

    server = HttpServer(answer, max_body_bytes=1024, request_timeout_s=timeout_s)
    await server.start("127.0.0.1", 0)
    port = server.port
    loop = asyncio.get_running_loop()
    try:
        partial_reader, partial = await asyncio.open_connection("127.0.0.1", port)
        opened_at = loop.time()
        partial.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
        idle.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(idle_reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200 ")
        answered_at = loop.time()

        assert await asyncio.wait_for(partial_reader.read(), 5) == b""  # closed, unanswered
        assert loop.time() - opened_at >= timeout_s
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        assert loop.time() - answered_at >= timeout_s * 0.9  # the deadline restarted at the answer
        partial.close()
        idle.close()
    finally:
        server.close_connections()
        await server.stop_listening()
