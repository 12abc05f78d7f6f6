"""The node's Redis subscriptions: exactly the channels its local clients need.

The first local interest in a channel subscribes it, the last one leaving
unsubscribes it, so adding nodes does not make every node process every
message.

On a single Redis there is one pub/sub connection (SUBSCRIBE). On a Redis
Cluster there is one sharded pub/sub connection (SSUBSCRIBE) per master, so
a node holds as many pub/sub connections as the cluster has masters, however
many channels it needs: each channel is subscribed on the master owning its
slot. The slot map is read with CLUSTER SLOTS at start, every POLL_S, and at
once when a connection is lost, a master refuses a subscription (MOVED), or
unsubscribes a channel by itself (its slot migrated away); every channel
whose owner changed is then subscribed on its new owner.

A channel confirmed on a connection that was lost (or moved) is "lost":
`on_lost` lets recovery hold its live records, and once it is confirmed
again `on_restored` lets recovery read what was published meanwhile from the
streams. Connections are re-established with capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import redis.asyncio
import redis.exceptions

from gateway.pubsub import Message, PubSubConnection, PubSubError
from shared.redis_target import REDIS_ERRORS, SLOTS, Endpoint, RedisTarget, parse_slots, slot_of

logger = logging.getLogger(__name__)

BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
SUBSCRIBE_TIMEOUT_S: Final = 5.0
# Redis accepts any number of channels per SUBSCRIBE; batches keep each
# command (and Redis's work per command) small on a resubscribe.
SUBSCRIBE_BATCH: Final = 500
# The slot map is read again this often even when nothing went wrong (a failover
# that kept every connection up), and at most once per REFRESH_MIN_S when asked.
POLL_S: Final = 5.0
REFRESH_MIN_S: Final = 0.1
SLOTS_TIMEOUT_S: Final = 2.0
MAX_SLOT_SOURCES: Final = 16  # nodes asked for the slot map per refresh, at most


@dataclass(eq=False, slots=True)
class _Link:
    """One pub/sub connection to one server (a single Redis, or one cluster master)."""

    endpoint: Endpoint
    connection: PubSubConnection | None = None
    task: asyncio.Task[None] | None = None
    # Channels an SSUBSCRIBE / SUBSCRIBE was sent for on the current connection and not taken back.
    subscribed: set[str] = field(default_factory=set)
    # Our own SUNSUBSCRIBEs in flight: their replies are not the unsolicited kind.
    unsubscribing: Counter[str] = field(default_factory=Counter)


@dataclass(eq=False, slots=True)
class _Acquisition:
    """One `acquire` call waiting for its channels' confirmations; `woken` is done once all came (or time is up)."""

    woken: asyncio.Future[None]
    channels: set[str] = field(default_factory=set)  # not confirmed when the call began
    confirmed: set[str] = field(default_factory=set)

    def confirm(self, channel: str) -> None:
        self.confirmed.add(channel)
        if len(self.confirmed) == len(self.channels):
            self.wake()

    def wake(self) -> None:
        if not self.woken.done():
            self.woken.set_result(None)


