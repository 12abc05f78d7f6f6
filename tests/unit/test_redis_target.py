"""Redis URLs become the right target; CLUSTER SLOTS replies are read defensively (they are untrusted bytes)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.redis_target import Endpoint, RedisTarget, RedisUrlError, SlotRange, parse_slots, slot_of


def test_a_single_redis() -> None:
    target = RedisTarget.parse("rediss://user:p%40ss@cache.example:6380/2")
    assert target == RedisTarget(
        cluster=False, seeds=(Endpoint("cache.example", 6380),), username="user", password="p@ss", tls=True, db=2
    )
    assert target.node_url(target.seeds[0]) == "rediss://user:p%40ss@cache.example:6380/2"


def test_a_cluster_lists_its_seeds() -> None:
    target = RedisTarget.parse("redis+cluster://:secret@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    assert target.cluster and target.password == "secret" and target.username is None
    assert target.seeds == (Endpoint("10.0.0.1", 7000), Endpoint("10.0.0.2", 6379), Endpoint("::1", 7002))
    assert target.node_url(target.seeds[2]) == "redis://:secret@[::1]:7002/0"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost",
        "redis://a:1,b:2",  # several hosts only for a cluster
        "redis+cluster://a:1/3",  # a cluster has database 0 only
        "redis://localhost:99999",
        "redis://localhost:port",
        "redis://localhost/db",
        "redis+cluster://" + ",".join(f"h{n}:1" for n in range(65)),
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(RedisUrlError):
        RedisTarget.parse(url)


def test_channels_of_one_owner_share_a_slot() -> None:
    assert slot_of("user:{alice}") == slot_of("notifications:{alice}") == slot_of("connections:{alice}")
    assert slot_of("team:{red}") == slot_of("executions:{red}:latest") == slot_of("presence:{red}")


def test_slot_map() -> None:
    reply = [
        [0, 8191, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
        [8192, 16383, [b"", 7001, b"id2"]],  # an empty host: the address we asked
    ]
    assert parse_slots(reply, "10.0.0.9") == [
        SlotRange(0, 8191, Endpoint("10.0.0.1", 7000)),
        SlotRange(8192, 16383, Endpoint("10.0.0.9", 7001)),
    ]


@given(st.recursive(st.none() | st.integers() | st.binary(max_size=8), lambda inner: st.lists(inner, max_size=4)))
def test_any_reply_is_read_without_error(reply: object) -> None:
    for slot_range in parse_slots(reply, "h"):
        assert 0 <= slot_range.first <= slot_range.last < 16384 and 0 < slot_range.owner.port < 65536
