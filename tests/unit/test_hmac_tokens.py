"""The HMAC fast path of token checks: it accepts plain valid tokens, and nothing PyJWT would refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway.auth import TokenVerifier
from gateway.config import GatewayConfig
from gateway.errors import AuthError
from gateway.hmac_tokens import HmacTokenCheck

SECRET = "a-secret-of-sufficient-length-for-hs512-tokens-0123456789abcdefghij"
LEEWAY = 10.0
NOW = int(time.time())  # at import: the claims below keep an hour from every boundary
HOUR = 3600
_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: dict[str, Any], claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    """A token of exactly this header and these claims (PyJWT's encode would normalize some of them)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), _HASHES.get(alg, hashlib.sha256)).digest()
    return f"{signing_input}.{b64(signature)}"


def pyjwt_claims(
    token: str, algorithms: list[str], issuer: str | None = None, audience: str | None = None
) -> dict[str, Any]:
    """What the gateway asks of PyJWT for the same settings (gateway/auth.py)."""
    return jwt.decode(
        token,
        SECRET,
        algorithms=algorithms,
        leeway=LEEWAY,
        issuer=issuer,
        audience=audience,
        options={"require": ["exp", "sub"], "verify_aud": audience is not None},
    )


def check(
    algorithms: list[str] | None = None, issuer: str | None = None, audience: str | None = None
) -> HmacTokenCheck:
    built = HmacTokenCheck.build(SECRET, algorithms or ["HS256"], leeway=LEEWAY, issuer=issuer, audience=audience)
    assert built is not None
    return built


def test_plain_valid_tokens_are_accepted_with_pyjwt_s_claims() -> None:
    plain = [
        jwt.encode({"sub": "alice", "exp": NOW + HOUR}, SECRET),
        jwt.encode({"sub": "al", "exp": NOW + HOUR, "iat": NOW, "nbf": NOW - 5, "jti": "t1", "teams": ["red"]}, SECRET),
        jwt.encode({"sub": "a", "exp": NOW + HOUR}, SECRET, headers={"kid": "key-1"}),
        jwt.encode({"sub": "alice", "exp": int(time.time()) - 5}, SECRET),  # expired, but within the leeway
    ]
    for token in plain:
        assert check().claims(token) == pyjwt_claims(token, ["HS256"])
    token = jwt.encode({"sub": "alice", "exp": NOW + HOUR}, SECRET, algorithm="HS512")
    assert check(["HS256", "HS512"]).claims(token) == pyjwt_claims(token, ["HS256", "HS512"])
    scoped = jwt.encode({"sub": "alice", "exp": NOW + HOUR, "iss": "idp", "aud": ["x", "gateway"]}, SECRET)
    assert check(issuer="idp", audience="gateway").claims(scoped) == pyjwt_claims(scoped, ["HS256"], "idp", "gateway")


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (jwt.encode({"sub": "alice", "exp": NOW + HOUR}, "", algorithm="none"), "alg none"),
        (jwt.encode({"sub": "alice", "exp": NOW + HOUR}, SECRET, algorithm="HS512"), "alg not configured"),
        (sign({"alg": "hs256"}, {"sub": "alice", "exp": NOW + HOUR}), "alg spelled otherwise"),
        (sign({"alg": ["HS256"]}, {"sub": "alice", "exp": NOW + HOUR}), "alg not a string"),
        (sign({"typ": "JWT"}, {"sub": "alice", "exp": NOW + HOUR}), "no alg"),
        (jwt.encode({"sub": "alice", "exp": NOW + HOUR}, "another-secret-of-sufficient-length!!"), "wrong secret"),
        (sign({"alg": "HS256", "kid": 7}, {"sub": "alice", "exp": NOW + HOUR}), "kid not a string"),
        (sign({"alg": "HS256", "kid": None}, {"sub": "alice", "exp": NOW + HOUR}), "kid null"),
        (sign({"alg": "HS256", "crit": ["exp"], "exp": 1}, {"sub": "alice", "exp": NOW + HOUR}), "crit header"),
        (sign({"alg": "HS256", "b64": False}, {"sub": "alice", "exp": NOW + HOUR}), "b64 header"),
        (sign({"alg": "HS256"}, {"sub": "alice", "exp": NOW - HOUR}), "expired"),
        (sign({"alg": "HS256"}, {"sub": "alice", "exp": NOW + 2 * HOUR, "nbf": NOW + HOUR}), "nbf ahead"),
        (sign({"alg": "HS256"}, {"sub": "alice", "exp": NOW + 2 * HOUR, "iat": NOW + HOUR}), "iat ahead"),
        (sign({"alg": "HS256"}, {"sub": "alice"}), "no exp"),
        (sign({"alg": "HS256"}, {"sub": "alice", "exp": None}), "exp null"),
        (sign({"alg": "HS256"}, {"sub": "alice", "exp": True}), "exp a boolean"),
        (sign({"alg": "HS256"}, {"sub": "alice", "exp": f"{NOW + HOUR}"}), "exp a string"),
        (sign({"alg": "HS256"}, {"exp": NOW + HOUR}), "no sub"),
        (sign({"alg": "HS256"}, {"sub": 5, "exp": NOW + HOUR}), "sub a number"),
        (sign({"alg": "HS256"}, {"sub": "alice", "exp": NOW + HOUR, "jti": 5}), "jti a number"),
        (sign({"alg": "HS256"}, ["not", "an", "object"]), "claims not an object"),  # type: ignore[arg-type]
    ],
)
def test_everything_else_is_left_to_pyjwt(token: str, why: str) -> None:
    assert check().claims(token) is None, why


