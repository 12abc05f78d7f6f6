"""A collector on a Redis Cluster: its market data (SPUBLISH), status records and on-demand leases work there."""

from __future__ import annotations

from collectors.simulator import Simulator, SimulatorConfig
from shared.topics import Exchange, Topic
from tests.cluster.conftest import Cluster
from tests.collector_support import collector_config, running
from tests.harness import connected, make_token, running_node, wait_until

TICKER = "binance:ticker:BTC/USDT"
SOL = "binance:trades:SOL/USDT"


async def test_a_collector_feeds_a_gateway_through_the_cluster(cluster: Cluster) -> None:
    async with Simulator(SimulatorConfig(exchanges=[Exchange.BINANCE])) as sim:
        config = collector_config(
            sim, Exchange.BINANCE, cluster.url, channels=["ticker"], on_demand=True, on_demand_allow=["binance:*"]
        )
        async with running(config) as service, running_node(cluster.url, on_demand=True) as node:
            # The collector's status record, read back from the cluster by the node.
            await wait_until(lambda: node.node.demand.known and node.node.demand.collected(TICKER), timeout=15)
            async with connected(node.url, make_token()) as client:
                reply = await client.call("subscribe", [TICKER, SOL])
                assert [r["collected"] for r in reply["results"]] == [True, False]
                seen: set[str] = set()
                while seen != {TICKER, SOL}:  # the ticker, then the leased topic once collected
                    topic, event = await client.next("market", timeout=15)
                    seen.add(topic)
                    assert event["symbol"] == topic.split(":")[2]
                assert Topic.parse(SOL) in service.collector.topics
