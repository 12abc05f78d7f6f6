"""The collector admin API: no web page, stranger or oversized request can make a collector flood an exchange.

Audit finding 7: a cross-site `text/plain` POST from any page in an operator's browser added topics;
one 2.7 KB POST added 600 topics and opened 6 more exchange connections.
"""

from __future__ import annotations

import json

import aiohttp

from collectors.simulator import Simulator, SimulatorConfig
from shared.topics import Exchange
from tests.collector_support import collector_config, running

TOKEN = "operator-token"
SIX_HUNDRED = {"topics": [f"binance:trades:C{n}/USDT" for n in range(600)]}


async def test_changes_need_a_token_a_json_body_an_allowed_host_and_no_foreign_origin(redis_url: str) -> None:
    async with Simulator(SimulatorConfig(exchanges=[Exchange.BINANCE])) as sim:
        config = collector_config(sim, Exchange.BINANCE, redis_url, admin_token=TOKEN, max_topics=20)
        async with running(config) as service, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{service.admin_port}/subscriptions"
            body = json.dumps({"topics": ["binance:trades:SOL/USDT"]})
            auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            cases = [
                ({"Content-Type": "text/plain", "Origin": "https://evil.example"}, 403),  # the audit's POST
                ({**auth, "Origin": "https://evil.example"}, 403),  # even with the token, not from a page
                ({**auth, "Host": "rebound.evil.example"}, 421),  # DNS rebinding
                ({"Content-Type": "application/json"}, 401),
                ({"Authorization": "Bearer wrong", "Content-Type": "application/json"}, 401),
                ({"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}, 415),
            ]
            for headers, status in cases:
                async with http.post(url, data=body, headers=headers) as response:
                    assert response.status == status, (headers, await response.text())
            async with http.post(url, data=json.dumps(SIX_HUNDRED), headers=auth) as response:
                assert response.status == 413  # 50 topics per request at most
            many = {"topics": [f"binance:trades:C{n}/USDT" for n in range(30)]}
            async with http.post(url, data=json.dumps(many), headers=auth) as response:
                assert response.status == 409  # past the collector's cap of 20
            async with http.post(url, data=body, headers=auth) as response:
                assert response.status == 200 and (await response.json())["added"] == ["binance:trades:SOL/USDT"]
            assert len(service.collector.connections) == 1  # nothing above opened a connection
            async with http.get(f"http://127.0.0.1:{service.admin_port}/metrics") as response:
                text = await response.text()
            assert 'collector_admin_refusals_total{status="403"} 2.0' in text


async def test_without_a_token_the_api_only_reads(redis_url: str) -> None:
    async with (
        Simulator(SimulatorConfig(exchanges=[Exchange.BINANCE])) as sim,
        running(collector_config(sim, Exchange.BINANCE, redis_url)) as service,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{service.admin_port}"
        async with http.get(base + "/status") as response:
            assert response.status == 200
        headers = {"Authorization": "Bearer anything", "Content-Type": "application/json"}
        async with http.post(base + "/subscriptions", data="{}", headers=headers) as response:
            assert response.status == 403 and "COLLECTOR_ADMIN_TOKEN" in (await response.json())["error"]
