"""Who may connect: node accepting, address under its rate, token valid and not revoked, user under cap."""

from __future__ import annotations

from functools import partial
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


def connect_token(handshake: Request, auth: object) -> object:
    """The token a CONNECT brings: `auth.token`, else the handshake's Authorization: Bearer header."""
    token = auth.get("token") if isinstance(auth, dict) else None
    return bearer_token(handshake) if token is None else token


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


def revocation_commands(identity: Identity) -> tuple[Command, ...]:
    """The reads of the identity's revocation keys; `revocation` judges their replies."""
    commands: tuple[Command, ...] = (("GET", names.revoked_user(identity.user_id)),)
    if identity.token_id is not None:
        commands += (("GET", names.revoked_token(identity.token_id)),)
    return commands


def revocation_answer(identity: Identity, replies: list[Any]) -> Exception | None:
    """`revocation` of the replies to `revocation_commands(identity)`."""
    return revocation(identity, replies[0], replies[1] if identity.token_id is not None else None)


class Admission:
    """The checks every connection (and every refreshed token) passes; each refusal is a coded AuthError.

    A CONNECT passes `identify`, then `claim_query` (asked beside other CONNECTs' queries), which claims
    one of the user's connections across every node; `left` gives it back.
    """

    def __init__(
        self, config: GatewayConfig, verifier: TokenVerifier, pipeline: SharedPipeline, presence: Presence
    ) -> None:
        self._config = config
        self._verifier = verifier
        self._pipeline = pipeline
        self._presence = presence
        self._connect_buckets = KeyedBuckets(config.connect_rate_per_ip, config.connect_burst_per_ip)

    async def identify(self, handshake: Request, auth: object, *, accepting: bool) -> Identity:
        """The checks of a CONNECT that need no Redis: the node accepting, the address's rate, the token."""
        if not accepting:
            raise AuthError(AuthCode.UNAVAILABLE, "this node is shutting down")
        if not self._connect_buckets.take(address_key(handshake.remote)):
            raise AuthError(AuthCode.RATE_LIMITED, "too many connection attempts from this address; retry later")
        return await self._verifier.verify(connect_token(handshake, auth))

    def claim_query(self, sid: str, identity: Identity) -> Query[None]:
        """The checks of a CONNECT in Redis, in one query: the token not revoked, one of the user's connections claimed.

        Its answer is None once admitted, else the refusal (an AuthError). The claim is checked and taken
        atomically in Redis, so parallel CONNECTs on any nodes cannot all pass; `left` gives it back.
        """
        user_id = identity.user_id
        reads = revocation_commands(identity)
        claim = self._presence.claim_command(sid, user_id, self._config.max_connections_per_user)

        def answer(replies: list[Any]) -> AuthError | None:
            claimed = self._presence.claimed(sid, user_id, replies[-1])
            refusal = revocation_answer(identity, replies[:-1])
            if refusal is not None and claimed is True:
                self._presence.release(sid)  # taken by a token that is refused: given back at once
            if isinstance(refusal, AuthError):
                return refusal
            if refusal is not None:
                return AuthError(AuthCode.UNAVAILABLE, "cannot check revocations; retry")
            if isinstance(claimed, Exception):
                return AuthError(AuthCode.UNAVAILABLE, "cannot count the user's connections; retry")
            if not claimed:
                return AuthError(AuthCode.TOO_MANY_CONNECTIONS, "this user holds too many connections")
            return None

        return Query((*reads, claim), answer)

    async def verify(self, token: object) -> Identity:
        """A valid token that was not revoked."""
        identity = await self._verifier.verify(token)
        query = Query(revocation_commands(identity), partial(revocation_answer, identity))
        try:
            await self._pipeline.ask(query)
        except AuthError:  # a PermissionError, so an OSError too: not one of Redis's
            raise
        except REDIS_ERRORS as exc:
            raise AuthError(AuthCode.UNAVAILABLE, "cannot check revocations; retry") from exc
        return identity

    def left(self, sid: str) -> None:
        """Give back the connection `admit` claimed: the socket closed, or never opened."""
        self._presence.release(sid)
