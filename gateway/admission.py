"""Who may connect: node accepting, address under its rate, token valid and not revoked, user under cap."""

from __future__ import annotations

from typing import Any

from gateway.auth import Identity, TokenVerifier
from gateway.batching import Command, Query, SharedPipeline
from gateway.config import GatewayConfig
from gateway.errors import AuthCode, AuthError
from gateway.limits import KeyedBuckets, address_key
from gateway.presence import Presence
from gateway.protocol.http import Request
from shared import names
from shared.redis_target import REDIS_ERRORS


def bearer_token(handshake: Request) -> str | None:
    header = handshake.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def revocation(identity: Identity, user_mark: Any, token_mark: Any) -> Exception | None:
    """Why a verified token is refused, given its user's and its own revocation keys; None if it is not.

    A Redis error reading either key is returned as it is (the caller answers `unavailable`).
    """
    for reply in (user_mark, token_mark):
        if isinstance(reply, Exception):
            return reply
    issued_at = identity.claims.get("iat")
    issued_ms = float(issued_at) * 1000 if isinstance(issued_at, int | float) else 0.0
    if user_mark is not None and issued_ms <= float(user_mark):
        return AuthError(AuthCode.TOKEN_REVOKED, "this user's tokens issued before the revocation are refused")
    if token_mark is not None:
        return AuthError(AuthCode.TOKEN_REVOKED, "this token was revoked")
    return None


def revocation_query(identity: Identity) -> Query[None]:
    """The identity's revocation keys, read beside other connects' queries (`SharedPipeline`)."""
    token_id = identity.token_id
    commands: tuple[Command, ...] = (("GET", names.revoked_user(identity.user_id)),)
    if token_id is not None:
        commands += (("GET", names.revoked_token(token_id)),)

    def answer(replies: list[Any]) -> Exception | None:
        return revocation(identity, replies[0], replies[1] if token_id is not None else None)

    return Query(commands, answer)


class Admission:
    """The checks every connection (and every refreshed token) passes; each refusal is a coded AuthError.

    `admit` claims one of the user's connections across every node (`Presence.claim`); `left` gives it back.
    """

    def __init__(
        self, config: GatewayConfig, verifier: TokenVerifier, pipeline: SharedPipeline, presence: Presence
    ) -> None:
        self._config = config
        self._verifier = verifier
        self._pipeline = pipeline
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
        try:
            await self._pipeline.ask(revocation_query(identity))
        except AuthError:  # a PermissionError, so an OSError too: not one of Redis's
            raise
        except REDIS_ERRORS as exc:
            raise AuthError(AuthCode.UNAVAILABLE, "cannot check revocations; retry") from exc
        return identity

    def left(self, sid: str) -> None:
        """Give back the connection `admit` claimed: the socket closed, or never opened."""
        self._presence.release(sid)
