"""Gateway nodes on a real Redis Cluster: delivery, a master killed, a slot migrated, the cluster paused.

Every test counts: each notification id and each execution version must reach every client exactly
once, whatever happened to the cluster while they were published.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from gateway.node import GatewayNode
from shared import names
from shared.events import Ticker
from shared.publisher import AsyncPublisher
from shared.redis_target import slot_of
from tests.cluster.conftest import Cluster, Traffic, delivered, wait_for
from tests.harness import Client, connected, make_token, running_node, wait_until

USER, TEAM = "alice", "red"
SYMBOLS = [f"C{n}/USDT" for n in range(200)]


def ticker(symbol: str, seq: int) -> Ticker:
    return Ticker(exchange="binance", symbol=symbol, ts=1, recv_ts=time.time() * 1000, seq=seq, bid="1", ask="2")


def topics_on(cluster: Cluster, owners: list[int]) -> list[str]:
    """One ticker topic whose channel lives on each master port of `owners`."""
    found: dict[int, str] = {}
    for symbol in SYMBOLS:
        topic = f"binance:ticker:{symbol}"
        port = cluster.owner(names.market_channel(topic)).port
        if port in owners and port not in found:
            found[port] = topic
        if len(found) == len(owners):
            break
    return [found[port] for port in owners]


@asynccontextmanager
async def three_nodes_with_clients(
    cluster: Cluster, topics: list[str]
) -> AsyncIterator[tuple[list[GatewayNode], list[Client]]]:
    """Three gateway nodes, one client of USER (team TEAM) on each, subscribed to `topics` and synced."""
    async with AsyncExitStack() as stack:
        nodes, clients = [], []
        for _ in range(3):
            node = await stack.enter_async_context(running_node(cluster.url))
            client = await stack.enter_async_context(connected(node.url, make_token(sub=USER, teams=[TEAM])))
            await client.next("sync", timeout=10)
            reply = await client.call("subscribe", topics)
            assert all(result["ok"] for result in reply["results"]), reply
            assert node.node.relay.connections <= 3  # one sharded pub/sub connection per master, at most
            nodes.append(node.node)
            clients.append(client)
        yield nodes, clients


class Market:
    """Publishes a ticker on each topic every 20 ms (errors ignored: market data does not replay) until stopped.

    Stopped by a flag, not by cancellation: redis-py's pipeline may absorb a cancellation and return.
    """

    def __init__(self, cluster: Cluster, topics: list[str]) -> None:
        self.publisher = AsyncPublisher(cluster.client)
        self.topics = topics
        self.seq = 0
        self.stopped = False

    async def run(self) -> None:
        while not self.stopped:
            self.seq += 1
            # Any error: while the cluster restarts, redis-py's cluster pipeline cancelled in the middle of
            # a connect can also raise AttributeError ('NoneType' has no 'writelines'); the collectors' sink
            # survives that too (it drops the batch), and this publisher only has to keep the traffic going.
            with contextlib.suppress(Exception):
                events = [ticker(t.split(":")[2], self.seq) for t in self.topics]
                await asyncio.wait_for(self.publisher.publish_market(events), 2)
            await asyncio.sleep(0.02)


def latest_seq(client: Client, topic: str) -> int:
    queue = client.queue("market")
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    for item in items:
        queue.put_nowait(item)
    return max((data["seq"] for t, data in items if t == topic), default=0)


async def all_delivered_once(clients: list[Client], traffic: Traffic, timeout: float = 30) -> None:
    """Every client got every notification and execution version traffic published, each exactly once."""
    wanted_n = {f"n{n}" for n in range(traffic.notifications)}
    wanted_e = {str(v + 1) for v in range(traffic.executions)}
    await wait_until(
        lambda: all(
            set(delivered(c, "notification")) >= wanted_n and set(delivered(c, "execution")) >= wanted_e
            for c in clients
        ),
        timeout=timeout,
    )
    await asyncio.sleep(0.5)  # a duplicate would arrive right behind
    for client in clients:
        notifications, executions = delivered(client, "notification"), delivered(client, "execution")
        assert set(notifications) == wanted_n and set(notifications.values()) == {1}, notifications
        assert set(executions) == wanted_e and set(executions.values()) == {1}, executions
        assert client.disconnects == []


async def test_three_nodes_deliver_all_three_kinds(cluster: Cluster) -> None:
    ports = [m.port for m in cluster.masters()]
    topics = topics_on(cluster, ports)
    async with three_nodes_with_clients(cluster, topics) as (_, clients):
        await AsyncPublisher(cluster.client).publish_market([ticker(t.split(":")[2], 1) for t in topics])
        traffic = Traffic(cluster.client, USER, TEAM)
        await traffic.publish_records(20, pause_s=0)
        await all_delivered_once(clients, traffic)
        for client in clients:
            await wait_until(lambda c=client: all(latest_seq(c, t) == 1 for t in topics))


async def test_a_master_killed_during_traffic(cluster: Cluster) -> None:
    victim = cluster.owner(names.user_channel(USER))
    (topic,) = topics_on(cluster, [victim.port])
    async with three_nodes_with_clients(cluster, [topic]) as (gateways, clients):
        market = Market(cluster, [topic])
        traffic = Traffic(cluster.client, USER, TEAM)
        async with asyncio.TaskGroup() as group:
            group.create_task(market.run())
            publishing = group.create_task(traffic.publish_records(150, pause_s=0.02))
            await wait_until(lambda: traffic.notifications >= 40, timeout=20)
            victim.kill()
            killed_at = time.monotonic()
            await wait_for(lambda: cluster.owner(names.user_channel(USER)) is not victim, 30, "a replica promoted")
            promoted_s = time.monotonic() - killed_at
            seq_after = market.seq
            await publishing
            print(f"published all {time.monotonic() - killed_at:.1f}s after the kill")
            for client in clients:
                await wait_until(lambda c=client: latest_seq(c, topic) > seq_after, timeout=20)
            market.stopped = True
        await all_delivered_once(clients, traffic)
        # Each node lost the user's channel and the topic's on the dead master, and restored them elsewhere.
        assert all(gateway.metrics.redis_channels_lost._value.get() >= 2 for gateway in gateways)
        print(
            f"failover: promoted after {promoted_s:.1f}s, publish attempts retried: {dict(traffic.errors)}, "
            f"{traffic.already_stored} retries found the record stored"
        )


def migrate(cluster: Cluster, slot: int, target_port: int) -> int:
    """Move `slot` to the master on `target_port` as redis-cli --cluster reshard does; returns keys moved."""
    source = cluster.owner_of_slot(slot)
    target = next(n for n in cluster.embedded.nodes if n.port == target_port)
    with cluster.sync(source) as src, cluster.sync(target) as dst:
        source_id, target_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(0.05)  # traffic goes on between batches
        for node in [target, source, *(m for m in cluster.masters() if m not in (source, target))]:
            with cluster.sync(node) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return moved


async def test_a_slot_migrated_during_traffic(cluster: Cluster) -> None:
    channel = names.user_channel(USER)
    source = cluster.owner(channel)
    target = next(m for m in cluster.masters() if m is not source)
    (topic,) = topics_on(cluster, [source.port])
    async with three_nodes_with_clients(cluster, [topic]) as (_, clients):
        traffic = Traffic(cluster.client, USER, TEAM)
        async with asyncio.TaskGroup() as group:
            publishing = group.create_task(traffic.publish_records(120, pause_s=0.02))
            await wait_until(lambda: traffic.notifications >= 30, timeout=20)
            moved = await asyncio.to_thread(migrate, cluster, slot_of(channel), target.port)
            assert cluster.owner(channel) is target
            await publishing
        await all_delivered_once(clients, traffic)
        print(f"migration: {moved} keys moved, publish attempts retried: {dict(traffic.errors)}")


@pytest.mark.parametrize("outage", ["paused", "restarted"])
async def test_the_cluster_unreachable_and_back(cluster: Cluster, outage: str) -> None:
    """Every node paused (SIGSTOP: connections stay open, nothing answers), or killed and started again
    (every pub/sub connection lost: each node resubscribes and catches up from the streams)."""
    (topic,) = topics_on(cluster, [cluster.owner(names.user_channel(USER)).port])
    async with three_nodes_with_clients(cluster, [topic]) as (gateways, clients):
        market = Market(cluster, [topic])
        traffic = Traffic(cluster.client, USER, TEAM)
        async with asyncio.TaskGroup() as group:
            group.create_task(market.run())
            publishing = group.create_task(traffic.publish_records(100, pause_s=0.02))
            await wait_until(lambda: traffic.notifications >= 30, timeout=20)
            servers = cluster.embedded.nodes
            if outage == "paused":
                pids = [server.pid for server in servers if server.pid is not None]
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(3)  # the outage itself: nothing to wait for
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            else:
                for server in servers:
                    server.kill()
                await asyncio.sleep(1)  # the outage itself
                await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
            await cluster.wait_healthy()
            seq_after = market.seq
            await publishing
            for client in clients:
                await wait_until(lambda c=client: latest_seq(c, topic) > seq_after, timeout=20)
            market.stopped = True
        await all_delivered_once(clients, traffic)
        if outage == "restarted":  # every subscription was lost and restored, with a catch-up
            assert all(gateway.metrics.redis_channels_lost._value.get() >= 2 for gateway in gateways)
