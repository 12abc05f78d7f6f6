"""Nothing lost, nothing twice: recovery across disconnects, node changes and a Redis restart.

Every scenario counts what was published and what the client received,
and checks the order; the counts are printed for the closing notes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio

from gateway.history import position_key
from shared import codec, names
from shared.codec import StreamKind
from shared.embedded_redis import EmbeddedRedis
from shared.events import ExecutionUpdate, Notification, Ticker, Trade
from shared.publisher import AsyncPublisher, Retention
from tests.harness import Client, connected, make_token, running_node, wait_until


def note(user: str, n: int, *, read: bool = False) -> Notification:
    return Notification(id=f"n{n}", user_id=user, type="info", title=f"t{n}", message="m", created_at=n, read=read)


def update(team: str, execution: str, version: int, status: str = "running") -> ExecutionUpdate:
    return ExecutionUpdate(
        execution_id=execution,
        team_id=team,
        status=status,
        progress=min(version, 100),
        updated_at=version,
        version=version,
    )


class Tally:
    """What one client received, per stream, with its positions."""

    def __init__(self) -> None:
        self.notifications: list[str] = []
        self.executions: list[tuple[str, int]] = []
        self.positions: dict[str, Any] = {"executions": {}}

    async def drain(self, client: Client, *, notifications: int = 0, executions: int = 0, timeout: float = 10) -> None:
        for _ in range(notifications):
            data, position = await client.next("notification", timeout)
            self.notifications.append(data["id"])
            self.positions["notifications"] = position
        for _ in range(executions):
            data, position = await client.next("execution", timeout)
            self.executions.append((data["execution_id"], data["version"]))
            self.positions["executions"][data["team_id"]] = position

    def take_sync(self, status: dict[str, Any]) -> None:
        self.positions["notifications"] = status["notifications"]["position"]
        for team, part in status["executions"].items():
            self.positions["executions"][team] = part["position"]


def report(scenario: str, published: int, received: list[Any]) -> None:
    lost = published - len(set(received))
    duplicated = len(received) - len(set(received))
    print(f"[recovery] {scenario}: published={published} received={len(received)} lost={lost} duplicated={duplicated}")


async def test_everything_missed_while_away_arrives_once_in_order(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    tally = Tally()
    token = make_token(sub="grace", teams=["ops"])
    async with running_node(redis_url) as node:
        async with connected(node.url, token) as client:
            (status,) = await client.next("sync")
            assert status["complete"] is True and status["notifications"]["recovered"] == 0
            tally.take_sync(status)
            await publisher.publish(note("grace", 0))
            await publisher.publish(update("ops", "e1", 1))
            await tally.drain(client, notifications=1, executions=1)
        for i in range(1, 51):  # while the client is away
            await publisher.publish(note("grace", i))
        for version in range(2, 32):
            await publisher.publish(update("ops", "e1", version))
        async with connected(node.url, None, auth={"token": token, "positions": tally.positions}) as client:
            await tally.drain(client, notifications=50, executions=30)
            (status,) = await client.next("sync")
            assert status["complete"] is True
            assert status["notifications"]["recovered"] == 50 and status["executions"]["ops"]["recovered"] == 30
            for i in range(51, 56):  # live again, right after the seam
                await publisher.publish(note("grace", i))
            await tally.drain(client, notifications=5)
            await client.nothing("notification")
            await client.nothing("execution")
    assert tally.notifications == [f"n{i}" for i in range(56)]
    assert tally.executions == [("e1", v) for v in range(1, 32)]
    report("disconnected, same node", 87, tally.notifications + tally.executions)


async def test_reconnecting_to_another_node_while_publishing_continues(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    total = 300
    tally = Tally()
    token = make_token(sub="heidi", teams=["night"])

    async def publish_all() -> None:
        for i in range(total):
            await publisher.publish(note("heidi", i))
            await publisher.publish(update("night", "job", i + 1))
            await asyncio.sleep(0.001)

    async with running_node(redis_url) as first, running_node(redis_url) as second:
        async with connected(first.url, token) as client:
            tally.take_sync((await client.next("sync"))[0])
            publishing = asyncio.create_task(publish_all())
            await tally.drain(client, notifications=60, executions=60)
        async with connected(second.url, None, auth={"token": token, "positions": tally.positions}) as client:
            await publishing
            await tally.drain(client, notifications=total - 60, executions=total - 60)
            await client.nothing("notification")
            await client.nothing("execution")
    assert tally.notifications == [f"n{i}" for i in range(total)]
    assert tally.executions == [("job", v) for v in range(1, total + 1)]
    report("moved to another node mid-stream", 2 * total, tally.notifications + tally.executions)


async def test_a_redis_restart_loses_nothing_stored(redis_client: redis.asyncio.Redis, tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=str(tmp_path)).start()
    tally = Tally()

    async def publish(numbers: range) -> None:
        async with redis.asyncio.Redis.from_url(server.url) as r:
            for i in numbers:
                await AsyncPublisher(r).publish(note("ivan", i))
                await AsyncPublisher(r).publish(update("ops", "run", i + 1))

    try:
        async with running_node(server.url) as node, connected(node.url, make_token(sub="ivan", teams=["ops"])) as c:
            tally.take_sync((await c.next("sync"))[0])
            await publish(range(20))
            await tally.drain(c, notifications=20, executions=20)
            server.stop()
            await wait_until(lambda: not node.node.ready)
            server = EmbeddedRedis(port=server.port, data_dir=str(tmp_path)).start()
            await publish(range(20, 40))  # as soon as Redis is back, before the node has resubscribed
            await wait_until(lambda: node.node.ready, timeout=10)
            await publish(range(40, 50))
            await tally.drain(c, notifications=30, executions=30)
            await c.nothing("notification")
            await c.nothing("execution")
            assert c.sio.connected
    finally:
        server.stop()
    assert tally.notifications == [f"n{i}" for i in range(50)]
    assert tally.executions == [("run", v) for v in range(1, 51)]
    report("redis restarted", 100, tally.notifications + tally.executions)


async def test_recovery_beyond_the_bound_says_incomplete(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    publisher = AsyncPublisher(redis_client, retention=Retention(max_entries=1000))
    token = make_token(sub="judy")
    async with running_node(redis_url, max_recovery=10) as node:
        async with connected(node.url, token) as client:
            position = (await client.next("sync"))[0]["notifications"]["position"]
        for i in range(25):
            await publisher.publish(note("judy", i))
        async with connected(node.url, None, auth={"token": token, "positions": {"notifications": position}}) as c:
            (status,) = await c.next("sync")
            assert status["complete"] is False and status["notifications"]["complete"] is False
            await c.nothing("notification")
            await publisher.publish(note("judy", 99))
            assert (await c.next("notification"))[0]["id"] == "n99"  # live continues
            listing = await c.call("notifications:list", {"limit": 100})
            assert [item["notification"]["id"] for item in listing["items"]][:3] == ["n99", "n24", "n23"]


async def test_trimmed_history_says_incomplete(redis_client: redis.asyncio.Redis, redis_url: str) -> None:
    publisher = AsyncPublisher(redis_client, retention=Retention(max_entries=5))
    token = make_token(sub="ken")
    async with running_node(redis_url) as node:
        async with connected(node.url, token) as client:
            position = (await client.next("sync"))[0]["notifications"]["position"]
        for i in range(300):  # far past the 5 kept: trimming has deleted some the client never saw
            await publisher.publish(note("ken", i))
        async with connected(node.url, None, auth={"token": token, "positions": {"notifications": position}}) as c:
            (status,) = await c.next("sync")
            assert status["notifications"]["complete"] is False
        bad = {"token": token, "positions": {"notifications": "not-a-position"}}
        async with connected(node.url, None, auth=bad) as c:
            assert (await c.next("sync"))[0]["complete"] is False


async def test_execution_states_on_connect_and_stale_versions(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client, retention=Retention(finished_ttl_ms=200))
    assert await publisher.publish(update("red", "run-1", 5)) is not None
    assert await publisher.publish(update("red", "run-1", 4)) is None  # older: refused, never announced
    assert await publisher.publish(update("red", "run-2", 1)) is not None
    assert await publisher.publish(update("red", "done-1", 3, status="completed")) is not None
    async with running_node(redis_url) as node:
        async with connected(node.url, make_token(sub="leo", teams=["red", "blue"])) as client:
            states = [(await client.next("execution"))[0] for _ in range(3)]
            assert [(s["execution_id"], s["version"]) for s in states] == [("run-1", 5), ("run-2", 1), ("done-1", 3)]
            (status,) = await client.next("sync")
            assert status["executions"]["red"]["complete"] is True and "blue" in status["executions"]
        await asyncio.sleep(0.3)  # the finished execution's state expires
        await publisher.publish(update("red", "run-1", 6))
        async with connected(node.url, make_token(sub="leo", teams=["red"])) as client:
            states = [(await client.next("execution"))[0] for _ in range(2)]
            assert [(s["execution_id"], s["version"]) for s in states] == [("run-2", 1), ("run-1", 6)]
            await client.nothing("execution")


async def test_a_tab_lists_execution_states_without_reconnecting(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    await publisher.publish(update("red", "run-1", 1))
    last = await publisher.publish(update("red", "run-1", 2))
    await publisher.publish(update("blue", "run-9", 1))
    auth = {"token": make_token(sub="leo", teams=["red", "green"]), "positions": {"executions": {"red": last}}}
    async with running_node(redis_url) as node, connected(node.url, None, auth=auth) as client:
        await client.next("sync")
        await client.nothing("execution")  # resumed: no states sent on connect
        reply = await client.call("executions:list", None)
        red = reply["teams"]["red"]
        assert [(i["update"]["execution_id"], i["update"]["version"]) for i in red["items"]] == [("run-1", 2)]
        assert red["position"] == last and red["items"][0]["position"] == last
        assert reply["teams"]["green"] == {"items": [], "position": "0-0"}
        assert "blue" not in reply["teams"]  # not one of this user's teams
        assert (await client.call("executions:list", {"team": "blue"}))["error"]["code"] == "bad_request"


async def test_list_read_and_unread_count_sync_across_sockets(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    positions = [await publisher.publish(note("mia", i, read=(i == 0))) for i in range(6)]
    token = make_token(sub="mia")
    async with (
        running_node(redis_url) as n1,
        running_node(redis_url) as n2,
        connected(n1.url, token) as tab1,
        connected(n2.url, token) as tab2,
    ):
        await tab1.next("sync")
        await tab2.next("sync")
        assert await tab1.call("notifications:unread", None) == {"ok": True, "unread": 5}
        page = await tab1.call("notifications:list", {"limit": 4})
        assert [(i["notification"]["id"], i["notification"]["read"]) for i in page["items"]] == [
            ("n5", False),
            ("n4", False),
            ("n3", False),
            ("n2", False),
        ]
        rest = await tab1.call("notifications:list", {"limit": 4, "cursor": page["cursor"]})
        assert [(i["notification"]["id"], i["notification"]["read"]) for i in rest["items"]] == [
            ("n1", False),
            ("n0", True),
        ]
        assert rest["cursor"] is None and rest["unread"] == 5
        assert await tab1.call("notifications:read", {"positions": positions[4:6]}) == {"ok": True, "unread": 3}
        (marks,) = await tab2.next("notifications_read")  # the other tab, on the other node
        assert marks == {"positions": positions[4:6], "all": False}
        assert await tab2.call("notifications:read", {"all": True}) == {"ok": True, "unread": 0}
        assert (await tab1.next("notifications_read"))[0]["all"] is False  # its own first mark
        assert (await tab1.next("notifications_read"))[0]["all"] is True
        for bad in ({"positions": ["x"]}, {"positions": "1-0"}, [], {"limit": 0}):
            reply = await tab1.call("notifications:read", bad)
            assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
        for bad in ({"limit": 0}, {"limit": "5"}, {"cursor": "zz"}, [1]):
            reply = await tab1.call("notifications:list", bad)
            assert reply["ok"] is False and reply["error"]["code"] == "bad_request"


async def test_market_subscriptions_are_restored_on_reconnect(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    publisher = AsyncPublisher(redis_client)
    topics = ["kraken:ticker:BTC/USD", "kraken:trades:BTC/USD", "nope"]
    await publisher.publish_market([Ticker(exchange="kraken", symbol="BTC/USD", ts=1, recv_ts=1, seq=7, bid="1.5")])
    token = make_token(sub="uma")
    async with running_node(redis_url) as first, running_node(redis_url) as second:
        async with connected(first.url, None, auth={"token": token, "subscriptions": topics}) as client:
            (status,) = await client.next("sync")
            assert [r["ok"] for r in status["subscriptions"]["results"]] == [True, True, False]
            topic, data = await client.next("market")
            assert (topic, data["seq"]) == ("kraken:ticker:BTC/USD", 7)  # the latest value, at once
        await publisher.publish_market([Ticker(exchange="kraken", symbol="BTC/USD", ts=1, recv_ts=1, seq=8)])
        async with connected(second.url, None, auth={"token": token, "subscriptions": topics[:2]}) as client:
            topic, data = await client.next("market")
            assert (topic, data["seq"]) == ("kraken:ticker:BTC/USD", 8)  # seq shows what was missed
            await publisher.publish_market(
                [
                    Trade(
                        exchange="kraken",
                        symbol="BTC/USD",
                        ts=1,
                        recv_ts=1,
                        seq=1,
                        trade_id="t",
                        price="1",
                        size="1",
                        side="sell",
                    )
                ]
            )
            assert (await client.next("market"))[0] == "kraken:trades:BTC/USD"


async def test_a_record_read_by_a_joining_socket_before_its_live_message_still_reaches_the_room(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    """The seam with another socket in the room: a record in the stream whose live message is still on its way.

    A second socket of the user reads the record from the stream and joins; the live
    message arrives after. The socket already in the room must get it (once), the
    joining one must not get it twice, and each one's `sync` must not be behind a record it has.
    """
    publisher = AsyncPublisher(redis_client)
    token = make_token(sub="ivy")
    async with running_node(redis_url) as node, connected(node.url, token) as first:
        (status,) = await first.next("sync")
        await publisher.publish(note("ivy", 0))
        _, position = await first.next("notification")
        # Stored as the publish script stores it, announced only later: "in flight".
        # Positions count the stream's entries (docs/protocol.md): this is the second.
        record = codec.encode(note("ivy", 1))
        in_flight = f"{max(int(time.time() * 1000), int(position.split('-')[0]))}-2"
        await redis_client.xadd(names.notification_stream("ivy"), {"data": record}, id=in_flight)
        async with connected(node.url, None, auth={"token": token, "positions": {"notifications": position}}) as second:
            data, at = await second.next("notification")
            assert (data["id"], at) == ("n1", in_flight)
            (joined,) = await second.next("sync")
            assert joined["notifications"]["position"] == in_flight
            await redis_client.publish(
                names.user_channel("ivy"), codec.encode_envelope(in_flight, StreamKind.NOTIFICATION, record)
            )
            data, at = await first.next("notification")
            assert (data["id"], at) == ("n1", in_flight), "the socket already in the room lost a record"
            await publisher.publish(note("ivy", 2))
            assert (await second.next("notification"))[0]["id"] == "n2", "the joining socket got n1 twice"
            assert (await first.next("notification"))[0]["id"] == "n2"
            await first.nothing("notification")
            await second.nothing("notification")
    assert status["complete"] is True


async def test_sync_is_never_behind_a_record_the_socket_already_has(
    redis_client: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    """Live notifications reach a socket while its team's stream still catches up: `sync` reports at least those."""
    publisher = AsyncPublisher(redis_client)
    token = make_token(sub="judy", teams=["blue"])
    start = await publisher.publish(note("judy", 0))
    for version in range(1, 401):  # two read batches of catch-up on the team stream
        await publisher.publish(update("blue", "job", version))
    publishing = True

    async def publish_live() -> None:
        n = 1
        while publishing:
            await publisher.publish(note("judy", n))
            n += 1

    async with running_node(redis_url) as node:
        for attempt in range(5):
            live = asyncio.create_task(publish_live())
            auth = {"token": token, "positions": {"notifications": start, "executions": {"blue": "0-0"}}}
            async with connected(node.url, None, auth=auth) as client:
                await wait_until(lambda client=client: "sync" in client.received, timeout=10)  # type: ignore[misc]
                publishing = False
                await live
                publishing = True
                before_sync = client.received[: client.received.index("sync")].count("notification")
                had = [client.queue("notification").get_nowait()[1] for _ in range(before_sync)]
                (status,) = client.queue("sync").get_nowait()
                if had:
                    assert position_key(status["notifications"]["position"]) >= position_key(had[-1]), (
                        f"attempt {attempt}: sync says {status['notifications']['position']}, the socket has {had[-1]}"
                    )
