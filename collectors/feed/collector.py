"""The collector runtime: one adapter, its connections, and everything around them.

It maps topics to exchange streams (several topics may share one), places
streams on connections within the exchange's per-connection limit (opening
another connection when one is full, one set per endpoint), numbers each
topic's events (``seq``) and hands them to the outlet, runs the book
snapshot fetches in tasks of their own, resubscribes streams that went
silent, closes candles on time, and reports its status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
import msgspec

from collectors.book import SyncReason
from collectors.feed.adapter import Adapter, Host, Key, ResyncMode, Stream
from collectors.feed.backoff import Backoff
from collectors.feed.connection import Connection, LinkSettings
from collectors.feed.rest import RestBudget, RestError
from shared.events import AnyMarketEvent, Candle
from shared.status import CollectorStatus, ConnectionState, SinkStatus, StreamStatus
from shared.topics import Kind, Topic

logger = logging.getLogger(__name__)

TICK_S: Final = 1.0
# Worst first: the collector's state is that of its least healthy connection.
_SEVERITY: Final = (
    ConnectionState.ERROR,
    ConnectionState.RECONNECTING,
    ConnectionState.CONNECTING,
    ConnectionState.DISCONNECTED,
)


class Outlet(Protocol):
    """Where numbered events go (the Redis sink)."""

    def put(self, event: AnyMarketEvent) -> None: ...

    def status(self) -> SinkStatus: ...


class Reopened(Protocol):
    """Told which topics' streams were (re)subscribed on a fresh connection: history may have a gap."""

    def reopened(self, topics: Iterable[Topic]) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedSettings:
    link: LinkSettings = field(default_factory=LinkSettings)
    stale_after_s: float = 60.0  # tickers and books
    trades_stale_after_s: float = 300.0  # trades and candles: quiet markets are normal
    rest_weight_per_minute: float = 0.0  # 0: the adapter's own budget


