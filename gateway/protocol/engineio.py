"""Engine.IO v4 server: the handshake, CORS, the heartbeat and the node's set of sessions.

Each session does its own transport work (see `session`); the engine routes
requests to it, opens new ones (at most `handshake_rate` per second per
client address, IPv6 by /64), pings every session from one timer, and
collects the fan-out of each loop turn into one write per WebSocket client (see `batch`).
Knows nothing of Socket.IO: messages go to the layer above through
`EngineHandler`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol
from urllib.parse import urlsplit

import msgspec

from gateway.limits import KeyedBuckets, address_key
from gateway.protocol import websocket
from gateway.protocol.batch import WriteBatch
from gateway.protocol.http import Outcome, Request, Response, Upgrade, websocket_handshake_error
from gateway.protocol.send_ring import SendRing
from gateway.protocol.session import OPEN, Packet, Session, WebSocketConnection
from gateway.protocol.sids import new_sid

logger = logging.getLogger(__name__)

# Refused origins are logged once each; past this many, only counted.
MAX_LOGGED_ORIGINS: Final = 1024
ANY_ORIGIN: Final = "*"


class Transport(StrEnum):
    WEBSOCKET = "websocket"
    POLLING = "polling"


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    """Everything the engine and its sessions are configured with."""

    transports: frozenset[Transport]
    cors_origins: tuple[str, ...]  # empty: same origin only; "*": any origin, without credentials
    ping_interval_s: float
    ping_timeout_s: float
    max_payload: int  # largest message a client may send (a POST body, a WebSocket message)
    conflate_above: int  # unsent bytes past which a session is lagging
    max_buffered: int  # unsent bytes past which a session is dropped
    handshake_rate: float  # new sessions per second per client address
    handshake_burst: int
    io_uring: bool = True  # a fan-out's writes in one system call where the kernel allows (`send_ring`)


class Observer(Protocol):
    """What the engine reports for metrics."""

    def conflated(self) -> None: ...

    def overflowed(self) -> None: ...

    def origin_refused(self, origin: str) -> None: ...

    def handshake_limited(self) -> None: ...

    def protocol_closed(self, reason: str) -> None: ...


class EngineHandler(Protocol):
    """What the layer above is told; `closed` comes on a later loop turn, never from inside a send."""

    def opened(self, session: Session) -> None: ...

    def message(self, session: Session, text: str) -> None: ...

    def binary(self, session: Session, data: bytes) -> None: ...

    def closed(self, session: Session, reason: str) -> None: ...


class Engine:
    """All Engine.IO sessions of a node."""

    def __init__(self, handler: EngineHandler, settings: EngineSettings, observer: Observer) -> None:
        self.handler = handler
        self.settings = settings
        self.observer = observer
        self.sessions: dict[str, Session] = {}
        # Long-polling sessions closed with packets still queued (a server
        # disconnect): their next GET delivers them, then a CLOSE.
        self._closing: dict[str, Session] = {}
        self._handshakes = KeyedBuckets(settings.handshake_rate, settings.handshake_burst)
        self._logged_origins: set[str] = set()
        self.batch: WriteBatch | None = None  # this loop turn's sends, written at its end
        self.send_ring: SendRing | None = None  # open while started, where io_uring works
        self._heartbeat: asyncio.TimerHandle | None = None
        self._beats = 0
        # The open packet after its sid, with and without upgrades: the same for every session of the node.
        self._open_rest = {upgrades: self._open_fields(upgrades) for upgrades in (False, True)}

    # Lifecycle

    def start(self) -> None:
        self._heartbeat = asyncio.get_running_loop().call_later(self.settings.ping_interval_s, self._beat)
        if self.settings.io_uring:
            try:
                self.send_ring = SendRing.open()
            except OSError as exc:
                logger.info("fan-out writes one socket at a time: io_uring is not available", extra={"error": str(exc)})
            else:
                logger.info("fan-out writes through io_uring")

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._heartbeat = None
        if self.send_ring is not None:
            self.send_ring.close()  # a batch still unwritten then writes one socket at a time
            self.send_ring = None

    def _beat(self) -> None:
        """One timer for every session: ping, then drop those that did not answer within the timeout.

        The next beat is scheduled first, so that no failure can stop the heartbeat;
        beats are numbered, so a reap only drops sessions its own beat (or an older one) pinged.
        """
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.call_later(self.settings.ping_interval_s, self._beat)
        self._beats += 1
        beat = self._beats
        try:
            for session in list(self.sessions.values()):
                session.ping(beat)
        except Exception:
            logger.exception("heartbeat failed")
        loop.call_later(self.settings.ping_timeout_s, self._reap, beat)

    def _reap(self, beat: int) -> None:
        for session in list(self.sessions.values()):
            if 0 < session.pinged <= beat:
                session.close("ping_timeout", abort=True)

    @property
    def lagging(self) -> int:
        return sum(1 for session in self.sessions.values() if session.lagging)

    # Writes

    def broadcast(self, sessions: tuple[Session, ...], packet: Packet, conflate_key: str | None = None) -> None:
        """Send one packet to every session of `sessions`, at the end of this loop turn."""
        batch = self.batch
        if batch is None:
            # The first fan-out of a loop turn opens its batch. Everything sent until the turn
            # ends (the rest of this Redis read, other reads of the same turn, replies) joins it,
            # so under load a client gets several messages per write; nothing waits on a timer.
            batch = self.batch = WriteBatch(self.settings.conflate_above, self.send_ring)
            asyncio.get_running_loop().call_soon(self.flush)
        batch.add(sessions, packet, conflate_key)

    def flush(self) -> None:
        """Write this turn's batch: at the end of the turn, or earlier for a session about to close."""
        batch, self.batch = self.batch, None
        if batch is not None:
            batch.write()

    def overflow(self, session: Session) -> None:
        self.observer.overflowed()
        session.close("slow_consumer", abort=True)

    def forget(self, session: Session) -> None:
        """A session closed: drop it (keeping a polling one until its last GET) and tell the layer above."""
        self.sessions.pop(session.sid, None)
        loop = asyncio.get_running_loop()
        if session.ws is None and session.queue and session.waiter is None:
            self._closing[session.sid] = session
            loop.call_later(self.settings.ping_timeout_s, self._closing.pop, session.sid, None)
        loop.call_soon(self.handler.closed, session, session.close_reason)

    # HTTP

    def handle(self, request: Request) -> Outcome | Awaitable[Response]:
        """Every request under the Engine.IO path: answered at once, but for long-polling (a coroutine)."""
        cors = self._cors(request)
        if cors is None:
            return _error(403, 4, "Forbidden: origin not allowed")
        if request.method == "OPTIONS":
            return self._preflight(request, cors)
        refusal = self._refusal(request)
        if refusal is not None:
            status, code, message = refusal
            return _error(status, code, message, cors)
        sid = request.query.get("sid")
        if request.query["transport"] == Transport.WEBSOCKET:
            return self._websocket(request, sid, cors)
        return self._polling(request, sid, cors)

    def _refusal(self, request: Request) -> tuple[int, int, str] | None:
        """Why a request is refused before any session sees it: (HTTP status, Engine.IO code, message)."""
        if request.query.get("EIO") != "4":
            return 400, 5, "Unsupported protocol version"
        transport = request.query.get("transport")
        if transport not in self.settings.transports:
            return 400, 0, "Transport unknown"
        sid = request.query.get("sid")
        if transport == Transport.POLLING:
            if request.wants_websocket:
                return 400, 3, "Bad request: an upgrade must use transport=websocket"
            if request.method not in ("GET", "POST") or (sid is None and request.method != "GET"):
                return 400, 2, "Bad request method"
        if sid is None and not self._handshakes.take(address_key(request.remote)):
            self.observer.handshake_limited()
            return 429, 3, "Too many new sessions from this address; retry later"
        return None

    async def _polling(self, request: Request, sid: str | None, cors: list[tuple[str, str]]) -> Response:
        if sid is None:
            fresh = self._new_session(request)
            self.handler.opened(fresh)
            upgrades = Transport.WEBSOCKET in self.settings.transports
            return Response(200, self.open_packet(fresh, upgrades=upgrades).encode(), headers=cors)
        session = self.sessions.get(sid) or self._closing.get(sid)
        if session is None or session.ws is not None:
            return _error(400, 1, "Session ID unknown", cors)
        if request.method == "POST":
            return self._post(session, request.body, cors)
        return await self._poll(session, cors)

    @staticmethod
    def _post(session: Session, body: bytes, cors: list[tuple[str, str]]) -> Response:
        refusal = session.post(body)
        if refusal is not None:
            return _error(400, 3, f"Bad request: {refusal}", cors)
        return Response(200, b"ok", content_type="text/html", headers=cors)

    async def _poll(self, session: Session, cors: list[tuple[str, str]]) -> Response:
        if session.waiter is not None:
            self.observer.protocol_closed("duplicate_poll")
            session.close("duplicate_poll", abort=True)
            return _error(400, 3, "Bad request: overlapping polls", cors)
        body = await session.poll()
        if session.closed:
            self._closing.pop(session.sid, None)
        if body is None:
            return _error(400, 1, "Session ID unknown", cors)
        return Response(200, body.encode(), headers=cors)

    def _new_session(self, request: Request) -> Session:
        sid = new_sid()
        session = Session(self, sid, request)
        self.sessions[sid] = session
        return session

    def open_packet(self, session: Session, *, upgrades: bool) -> str:
        """The handshake: the sid is URL-safe base64 (`new_sid`), so nothing in it needs JSON escaping."""
        return f'{OPEN}{{"sid":"{session.sid}",{self._open_rest[upgrades]}'

    def _open_fields(self, upgrades: bool) -> str:
        """The open packet's JSON object without its opening brace and sid."""
        fields = {
            "upgrades": [Transport.WEBSOCKET] if upgrades else [],
            "pingInterval": int(self.settings.ping_interval_s * 1000),
            "pingTimeout": int(self.settings.ping_timeout_s * 1000),
            "maxPayload": self.settings.max_payload,
        }
        return msgspec.json.encode(fields).decode()[1:]

    def _websocket(self, request: Request, sid: str | None, cors: list[tuple[str, str]]) -> Response | Upgrade:
        error = websocket_handshake_error(request)
        if error is not None:
            return _error(400, 3, f"Bad request: {error}", cors)
        if sid is None:
            fresh = self._new_session(request)
            fresh.ws = WebSocketConnection(self, fresh)
            # A direct WebSocket's handshake goes over it, with the 101.
            return Upgrade(fresh.ws, websocket.text_frame(self.open_packet(fresh, upgrades=False).encode()))
        session = self.sessions.get(sid)
        if session is None or session.ws is not None or session.upgrading is not None:
            return _error(400, 1, "Session ID unknown", cors)
        session.upgrading = WebSocketConnection(self, session)
        return Upgrade(session.upgrading)

    # CORS

    def _cors(self, request: Request) -> list[tuple[str, str]] | None:
        """CORS headers for an allowed origin, [] without an Origin (not a browser), None if refused."""
        origin = request.headers.get("origin")
        if origin is None:
            return []
        allowed = self.settings.cors_origins
        if ANY_ORIGIN in allowed:
            # Any origin, so no credentials: browsers refuse "*" with them, and
            # reflecting any origin with credentials would let every site in.
            return [("Access-Control-Allow-Origin", ANY_ORIGIN)]
        if origin in allowed or (not allowed and urlsplit(origin).netloc == request.headers.get("host")):
            return [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"),
            ]
        self.observer.origin_refused(origin)
        if origin not in self._logged_origins and len(self._logged_origins) < MAX_LOGGED_ORIGINS:
            self._logged_origins.add(origin)
            logger.warning(
                "refused a browser origin (allow it with GATEWAY_CORS_ORIGINS)",
                extra={"origin": origin[:200], "allowed": list(allowed) or "same origin"},
            )
        return None

    @staticmethod
    def _preflight(request: Request, cors: list[tuple[str, str]]) -> Response:
        headers = [*cors, ("Access-Control-Allow-Methods", "OPTIONS, GET, POST"), ("Access-Control-Max-Age", "86400")]
        requested = request.headers.get("access-control-request-headers")
        if requested:
            headers.append(("Access-Control-Allow-Headers", requested))
        return Response(204, headers=headers)


def _error(status: int, code: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """Engine.IO's error body: {"code": n, "message": "..."}."""
    body = msgspec.json.encode({"code": code, "message": message})
    return Response(status, body, content_type="application/json", headers=headers or [])
