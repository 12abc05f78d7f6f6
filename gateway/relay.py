"""The node's Redis subscriptions: exactly the channels its local clients need.

The first local interest in a channel subscribes it, the last one leaving
unsubscribes it, so adding nodes does not make every node process every
message. The connection is re-established with capped, jittered backoff and
every needed channel is subscribed again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Final

from gateway.pubsub import Message, PubSubConnection, PubSubError

logger = logging.getLogger(__name__)

BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
SUBSCRIBE_TIMEOUT_S: Final = 5.0
# Redis accepts any number of channels per SUBSCRIBE; batches keep each
# command (and Redis's work per command) small on a resubscribe.
SUBSCRIBE_BATCH: Final = 500


class Relay:
    """Reference-counted Redis channel subscriptions over one pub/sub connection."""

    def __init__(
        self,
        redis_url: str,
        on_messages: Callable[[list[Message]], None],
        *,
        on_state: Callable[[bool], None] | None = None,
        on_restored: Callable[[str], None] | None = None,
        permanent: tuple[str, ...] = (),
    ) -> None:
        self._url = redis_url
        self._on_messages = on_messages
        self._on_state = on_state or (lambda _ready: None)
        self._on_restored = on_restored or (lambda _channel: None)
        # Channels subscribed again after a reconnect and not yet confirmed:
        # their confirmation means "messages may have been missed meanwhile".
        self._restoring: set[str] = set()
        # Channels held for the node itself (the control channel) start counted.
        self._counts: dict[str, int] = dict.fromkeys(permanent, 1)
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._connection: PubSubConnection | None = None
        self._connected = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._connected.is_set()

    @property
    def confirmed(self) -> frozenset[str]:
        """The channels Redis confirmed on the current (or the last lost) connection."""
        return frozenset(self._confirmed)

    @property
    def channels(self) -> frozenset[str]:
        """The channels this node currently wants (a copy: for tests and diagnostics)."""
        return frozenset(self._counts)

    @property
    def channel_count(self) -> int:
        return len(self._counts)

    def wants(self, channel: str) -> bool:
        return channel in self._counts

    async def run(self) -> None:
        """Hold the connection until cancelled, reconnecting as needed."""
        delay = BACKOFF_INITIAL_S
        while True:
            connection = PubSubConnection(self._on_messages, self._subscribed)
            try:
                await connection.connect(self._url)
            except (PubSubError, TimeoutError) as exc:
                logger.warning("redis pub/sub connect failed", extra={"error": str(exc), "retry_in_s": round(delay, 2)})
            except Exception:
                logger.exception("redis pub/sub connect failed unexpectedly", extra={"retry_in_s": round(delay, 2)})
            else:
                delay = BACKOFF_INITIAL_S
                await self._hold(connection)
                continue
            connection.close()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _hold(self, connection: PubSubConnection) -> None:
        """Subscribe everything needed on a fresh connection, then wait for it to end."""
        self._connection = connection
        self._restoring = set(self._confirmed)
        self._confirmed.clear()
        channels = list(self._counts)
        for start in range(0, len(channels), SUBSCRIBE_BATCH):
            connection.subscribe(channels[start : start + SUBSCRIBE_BATCH])
        self._connected.set()
        self._on_state(True)
        logger.info("redis pub/sub connected", extra={"channels": len(channels)})
        try:
            error = await connection.closed
        finally:
            self._connection = None
            self._connected.clear()
            self._on_state(False)
            connection.close()
        logger.warning("redis pub/sub connection lost", extra={"error": str(error)})

    async def acquire(self, channel: str) -> None:
        """Count one local interest in `channel`; returns once Redis confirmed the subscription."""
        count = self._counts.get(channel, 0)
        self._counts[channel] = count + 1
        if channel in self._confirmed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        if count == 0 and self._connection is not None:
            self._connection.subscribe([channel])
        try:
            await asyncio.wait_for(asyncio.shield(waiter), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError:
            self.release(channel)
            raise
        finally:
            waiters = self._waiters.get(channel)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[channel]

    def release(self, channel: str) -> None:
        """Drop one local interest; the last one unsubscribes the channel."""
        count = self._counts.get(channel, 0)
        if count > 1:
            self._counts[channel] = count - 1
            return
        self._counts.pop(channel, None)
        self._confirmed.discard(channel)
        self._restoring.discard(channel)
        if count == 1 and self._connection is not None:
            self._connection.unsubscribe([channel])

    def _subscribed(self, channel_bytes: bytes) -> None:
        channel = channel_bytes.decode()
        if channel not in self._counts:
            return  # released while the SUBSCRIBE was in flight; its UNSUBSCRIBE follows
        self._confirmed.add(channel)
        if channel in self._restoring:
            self._restoring.discard(channel)
            self._on_restored(channel)
        for waiter in self._waiters.pop(channel, []):
            if not waiter.done():
                waiter.set_result(None)
