"""The gateway's own pages: served with a strict policy; the status data behind the admin token."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.harness import running_node

PAGES = [("/", "text/html"), ("/status", "text/html"), ("/assets/socket.io.min.js", "text/javascript")]


async def test_pages_and_the_status_data_behind_the_admin_token(redis_url: str) -> None:
    async with (
        running_node(redis_url, admin_token="operator", node_id="node-a") as node,
        aiohttp.ClientSession() as http,
    ):
        for path, kind in PAGES:
            async with http.get(node.url + path) as response:
                assert response.status == 200 and response.content_type == kind, path
                assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        async with http.post(node.url + "/") as response:
            assert response.status == 405
        for headers in ({}, {"Authorization": "Bearer guess"}):
            async with http.get(node.url + "/status.json", headers=headers) as response:
                assert response.status == 401
        node.node.board.errors.records.append({"ts": 1, "level": "WARNING", "logger": "gateway.x", "message": "m"})
        async with http.get(node.url + "/status.json", headers={"Authorization": "Bearer operator"}) as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
        assert [n["id"] for n in body["nodes"]] == ["node-a"]
        assert body["errors"] == [{"ts": 1, "level": "WARNING", "logger": "gateway.x", "message": "m"}]


async def test_without_a_token_the_status_data_is_off(redis_url: str) -> None:
    async with (
        running_node(redis_url) as node,
        aiohttp.ClientSession() as http,
        http.get(node.url + "/status.json") as response,
    ):
        assert response.status == 403 and "GATEWAY_ADMIN_TOKEN" in (await response.json())["error"]
