"""A client that stops reading: conflated, then disconnected; nobody else notices."""

from __future__ import annotations

import json
import socket
import time

import pytest
import redis.asyncio

from shared.events import Book, Notification
from shared.publisher import AsyncPublisher
from tests.harness import RawWebSocket, RunningNode, connected, make_token, raw_websocket, running_node, wait_until

TOPIC = "bybit:book:BTC/USDT"
# Both ways a fan-out writes: all sockets in one io_uring call, or one `os.write` each (GATEWAY_IO_URING).
WRITES = pytest.mark.parametrize("io_uring", [True, False], ids=["io_uring", "os_write"])


def check_writes(node: RunningNode, io_uring: bool) -> None:
    if io_uring and node.node.server.engine.send_ring is None:
        pytest.skip("io_uring is not available here")
    assert (node.node.server.engine.send_ring is not None) == io_uring


def book(seq: int) -> Book:
    levels = [(f"{100 + i}.5", "1.25") for i in range(50)]
    return Book(
        exchange="bybit", symbol="BTC/USDT", ts=1, recv_ts=time.time() * 1000, seq=seq, bids=levels, asks=levels
    )


async def stalled_client(url: str, token: str) -> RawWebSocket:
    """Connect and subscribe over a raw WebSocket with a tiny receive buffer, then never read again."""
    ws = await raw_websocket(url, rcvbuf=4096)
    await ws.send("40" + json.dumps({"token": token}))
    await ws.send('420["subscribe",["' + TOPIC + '"]]')
    return ws


@WRITES
async def test_stalled_socket_is_conflated_then_disconnected(
    redis_client: redis.asyncio.Redis, redis_url: str, io_uring: bool
) -> None:
    publisher = AsyncPublisher(redis_client)
    async with (
        running_node(redis_url, conflate_above_bytes=32768, max_buffered_bytes=131072, io_uring=io_uring) as node,
        connected(node.url, make_token(sub="watcher")) as watcher,
    ):
        check_writes(node, io_uring)
        await watcher.call("subscribe", [TOPIC])
        stalled = await stalled_client(node.url, make_token(sub="sleeper"))
        await wait_until(lambda: len(node.node.sessions) == 2 and all(s.topics for s in node.node.sessions.values()))
        sleeper_sid = next(s.sid for s in node.node.sessions.values() if s.identity.user_id == "sleeper")
        sleeper = node.node.server.sockets[sleeper_sid].session
        assert sleeper.ws is not None
        published, deepest, latencies = 0, 0, []
        for batch in range(40):  # 4000 books of ~2.4 KB: far more than the socket buffers hold
            await publisher.publish_market([book(batch * 100 + i + 1) for i in range(100)])
            published += 100
            for _ in range(100):
                _, data = await watcher.next("market")
                latencies.append(time.time() * 1000 - data["recv_ts"])
            deepest = max(deepest, sleeper.ws.transport.get_write_buffer_size())
        assert 0 < deepest <= 131072  # the stalled socket's unsent bytes stayed bounded
        assert node.node.metrics.conflated._value.get() > 0
        assert node.node.server.engine.lagging == 1
        assert not sleeper.ws.transport.is_reading()  # a client that does not read is not read either
        latencies.sort()
        print(
            f"[slow consumer] watcher received {len(latencies)}/{published}, "
            f"p50 {latencies[len(latencies) // 2]:.1f} ms, p99 {latencies[int(len(latencies) * 0.99)]:.1f} ms, "
            f"stalled socket's unsent bytes at most {deepest}"
        )
        # Notifications are never dropped: once they cannot be queued, the socket goes.
        for i in range(200):
            await publisher.publish(
                Notification(id=f"n{i}", user_id="sleeper", type="info", title="t", message="m" * 1000, created_at=1)
            )
        await wait_until(lambda: sleeper_sid not in node.node.sessions, timeout=10)
        assert node.node.metrics.slow_consumer_disconnects._value.get() == 1
        assert watcher.sio.connected
        await watcher.call("subscribe", [TOPIC])  # the node is still serving
        stalled.close()


@WRITES
async def test_client_that_falls_behind_and_catches_up_gets_every_frame_once_in_order(
    redis_client: redis.asyncio.Redis, redis_url: str, io_uring: bool
) -> None:
    """Frames written straight to the socket and those the transport held behind them arrive in order, none twice.

    The fan-out writes to a client's socket itself while the transport holds nothing for it
    (`Session.straight_fd`); what the socket does not take goes to the transport, and every write after
    it queues behind it until the transport has written it all. Nothing here is conflated (the
    backlog stays under `conflate_above`), so the client must get every book exactly once.
    """
    publisher = AsyncPublisher(redis_client)
    books = 600  # ~1.5 MB of frames: far more than the two sockets' buffers hold
    async with running_node(
        redis_url, conflate_above_bytes=4 << 20, max_buffered_bytes=8 << 20, io_uring=io_uring
    ) as node:
        check_writes(node, io_uring)
        client = await stalled_client(node.url, make_token(sub="sleeper"))
        await wait_until(lambda: any(s.topics for s in node.node.sessions.values()))
        session = node.node.server.sockets[next(iter(node.node.sessions))].session
        ws = session.ws
        assert ws is not None and ws.fd is not None and session.straight_fd == ws.fd
        # A small kernel buffer on the node's side, so that the socket fills after a few dozen books.
        ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        deepest = 0
        for batch in range(books // 100):
            await publisher.publish_market([book(batch * 100 + i + 1) for i in range(100)])
            await wait_until(lambda: ws.unsent > 0)
            deepest = max(deepest, ws.unsent)
        assert ws.backlogged and session.straight_fd is None  # writes now queue behind the transport's backlog
        assert 0 < deepest < 4 << 20 and not ws.lagging
        seqs: list[int] = []
        while len(seqs) < books:
            text = await client.receive_text(timeout=10)
            if text.startswith('42["market"'):
                seqs.append(json.loads(text[2:])[2]["seq"])
        assert seqs == list(range(1, books + 1))
        await wait_until(lambda: not ws.backlogged and session.straight_fd == ws.fd)  # drained: straight writes again
        session.close("test")
        assert session.straight_fd is None  # at once: nothing may be written to the socket after its close
        client.close()
