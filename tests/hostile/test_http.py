"""Hostile HTTP: requests no parser expects are answered 400, never a dropped connection or an error log."""

from __future__ import annotations

import asyncio

import pytest

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
