"""One WebSocket to an exchange and the streams it carries, kept alive until stopped.

The socket is picows's (a WebSocket client in Cython): each message reaches the
adapter straight from the transport's ``data_received`` (`collectors.feed.
receiver`), with no task woken per message. Beside it two tasks run per socket:
the writer (brings the exchange's subscriptions in line with the wanted
streams, paced to the exchange's request rate) and the watchdog (pings when
idle, declares the connection dead after a silence, retires it before the
exchange's lifetime limit). Whichever ends first, or the socket closing, ends
the socket; the run loop then backs off (no wait after a planned retirement)
and connects again, and the writer resubscribes every wanted stream exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any, Final

import picows

from collectors.feed.adapter import Adapter, Op, Stream
from collectors.feed.backoff import Backoff
from collectors.feed.receiver import MAX_MESSAGE_BYTES, ConnectionLost, Receiver
from shared.status import ConnectionState, ConnectionStatus

logger = logging.getLogger(__name__)

# A parser failing on every frame must not flood the log: one traceback per connection per interval.
PARSE_ERROR_LOG_INTERVAL_S: Final = 10.0
# Spread planned reconnects of connections opened together over the last 5% of their lifetime.
RETIRE_JITTER: Final = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSettings:
    """Timing of one connection's life, from the collector's configuration."""

    connect_timeout_s: float = 10.0
    close_timeout_s: float = 1.0  # a dead peer never answers the close handshake: don't wait long
    ping_interval_s: float = 20.0
    pong_timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    stable_after_s: float = 10.0  # connected this long: the next failure backs off from the start
    max_age_s: float | None = None  # retire after this long; None: the adapter's own limit


class Connection:
    """One exchange connection: wanted streams, the live socket, and its state."""

    def __init__(
        self,
        conn_id: str,
        endpoint: str,
        *,
        adapter: Adapter[Any],
        settings: LinkSettings,
        on_open: Callable[[Connection], None] | None = None,
    ) -> None:
        self.id = conn_id
        self._on_open = on_open
        self.endpoint = endpoint
        self.url = adapter.urls[endpoint]
        self.state = ConnectionState.DISCONNECTED
        self.reconnects = 0
        self.messages = 0
        self.sent = 0
        self.parse_errors = 0
        self.connected_since = 0.0  # wall clock, ms; 0 while down
        self.last_message = 0.0  # wall clock, ms
        self.last_error = ""
        self.subscribed_at: dict[Stream, float] = {}  # wall clock (ms) each stream was last (re)subscribed
        self._adapter = adapter
        self._settings = settings
        self._wanted: set[Stream] = set()
        self._active: set[Stream] = set()  # subscribed on the current socket
        self._redo: set[Stream] = set()  # to unsubscribe and subscribe again (resync, stale)
        self._wake = asyncio.Event()
        self._retire = asyncio.Event()
        self._backoff = Backoff(initial=settings.backoff_initial_s, maximum=settings.backoff_max_s)
        self._due = 0.0  # the request rate's theoretical next send time (monotonic)
        self._last_rx = 0.0  # monotonic
        self._parse_error_logged = float("-inf")
        self._was_open = False  # the current attempt got as far as an open socket
        age = settings.max_age_s or adapter.max_connection_age_s
        self._max_age = age * random.uniform(1 - RETIRE_JITTER, 1) if age else None  # noqa: S311

    # -- the adapter's view (Link) --------------------------------------------------------

    @property
    def streams(self) -> Set[Stream]:
        return self._wanted

    def retire(self) -> None:
        self._retire.set()

    # -- the collector's controls -----------------------------------------------------------

    def add(self, streams: Set[Stream]) -> None:
        self._wanted |= streams
        self._wake.set()

    def remove(self, streams: Set[Stream]) -> None:
        self._wanted -= streams
        self._redo -= streams
        self._wake.set()

    def resubscribe(self, stream: Stream) -> None:
        """Unsubscribe and subscribe `stream` again, for a fresh snapshot or a silent stream."""
        if stream in self._wanted:
            self._redo.add(stream)
            self._wake.set()

    def status(self) -> ConnectionStatus:
        return ConnectionStatus(
            id=self.id,
            url=self.url,
            state=self.state,
            streams=len(self._wanted),
            connected_since=int(self.connected_since),
            last_message=int(self.last_message),
            messages=self.messages,
            reconnects=self.reconnects,
            last_error=self.last_error,
        )

    # -- the life loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect; until cancelled."""
        try:
            while True:
                first = self.state is ConnectionState.DISCONNECTED
                self._set_state(ConnectionState.CONNECTING if first else ConnectionState.RECONNECTING)
                self._was_open = planned = False
                try:
                    planned = await self._serve()
                except (ConnectionLost, picows.WSError, OSError, TimeoutError) as exc:
                    self._failed(exc, traceback=False)
                except Exception as exc:  # noqa: BLE001 - a bug must not end the collector: log it, back off
                    self._failed(exc, traceback=True)
                self.reconnects += 1
                delay = 0.0 if planned else self._backoff.next()
                if delay:
                    await asyncio.sleep(delay)
        finally:
            self._set_state(ConnectionState.TERMINATED)

    async def _serve(self) -> bool:
        """One socket from connect to close; True when it was retired as planned."""
        receiver = Receiver(self)
        async with asyncio.timeout(self._settings.connect_timeout_s):
            ws, _ = await picows.ws_connect(
                lambda: receiver,
                self.url,
                # Built per connect, so that the certificate store in force (SSL_CERT_FILE) is the one used.
                ssl_context=ssl.create_default_context() if self.url.startswith("wss:") else None,
                websocket_handshake_timeout=None,  # within the connect timeout above
                max_frame_size=MAX_MESSAGE_BYTES,
                logger_name=f"collector.{self.id}",
            )
        opened = time.monotonic()
        try:
            self._opened()
            tasks = {
                asyncio.create_task(self._write(ws), name=f"{self.id}-write"),
                asyncio.create_task(self._watch(ws, opened), name=f"{self.id}-watch"),
            }
            try:
                done, _ = await asyncio.wait({*tasks, receiver.ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return any(task.result() for task in done)  # re-raises the reason the socket ended
        finally:
            self._closed(time.monotonic() - opened)
            await receiver.close(ws, self._settings.close_timeout_s)

    def _opened(self) -> None:
        self._active.clear()
        self._redo.clear()
        self.subscribed_at.clear()  # a stream is judged silent only once subscribed on this socket
        self._retire.clear()
        self._last_rx = time.monotonic()
        self._due = 0.0  # a new connection has its full request budget
        self._was_open = True
        self.connected_since = time.time() * 1000
        self.last_error = ""
        self._set_state(ConnectionState.CONNECTED)
        self._adapter.connection_opened(self)
        if self._on_open is not None:
            self._on_open(self)
        self._wake.set()

    def _closed(self, lived_s: float) -> None:
        self.connected_since = 0.0
        self._adapter.connection_lost(self)
        if lived_s >= self._settings.stable_after_s:
            self._backoff.reset()

    def _failed(self, exc: BaseException, *, traceback: bool) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        # A lost socket is being replaced at once; a failed attempt waits out its backoff first.
        self._set_state(ConnectionState.RECONNECTING if self._was_open else ConnectionState.ERROR)
        extra = {"connection": self.id, "url": self.url, "error": self.last_error, "attempt": self._backoff.attempt}
        if traceback:
            logger.exception("connection failed unexpectedly", extra=extra)
        else:
            logger.warning("connection lost", extra=extra)

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            logger.info("connection state", extra={"connection": self.id, "from": str(self.state), "to": str(state)})
            self.state = state

    # -- the three tasks of a socket --------------------------------------------------------

    def received(self, data: str | bytes) -> None:
        """One message from the socket (called by the receiver, inside the transport's data_received)."""
        self._last_rx = time.monotonic()
        self.last_message = recv_ts = time.time() * 1000
        self.messages += 1
        try:
            self._adapter.on_message(self, data, recv_ts)
        except Exception:  # noqa: BLE001 - one bad frame must not end the connection
            self._parse_error()

    def alive(self) -> None:
        """A pong or other control frame: the peer is there, though it carried no data."""
        self._last_rx = time.monotonic()

    def _parse_error(self) -> None:
        self.parse_errors += 1
        now = time.monotonic()
        if now - self._parse_error_logged >= PARSE_ERROR_LOG_INTERVAL_S:
            self._parse_error_logged = now
            logger.exception("cannot parse a frame", extra={"connection": self.id, "parse_errors": self.parse_errors})

    async def _write(self, ws: picows.WSTransport) -> bool:
        """Bring the socket's subscriptions in line with the wanted streams, whenever woken."""
        adapter = self._adapter
        for text in adapter.open_messages():
            await self._send(ws, text)
        while True:
            await self._wake.wait()
            self._wake.clear()
            redo = self._redo & self._active
            self._redo.clear()
            drop = (self._active - self._wanted) | redo
            for text in adapter.requests(Op.UNSUBSCRIBE, drop):
                await self._send(ws, text)
            self._active -= drop
            add = self._wanted - self._active
            for text in adapter.requests(Op.SUBSCRIBE, add):
                await self._send(ws, text)
            now = time.time() * 1000
            for stream in add:
                self.subscribed_at[stream] = now
            self._active |= add

    async def _watch(self, ws: picows.WSTransport, opened: float) -> bool:
        """Ping when idle (or always, if the exchange wants it); end the socket when silent or due to retire."""
        interval, timeout = self._settings.ping_interval_s, self._settings.pong_timeout_s
        adapter = self._adapter
        tick = max(0.01, min(interval, timeout) / 4)
        last_ping = opened
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._retire.wait()
            now = time.monotonic()
            if self._retire.is_set() or (self._max_age is not None and now - opened >= self._max_age):
                logger.info("retiring the connection as planned", extra={"connection": self.id})
                return True
            idle = now - self._last_rx
            if idle >= interval + timeout:
                raise ConnectionLost(f"no message for {idle:.1f}s")
            if (idle >= interval or adapter.ping_always) and now - last_ping >= interval:
                last_ping = now
                ping = adapter.ping_message()  # a new request id each time
                if ping is None:
                    ws.send_ping()
                else:
                    await self._send(ws, ping)

    async def _send(self, ws: picows.WSTransport, text: str) -> None:
        """Send one request within the exchange's rate (pings count too).

        A token bucket in its GCRA form: a burst of one second's worth, then one request
        every ``1 / rate`` seconds. Each caller reserves its slot before sleeping, so the
        writer and the watchdog never overrun it together.
        """
        rate = self._adapter.requests_per_second
        interval, burst = 1 / rate, max(1, math.floor(rate))
        now = time.monotonic()
        due = max(self._due, now)
        slot = max(now, due - (burst - 1) * interval)
        self._due = due + interval
        if slot > now:
            await asyncio.sleep(slot - now)
        ws.send(picows.WSMsgType.TEXT, text.encode())
        self.sent += 1
