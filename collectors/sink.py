"""Bounded publishing of market events to Redis.

The read loops never wait for Redis: they append to a bounded queue and go
on. One task drains the queue in pipelined batches (`MarketPublisher.
publish_market`). While Redis is slow or down the queue fills, and then
the oldest events are dropped and counted: for market data the newest
matter most, and memory stays bounded. A failed batch goes back to the head
of the queue (within the same bound) and is retried with capped, jittered
backoff until Redis answers again.

Each pipeline costs two socket operations and a wake-up whatever it carries,
which at a few thousand events a second is most of the publishing cost. So
pipelines go at most every ``min_interval_s``: an event after a quiet spell
is sent at once, and a steady stream waits at most that long to share a
pipeline with the events after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from collectors.feed.backoff import Backoff
from shared.events import AnyMarketEvent
from shared.publisher import AsyncPublisher, RespPublisher
from shared.redis_target import REDIS_ERRORS, AsyncClient, RedisTarget
from shared.status import SinkStatus

logger = logging.getLogger(__name__)

# While Redis is down, one warning per interval instead of one per retry.
ERROR_LOG_INTERVAL_S: Final = 30.0


class MarketPublisher(Protocol):
    """`shared.publisher.RespPublisher` on a single Redis, `AsyncPublisher` on a cluster."""

    async def publish_market(self, events: list[AnyMarketEvent]) -> None: ...


class Sink:
    """A bounded queue of events and the task that publishes them."""

    def __init__(
        self,
        publisher: MarketPublisher,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        min_interval_s: float = 0.0,
        timeout_s: float = 5.0,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError(f"max_queue and batch_size must be positive, got {max_queue}, {batch_size}")
        if min_interval_s < 0 or timeout_s <= 0:
            raise ValueError(f"min_interval_s must not be negative, timeout_s positive: {min_interval_s}, {timeout_s}")
        self._publisher = publisher
        self._queue: deque[AnyMarketEvent] = deque()
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._backoff = Backoff(initial=backoff_initial_s, maximum=backoff_max_s)
        self._wake = asyncio.Event()
        self._min_interval = min_interval_s
        self._timeout = timeout_s
        self._last_batch = float("-inf")  # monotonic time the last pipeline was sent
        self.redis_up = True
        self.published = 0
        self.dropped = 0
        self.errors = 0
        self._error_logged = float("-inf")

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, event: AnyMarketEvent) -> None:
        """Queue one event; when full, the oldest queued event is dropped."""
        queue = self._queue
        if len(queue) >= self._max_queue:
            queue.popleft()
            self.dropped += 1
        queue.append(event)
        self._wake.set()

    def status(self) -> SinkStatus:
        return SinkStatus(
            redis_up=self.redis_up,
            queued=len(self._queue),
            published=self.published,
            dropped=self.dropped,
            errors=self.errors,
        )

    async def run(self) -> None:
        """Publish until cancelled."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._last_batch + self._min_interval - time.monotonic()
            if wait > 0 and len(self._queue) < self._batch_size:
                await asyncio.sleep(wait)
            if not await self._publish_batch():
                await asyncio.sleep(self._backoff.next())

    async def drain(self, timeout_s: float) -> None:
        """Publish what is queued, giving up after `timeout_s` (at shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    if not await self._publish_batch():
                        return
            except TimeoutError:
                return

    async def _publish_batch(self) -> bool:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
        self._last_batch = time.monotonic()
        try:
            # One deadline for the whole batch: the client has no per-reply timeout (see redis_client).
            async with asyncio.timeout(self._timeout):
                await self._publisher.publish_market(batch)
        except redis.exceptions.ResponseError:
            # Redis refused the commands themselves: retrying the same batch would fail forever.
            self.errors += 1
            self.dropped += len(batch)
            logger.exception("redis refused a batch; dropping it", extra={"events": len(batch)})
            return True
        except REDIS_ERRORS as exc:  # OSError includes the batch deadline's TimeoutError
            self.errors += 1
            self._requeue(batch)
            self._down(exc)
            return False
        except Exception:  # a bug, not Redis: the batch may be what triggers it, so it goes
            self.errors += 1
            self.dropped += len(batch)
            logger.exception("cannot publish a batch; dropping it", extra={"events": len(batch)})
            return False
        except BaseException:
            self._requeue(batch)  # cancelled mid-publish: keep the batch for `drain`
            raise
        if not self.redis_up:
            self.redis_up = True
            logger.info("redis reachable again; publishing", extra={"queued": len(queue)})
        self._backoff.reset()
        self.published += len(batch)
        honour_cancellation()
        return True

    def _requeue(self, batch: list[AnyMarketEvent]) -> None:
        """Put a failed batch back at the head, keeping the bound by dropping its oldest events."""
        room = self._max_queue - len(self._queue)
        keep = batch[max(0, len(batch) - room) :]
        self.dropped += len(batch) - len(keep)
        self._queue.extendleft(reversed(keep))

    def _down(self, exc: Exception) -> None:
        now = time.monotonic()
        if self.redis_up or now - self._error_logged >= ERROR_LOG_INTERVAL_S:
            self._error_logged = now
            logger.warning(
                "cannot publish to redis; queueing (oldest dropped when full)",
                extra={"error": repr(exc), "queued": len(self._queue), "dropped": self.dropped},
            )
        self.redis_up = False


def honour_cancellation() -> None:
    """Raise CancelledError if this task was cancelled during an await that returned anyway.

    redis-py's pipeline can absorb a cancellation that lands while it hands its
    connection back to the pool, and return normally; a loop that went on
    would then never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def market_publisher(url: str, *, latest_ttl_s: int) -> tuple[MarketPublisher, Callable[[], Awaitable[None]]]:
    """The sink's publisher for `url` and what closes it.

    A single Redis gets `RespPublisher` (pipelines built as bytes, on a connection of its own);
    a cluster redis-py's cluster pipeline, which routes each command to its slot's node.
    """
    target = RedisTarget.parse(url)
    if not target.cluster:
        lean = RespPublisher(target, latest_ttl_s=latest_ttl_s)

        async def close() -> None:
            lean.close()

        return lean, close
    client = redis_client(url, reply_timeout=False)  # the sink bounds its batches
    return AsyncPublisher(client, latest_ttl_s=latest_ttl_s), client.aclose


def redis_client(url: str, *, timeout_s: float = 5.0, reply_timeout: bool = True) -> AsyncClient:
    """A client (single or cluster, by the URL) that fails fast when Redis is away, so the sink's backoff takes over.

    The sink's client has no per-reply timeout (``reply_timeout=False``): redis-py would arm
    one per command of a pipeline, a tenth of a busy collector's CPU; `Sink` bounds each
    batch as a whole instead.
    """
    return RedisTarget.parse(url).async_client(
        socket_timeout=timeout_s if reply_timeout else None,
        socket_connect_timeout=timeout_s,
        # One quick retry rides out a dropped pooled connection; longer outages are the sink's to handle.
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
    )
