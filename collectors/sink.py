"""Bounded publishing of market events to Redis.

The read loops never wait for Redis: they append to a bounded queue and go
on. One task drains the queue in pipelined batches. While Redis is slow or
down the queue fills, and then the oldest events are dropped and counted:
for market data the newest matter most, and memory stays bounded. A failed
batch goes back to the head of the queue (within the same bound), with every
batch sent after it, and is retried with capped, jittered backoff until
Redis answers again.

Each pipeline costs a wake-up and socket operations whatever it carries,
which at a few thousand events a second is most of the publishing cost. So
pipelines go at most every ``min_interval_s`` (an event after a quiet spell
is sent at once, and a steady stream waits at most that long to share a
pipeline with the events after it), and the task does not wait for a
pipeline's replies before sending the next: they are counted as they arrive,
up to `MarketPublisher.max_in_flight` pipelines at a time.
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
# Pipelines written on one connection before their replies: enough that a slow reply never
# stalls the next batch, few enough that a lost connection sends little again.
RESP_MAX_IN_FLIGHT: Final = 8


class MarketPublisher(Protocol):
    """What the sink publishes through: `RespPublisher` on a single Redis, `SerialPublisher` on a cluster."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    def send_market(self, events: list[AnyMarketEvent]) -> asyncio.Future[list[object]]:
        """Send a batch now; the future gets its replies (or fails: Redis refused it, or is unreachable)."""
        ...