def test_forms_pyjwt_would_refuse_are_left_to_it() -> None:
    token = jwt.encode({"sub": "alice", "exp": NOW + HOUR}, SECRET)
    header, payload, signature = token.split(".")
    # The same bits in a non-canonical last character: PyJWT refuses it, so must the fast path.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twisted = signature[:-1] + alphabet[alphabet.index(signature[-1]) | 1]
    for bad in (
        f"{header}.{payload}.{twisted}",
        f"{header}.{payload}.{signature}.",
        f"{header}.{payload}",
        f"{header}.{payload}.{signature}=",  # padded: PyJWT takes it, the fast path leaves it to PyJWT
        f"{header}.{payload}.{signature[:-2]}",
        f"{header}é.{payload}.{signature}",
        f"{header}.{payload[:-1]}.{signature}",
    ):
        assert check().claims(bad) is None, bad
    issuer_audience = check(issuer="idp", audience="gateway")
    for claims in (
        {"iss": "other", "aud": "gateway"},
        {"aud": "gateway"},
        {"iss": "idp"},
        {"iss": "idp", "aud": ["x", 5, "gateway"]},
        {"iss": "idp", "aud": []},
        {"iss": ["idp"], "aud": "gateway"},
    ):
        assert issuer_audience.claims(sign({"alg": "HS256"}, {"sub": "a", "exp": NOW + HOUR, **claims})) is None, claims


def test_no_fast_path_for_secrets_pyjwt_refuses_or_warns_about() -> None:
    assert HmacTokenCheck.build("", ["HS256"], leeway=0, issuer=None, audience=None) is None
    assert HmacTokenCheck.build("short", ["HS256"], leeway=0, issuer=None, audience=None) is None
    pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n" + "x" * 40
    assert HmacTokenCheck.build(pem, ["HS256"], leeway=0, issuer=None, audience=None) is None
    assert HmacTokenCheck.build(SECRET, ["RS256", "ES256"], leeway=0, issuer=None, audience=None) is None
    # 32 bytes are enough for HS256, not for HS512: PyJWT would warn on every HS512 token.
    assert HmacTokenCheck.build("x" * 32, ["HS256", "HS512"], leeway=0, issuer=None, audience=None) is None


