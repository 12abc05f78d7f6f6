"""Property-based fuzzing: nothing a client or a publisher sends crashes a node or reaches the wrong user.

Each test counts the cases it ran; the totals are printed for the closing notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import TokenVerifier
from gateway.config import GatewayConfig
from gateway.errors import AuthError
from gateway.protocol.websocket import FrameParser, Opcode, WebSocketError
from shared import codec
from shared.errors import PayloadError, TopicError
from shared.events import Notification
from shared.publisher import AsyncPublisher
from shared.topics import Topic
from tests.harness import SECRET, Client, RunningNode, connected, make_token, running_node

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
counts: dict[str, int] = {}


def counted(name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Any:
    yield
    for name, total in sorted(counts.items()):
        print(f"[fuzz] {name}: {total} cases, no crash, no misdelivery")


@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
@FUZZ
def test_codec_rejects_garbage_with_payload_error_only(data: bytes) -> None:
    counted("publisher payloads (codec)")
    for decode in (
        codec.decode_market,
        codec.decode_envelope,
        codec.decode_notification,
        codec.decode_execution,
        codec.decode_read_marks,
        codec.decode_revocation,
    ):
        with contextlib.suppress(PayloadError):
            decode(data)


@given(st.text(max_size=80) | json_values)
@FUZZ
def test_topic_parser_rejects_garbage_with_topic_error_only(text: Any) -> None:
    counted("topics")
    with contextlib.suppress(TopicError):
        assert str(Topic.parse(text)) == text


VALID = make_token(sub="fuzz", exp_in=3600)


@given(
    st.one_of(
        st.text(max_size=300),
        json_values,
        st.integers(min_value=0, max_value=len(VALID) - 1).flatmap(
            lambda i: st.characters(codec="ascii").map(lambda c: VALID[:i] + c + VALID[i + 1 :])
        ),
    )
)
@FUZZ
def test_token_verifier_refuses_garbage_with_auth_error_only(token: Any) -> None:
    counted("tokens")
    verifier = TokenVerifier(GatewayConfig(jwt_secret=SECRET))
    try:
        identity = asyncio.run(verifier.verify(token))
    except AuthError:
        return
    assert identity.user_id == "fuzz"  # only an intact signature gets through


@pytest.fixture(scope="module")
async def fuzz_node(redis_url: str) -> AsyncIterator[RunningNode]:
    async with running_node(redis_url, event_rate=1e6, event_burst=1e6) as node:
        yield node


@pytest.fixture(scope="module")
async def alice_and_bob(fuzz_node: RunningNode) -> AsyncIterator[tuple[Client, Client]]:
    async with (
        connected(fuzz_node.url, make_token(sub="alice", teams=["red"])) as alice,
        connected(fuzz_node.url, make_token(sub="bob", teams=["blue"])) as bob,
    ):
        await alice.next("sync")
        await bob.next("sync")
        yield alice, bob


EVENTS = ["subscribe", "unsubscribe", "refresh", "notifications:list", "notifications:read", "notifications:unread"]


@given(st.sampled_from(EVENTS), json_values)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
async def test_client_events_always_get_an_ack(alice_and_bob: tuple[Client, Client], event: str, data: Any) -> None:
    counted("client event payloads")
    alice, _ = alice_and_bob
    reply = await alice.call(event, data)
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert set(reply["error"]) == {"code", "message"}


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
async def test_raw_packets_never_crash_the_node(fuzz_node: RunningNode, packet: str) -> None:
    counted("raw Socket.IO packets")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(fuzz_node.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket") as ws,
    ):
        await ws.receive_str()
        await ws.send_str("40" + json.dumps({"token": make_token(sub="mallory")}))
        await ws.receive_str()
        await ws.send_str(packet)
        await ws.send_str('421["notifications:unread"]')
        try:
            async with asyncio.timeout(2):
                while True:  # either the node answers the probe, or it closed this transport
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT or msg.data.startswith("431"):
                        break
        except TimeoutError:
            pytest.fail(f"no answer and no close after {packet!r}")


publisher_payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(msgspec.json.encode),
    st.builds(
        lambda pos, kind, data: msgspec.json.encode({"pos": pos, "kind": kind, "data": data}),
        st.sampled_from(["1-1", "0-0", "x", '1-1"]']),
        st.sampled_from(["notification", "execution", "read", "?"]),
        json_values
        | st.builds(
            lambda user, title: msgspec.to_builtins(
                Notification(id="f", user_id=user, type="info", title=title, message="m", created_at=1)
            ),
            st.sampled_from(["alice", "bob", "carol"]),
            st.text(max_size=20),
        ),
    ),
)


@given(
    st.sampled_from(["user:{alice}", "team:{red}", "md:binance:ticker:BTC/USDT", "gateway:control"]),
    publisher_payloads,
)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
async def test_publisher_garbage_never_reaches_the_wrong_user(
    redis_client: redis.asyncio.Redis,
    fuzz_node: RunningNode,
    alice_and_bob: tuple[Client, Client],
    channel: str,
    payload: bytes,
) -> None:
    counted("publisher payloads (live relay)")
    alice, bob = alice_and_bob
    await redis_client.publish(channel, payload)
    # A barrier: the node relays messages in the order Redis sends them, so once
    # bob has this one, the payload above was relayed (or dropped) before it;
    # an ack to alice then comes after anything queued to her before it.
    barrier = await AsyncPublisher(redis_client).publish(  # a fresh id: a republished one is not delivered again
        Notification(
            id=f"barrier-{secrets.token_hex(8)}", user_id="bob", type="info", title="b", message="b", created_at=1
        )
    )
    assert (await bob.next("notification"))[1] == barrier, "bob received a notification that was not his barrier"
    await alice.call("notifications:unread", None)
    for client in (alice, bob):
        while not client.queue("notification").empty():
            notification, _position = client.queue("notification").get_nowait()
            assert client is alice and notification["user_id"] == "alice"
        while not client.queue("execution").empty():
            update, _position = client.queue("execution").get_nowait()
            assert client is alice and update["team_id"] == "red"
    assert alice.sio.connected and bob.sio.connected


@given(st.binary(max_size=600))
@FUZZ
def test_frame_parser_refuses_garbage_with_websocket_error_only(data: bytes) -> None:
    counted("WebSocket frames (parser)")
    parser = FrameParser(256)
    with contextlib.suppress(WebSocketError):
        for opcode, payload in parser.feed(data):
            assert isinstance(opcode, Opcode) and len(payload) <= 256


http_requests = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda method, target, headers, body: f"{method} {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body,
        st.sampled_from(["GET", "POST", "OPTIONS", "HEAD", "PUT", "G\x00T"]),
        st.sampled_from(
            ["/socket.io/?EIO=4&transport=polling", "/socket.io/?EIO=4&transport=websocket", "/readyz", "*"]
        ),
        st.text(alphabet=st.characters(codec="latin-1"), max_size=120),
        st.binary(max_size=100),
    ),
)


@given(http_requests)
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
async def test_raw_http_never_crashes_the_node(
    fuzz_node: RunningNode, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    counted("raw HTTP requests")
    port = int(fuzz_node.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    writer.write_eof()
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(reader.read(), 5)  # answered and/or closed; never left hanging
    writer.close()
    async with aiohttp.ClientSession() as http, http.get(fuzz_node.url + "/healthz") as response:
        assert response.status == 200
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