class SerialPublisher:
    """redis-py's cluster pipeline as a `MarketPublisher`: one batch at a time, each bounded by `timeout_s`.

    One at a time, because two pipelines on a pool's connections could overtake each other.
    """

    connected = True  # redis-py connects (and reconnects) by itself

    def __init__(self, publisher: AsyncPublisher, *, timeout_s: float = 5.0) -> None:
        self._publisher = publisher
        self._timeout = timeout_s
        self._tasks: set[asyncio.Task[list[object]]] = set()

    async def connect(self) -> None:
        return None

    def send_market(self, events: list[AnyMarketEvent]) -> asyncio.Future[list[object]]:
        task = asyncio.create_task(self._publish(events))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _publish(self, events: list[AnyMarketEvent]) -> list[object]:
        # One deadline for the whole batch: the client has no per-reply timeout (see redis_client).
        async with asyncio.timeout(self._timeout):
            await self._publisher.publish_market(events)
        return []

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


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
        max_in_flight: int = 1,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or max_in_flight < 1:
            raise ValueError(f"max_queue, batch_size and max_in_flight must be positive: {max_queue}, {batch_size}")
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must not be negative, got {min_interval_s}")
        self._publisher = publisher
        self._queue: deque[AnyMarketEvent] = deque()
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._max_in_flight = max_in_flight
        # Batches sent whose replies are due, oldest first, with the future of their replies.
        self._in_flight: deque[tuple[list[AnyMarketEvent], asyncio.Future[list[object]]]] = deque()
        self._backoff = Backoff(initial=backoff_initial_s, maximum=backoff_max_s)
        self._wake = asyncio.Event()
        self._min_interval = min_interval_s
        self._last_batch = float("-inf")  # monotonic time the last pipeline was sent
        self._retry_at = float("-inf")  # after a failure: no batch before this monotonic time
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
            now = time.monotonic()
            if self._retry_at > now:  # backing off after a failure
                await asyncio.sleep(self._retry_at - now)
                continue
            wait = self._last_batch + self._min_interval - now
            if wait > 0 and len(self._queue) < self._batch_size:
                await asyncio.sleep(wait)
            await self._send_batch()

    async def drain(self, timeout_s: float) -> None:
        """Publish what is queued and wait for the replies, giving up after `timeout_s` (at shutdown).

        What is still unanswered then goes back to the queue, and the publisher is closed.
        """
        try:
            async with asyncio.timeout(timeout_s):
                while self._queue or self._in_flight:
                    failures = self.errors
                    if self._queue:
                        await self._send_batch()
                    else:
                        await asyncio.wait([self._in_flight[-1][1]])
                    if self.errors > failures:
                        break
        except TimeoutError:
            pass
        self._requeue_in_flight()

    async def _send_batch(self) -> None:
        """Send the next batch once the publisher is connected and has room; failures are counted and backed off."""
        publisher = self._publisher
        if self._in_flight and (len(self._in_flight) >= self._max_in_flight or not publisher.connected):
            # At the limit, or the connection is gone: wait until the oldest is answered (or failed and requeued).
            await asyncio.wait([self._in_flight[0][1]])
            return
        if not publisher.connected:
            try:
                await publisher.connect()
            except REDIS_ERRORS as exc:  # OSError includes the connect deadline's TimeoutError
                self.errors += 1
                self._down(exc)
                return
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
        self._last_batch = time.monotonic()
        try:
            replies = publisher.send_market(batch)
        except REDIS_ERRORS as exc:
            self.errors += 1
            self._requeue([batch])
            self._down(exc)
            return
        except Exception:  # a bug, not Redis: the batch may be what triggers it, so it goes
            self.errors += 1
            self.dropped += len(batch)
            logger.exception("cannot publish a batch; dropping it", extra={"events": len(batch)})
            self._retry_at = time.monotonic() + self._backoff.next()
            return
        self._in_flight.append((batch, replies))
        replies.add_done_callback(self._settled)

    def _settled(self, replies: asyncio.Future[list[object]]) -> None:
        """The replies of the oldest batch in flight, in the order sent (a batch requeued before is ignored)."""
        in_flight = self._in_flight
        if not in_flight or in_flight[0][1] is not replies:
            if not replies.cancelled():
                replies.exception()  # requeued already (drain gave up, or an earlier batch failed): seen
            return
        batch, _ = in_flight.popleft()
        error = replies.exception() if not replies.cancelled() else asyncio.CancelledError()
        if error is None:
            refusals = (reply for reply in replies.result() if isinstance(reply, redis.exceptions.ResponseError))
            error = next(refusals, None)
        if error is None:
            if not self.redis_up:
                self.redis_up = True
                logger.info("redis reachable again; publishing", extra={"queued": len(self._queue)})
            self._backoff.reset()
            self.published += len(batch)
            return
        self.errors += 1
        if isinstance(error, redis.exceptions.ResponseError):
            # Redis refused the commands themselves: retrying the same batch would fail forever.
            self.dropped += len(batch)
            logger.error("redis refused a batch; dropping it", extra={"events": len(batch), "error": repr(error)})
        elif isinstance(error, (*REDIS_ERRORS, asyncio.CancelledError)):
            in_flight.appendleft((batch, replies))
            self._requeue_in_flight()  # the batches sent after it too, so that order is kept
            self._down(error)
        else:  # a bug, not Redis: the batch may be what triggers it, so it goes
            self.dropped += len(batch)
            logger.error("cannot publish a batch; dropping it", extra={"events": len(batch)}, exc_info=error)
            self._retry_at = time.monotonic() + self._backoff.next()

    def _requeue_in_flight(self) -> None:
        self._requeue([batch for batch, _ in self._in_flight])
        self._in_flight.clear()

    def _requeue(self, batches: list[list[AnyMarketEvent]]) -> None:
        """Put failed batches back at the head, oldest first, keeping the bound by dropping their oldest events."""
        events = [event for batch in batches for event in batch]
        room = self._max_queue - len(self._queue)
        keep = events[max(0, len(events) - room) :]
        self.dropped += len(events) - len(keep)
        self._queue.extendleft(reversed(keep))
        if keep:
            self._wake.set()

    def _down(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._retry_at = now + self._backoff.next()
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


def market_publisher(url: str, *, latest_ttl_s: int) -> tuple[MarketPublisher, int, Callable[[], Awaitable[None]]]:
    """The sink's publisher for `url`, how many batches it may have in flight, and what closes it.

    A single Redis gets `RespPublisher` (pipelines built as bytes, on a connection of its own);
    a cluster redis-py's cluster pipeline, which routes each command to its slot's node.
    """
    target = RedisTarget.parse(url)
    if not target.cluster:
        lean = RespPublisher(target, latest_ttl_s=latest_ttl_s)

        async def close() -> None:
            lean.close()

        return lean, RESP_MAX_IN_FLIGHT, close
    client = redis_client(url, reply_timeout=False)  # each batch has a deadline of its own
    serial = SerialPublisher(AsyncPublisher(client, latest_ttl_s=latest_ttl_s))

    async def close_cluster() -> None:
        serial.close()
        await client.aclose()

    return serial, 1, close_cluster


def redis_client(url: str, *, timeout_s: float = 5.0, reply_timeout: bool = True) -> AsyncClient:
    """A client (single or cluster, by the URL) that fails fast when Redis is away, so the sink's backoff takes over.

    The sink's client has no per-reply timeout (``reply_timeout=False``): redis-py would arm
    one per command of a pipeline, a tenth of a busy collector's CPU; `SerialPublisher`
    bounds each batch as a whole instead.
    """
    return RedisTarget.parse(url).async_client(
        socket_timeout=timeout_s if reply_timeout else None,
        socket_connect_timeout=timeout_s,
        # One quick retry rides out a dropped pooled connection; longer outages are the sink's to handle.
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
    )