class Collector:
    """Runs one exchange adapter: topics in, numbered events out."""

    def __init__(
        self,
        collector_id: str,
        make_adapter: Callable[[Host], Adapter[Any]],
        *,
        outlet: Outlet,
        settings: FeedSettings,
        rest: RestBudget | None = None,
    ) -> None:
        self.id = collector_id
        self.adapter = make_adapter(self)
        self.resyncs = 0
        self.events: Counter[Kind] = Counter()
        self.resync_reasons: Counter[tuple[str, str]] = Counter()  # (symbol, reason)
        self.started_at = time.time() * 1000
        self._outlet = outlet
        self._settings = settings
        self._topics: dict[Topic, Stream] = {}
        self._users: dict[Stream, set[Topic]] = {}  # the topics each stream serves
        self._where: dict[Stream, Connection] = {}
        self._connections: list[Connection] = []
        self._conn_tasks: dict[Connection, asyncio.Task[None]] = {}
        self._seqs: dict[Key, int] = {}
        self._resubscribes: Counter[Stream] = Counter()
        self._silent: dict[Stream, float] = {}  # streams found silent, and when (ms): stale until data comes
        self._fetching: set[Stream] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_conn = 0
        self._stop = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._session: aiohttp.ClientSession | None = None
        # One budget for every REST call (book snapshots, candle history): this collector's own, or
        # one shared by every collector of the exchange in the process (`rest`).
        self.rest = rest or RestBudget(settings.rest_weight_per_minute or self.adapter.rest_weight_per_minute)
        self.reopened: Reopened | None = None
        self.terminated = False

    def set_outlet(self, outlet: Outlet) -> None:
        """Where events go from now on (set before running)."""
        self._outlet = outlet

    @property
    def topics(self) -> list[Topic]:
        return list(self._topics)

    @property
    def connections(self) -> list[Connection]:
        return list(self._connections)

    # -- topics -----------------------------------------------------------------------------

    def add(self, topics: Iterable[Topic]) -> list[Topic]:
        """Subscribe `topics`; all are checked before any is added. Returns the new ones."""
        new = [topic for topic in dict.fromkeys(topics) if topic not in self._topics]
        for topic in new:
            self.adapter.stream_for(topic)  # raises SubscriptionError before anything changes
        for topic in new:
            stream = self.adapter.want(topic)
            self._topics[topic] = stream
            users = self._users.setdefault(stream, set())
            if not users:
                self._place(stream)
            users.add(topic)
        return new

    def remove(self, topics: Iterable[Topic]) -> list[Topic]:
        """Unsubscribe `topics`; a stream goes when its last topic does. Returns those removed."""
        removed = []
        for topic in dict.fromkeys(topics):
            stream = self._topics.pop(topic, None)
            if stream is None:
                continue
            removed.append(topic)
            self.adapter.unwant(topic)
            users = self._users[stream]
            users.discard(topic)
            if not users:
                del self._users[stream]
                self._unplace(stream)
        return removed

    def _place(self, stream: Stream) -> None:
        limit = self.adapter.max_streams_per_connection
        for conn in self._connections:
            if conn.endpoint == stream.endpoint and len(conn.streams) < limit:
                break
        else:
            self._next_conn += 1
            conn = Connection(
                f"{stream.endpoint}-{self._next_conn}",
                stream.endpoint,
                adapter=self.adapter,
                settings=self._settings.link,
                on_open=self._opened,
            )
            self._connections.append(conn)
            self._start(conn)
        conn.add({stream})
        self._where[stream] = conn

    def _opened(self, conn: Connection) -> None:
        if self.reopened is not None:
            self.reopened.reopened(topic for stream in conn.streams for topic in self._users.get(stream, ()))

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The HTTP session of the running collector (REST calls share it)."""
        return self._session

    def _unplace(self, stream: Stream) -> None:
        conn = self._where.pop(stream)
        conn.remove({stream})
        self._resubscribes.pop(stream, None)
        self._silent.pop(stream, None)
        if not conn.streams:
            self._connections.remove(conn)
            task = self._conn_tasks.pop(conn, None)
            if task is not None:
                task.cancel()

    # -- Host: what the adapter calls -------------------------------------------------------

    def publish(self, event: AnyMarketEvent) -> None:
        """Number the event within its topic (1, 2, 3... per run) and pass it on."""
        key = (event.KIND, event.symbol, event.timeframe if isinstance(event, Candle) else None)
        seq = self._seqs.get(key, 0) + 1
        self._seqs[key] = seq
        self.events[event.KIND] += 1
        self._outlet.put(msgspec.structs.replace(event, seq=seq))

    def resync(self, stream: Stream, reason: SyncReason | None) -> None:
        if reason is not None:
            self.resyncs += 1
            self.resync_reasons[(stream.symbol, str(reason))] += 1
        if self.adapter.resync_mode is ResyncMode.SNAPSHOT:
            if stream not in self._fetching and self._tg is not None:
                self._fetching.add(stream)
                self._spawn(self._sync_book(stream), f"snapshot-{stream}")
        elif (conn := self._where.get(stream)) is not None:
            conn.resubscribe(stream)

    # -- running ----------------------------------------------------------------------------

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Run until `stop()`; then close every connection."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._settings.link.connect_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as tg:
            self._session, self._tg = session, tg
            for conn in self._connections:
                self._start(conn)
            self._spawn(self._watch_streams(), "stale-streams")
            self._spawn(self._tick(), "candle-clock")
            if ready is not None:
                ready.set()
            try:
                await self._stop.wait()
            finally:
                self._tg = None
                for feed in self.adapter.books.values():
                    feed.cancel()
                for task in [*self._tasks, *self._conn_tasks.values()]:
                    task.cancel()
        self.terminated = True
        logger.info("collector stopped", extra={"collector": self.id})

    def stop(self) -> None:
        self._stop.set()

    def _start(self, conn: Connection) -> None:
        if self._tg is not None and self._session is not None and conn not in self._conn_tasks:
            task = self._tg.create_task(conn.run(), name=f"{self.id}-{conn.id}")
            self._conn_tasks[conn] = task

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        task = self._tg.create_task(coro, name=f"{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync_book(self, stream: Stream) -> None:
        """Fetch REST snapshots for `stream` until its book is in sync or the stream is gone."""
        assert self._session is not None
        link = self._settings.link
        backoff = Backoff(initial=link.backoff_initial_s, maximum=link.backoff_max_s)
        try:
            while stream in self._where:
                try:
                    body = await self.adapter.fetch_snapshot(self._session, self.rest, stream)
                    if self.adapter.on_snapshot(stream, body, time.time() * 1000):
                        return
                except (aiohttp.ClientError, OSError, TimeoutError, RestError) as exc:
                    logger.warning("snapshot fetch failed", extra={"stream": str(stream), "error": repr(exc)})
                except Exception:  # a bad body or a bug: log it, try again later
                    logger.exception("snapshot not applied", extra={"stream": str(stream)})
                await asyncio.sleep(backoff.next())
        finally:
            self._fetching.discard(stream)

    async def _watch_streams(self) -> None:
        settings = self._settings
        period = max(0.05, min(settings.stale_after_s, settings.trades_stale_after_s) / 4)
        while True:
            await asyncio.sleep(period)
            try:
                self._resubscribe_stale(time.time() * 1000)
            except Exception:  # keep watching even if one pass fails
                logger.exception("stale-stream check failed", extra={"collector": self.id})

    def _stale_after_ms(self, stream: Stream) -> float:
        quiet = stream.kind in (Kind.TRADES, Kind.CANDLES)
        return 1000 * (self._settings.trades_stale_after_s if quiet else self._settings.stale_after_s)

    def _silent_since(self, conn: Connection, stream: Stream) -> float | None:
        subscribed = conn.subscribed_at.get(stream)
        if subscribed is None:
            return None
        return max(subscribed, self.adapter.last_seen.get(stream.key, 0.0))

    def _is_stale(self, stream: Stream) -> bool:
        flagged = self._silent.get(stream)
        return flagged is not None and self.adapter.last_seen.get(stream.key, 0.0) < flagged

    def _resubscribe_stale(self, now: float) -> None:
        for stream in [stream for stream in self._silent if not self._is_stale(stream)]:
            del self._silent[stream]  # data came back
        for conn in self._connections:
            if conn.state is not ConnectionState.CONNECTED:
                continue
            for stream in list(conn.streams):
                since = self._silent_since(conn, stream)
                if since is not None and now - since > self._stale_after_ms(stream):
                    self._resubscribes[stream] += 1
                    logger.warning(
                        "stream silent; resubscribing",
                        extra={"connection": conn.id, "stream": str(stream), "silent_s": round((now - since) / 1000)},
                    )
                    conn.resubscribe(stream)
                    conn.subscribed_at[stream] = now  # give it a full interval again
                    self._silent.setdefault(stream, now)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.time() * 1000
            try:
                self.adapter.tick(int(now), now)
            except Exception:  # the clock must keep ticking
                logger.exception("candle clock failed", extra={"collector": self.id})

    # -- status -----------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        if self.terminated:
            return ConnectionState.TERMINATED
        states = {conn.state for conn in self._connections}
        return next((state for state in _SEVERITY if state in states), ConnectionState.CONNECTED)

    def stream_statuses(self) -> list[StreamStatus]:
        statuses = []
        for conn in self._connections:
            for stream in sorted(conn.streams, key=str):
                statuses.append(
                    StreamStatus(
                        stream=str(stream),
                        connection=conn.id,
                        last_message=int(self.adapter.last_seen.get(stream.key, 0.0)),
                        stale=self._is_stale(stream),
                        resubscribes=self._resubscribes[stream],
                    )
                )
        return statuses

    def status(self) -> CollectorStatus:
        now = time.time() * 1000
        return CollectorStatus(
            id=self.id,
            exchange=self.adapter.exchange,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=int(self.started_at),
            ts=int(now),
            state=self.state,
            topics=sorted(str(topic) for topic in self._topics),
            connections=[conn.status() for conn in self._connections],
            streams=self.stream_statuses(),
            reconnects=sum(conn.reconnects for conn in self._connections),
            resyncs=self.resyncs,
            sink=self._outlet.status(),
        )
