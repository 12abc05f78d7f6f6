"""Hostile tokens: each is refused with its code, on connect and on refresh, never with internal_error."""

from __future__ import annotations

import time

import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.harness import connected, jwks_server, make_token, new_client, private_pem, running_node

MISMATCHED = "eyJhbGciOiJFUzI1NiJ9.e30.AAAA"  # header ES256, empty claims, a junk signature


async def refusal(url: str, token: str) -> str:
    client = new_client()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    await client.sio.shutdown()
    return str(client.connect_error["data"]["code"])


async def test_an_algorithm_that_does_not_fit_the_public_key_is_token_invalid(redis_url: str) -> None:
    """Audit finding 4: an ES256 header against an RSA key raised past the verifier (internal_error)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    async with running_node(redis_url, jwt_secret="", jwt_public_key=public.decode()) as node:
        assert await refusal(node.url, MISMATCHED) == "token_invalid"
        async with connected(node.url, make_token(secret=private_pem(key), algorithm="RS256")) as client:
            reply = await client.call("refresh", {"token": MISMATCHED})
            assert reply["error"]["code"] == "token_invalid"
        assert node.node.metrics.auth_failures.labels("token_invalid")._value.get() == 2


async def test_with_jwks_any_algorithm_the_key_is_not_for_is_token_invalid(redis_url: str) -> None:
    """Audit finding 4: the raw key was passed instead of the PyJWK, skipping PyJWT's alg/key check."""
    keys = {"ec": ec.generate_private_key(ec.SECP256R1()), "rsa": rsa.generate_private_key(65537, 2048)}
    async with (
        jwks_server(keys, ["ec", "rsa"]) as url,
        running_node(redis_url, jwt_secret="", jwks_url=url, jwt_algorithms=["RS256", "ES256", "HS256"]) as node,
    ):
        # An RSA-signed token under the EC key's kid, and an HS256 token "signed" with nothing a client knows.
        wrong_key = make_token(secret=private_pem(keys["rsa"]), algorithm="RS256", headers={"kid": "ec"})
        assert await refusal(node.url, wrong_key) == "token_invalid"
        hs256 = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "x" * 32, headers={"kid": "rsa"})
        assert await refusal(node.url, hs256) == "token_invalid"
        assert await refusal(node.url, MISMATCHED) == "token_invalid"  # no kid, two keys: unknown key
        good = make_token(secret=private_pem(keys["ec"]), algorithm="ES256", headers={"kid": "ec"})
        async with connected(node.url, good) as client:
            assert (await client.call("refresh", {"token": wrong_key}))["error"]["code"] == "token_invalid"


async def test_an_iat_in_the_future_is_token_not_yet_valid(redis_url: str) -> None:
    """The contract: code and docs agree (docs/protocol.md said claims_invalid)."""
    async with running_node(redis_url) as node:
        assert await refusal(node.url, make_token(iat=int(time.time()) + 3600)) == "token_not_yet_valid"