class Relay:
    """Reference-counted Redis channel subscriptions over a bounded set of pub/sub connections."""

    def __init__(
        self,
        target: RedisTarget,
        on_messages: Callable[[list[Message]], None],
        *,
        on_state: Callable[[bool], None] | None = None,
        on_lost: Callable[[list[str]], None] | None = None,
        on_restored: Callable[[str], None] | None = None,
        permanent: tuple[str, ...] = (),
    ) -> None:
        self._target = target
        self._on_messages = on_messages
        self._on_state = on_state or (lambda _ready: None)
        self._on_lost = on_lost or (lambda _channels: None)
        self._on_restored = on_restored or (lambda _channel: None)
        # Channels subscribed again after their connection was lost and not yet confirmed:
        # their confirmation means "messages may have been missed meanwhile".
        self._restoring: set[str] = set()
        # Channels held for the node itself (the control channel) start counted.
        self._counts: dict[str, int] = dict.fromkeys(permanent, 1)
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[_Acquisition]] = {}  # acquisitions waiting for each channel
        # Where each wanted channel is (to be) subscribed; absent while its slot has no known owner.
        self._owners: dict[str, Endpoint] = {}
        self._links: dict[Endpoint, _Link] = {}
        # Slot -> master (cluster); None until the slot map was read.
        self._slot_owners: list[Endpoint | None] | None = None
        self._refresh = asyncio.Event()
        self._ready = False
        self._group: asyncio.TaskGroup | None = None

    @property
    def ready(self) -> bool:
        """Whether every pub/sub connection the node needs is up (and, in a cluster, the slot map known)."""
        return self._ready

    @property
    def confirmed(self) -> frozenset[str]:
        """The channels Redis confirmed on their current connection."""
        return frozenset(self._confirmed)

    @property
    def channels(self) -> frozenset[str]:
        """The channels this node currently wants (a copy: for tests and diagnostics)."""
        return frozenset(self._counts)

    @property
    def channel_count(self) -> int:
        return len(self._counts)

    @property
    def connections(self) -> int:
        """Pub/sub connections held now: at most one per cluster master (one on a single Redis)."""
        return sum(1 for link in self._links.values() if link.connection is not None)

    def wants(self, channel: str) -> bool:
        return channel in self._counts

    async def run(self) -> None:
        """Hold the connections until cancelled, following the cluster's slot map."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                if not self._target.cluster:
                    self._place(self._counts)
                    await asyncio.Event().wait()  # the one link's task does the work
                await self._follow_slots()
            finally:
                self._group = None
                for link in self._links.values():
                    if link.task is not None:
                        link.task.cancel()

    # The cluster's slot map

    async def _follow_slots(self) -> None:
        delay = BACKOFF_INITIAL_S
        while True:
            self._refresh.clear()
            started = time.monotonic()
            try:
                await self._read_slots()
            except Exception:
                logger.exception("reading the cluster slot map failed")
            if self._slot_owners is None:  # no node answered yet: retry with backoff
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            delay = BACKOFF_INITIAL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh.wait(), POLL_S)
            await asyncio.sleep(max(0.0, REFRESH_MIN_S - (time.monotonic() - started)))

    def request_refresh(self) -> None:
        """Read the slot map again soon (a connection lost, a MOVED, a slot migrated away)."""
        if self._target.cluster:
            self._refresh.set()

    async def _read_slots(self) -> None:
        """Ask known masters, then the seeds, for the slot map; apply the first complete answer."""
        sources = list(dict.fromkeys([*self._links, *self._target.seeds]))[:MAX_SLOT_SOURCES]
        for endpoint in sources:
            client = redis.asyncio.Redis.from_url(
                self._target.node_url(endpoint), socket_timeout=SLOTS_TIMEOUT_S, socket_connect_timeout=SLOTS_TIMEOUT_S
            )
            try:
                reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except REDIS_ERRORS as exc:
                logger.debug("no slot map from a node", extra={"node": str(endpoint), "error": str(exc)})
                continue
            finally:
                await client.aclose()
            ranges = parse_slots(reply, endpoint.host)
            if sum(r.last - r.first + 1 for r in ranges) == SLOTS:
                owners: list[Endpoint | None] = [None] * SLOTS
                for slot_range in ranges:
                    owners[slot_range.first : slot_range.last + 1] = [slot_range.owner] * (
                        slot_range.last - slot_range.first + 1
                    )
                self._apply_slots(owners)
                return
        logger.warning("no node gave a complete slot map", extra={"asked": len(sources)})

    def _apply_slots(self, owners: list[Endpoint | None]) -> None:
        """Adopt a slot map: move channels whose owner changed, open and close links to match the masters."""
        changed = self._slot_owners != owners
        self._slot_owners = owners
        masters = {owner for owner in owners if owner is not None}
        for endpoint in masters:
            self._link(endpoint)
        if changed:
            logger.info("cluster slot map", extra={"masters": sorted(str(m) for m in masters)})
        moved = [c for c in self._counts if self._owners.get(c) != self._route(c)]
        for channel in moved:
            self._unplace(channel)
        # A channel a master dropped by itself, whose owner did not change, is subscribed there again.
        stray = [c for c in self._counts if c not in moved and c in self._owners]
        self._place([*moved, *(c for c in stray if not self._subscribed_at(c))])
        for endpoint, link in list(self._links.items()):
            if endpoint not in masters:
                self._close_link(link)
        self._update_state()

    def _route(self, channel: str) -> Endpoint | None:
        if not self._target.cluster:
            return self._target.seeds[0]
        if self._slot_owners is None:
            return None
        return self._slot_owners[slot_of(channel)]

    def _subscribed_at(self, channel: str) -> bool:
        link = self._links.get(self._owners[channel])
        return link is not None and (channel in link.subscribed or link.connection is None)

    # Links

    def _link(self, endpoint: Endpoint) -> _Link:
        link = self._links.get(endpoint)
        if link is None:
            link = self._links[endpoint] = _Link(endpoint)
        if link.task is None and self._group is not None:
            link.task = self._group.create_task(self._hold(link))
        return link

    def _close_link(self, link: _Link) -> None:
        """A node that is no longer a master: its channels were moved; its connection goes."""
        del self._links[link.endpoint]
        if link.task is not None:
            link.task.cancel()
        if link.connection is not None:
            link.connection.close()

    async def _hold(self, link: _Link) -> None:
        """Keep `link` connected, subscribing its channels on every fresh connection."""
        delay = BACKOFF_INITIAL_S
        while True:
            connection = PubSubConnection(
                self._on_messages,
                partial(self._subscribed, link),
                partial(self._unsubscribed, link),
                sharded=self._target.cluster,
            )
            try:
                await connection.connect(self._target, link.endpoint)
            except (PubSubError, TimeoutError) as exc:
                logger.warning(
                    "redis pub/sub connect failed",
                    extra={"node": str(link.endpoint), "error": str(exc), "retry_in_s": round(delay, 2)},
                )
            except Exception:
                logger.exception("redis pub/sub connect failed unexpectedly", extra={"node": str(link.endpoint)})
            else:
                delay = BACKOFF_INITIAL_S
                await self._serve(link, connection)
            connection.close()
            self.request_refresh()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _serve(self, link: _Link, connection: PubSubConnection) -> None:
        link.connection = connection
        link.subscribed.clear()
        link.unsubscribing.clear()
        channels = [c for c, owner in self._owners.items() if owner == link.endpoint]
        self._subscribe(link, channels)
        self._update_state()
        logger.info("redis pub/sub connected", extra={"node": str(link.endpoint), "channels": len(channels)})
        try:
            error = await connection.closed
        finally:
            link.connection = None
            link.subscribed.clear()
            self._lose([c for c, owner in self._owners.items() if owner == link.endpoint])
            self._update_state()
            connection.close()
        logger.warning("redis pub/sub connection lost", extra={"node": str(link.endpoint), "error": str(error)})

    def _update_state(self) -> None:
        links = self._links.values()
        ready = bool(links) and all(link.connection is not None for link in links)
        if self._target.cluster:
            ready = ready and self._slot_owners is not None and all(c in self._owners for c in self._counts)
        if ready != self._ready:
            self._ready = ready
            self._on_state(ready)

    # Channels

    def _place(self, channels: Iterable[str]) -> None:
        """Subscribe `channels` on the masters owning their slots (or wait for the slot map)."""
        by_link: dict[Endpoint, list[str]] = {}
        for channel in channels:
            endpoint = self._route(channel)
            if endpoint is None:
                continue
            self._owners[channel] = endpoint
            by_link.setdefault(endpoint, []).append(channel)
        for endpoint, placed in by_link.items():
            self._subscribe(self._link(endpoint), placed)

    def _unplace(self, channel: str) -> None:
        """Take a channel off its current link (its slot moved, or nobody wants it)."""
        endpoint = self._owners.pop(channel, None)
        link = self._links.get(endpoint) if endpoint is not None else None
        if link is not None and channel in link.subscribed and link.connection is not None:
            link.subscribed.discard(channel)
            if self._target.cluster:
                link.unsubscribing[channel] += 1
            link.connection.unsubscribe([channel])
        self._lose([channel])

    def _subscribe(self, link: _Link, channels: list[str]) -> None:
        connection = link.connection
        if connection is None or not channels:
            return
        link.subscribed.update(channels)
        if not self._target.cluster:
            for start in range(0, len(channels), SUBSCRIBE_BATCH):
                connection.subscribe(channels[start : start + SUBSCRIBE_BATCH])
            return
        by_slot: dict[int, list[str]] = {}  # one SSUBSCRIBE names channels of one slot only
        for channel in channels:
            by_slot.setdefault(slot_of(channel), []).append(channel)
        for grouped in by_slot.values():
            for start in range(0, len(grouped), SUBSCRIBE_BATCH):
                connection.subscribe(grouped[start : start + SUBSCRIBE_BATCH])

    def _lose(self, channels: list[str]) -> None:
        """Channels no longer confirmed anywhere: recovery holds them until they are restored."""
        lost = [c for c in channels if c in self._confirmed]
        for channel in lost:
            self._confirmed.discard(channel)
            if channel in self._counts:
                self._restoring.add(channel)
        if lost:
            self._on_lost(lost)

    async def acquire(self, channels: list[str]) -> set[str]:
        """Count one local interest in each channel; returns those Redis confirmed within SUBSCRIBE_TIMEOUT_S.

        The rest are released before this returns, and all of them if the caller is cancelled. One
        wait and one timer for all the channels: every connect subscribes its own.
        """
        waiting = self._count(channels)
        if waiting is None:
            return set(channels)
        expiry = asyncio.get_running_loop().call_later(SUBSCRIBE_TIMEOUT_S, waiting.wake)
        try:
            await waiting.woken
        except BaseException:
            for channel in channels:
                self.release(channel)
            raise
        finally:
            expiry.cancel()
            self._forget(waiting)
        late = waiting.channels - waiting.confirmed
        for channel in channels:
            if channel in late:
                self.release(channel)
        return set(channels) - late

    def _count(self, channels: list[str]) -> _Acquisition | None:
        """Count the interests, subscribe the new channels; what waits for the channels not yet confirmed."""
        waiting: _Acquisition | None = None
        new: list[str] = []
        for channel in channels:
            count = self._counts.get(channel, 0)
            self._counts[channel] = count + 1
            if channel in self._confirmed:
                continue
            if waiting is None:
                waiting = _Acquisition(asyncio.get_running_loop().create_future())
            if channel not in waiting.channels:
                waiting.channels.add(channel)
                self._waiters.setdefault(channel, []).append(waiting)
            if count == 0:
                new.append(channel)
        if new:
            self._place(new)
        return waiting

    def _forget(self, waiting: _Acquisition) -> None:
        """An acquisition's wait ended (confirmed, timed out or cancelled): no channel keeps it."""
        for channel in waiting.channels - waiting.confirmed:
            waiters = self._waiters.get(channel)
            if waiters and waiting in waiters:
                waiters.remove(waiting)
                if not waiters:
                    del self._waiters[channel]

    def release(self, channel: str) -> None:
        """Drop one local interest; the last one unsubscribes the channel."""
        count = self._counts.get(channel, 0)
        if count > 1:
            self._counts[channel] = count - 1
            return
        self._counts.pop(channel, None)
        self._restoring.discard(channel)
        if count == 1:
            self._unplace(channel)
        self._confirmed.discard(channel)

    def _subscribed(self, link: _Link, channel_bytes: bytes) -> None:
        channel = channel_bytes.decode(errors="replace")
        if channel not in self._counts or self._owners.get(channel) != link.endpoint:
            return  # released (or moved) while the SUBSCRIBE was in flight; its UNSUBSCRIBE follows
        self._confirmed.add(channel)
        if channel in self._restoring:
            self._restoring.discard(channel)
            self._on_restored(channel)
        for waiting in self._waiters.pop(channel, ()):
            waiting.confirm(channel)

    def _unsubscribed(self, link: _Link, channel_bytes: bytes) -> None:
        """A SUNSUBSCRIBE reply: ours, or the master's own when the channel's slot migrated away."""
        channel = channel_bytes.decode(errors="replace")
        if link.unsubscribing[channel] > 0:
            link.unsubscribing[channel] -= 1
            if not link.unsubscribing[channel]:
                del link.unsubscribing[channel]
            return
        link.subscribed.discard(channel)
        if self._owners.get(channel) == link.endpoint:
            self._lose([channel])
            logger.info("a master dropped a channel (slot moved)", extra={"node": str(link.endpoint)})
            self.request_refresh()
