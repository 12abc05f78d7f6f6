"""A JWKS key cache: keys fetched over HTTP, refetched on an unknown `kid`.

Refetches are spaced by `min_refetch_s` so that a flood of tokens with
made-up `kid`s cannot turn the gateway into a load generator against the
identity provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import aiohttp
import jwt

from gateway.errors import AuthCode, AuthError

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S: Final = 5.0
MAX_JWKS_BYTES: Final = 1024 * 1024


class JwksCache:
    """Signing keys of one JWKS URL, by `kid`."""

    def __init__(self, url: str, *, max_age_s: float = 600.0, min_refetch_s: float = 10.0) -> None:
        self._url = url
        self._max_age_s = max_age_s
        self._min_refetch_s = min_refetch_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def holds(self, kid: str | None) -> bool:
        """Whether `key(kid)` answers without fetching: the set is fresh, and holds `kid` or was fetched too lately."""
        age = time.monotonic() - self._fetched_at
        return age <= self._max_age_s and (kid in self._keys or age <= self._min_refetch_s)

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key for `kid`, fetching the set when it is stale or lacks `kid`."""
        now = time.monotonic()
        stale = now - self._fetched_at > self._max_age_s
        if stale or (kid not in self._keys and now - self._fetched_at > self._min_refetch_s):
            async with self._lock:
                if time.monotonic() - self._fetched_at > self._min_refetch_s or stale:
                    await self._fetch()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        try:
            return self._keys[kid or ""]
        except KeyError:
            raise AuthError(AuthCode.TOKEN_INVALID, "token signed with an unknown key") from None

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S))
        try:
            async with self._session.get(self._url) as response:
                response.raise_for_status()
                body = await response.content.read(MAX_JWKS_BYTES)
            key_set = jwt.PyJWKSet.from_json(body.decode())
        except (aiohttp.ClientError, TimeoutError, jwt.PyJWKSetError, UnicodeDecodeError, ValueError) as exc:
            self._fetched_at = time.monotonic()
            logger.warning("jwks fetch failed", extra={"url": self._url, "error": str(exc)})
            if not self._keys:
                raise AuthError(AuthCode.UNAVAILABLE, "signing keys are unavailable") from exc
            return
        # The PyJWK itself, not its raw key: PyJWT then checks the token's alg against the key's.
        self._keys = {key.key_id or "": key for key in key_set.keys}
        self._fetched_at = time.monotonic()
        logger.info("jwks fetched", extra={"url": self._url, "keys": len(self._keys)})
