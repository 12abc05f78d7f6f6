"""REST calls to one exchange within its request-weight budget: one `RestBudget` per collector.

Every REST call of a collector (Binance book snapshots, candle history of
any exchange) spends weight from the same budget, so a start-up that
fetches a hundred books and backfills candles at once stays under the
exchange's limit instead of tripping it. The budget is a token bucket of
`weight_per_minute` refilled continuously; when the exchange reports the
weight it counted (Binance's ``X-MBX-USED-WEIGHT-1M``) the bucket never
holds more than what is left of it; a 429 or 418 pauses every caller for
the ``Retry-After`` the exchange asked. Bodies are read up to a bound:
a huge body is refused, never buffered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Final

import aiohttp

from collectors.book import CollectorError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
REQUEST_TIMEOUT_S: Final = 10.0
MAX_CONCURRENT: Final = 4
# When the exchange says "slow down" without saying for how long.
DEFAULT_RETRY_AFTER_S: Final = 30.0
MAX_RETRY_AFTER_S: Final = 600.0
USED_WEIGHT_HEADER: Final = "X-MBX-USED-WEIGHT-1M"


class RestError(CollectorError, ConnectionError):
    """A REST call failed: refused, rate limited, too large, or not a success status."""


class RestBudget:
    """Request weight per minute shared by every REST call of one collector, plus a concurrency cap."""

    def __init__(self, weight_per_minute: float, *, concurrency: int = MAX_CONCURRENT) -> None:
        if weight_per_minute <= 0:
            raise ValueError(f"weight_per_minute must be positive, got {weight_per_minute}")
        self.capacity = weight_per_minute
        self._tokens = weight_per_minute
        self._rate = weight_per_minute / 60.0
        self._updated = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(concurrency)
        self.spent = 0.0
        self.waited_s = 0.0
        self.throttled = 0  # 429/418 answers

    @property
    def available(self) -> float:
        self._refill(time.monotonic())
        return self._tokens

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    async def spend(self, weight: float) -> None:
        """Wait until `weight` fits the budget (and no pause is on), then take it. Callers queue in order."""
        weight = min(weight, self.capacity)
        async with self._lock:
            while True:
                now = time.monotonic()
                self._refill(now)
                wait = max(self._paused_until - now, (weight - self._tokens) / self._rate)
                if wait <= 0:
                    self._tokens -= weight
                    self.spent += weight
                    return
                self.waited_s += wait
                await asyncio.sleep(wait)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Align with the weight the exchange says it counted this minute."""
        used = headers.get(USED_WEIGHT_HEADER)
        if used is not None and used.isdigit():
            self._refill(time.monotonic())
            self._tokens = min(self._tokens, self.capacity - int(used))

    def pause(self, seconds: float) -> None:
        self.throttled += 1
        self._paused_until = max(self._paused_until, time.monotonic() + min(seconds, MAX_RETRY_AFTER_S))

    async def get(
        self,
        session: aiohttp.ClientSession,
        url: str,
        params: Mapping[str, str],
        *,
        weight: float,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> bytes:
        """GET `url` within the budget; the body, or RestError (status, throttling, size)."""
        await self.spend(weight)
        async with self._slots:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            async with session.get(url, params=params, timeout=timeout) as response:
                self.observe(response.headers)
                if response.status in (418, 429):
                    retry = response.headers.get("Retry-After", "")
                    self.pause(float(retry) if retry.isdigit() else DEFAULT_RETRY_AFTER_S)
                    raise RestError(f"{url}: rate limited ({response.status}); paused")
                if response.status != 200:
                    raise RestError(f"{url}: status {response.status}")
                if (response.content_length or 0) > max_bytes:
                    raise RestError(f"{url}: a body of {response.content_length} bytes is over {max_bytes}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > max_bytes:
                        raise RestError(f"{url}: the body is over {max_bytes} bytes")
                return bytes(body)
