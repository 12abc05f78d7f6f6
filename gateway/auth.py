"""JWT verification: turns a client's token into an Identity or a coded AuthError."""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt

from gateway.config import GatewayConfig
from gateway.errors import AuthCode, AuthError
from gateway.hmac_tokens import HmacTokenCheck
from gateway.jwks import JwksCache

MAX_TOKEN_BYTES: Final = 8192
MAX_TEAMS: Final = 100
MAX_VERIFIED_TOKENS: Final = 10_000
# Same alphabet as shared.events.Ident: ids become Redis channel names.
_IDENT_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")

# PyJWT's exceptions, most specific first, mapped to the client-facing codes.
_ERROR_CODES: Final[tuple[tuple[type[Exception], AuthCode], ...]] = (
    (jwt.ExpiredSignatureError, AuthCode.TOKEN_EXPIRED),
    (jwt.ImmatureSignatureError, AuthCode.TOKEN_NOT_YET_VALID),
    (jwt.InvalidIssuerError, AuthCode.CLAIMS_INVALID),
    (jwt.InvalidAudienceError, AuthCode.CLAIMS_INVALID),
    (jwt.MissingRequiredClaimError, AuthCode.CLAIMS_INVALID),
    (jwt.InvalidIssuedAtError, AuthCode.CLAIMS_INVALID),
    (jwt.InvalidSignatureError, AuthCode.TOKEN_INVALID),
    (jwt.InvalidAlgorithmError, AuthCode.TOKEN_INVALID),
    (jwt.InvalidKeyError, AuthCode.TOKEN_INVALID),
    (jwt.DecodeError, AuthCode.TOKEN_MALFORMED),
    (jwt.InvalidTokenError, AuthCode.TOKEN_INVALID),
)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for."""

    user_id: str
    teams: tuple[str, ...]
    expires_at: float
    token_id: str | None
    claims: Mapping[str, Any]


def _load_public_key(value: str) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    return Path(value).read_text()


class TokenVerifier:
    """Verifies HS256, RS256 or ES256 tokens against a secret, a public key or a JWKS."""

    def __init__(self, config: GatewayConfig) -> None:
        self._secret = config.jwt_secret
        self._public_key = _load_public_key(config.jwt_public_key) if config.jwt_public_key else ""
        self._jwks = JwksCache(config.jwks_url) if config.jwks_url else None
        self._algorithms = config.jwt_algorithms or (["HS256"] if self._secret else ["RS256", "ES256"])
        self._issuer = config.jwt_issuer or None
        self._audience = config.jwt_audience or None
        self._leeway = config.jwt_leeway_s
        self._teams_claim = config.teams_claim
        # The common HS256 token without PyJWT's per-call overhead; whatever it does not accept, PyJWT decides.
        self._hmac = (
            None
            if self._jwks is not None
            else HmacTokenCheck.build(
                self._secret, self._algorithms, leeway=self._leeway, issuer=self._issuer, audience=self._audience
            )
        )
        # Tokens already verified, until they expire: clients reconnecting with the token they had (a node
        # going away sends thousands at once) cost a dict lookup, not a signature check. Revocation is
        # checked on every connect all the same (admission).
        self._verified: OrderedDict[str, Identity] = OrderedDict()

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()

    async def verify(self, token: object) -> Identity:
        if token is None or token == "":
            raise AuthError(AuthCode.TOKEN_MISSING, "no token: pass auth.token or an Authorization: Bearer header")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
            raise AuthError(AuthCode.TOKEN_MALFORMED, "the token must be a JWT string")
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at + self._leeway > time.time():
                self._verified.move_to_end(token)
                return cached
            del self._verified[token]
        identity = await self._decode(token)
        self._verified[token] = identity
        if len(self._verified) > MAX_VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return identity

    def needs_fetch(self, token: object) -> bool:
        """Whether verifying `token` would first fetch the signing keys (a JWKS without its `kid`, or stale)."""
        if self._jwks is None or not isinstance(token, str) or token in self._verified:
            return False
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            return False  # refused at once
        return not self._jwks.holds(kid if isinstance(kid, str) else None)

    async def _decode(self, token: str) -> Identity:
        """Check the signature and the claims (the HMAC check, else PyJWT), and read the identity."""
        if self._hmac is not None:
            claims = self._hmac.claims(token)
            if claims is not None:
                return self._identity(claims)
        key = await self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                leeway=self._leeway,
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:  # InvalidKeyError, for one, is not an InvalidTokenError
            code = next((code for kind, code in _ERROR_CODES if isinstance(exc, kind)), AuthCode.TOKEN_INVALID)
            raise AuthError(code, str(exc)) from None
        except (ValueError, TypeError) as exc:
            # The key cannot verify this token's algorithm at all (a secret read as a PEM, an RSA key for ES256).
            raise AuthError(AuthCode.TOKEN_INVALID, f"the token's algorithm does not fit the key: {exc}") from None
        return self._identity(claims)

    async def _key_for(self, token: str) -> Any:
        if self._jwks is None:  # one key: the header is read once, by the decode that checks it
            return self._secret or self._public_key
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError(AuthCode.TOKEN_MALFORMED, "the token is not a JWT") from None
        kid = header.get("kid")
        return await self._jwks.key(kid if isinstance(kid, str) else None)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        user_id = claims["sub"]
        if not isinstance(user_id, str) or not _IDENT_RE.fullmatch(user_id):
            raise AuthError(AuthCode.CLAIMS_INVALID, "sub must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
        raw_teams = claims.get(self._teams_claim, [])
        if isinstance(raw_teams, str):
            raw_teams = [part.strip() for part in raw_teams.split(",") if part.strip()]
        if (
            not isinstance(raw_teams, list)
            or len(raw_teams) > MAX_TEAMS
            or not all(isinstance(team, str) and _IDENT_RE.fullmatch(team) for team in raw_teams)
        ):
            raise AuthError(
                AuthCode.CLAIMS_INVALID, f"{self._teams_claim} must be a list of at most {MAX_TEAMS} team ids"
            )
        token_id = claims.get("jti")
        return Identity(
            user_id=user_id,
            teams=tuple(dict.fromkeys(raw_teams)),
            expires_at=float(claims["exp"]),
            token_id=token_id if isinstance(token_id, str) else None,
            claims=claims,
        )
