"""Clients from a Redis URL, against a real server: a pooled connection that Redis dropped is not an error."""

from __future__ import annotations

from pathlib import Path

from shared.embedded_redis import EmbeddedRedis
from shared.redis_target import RedisTarget


async def test_a_restarted_redis_answers_the_next_command_of_a_pooled_client(tmp_path: Path) -> None:
    """Each pooled connection's first command after a Redis restart failed: a gateway refused connects."""
    server = EmbeddedRedis(data_dir=str(tmp_path)).start()
    client = RedisTarget.parse(server.url).async_client(max_connections=4, socket_timeout=5)
    try:
        await client.set("k", "1")
        server.stop()
        server = EmbeddedRedis(port=server.port, data_dir=str(tmp_path)).start()
        assert await client.set("k", "2")
        assert await client.get("k") == b"2"
    finally:
        await client.aclose()
        server.stop()


def test_the_blocking_client_too(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=str(tmp_path)).start()
    client = RedisTarget.parse(server.url).sync_client()
    try:
        client.set("k", "1")
        server.stop()
        server = EmbeddedRedis(port=server.port, data_dir=str(tmp_path)).start()
        assert client.set("k", "2")
    finally:
        client.close()
        server.stop()
