"""A record the publish scripts store is a record the gateway delivers, whoever runs the scripts.

Audit finding: a notification whose message had 5,000 characters was stored by the documented script,
counted as recovered, and never delivered. The scripts now check records against the same schema the
gateway decodes with; these tests run both on generated records, near every limit and past it.
"""

from __future__ import annotations

import json
from typing import Any

import hypothesis.strategies as st
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings

from shared import codec, names
from shared.errors import PayloadError
from shared.events import ExecutionUpdate, Notification
from shared.publisher import EXECUTION_SCRIPT, NOTIFICATION_SCRIPT, SyncPublisher

EXAMPLES = 300


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values that are valid about six times in seven, so that records with every field valid are common."""
    return st.one_of(valid, valid, valid, valid, valid, valid, invalid)


idents = mostly(st.sampled_from(["alice", "n-1", "a:b@c.d-e_f", "x" * 128]), st.sampled_from(["", "bad id", "x" * 129]))
titles = mostly(
    st.text(max_size=20) | st.text(alphabet='aé€😀\\"\n\x00', min_size=190, max_size=200),
    st.text(alphabet="aé€😀", min_size=201, max_size=205),
)
messages = mostly(
    st.text(max_size=20) | st.text(alphabet="ab€", min_size=3990, max_size=4000), st.text(min_size=4001, max_size=4003)
)
times = mostly(
    st.integers(min_value=0, max_value=2**53 - 1) | st.sampled_from([1.0, 1e3, 1.7e12]),
    st.sampled_from([-1, 2**53, 2**53 + 1, 1.5, 1e-05, 2.5e20, "1", True, None]),
)
numbers = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.integers(min_value=2**53 - 3, max_value=2**53 + 3),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=101),
    st.sampled_from([1.0, 1e3, 100.0, 100.5, 0.0, -0.0, 1.5, 1e-05, 2.5e20, 1.5e-07, 10.05]),
)
texts = titles | messages
scalars = st.one_of(titles, numbers, st.booleans(), st.none())
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(titles, inner, max_size=2))
# Number literals JSON does not have, which Redis's cjson would read.
NON_JSON_NUMBERS = ["0x10", "NaN", "Infinity", "-Infinity", "01", "+1", ".5", "1.", "1e", "1E+", "-01"]


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def notification_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "id": idents,
            "user_id": st.sampled_from(["alice", "bob"]),
            "type": mostly(st.sampled_from(["info", "success", "warning", "error"]), st.sampled_from(["nope", None])),
            "title": titles,
            "message": messages,
            "created_at": times,
        },
        optional={
            "read": mostly(st.booleans(), st.sampled_from([None, "true", 1])),
            "action": mostly(st.none() | st.fixed_dictionaries({"label": idents, "url": titles}), texts),
            "surprise": scalars,
        },
    )


def execution_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "execution_id": mostly(st.just("e1"), st.just("e 2")),
            "team_id": st.just("red"),
            "status": mostly(st.sampled_from(["queued", "running", "completed", "failed"]), st.just("paused")),
            "progress": numbers,
            "updated_at": times,
            "version": mostly(st.integers(min_value=1, max_value=2**53 - 1), numbers),
        },
        optional={
            "current_step": st.none() | titles,
            "result": st.one_of(nested, st.sampled_from([deep(32), deep(33)])),
            "error": st.one_of(st.none(), texts),
        },
    )


def as_json(fields: dict[str, Any], literal: str | None) -> str:
    text = json.dumps(fields, ensure_ascii=False)
    if literal is not None and '"created_at": ' in text:
        head, _, rest = text.partition('"created_at": ')
        _number, sep, tail = rest.partition(",") if "," in rest else rest.partition("}")
        text = f'{head}"created_at": {literal}{sep}{tail}'
    return text


@pytest.fixture(scope="module")
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def run(client: redis.Redis, script: str, keys: list[str], args: list[str]) -> bool:
    """Whether the script stored the record (True) or refused it with an error reply (False)."""
    try:
        client.eval(script, len(keys), *keys, *args)
    except redis.exceptions.ResponseError as exc:
        assert str(exc).startswith("invalid "), exc
        return False
    return True


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=notification_fields(), literal=st.none() | st.none() | st.sampled_from(NON_JSON_NUMBERS))
def test_a_stored_notification_is_one_the_gateway_delivers(
    client: redis.Redis, fields: dict[str, Any], literal: str | None
) -> None:
    text = as_json(fields, literal)
    user = fields["user_id"]
    keys = [names.notification_stream(user), names.unread_notifications(user)]
    stored = run(client, NOTIFICATION_SCRIPT, keys, [names.user_channel(user), text, "10", "604800000", "1"])
    try:
        delivered = codec.decode_stored_notification(text.encode()).user_id == user
    except PayloadError:
        delivered = False
    event(f"stored={stored} delivered={delivered}")
    if stored:
        assert delivered, text[:300]
    try:
        strictly_valid = codec.decode_notification(text.encode()) is not None
    except PayloadError:
        strictly_valid = False
    if strictly_valid:
        assert stored, text[:300]  # what the library accepts, the script accepts


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=execution_fields())
def test_a_stored_execution_update_is_one_the_gateway_delivers(client: redis.Redis, fields: dict[str, Any]) -> None:
    text = json.dumps(fields, ensure_ascii=False)
    keys = [names.execution_stream("red"), names.execution_states("red"), names.finished_executions("red")]
    version = fields["version"]
    version_arg = str(int(version)) if isinstance(version, int | float) and float(version).is_integer() else "1"
    args = [names.team_channel("red"), text, "10", "604800000", str(fields["execution_id"]), version_arg, "0"]
    client.delete(names.execution_states("red"))  # so that no held version makes the script skip it
    stored = run(client, EXECUTION_SCRIPT, keys, args)
    try:
        delivered = codec.decode_stored_execution(text.encode()).team_id == "red"
    except PayloadError:
        delivered = False
    event(f"stored={stored} delivered={delivered}")
    if stored:
        assert delivered, text[:300]


def test_the_library_and_the_script_refuse_the_audits_records(client: redis.Redis) -> None:
    publisher = SyncPublisher(client)
    long = Notification(id="n", user_id="alice", type="info", title="t", message="m" * 5000, created_at=1)
    with pytest.raises(PayloadError, match="message"):
        publisher.publish(long)
    text = codec.encode(long).decode()
    keys = [names.notification_stream("alice"), names.unread_notifications("alice")]
    with pytest.raises(redis.exceptions.ResponseError, match="message must have 0 to 4000 characters"):
        client.eval(NOTIFICATION_SCRIPT, 2, *keys, names.user_channel("alice"), text, "10", "604800000", "1")
    leaked = codec.encode(Notification(id="n", user_id="bob", type="info", title="t", message="m", created_at=1))
    with pytest.raises(redis.exceptions.ResponseError, match="those of user_id"):  # bob's record in alice's stream
        client.eval(NOTIFICATION_SCRIPT, 2, *keys, names.user_channel("alice"), leaked.decode(), "10", "604800000", "1")
    with pytest.raises(ValueError, match="nests deeper"):  # refused as soon as it is built
        ExecutionUpdate(
            execution_id="e", team_id="red", status="running", progress=1, updated_at=1, version=1, result=deep(40)
        )


BASE = {"id": "n-1", "user_id": "alice", "type": "info", "title": "t", "message": "m", "created_at": 1}
AT_THE_LIMITS = [
    {"title": "😀" * 200, "message": "€" * 4000},
    {"created_at": 2**53 - 1, "read": True},
    {"action": {"label": "é" * 100, "url": "u" * 2048}},
    {"id": "a" * 128, "message": 'quote " backslash \\ newline \n nul \x00'},
]
PAST_THE_LIMITS = [
    {"title": "😀" * 201},
    {"message": "€" * 4001},
    {"created_at": 2**53},
    {"action": {"label": "", "url": "u"}},
    {"id": "a" * 129},
    {"read": None},
    {"surprise": 1},
]


@pytest.mark.parametrize("change", AT_THE_LIMITS)
def test_notifications_at_every_limit_are_stored_and_delivered(client: redis.Redis, change: dict[str, Any]) -> None:
    text = json.dumps({**BASE, **change})
    keys = [names.notification_stream("alice"), names.unread_notifications("alice")]
    assert run(client, NOTIFICATION_SCRIPT, keys, [names.user_channel("alice"), text, "10", "604800000", "1"])
    assert codec.decode_notification(text.encode()).user_id == "alice"


@pytest.mark.parametrize("change", PAST_THE_LIMITS)
def test_notifications_past_any_limit_are_refused_by_both(client: redis.Redis, change: dict[str, Any]) -> None:
    text = json.dumps({**BASE, **change})
    keys = [names.notification_stream("alice"), names.unread_notifications("alice")]
    assert not run(client, NOTIFICATION_SCRIPT, keys, [names.user_channel("alice"), text, "10", "604800000", "1"])
    with pytest.raises(PayloadError):
        codec.decode_stored_notification(text.encode())
