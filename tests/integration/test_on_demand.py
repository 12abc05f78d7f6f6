"""On-demand collection: a topic nobody collects is collected once a client subscribes, and let go after."""

from __future__ import annotations

import redis.asyncio

from collectors.simulator import Simulator, SimulatorConfig
from gateway.demand import REFRESH_S
from shared import names
from shared.topics import Exchange, Topic
from tests.collector_support import collector_config, running
from tests.harness import connected, make_token, running_node, wait_until

SOL = "binance:trades:SOL/USDT"
DOGE = "binance:trades:DOGE/USDT"


async def test_a_subscribed_topic_is_collected_on_demand_and_let_go(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    async with Simulator(SimulatorConfig(exchanges=[Exchange.BINANCE])) as sim:
        config = collector_config(
            sim,
            Exchange.BINANCE,
            redis_url,
            channels=["ticker"],
            on_demand=True,
            on_demand_allow=["binance:trades:*"],
            on_demand_linger_s=0.5,
        )
        async with running(config) as service, running_node(redis_url, on_demand=True) as node:
            # The node reads what is collected every REFRESH_S: give it two periods on a busy machine.
            await wait_until(
                lambda: node.node.demand.known and node.node.demand.collected("binance:ticker:BTC/USDT"),
                timeout=2 * REFRESH_S + 5,
            )
            async with connected(node.url, make_token()) as client:
                reply = await client.call("subscribe", [SOL, "binance:ticker:BTC/USDT", "binance:book:SOL/USDT"])
                collected = {r["topic"]: r["collected"] for r in reply["results"]}
                assert collected == {SOL: False, "binance:ticker:BTC/USDT": True, "binance:book:SOL/USDT": False}
                topic, trade = await client.next("market", timeout=15)  # the collector picked it up
                while topic != SOL:
                    topic, trade = await client.next("market", timeout=15)
                assert trade["symbol"] == "SOL/USDT"
                assert Topic.parse(SOL) in service.collector.topics
                # Outside the allow-list: never collected, refused once.
                assert Topic.parse("binance:book:SOL/USDT") not in service.collector.topics
                metrics = service.metrics.demand_refusals.labels("not_allowed")._value.get()
                assert metrics == 1
                second = await client.call("subscribe", [DOGE])
                assert second["results"][0]["collected"] is False
                await wait_until(lambda: Topic.parse(DOGE) in service.collector.topics, timeout=2 * REFRESH_S + 5)
            # The client left: the node unleases at its next refresh, the collector lets go after the linger.
            await wait_until(lambda: Topic.parse(SOL) not in service.collector.topics, timeout=20)
            assert Topic.parse("binance:ticker:BTC/USDT") in service.collector.topics  # configured: kept
            members = await redis_client.zrange(names.collector_demand_key("binance"), 0, -1)
            assert not [m for m in members if m.startswith(SOL.encode())]
