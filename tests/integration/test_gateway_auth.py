"""Authentication: every token fault is refused with its code; expiry and refresh."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import TokenVerifier
from gateway.config import GatewayConfig
from gateway.errors import AuthError
from tests.harness import (
    SECRET,
    connected,
    jwks_server,
    make_token,
    new_client,
    private_pem,
    running_node,
    wait_until,
)


async def refused_code(url: str, auth: dict[str, object] | None, headers: dict[str, str] | None = None) -> str:
    client = new_client()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(url, auth=auth, headers=headers or {}, transports=["websocket"], wait_timeout=5)
    await client.sio.shutdown()
    assert isinstance(client.connect_error, dict), client.connect_error
    assert client.connect_error["message"] == client.connect_error["data"]["code"]
    return str(client.connect_error["data"]["code"])


# Each fault's auth, made when its test runs: a token made at collection time could expire before a slow
# run reaches it, and be refused as expired instead of for its own fault.
@pytest.mark.parametrize(
    ("auth", "code"),
    [
        (lambda: None, "token_missing"),
        (lambda: {"token": ""}, "token_missing"),
        (lambda: {"token": 42}, "token_malformed"),
        (lambda: {"token": "not.a.jwt"}, "token_malformed"),
        (lambda: {"token": make_token(secret="another-secret-of-sufficient-length!")}, "token_invalid"),
        (lambda: {"token": make_token(exp_in=-30)}, "token_expired"),
        (lambda: {"token": make_token(nbf=9_999_999_999)}, "token_not_yet_valid"),
        (lambda: {"token": make_token(sub=None)}, "claims_invalid"),
        (lambda: {"token": make_token(sub="bad user id with spaces")}, "claims_invalid"),
        (lambda: {"token": make_token(teams="x" * 200)}, "claims_invalid"),
        (
            lambda: {"token": jwt.encode({"sub": "alice", "exp": 9_999_999_999}, None, algorithm="none")},
            "token_invalid",
        ),
    ],
)
async def test_each_token_fault_is_refused_with_its_code(
    redis_url: str, auth: Callable[[], dict[str, object] | None], code: str
) -> None:
    async with running_node(redis_url) as node:
        assert await refused_code(node.url, auth()) == code
        metrics = node.node.metrics.auth_failures.labels(code)._value.get()
        assert metrics == 1


async def test_issuer_and_audience_are_checked_when_configured(redis_url: str) -> None:
    async with running_node(redis_url, jwt_issuer="https://id.example", jwt_audience="gateway") as node:
        assert (
            await refused_code(node.url, {"token": make_token(iss="https://evil", aud="gateway")}) == "claims_invalid"
        )
        assert (
            await refused_code(node.url, {"token": make_token(iss="https://id.example", aud="other")})
            == "claims_invalid"
        )
        assert await refused_code(node.url, {"token": make_token(aud="gateway")}) == "claims_invalid"
        good = make_token(iss="https://id.example", aud="gateway")
        async with connected(node.url, good) as client:
            assert client.sio.connected


async def test_bearer_header_for_non_browser_clients(redis_url: str) -> None:
    async with running_node(redis_url) as node:
        client = new_client()
        await client.sio.connect(
            node.url, headers={"Authorization": f"Bearer {make_token()}"}, transports=["websocket"], wait_timeout=5
        )
        assert client.sio.connected
        await client.close()
        assert await refused_code(node.url, None, {"Authorization": "Basic abc"}) == "token_missing"


async def test_rs256_public_key(redis_url: str, tmp_path: object) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    async with running_node(redis_url, jwt_secret="", jwt_public_key=public_pem) as node:
        async with connected(node.url, make_token(secret=private_pem, algorithm="RS256")) as client:
            assert client.sio.connected
        # An HS256 token "signed" with the public key must not pass (algorithm confusion).
        forged = jwt.api_jws.PyJWS().encode(
            json.dumps({"sub": "alice", "exp": 9_999_999_999}).encode(), b"\x00" * 32, algorithm="HS256"
        )
        assert await refused_code(node.url, {"token": forged}) == "token_invalid"


async def test_jwks_keys_are_fetched_and_refetched_on_unknown_kid(redis_url: str) -> None:
    keys = {"k1": ec.generate_private_key(ec.SECP256R1()), "k2": ec.generate_private_key(ec.SECP256R1())}
    published = ["k1"]
    fetches: list[int] = []

    def token(kid: str) -> str:
        return make_token(secret=private_pem(keys[kid]), algorithm="ES256", headers={"kid": kid})

    async with (
        jwks_server(keys, published, fetches) as url,
        running_node(redis_url, jwt_secret="", jwks_url=url) as node,
    ):
        node.node.verifier._jwks._min_refetch_s = 0.0  # type: ignore[union-attr]
        async with connected(node.url, token("k1")):
            pass
        assert len(fetches) == 1
        published.append("k2")  # the provider rotates in a new key
        async with connected(node.url, token("k2")):
            pass
        assert len(fetches) == 2
        assert await refused_code(node.url, {"token": token("k1")[:-4] + "AAAA"}) == "token_invalid"


async def test_a_connect_waiting_for_a_signing_key_holds_up_no_other(redis_url: str) -> None:
    """CONNECTs are admitted in batches; one whose key must be fetched first waits alone, not in a batch."""
    keys = {"k1": ec.generate_private_key(ec.SECP256R1()), "k2": ec.generate_private_key(ec.SECP256R1())}
    published = ["k1"]
    provider = asyncio.Event()
    provider.set()

    def token(kid: str) -> str:
        return make_token(secret=private_pem(keys[kid]), algorithm="ES256", headers={"kid": kid})

    async with (
        jwks_server(keys, published, gate=provider) as url,
        running_node(redis_url, jwt_secret="", jwks_url=url) as node,
    ):
        node.node.verifier._jwks._min_refetch_s = 0.0  # type: ignore[union-attr]
        async with connected(node.url, token("k1")):
            pass
        published.append("k2")
        provider.clear()  # the provider is slow from now on
        waiting = new_client()
        connect = asyncio.create_task(
            waiting.sio.connect(node.url, auth={"token": token("k2")}, transports=["websocket"], wait_timeout=10)
        )
        try:
            await wait_until(node.node.verifier._jwks._lock.locked)  # type: ignore[union-attr]
            async with asyncio.timeout(3), connected(node.url, token("k1")) as other:
                assert other.sio.connected  # admitted while the other connect waits for the provider
            assert not connect.done()
            provider.set()
            await connect
            assert waiting.sio.connected
        finally:
            provider.set()
            await waiting.close()


async def test_socket_is_dropped_at_token_expiry(redis_url: str) -> None:
    async with running_node(redis_url) as node, connected(node.url, make_token(exp_in=1.5)) as client:
        (payload,) = await client.next("session_expired", timeout=5)
        assert payload["code"] == "token_expired"
        await asyncio.sleep(0.3)
        assert not client.sio.connected


async def test_refresh_keeps_the_socket(redis_url: str) -> None:
    async with running_node(redis_url) as node, connected(node.url, make_token(exp_in=1.5)) as client:
        reply = await client.call("refresh", {"token": make_token(exp_in=60)})
        assert reply["ok"] is True
        assert reply["expires_at"] > 0
        await client.nothing("session_expired", within=2.5)
        assert client.sio.connected
        refused = await client.call("refresh", {"token": make_token(sub="mallory", exp_in=60)})
        assert refused == {
            "ok": False,
            "error": {"code": "forbidden", "message": "a refresh token must be for the same user"},
        }
        bad = await client.call("refresh", {"token": "garbage"})
        assert bad["ok"] is False and bad["error"]["code"] == "token_malformed"


async def test_a_verified_token_is_remembered_until_it_expires() -> None:
    verifier = TokenVerifier(GatewayConfig(jwt_secret=SECRET, jwt_leeway_s=0.0))
    token = make_token(exp_in=1.5)
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first  # no second signature check
    await asyncio.sleep(2.1)
    with pytest.raises(AuthError) as refused:
        await verifier.verify(token)
    assert refused.value.code == "token_expired"
    await verifier.close()
