"""A real Redis Cluster for the session (3 masters, 3 replicas on loopback) and helpers to drive it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from shared.embedded_redis import EmbeddedCluster, EmbeddedRedis
from shared.events import ExecutionUpdate, Notification
from shared.publisher import AsyncPublisher
from shared.redis_target import REDIS_ERRORS, AsyncClient, RedisTarget, slot_of
from tests.harness import Client


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedCluster]:
    # Durable: the outage test kills every node and starts them again, and no acknowledged write may go.
    with EmbeddedCluster(masters=3, replicas=1, durable=True) as cluster:
        yield cluster


@pytest.fixture
async def cluster(redis_cluster: EmbeddedCluster) -> AsyncIterator[Cluster]:
    """The session's cluster, healthy (every node up, killed ones restarted as replicas) and emptied."""
    for node in redis_cluster.nodes:
        if node.pid is None:
            node.start()
    helper = Cluster(redis_cluster)
    await helper.wait_healthy()
    for master in helper.masters():
        helper.sync(master).flushall()
    client = RedisTarget.parse(redis_cluster.url).async_client()
    helper.client = client
    yield helper
    await client.aclose()


@dataclass
class Cluster:
    """Operations a test performs on the cluster: who owns a slot, kill, pause, migrate."""

    embedded: EmbeddedCluster
    client: Any = None

    @property
    def url(self) -> str:
        return self.embedded.url

    def sync(self, node: EmbeddedRedis) -> redis.Redis:
        return redis.Redis(port=node.port, socket_timeout=5)

    def _role(self, node: EmbeddedRedis) -> str | None:
        if node.pid is None:
            return None
        try:
            with self.sync(node) as client:
                return str(client.execute_command("ROLE")[0].decode())
        except (redis.RedisError, OSError):
            return None

    def masters(self) -> list[EmbeddedRedis]:
        return [node for node in self.embedded.nodes if self._role(node) == "master"]

    def owner(self, name: str) -> EmbeddedRedis:
        """The master serving the slot of key or channel `name`."""
        return self.owner_of_slot(slot_of(name))

    def owner_of_slot(self, slot: int) -> EmbeddedRedis:
        for master in self.masters():
            with self.sync(master) as client:
                for first, last, (_host, port, *_), *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return next(node for node in self.embedded.nodes if node.port == port)
        raise AssertionError(f"no master serves slot {slot}")

    def healthy(self) -> bool:
        try:
            live = [node for node in self.embedded.nodes if node.pid is not None]
            return all(self.embedded.healthy(self.sync(node)) for node in live) and len(self.masters()) == 3
        except (redis.RedisError, OSError):
            return False

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        await wait_for(self.healthy, timeout, "the cluster to be healthy")


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    """Wait for `condition()` (run in a thread: it may block on a paused node) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Traffic:
    """Publishes notifications and execution updates, retrying each until Redis takes it (a publish may fail
    during a failover or migration), and market tickers; counts what it got acknowledged."""

    client: AsyncClient
    user: str
    team: str
    notifications: int = 0
    executions: int = 0
    failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    already_stored: int = 0

    async def publish_records(self, count: int, pause_s: float = 0.01) -> None:
        publisher = AsyncPublisher(self.client)
        for n in range(count):
            await self._retry(publisher, Notification(
                id=f"n{n}", user_id=self.user, type="info", title=str(n), message="m", created_at=1
            ))  # fmt: skip
            self.notifications += 1
            await self._retry(publisher, ExecutionUpdate(
                execution_id="run", team_id=self.team, status="running", progress=0, updated_at=1, version=n + 1
            ))  # fmt: skip
            self.executions += 1
            await asyncio.sleep(pause_s)

    async def _retry(self, publisher: AsyncPublisher, record: Notification | ExecutionUpdate) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                position = await asyncio.wait_for(publisher.publish(record), 5)
            except (*REDIS_ERRORS, TimeoutError) as exc:
                self.failures += 1
                self.errors[type(exc).__name__] += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
            else:
                self.already_stored += position is None  # a retry of a publish that had been stored
                return


def delivered(client: Client, event: str) -> Counter[str]:
    """How many times each record arrived on `client` (notification ids, execution versions)."""
    counts: Counter[str] = Counter()
    queue = client.queue(event)
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    for item in items:
        queue.put_nowait(item)
        record = item[0]
        counts[str(record["id"] if event == "notification" else record["version"])] += 1
    return counts
