"""The common HMAC token, accepted without PyJWT's per-call overhead; anything else is left to PyJWT.

PyJWT spends about 28 us on an HS256 token (measured alone, warm; more inside a
connect storm) of which the HMAC is 1.5: per call it merges option dicts and, above
all, re-examines the secret (PEM? DER? a JWK in JSON?) before using it. Here the
secret is examined once, by PyJWT itself, and a token whose every part has the plain
form is checked in about 7 us.

`HmacTokenCheck.claims` only ever *accepts*. Its conditions are a strict subset of
what `jwt.decode` accepts with the same settings (the same algorithm allowlist from
the configuration, never from the token; the same canonical base64url; the same JSON
parser; the same exp/nbf/iat/iss/aud/sub/jti rules): a token outside them, a bad
signature included, returns None and the caller asks PyJWT, so every refusal keeps
PyJWT's exception and message, hence the same client-facing code.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import jwt
from jwt.algorithms import HMACAlgorithm

from shared import base64url, stdjson

# The header members a plain token may carry; `crit`, `b64`, `jku`... send a token to PyJWT.
_PLAIN_HEADER: Final = frozenset({"alg", "typ", "kid"})
_HASHES: Final[dict[str, Callable[..., Any]]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
# Distinct token headers remembered (see `claims`); an issuer uses one or a few.
MAX_KNOWN_HEADERS: Final = 16


def _segment(text: bytes) -> bytes | None:
    """A base64url segment's bytes if it is in canonical unpadded form (as PyJWT demands), else None.

    The round trip is the whole check: the encoding gives back only the base64url alphabet, without
    `=` (PyJWT also takes padding: such tokens go to it), and only the zero-bit form of a last
    character. A byte outside the alphabet is dropped by the decoding, or read as standard base64
    (`+`, `/`), and never comes back.
    """
    if len(text) % 4 == 1:
        return None
    try:
        decoded = base64url.decode(text + b"=" * (-len(text) % 4))
    except binascii.Error:
        return None
    # Unused low bits must be zero: "eyJ9" and "eyJ-" must not both be the same header.
    if base64url.encode(decoded).rstrip(b"=") != text:
        return None
    return decoded


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        value = stdjson.loads(data)  # what PyJWT's parser reads from every byte (the standard library's)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _time_claim(claims: dict[str, Any], name: str) -> int | None:
    """An integer time claim; None if absent. Raises LookupError for any other form (PyJWT decides those)."""
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    if type(value) is not int:  # bool, float, a string of digits: rare forms, left to PyJWT
        raise LookupError(name)
    return value


class HmacTokenCheck:
    """HS256/384/512 tokens signed with the configured secret, for algorithms the configuration allows.

    Built only when PyJWT takes the secret as an HMAC key without complaint (not empty, not a PEM,
    DER or JWK, long enough for every allowed HMAC algorithm); otherwise `build` returns None.
    """

    def __init__(
        self,
        secret: bytes,
        algorithms: Sequence[str],
        *,
        leeway: float,
        issuer: str | None,
        audience: str | None,
    ) -> None:
        # Keyed once per algorithm; each token's MAC starts from a copy (no key setup, no digest lookup).
        self._macs = {alg: hmac.new(secret, digestmod=_HASHES[alg]) for alg in algorithms if alg in _HASHES}
        self._leeway = leeway
        self._issuer = issuer
        self._audience = audience
        # Header segments of tokens that passed, and their hash: an issuer's header is the same for all its tokens.
        self._known_headers: dict[bytes, hmac.HMAC] = {}

    @classmethod
    def build(
        cls,
        secret: str,
        algorithms: Sequence[str],
        *,
        leeway: float,
        issuer: str | None,
        audience: str | None,
    ) -> HmacTokenCheck | None:
        allowed = [alg for alg in algorithms if alg in _HASHES]
        if not secret or not allowed:
            return None
        try:
            key = HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
        except jwt.InvalidKeyError:
            return None  # PyJWT refuses every token with this secret; it says why, each time
        if any(HMACAlgorithm(_HASHES[alg]).check_key_length(key) for alg in allowed):
            return None  # PyJWT warns on every decode with a short key; it keeps doing so
        return cls(key, allowed, leeway=leeway, issuer=issuer, audience=audience)

    def claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid token of the plain form; None for anything else (ask PyJWT)."""
        if not token.isascii():
            return None
        raw = token.encode()
        parts = raw.split(b".")
        if len(parts) != 3:
            return None
        header_segment, payload_segment, signature_segment = parts
        keyed = self._known_headers.get(header_segment) or self._mac_for(header_segment)
        if keyed is None:
            return None
        signature = _segment(signature_segment)
        signing_input = raw[: len(header_segment) + 1 + len(payload_segment)]
        mac = keyed.copy()
        mac.update(signing_input)
        if signature is None or not hmac.compare_digest(signature, mac.digest()):
            return None
        payload = _segment(payload_segment)
        claims = None if payload is None else _object(payload)
        if claims is None or not self._valid(claims):
            return None
        if len(self._known_headers) < MAX_KNOWN_HEADERS:
            # Remembered only for a token that passed: whoever fills this holds the secret.
            self._known_headers[header_segment] = keyed
        return claims

    def _mac_for(self, header_segment: bytes) -> hmac.HMAC | None:
        """The keyed MAC of the header's algorithm if the header has the plain form and an allowed HMAC `alg`."""
        data = _segment(header_segment)
        header = None if data is None else _object(data)
        if header is None or not header.keys() <= _PLAIN_HEADER:
            return None
        if "kid" in header and not isinstance(header["kid"], str):  # null too: PyJWT refuses it
            return None
        alg = header.get("alg")
        return self._macs.get(alg) if isinstance(alg, str) else None

    def _valid(self, claims: dict[str, Any]) -> bool:
        """PyJWT's claim rules with the gateway's options (exp and sub required), for the plain forms."""
        now, leeway = time.time(), self._leeway
        try:
            exp, iat, nbf = _time_claim(claims, "exp"), _time_claim(claims, "iat"), _time_claim(claims, "nbf")
        except LookupError:
            return False
        in_time = (
            exp is not None
            and exp > now - leeway
            and (iat is None or iat <= now + leeway)
            and (nbf is None or nbf <= now + leeway)
        )
        ids = isinstance(claims.get("sub"), str) and ("jti" not in claims or isinstance(claims["jti"], str))
        issuer = self._issuer is None or claims.get("iss") == self._issuer
        return in_time and ids and issuer and self._audience_fits(claims.get("aud"))

    def _audience_fits(self, aud: object) -> bool:
        if self._audience is None:  # not checked at all (PyJWT's verify_aud is off)
            return True
        if isinstance(aud, list):
            return all(isinstance(item, str) for item in aud) and self._audience in aud
        return aud == self._audience