async def test_the_verifier_refuses_as_before_with_pyjwt_s_codes() -> None:
    verifier = TokenVerifier(GatewayConfig(jwt_secret=SECRET, jwt_leeway_s=LEEWAY))
    assert (await verifier.verify(jwt.encode({"sub": "alice", "exp": NOW + HOUR}, SECRET))).user_id == "alice"
    cases = {
        jwt.encode({"sub": "alice", "exp": NOW + HOUR}, "", algorithm="none"): "token_invalid",
        jwt.encode({"sub": "alice", "exp": NOW + HOUR}, SECRET + "x"): "token_invalid",
        sign({"alg": "HS256"}, {"sub": "alice", "exp": NOW - HOUR}): "token_expired",
        sign({"alg": "HS256"}, {"sub": "alice", "exp": NOW + HOUR, "nbf": NOW + HOUR // 2}): "token_not_yet_valid",
        sign({"alg": "HS256"}, {"exp": NOW + HOUR}): "claims_invalid",
        sign({"alg": "HS256"}, {"sub": "not a valid id", "exp": NOW + HOUR}): "claims_invalid",
        "a.b": "token_malformed",
    }
    for token, code in cases.items():
        with pytest.raises(AuthError) as refused:
            await verifier.verify(token)
        assert refused.value.code == code, token
    await verifier.close()


_TIMES = st.one_of(
    st.none(),
    st.integers(min_value=-100, max_value=100).map(lambda offset: int(time.time()) + offset),
    st.floats(allow_nan=True),
    st.booleans(),
    st.just(f"{NOW + HOUR}"),
)
_DELETE = object()  # an override that removes the member
# Each drawn token is a valid one with a few members changed or removed, so that some pass and most do not.
_HEADER_CHANGES = st.dictionaries(
    st.sampled_from(["alg", "typ", "kid", "crit", "b64"]),
    st.sampled_from(["HS256", "HS512", "none", "RS256", "hs256", "", None, 3, ["b64"], False, _DELETE]),
    max_size=2,
)
_CLAIM_CHANGES = st.dictionaries(
    st.sampled_from(["sub", "exp", "iat", "nbf", "jti", "iss", "aud"]),
    st.one_of(
        _TIMES,
        st.sampled_from(["alice", "", 5, "t", "idp", "other", "gateway", ["gateway"], ["x", 1, "gateway"], []]),
        st.just(_DELETE),
    ),
    max_size=2,
)


def _changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **changes}
    return {name: value for name, value in merged.items() if value is not _DELETE}


def test_segments_outside_base64url_are_left_to_pyjwt() -> None:
    """Signed as they are, so that only the alphabet refuses them (the round trip of `_segment`)."""

    def signed(header_segment: str, payload_segment: str) -> str:
        signing_input = f"{header_segment}.{payload_segment}"
        return f"{signing_input}.{b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())}"

    header = b64(json.dumps({"alg": "HS256"}).encode())
    payload = b64(json.dumps({"sub": "alice", "exp": NOW + HOUR, "note": ">>>???"}).encode())
    assert "-" in payload and "_" in payload
    assert check().claims(signed(header, payload)) is not None
    standard = payload.replace("-", "+").replace("_", "/")  # the same bytes in standard base64
    for bad in (standard, payload[:8] + "====" + payload[8:], payload[:8] + "    " + payload[8:], payload + "\n"):
        assert check().claims(signed(header, bad)) is None, bad


@settings(max_examples=1000, deadline=None)
@given(
    header_changes=_HEADER_CHANGES,
    claim_changes=_CLAIM_CHANGES,
    alg=st.sampled_from(["HS256", "HS512"]),
    secret=st.sampled_from([SECRET, SECRET + "!"]),
    scoped=st.booleans(),
    cut=st.integers(min_value=-3, max_value=3),
)
def test_whatever_the_fast_path_accepts_pyjwt_accepts_with_the_same_claims(
    header_changes: dict[str, Any],
    claim_changes: dict[str, Any],
    alg: str,
    secret: str,
    scoped: bool,
    cut: int,
) -> None:
    claims = {"sub": "alice", "exp": NOW + HOUR, "iat": NOW, "iss": "idp", "aud": "gateway"}
    token = sign(_changed({"alg": alg, "typ": "JWT"}, header_changes), _changed(claims, claim_changes), secret, alg)
    if cut:  # a damaged token: characters dropped from, or added to, its end
        token = token[:cut] if cut < 0 else token + "A" * cut
    issuer, audience = ("idp", "gateway") if scoped else (None, None)
    accepted = check(["HS256", "HS512"], issuer, audience).claims(token)
    event("accepted" if accepted is not None else "left to PyJWT")
    if accepted is not None:
        assert accepted == pyjwt_claims(token, ["HS256", "HS512"], issuer, audience)
