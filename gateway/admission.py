"""Who may connect: node accepting, address under its rate, token valid and not revoked, user under cap."""

from __future__ import annotations

from gateway.auth import Identity, TokenVerifier
from gateway.config import GatewayConfig
from gateway.errors import AuthCode, AuthError
from gateway.limits import KeyedBuckets, address_key
from gateway.presence import Presence
from gateway.protocol.http import Request
from shared import names
from shared.redis_target import REDIS_ERRORS, AsyncClient, get_many


def bearer_token(handshake: Request) -> str | None:
    header = handshake.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Admission:
    """The checks every connection (and every refreshed token) passes; each refusal is a coded AuthError.

    `admit` claims one of the user's connections across every node (`Presence.claim`); `left` gives it back.
    """

    def __init__(self, config: GatewayConfig, verifier: TokenVerifier, client: AsyncClient, presence: Presence) -> None:
        self._config = config
        self._verifier = verifier
        self._redis = client
        self._presence = presence
        self._connect_buckets = KeyedBuckets(config.connect_rate_per_ip, config.connect_burst_per_ip)

    async def admit(self, sid: str, handshake: Request, auth: object, *, accepting: bool) -> Identity:
        if not accepting:
            raise AuthError(AuthCode.UNAVAILABLE, "this node is shutting down")
        if not self._connect_buckets.take(address_key(handshake.remote)):
            raise AuthError(AuthCode.RATE_LIMITED, "too many connection attempts from this address; retry later")
        token = auth.get("token") if isinstance(auth, dict) else None
        identity = await self.verify(bearer_token(handshake) if token is None else token)
        # Checked and taken atomically in Redis, so parallel CONNECTs on any nodes cannot all pass the check.
        try:
            claimed = await self._presence.claim(sid, identity.user_id, self._config.max_connections_per_user)
        except REDIS_ERRORS as exc:
            raise AuthError(AuthCode.UNAVAILABLE, "cannot count the user's connections; retry") from exc
        if not claimed:
            raise AuthError(AuthCode.TOO_MANY_CONNECTIONS, "this user holds too many connections")
        return identity

    async def verify(self, token: object) -> Identity:
        """A valid token that was not revoked."""
        identity = await self._verifier.verify(token)
        keys = [names.revoked_user(identity.user_id)]
        if identity.token_id is not None:
            keys.append(names.revoked_token(identity.token_id))
        try:
            values = await get_many(self._redis, keys)
        except REDIS_ERRORS as exc:
            raise AuthError(AuthCode.UNAVAILABLE, "cannot check revocations; retry") from exc
        issued_at = identity.claims.get("iat")
        issued_ms = float(issued_at) * 1000 if isinstance(issued_at, int | float) else 0.0
        if values[0] is not None and issued_ms <= float(values[0]):
            raise AuthError(AuthCode.TOKEN_REVOKED, "this user's tokens issued before the revocation are refused")
        if len(values) > 1 and values[1] is not None:
            raise AuthError(AuthCode.TOKEN_REVOKED, "this token was revoked")
        return identity

    def left(self, sid: str) -> None:
        """Give back the connection `admit` claimed: the socket closed, or never opened."""
        self._presence.release(sid)
