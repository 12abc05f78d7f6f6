"""One gateway node: Socket.IO clients on the node's own protocol layer, fed from Redis.

The node authenticates each connection, keeps its sockets in their user,
team and topic rooms, and keeps its Redis subscriptions equal to what its
own sockets need (see `relay`). Client-facing event handlers live here; the
Engine.IO specifics live in `sio`, the Redis side in `relay` and `fanout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from gateway import ops
from gateway.admission import Admission, connect_token
from gateway.auth import TokenVerifier
from gateway.batching import Batcher, SharedPipeline, joined
from gateway.candles import CandleHistory
from gateway.config import GatewayConfig
from gateway.demand import Demand
from gateway.errors import AuthCode, AuthError, RequestError
from gateway.executions import ExecutionRequests
from gateway.fanout import Fanout
from gateway.history import History
from gateway.limits import KeyedBuckets
from gateway.loop_lag import LoopLagMonitor
from gateway.metrics import GatewayMetrics, ProtocolReports
from gateway.notifications import NotificationRequests
from gateway.pages import Pages
from gateway.policy import TopicPolicy
from gateway.presence import Presence
from gateway.protocol.deadlines import Deadlines
from gateway.protocol.engineio import EngineSettings
from gateway.protocol.http import AcceptLimit, HttpServer, Outcome, Request
from gateway.protocol.sio import ConnectionRefused, SocketIOServer, SocketSettings
from gateway.recovery import Recovery, Resume
from gateway.relay import Relay
from gateway.sessions import Session
from gateway.status_board import StatusBoard
from gateway.subscriptions import Subscriptions
from shared import names
from shared.codec import Revocation
from shared.redis_target import REDIS_ERRORS, RedisTarget
from shared.status import GatewayStatus

logger = logging.getLogger(__name__)

SOCKETIO_PATH: Final = "/socket.io"
CANDLES_PATH: Final = "/candles"
REDIS_POOL_SIZE: Final = 16
REDIS_TIMEOUT_S: Final = 5.0  # a reply (a round trip, on the shared pipeline) later than this fails
DEMAND_FIRST_READ_S: Final = 5.0
# CONNECTs served in one batch (`GatewayNode._serve_connects`), and catch-ups run at a time. A batch's
# token checks run in one turn of the loop (tens of us each), which live messages wait behind.
MAX_CONNECT_BATCH: Final = 64
MAX_CONCURRENT_CATCH_UPS: Final = 64
EXPIRY_GRANULARITY_S: Final = 1.0  # a socket closes at most this long after its token expired (and the leeway)


@dataclass(frozen=True, slots=True)
class Connect:
    """A CONNECT waiting for its batch."""

    sid: str
    handshake: Request
    auth: object


class GatewayNode:
    """Everything one node runs: the Socket.IO server, the relay and the ops endpoints.

    `start` listens; `drain` closes every client's transport so it reconnects
    elsewhere; `close` releases the rest.
    """

    def __init__(self, config: GatewayConfig, *, redis_url: str) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.loop_lag = LoopLagMonitor(self.metrics.loop_lag)
        self.verifier = TokenVerifier(config)
        self.policy = TopicPolicy(config.allowed_topics, config.topics_claim)
        self.sessions: dict[str, Session] = {}
        self.accepting = True
        self._drained = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False  # `close` has ended the node's tasks: nothing new starts
        self._presence_task: asyncio.Task[None] | None = None
        # CONNECTs are served in batches, one out at a time (`Batcher`): those that arrive meanwhile go in the
        # next. Catch-ups run at most MAX_CONCURRENT_CATCH_UPS at a time. Neither fills a turn of the loop
        # ahead of the fan-out of live messages.
        self._connects: Batcher[Connect, bool] = Batcher(self._serve_connects, max_items=MAX_CONNECT_BATCH)
        self._catching_up = asyncio.Semaphore(MAX_CONCURRENT_CATCH_UPS)
        # Each session closes when its token expires (plus the leeway): one timer for all of them.
        self._expiries: Deadlines[Session] = Deadlines(self._expire, granularity_s=EXPIRY_GRANULARITY_S)
        self.server = SocketIOServer(
            SocketSettings(
                engine=EngineSettings(
                    transports=frozenset(config.transports),
                    cors_origins=tuple(config.cors_origins),
                    ping_interval_s=config.ping_interval_s,
                    ping_timeout_s=config.ping_timeout_s,
                    max_payload=config.max_packet_bytes,
                    conflate_above=config.conflate_above_bytes,
                    max_buffered=config.max_buffered_bytes,
                    handshake_rate=config.handshake_rate_per_ip,
                    handshake_burst=config.handshake_burst_per_ip,
                    io_uring=config.io_uring,
                ),
                connect_timeout_s=config.connect_timeout_s,
                max_event_bytes=config.max_event_bytes,
                event_rate=config.event_rate,
                event_burst=config.event_burst,
            ),
            ProtocolReports(self.metrics),
        )
        self.metrics.lagging_sockets.set_function(lambda: self.server.engine.lagging)
        self.metrics.redis_channels.set_function(lambda: self.relay.channel_count)
        self.metrics.redis_pubsub_connections.set_function(lambda: self.relay.connections)
        self.target = RedisTarget.parse(redis_url)
        # A bounded pool (per cluster node) that queues bursts (200 sockets subscribing at once).
        self.redis = self.target.async_client(
            max_connections=REDIS_POOL_SIZE, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=5
        )
        # Connects' Redis queries (revocations, cap claims, stream ends) and the presence heartbeat share
        # one pipeline per round trip, on a connection of its own (`SharedPipeline`).
        self.pipeline = SharedPipeline(self.target, timeout_s=REDIS_TIMEOUT_S)
        self.history = History(self.redis, self.pipeline, max_age_ms=int(config.history_max_age_s * 1000))
        # The relay hands messages to the fanout, which hands records to recovery, which reads the relay's state.
        self.relay = Relay(
            self.target,
            lambda messages: self.fanout.on_messages(messages),  # noqa: PLW0108 - bound late: built below
            on_state=lambda ready: self.metrics.redis_connected.set(1 if ready else 0),
            on_lost=self._channels_lost,
            on_restored=lambda channel: self.recovery.restored(channel),  # noqa: PLW0108 - bound late
            permanent=(names.CONTROL_CHANNEL,),
        )
        self.recovery = Recovery(self.server, self.history, self.relay, self.metrics, max_recovery=config.max_recovery)
        self.fanout = Fanout(self.server, self.recovery, self.metrics, on_revocation=self._revoked)
        self.notifications = NotificationRequests(self.history, self.redis, self.metrics)
        self.executions = ExecutionRequests(self.history, self.metrics)
        self.presence = Presence(
            self.redis,
            self.pipeline,
            node=config.name,
            topics=lambda: self.server.room_sizes(names.MARKET_PREFIX),
            teams=self._online_teams,
            policy=self.policy,
            max_items=config.max_topics_per_request,
        )
        self.admission = Admission(config, self.verifier, self.pipeline, self.presence)
        self.demand = Demand(self.redis, self._market_topics, node=config.name, on_demand=config.on_demand)
        self.subscriptions = Subscriptions(
            config,
            server=self.server,
            relay=self.relay,
            fanout=self.fanout,
            policy=self.policy,
            client=self.redis,
            metrics=self.metrics,
            demand=self.demand,
        )
        self.started_at = int(time.time() * 1000)
        self.board = StatusBoard(self.redis, self._own_status, lambda: self.server.room_sizes(names.MARKET_PREFIX))
        self.pages = Pages(self.board, admin_token=config.admin_token, status_open=config.status_open)
        # Behind a trusted proxy every connection comes from the proxy: accepts are limited there.
        accept_limit = (
            None
            if config.trust_forwarded_for
            else AcceptLimit(
                KeyedBuckets(config.accept_rate_per_ip, config.accept_burst_per_ip),
                self.metrics.accepts_refused.inc,
            )
        )
        self.http = HttpServer(
            self._route,
            max_body_bytes=config.max_packet_bytes,
            trust_forwarded_for=config.trust_forwarded_for,
            accept_limit=accept_limit,
        )
        self.server.on_connect(self._on_connect)
        self.server.on_connected(self._connected)
        self.server.on_disconnect(self._on_disconnect)
        self.server.on("subscribe", self._with_session(self.subscriptions.subscribe))
        self.server.on("unsubscribe", self._with_session(self.subscriptions.unsubscribe))
        self.server.on("refresh", self._on_refresh)
        self.server.on("notifications:list", self._with_session(self.notifications.page))
        self.server.on("notifications:read", self._with_session(self.notifications.mark_read))
        self.server.on("notifications:unread", self._with_session(self.notifications.unread))
        self.server.on("executions:list", self._with_session(self.executions.states))
        self.server.on("presence", self._with_session(self.presence.request))
        self.candles = CandleHistory(
            database_url=config.database_url, policy=self.policy, verify=self.admission.verify, client=self.redis,
            registry=self.metrics.registry, max_limit=config.candles_max_limit,
            cache_entries=config.candles_cache_entries, timeout_s=config.candles_timeout_s,
        )  # fmt: skip
        self.server.on("candles:history", self._with_session(self.candles.request))

    # Lifecycle

    async def start(self) -> None:
        self._spawn(self.relay.run())
        # One read of the collectors' status before serving, so every subscribe ack can say `collected`.
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            await asyncio.wait_for(self.demand.refresh(), DEMAND_FIRST_READ_S)
        self._spawn(self.demand.run())
        self._presence_task = asyncio.get_running_loop().create_task(self.presence.run())
        self.board.attach()
        self.loop_lag.start()
        self._spawn(self.board.run())
        self.server.start()
        await self.http.start(self.config.host, self.config.port, reuse_port=self.config.reuse_port)

    def _route(self, request: Request) -> Outcome | Awaitable[Outcome]:
        if request.path.rstrip("/") == SOCKETIO_PATH:
            return self.server.handle(request)
        if request.path == CANDLES_PATH:
            return self.candles.http(request)
        if self.pages.serves(request.path):
            return self.pages.respond(request)
        return ops.respond(request, self)

    def _own_status(self) -> GatewayStatus:
        return GatewayStatus(
            id=self.config.name,
            ts=int(time.time() * 1000),
            started_at=self.started_at,
            connections=len(self.sessions),
            topics=sum(1 for channel in self.relay.channels if channel.startswith(names.MARKET_PREFIX)),
            messages_in=self.metrics.messages_in.total(),
            messages_out=self.metrics.messages_out.total(),
            redis=self.relay.ready,
        )

    async def close(self) -> None:
        """Stop listening, drop every client and release Redis (after `drain` for a graceful stop)."""
        self.accepting = False
        await self.http.stop_listening()
        self.server.close_all("shutdown")
        self.http.close_connections()
        # Closed sockets spawn work (giving back their connections) after this starts: repeat
        # until nothing runs, so that no task still uses Redis when its client closes.
        while pending := [task for task in self._tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._stopped = True
        await self._connects.close()
        await self.recovery.close()
        # Not cancelled: `run` ends between Redis calls; then every socket's claim is given back at once,
        # with those still landing (asked by connects cancelled above).
        await self.presence.close()
        if self._presence_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._presence_task, 5)
        self.board.detach()
        self.loop_lag.stop()
        self._expiries.close()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.delete(names.gateway_status_key(self.config.name))  # off the status page at once
        await self.server.stop()
        await self.verifier.close()
        await self.candles.close()
        await self.pipeline.aclose()
        await self.redis.aclose()

    async def drain(self, deadline_s: float) -> None:
        """Stop accepting and close every client's transport so it reconnects elsewhere."""
        self.accepting = False
        await self.http.stop_listening()
        self.server.close_all("shutdown")
        self.http.close_connections()
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), deadline_s)
        logger.info("drained", extra={"remaining": len(self.sessions)})

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        if self._stopped:  # what is left (a connection's claim) is given back by `close`
            task.cancel()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    def _channels_lost(self, channels: list[str]) -> None:
        self.metrics.redis_channels_lost.inc(len(channels))
        self.recovery.lost(channels)

    def _online_teams(self) -> dict[str, set[str]]:
        """Each team's users with a socket on this node (presence)."""
        teams: dict[str, set[str]] = {}
        for session in self.sessions.values():
            for team in session.identity.teams:
                teams.setdefault(team, set()).add(session.identity.user_id)
        return teams

    def _market_topics(self) -> list[str]:
        """The market topics this node's clients hold (their Redis channels are subscribed)."""
        return [c.removeprefix(names.MARKET_PREFIX) for c in self.relay.channels if c.startswith(names.MARKET_PREFIX)]

    @property
    def ready(self) -> bool:
        return self.accepting and self.relay.ready

    # Connection

    def _on_connect(self, sid: str, handshake: Request, auth: object) -> Awaitable[bool]:
        """Admit the CONNECT and open its session, in the next batch (`_serve_connects`); False if it closed.

        A token whose signing key must be fetched first goes alone: a batch would wait for the fetch.
        """
        connect = Connect(sid, handshake, auth)
        if self.verifier.needs_fetch(connect_token(handshake, auth)):
            return self._connect_alone(connect)
        return self._connects.enqueue(connect)

    async def _connect_alone(self, connect: Connect) -> bool:
        (outcome,) = await self._serve_connects([connect])
        if isinstance(outcome, Exception):
            try:
                raise outcome
            finally:
                del outcome  # its traceback holds this frame: no cycle through it
        return outcome

    async def _serve_connects(self, connects: list[Connect]) -> list[bool | Exception]:
        """A batch of CONNECTs: each one's outcome, True (opened), False (closed meanwhile) or its refusal.

        Each step runs for the whole batch before the next: the token checks one after another, then one
        query for every revocation read and cap claim, one wait for every channel, one query for every
        stream position. A connect has no task or timer of its own here, only its answer's future, and
        each step's code stays warm in the CPU's caches from one connect to the next.
        """
        outcomes: list[bool | Exception] = [False] * len(connects)
        checked: list[tuple[int, Session]] = []
        for index, connect in enumerate(connects):
            try:
                identity = await self.admission.identify(connect.handshake, connect.auth, accepting=self.accepting)
            except AuthError as exc:
                outcomes[index] = self._refusal(exc)
                continue
            checked.append((index, Session(connect.sid, identity, self.policy.user_patterns(identity.claims))))
        if not checked:
            return outcomes
        try:
            queries = [self.admission.claim_query(session.sid, session.identity) for _, session in checked]
            refusals = await self.pipeline.ask(joined(queries))
        except REDIS_ERRORS:
            refusals = [AuthError(AuthCode.UNAVAILABLE, "cannot reach Redis to admit the connection; retry")] * len(
                checked
            )
        admitted: list[tuple[int, Session]] = []
        for (index, session), refusal in zip(checked, refusals, strict=True):
            if refusal is None:
                admitted.append((index, session))
            else:
                outcomes[index] = self._refusal(refusal)
        # Admission reserved one of each admitted user's connections; it is given back unless the socket opens.
        try:
            await self._open_sessions([(index, session, connects[index].auth) for index, session in admitted], outcomes)
        finally:
            for index, session in admitted:
                if outcomes[index] is not True:
                    self.admission.left(session.sid)
        return outcomes

    def _refusal(self, exc: AuthError) -> ConnectionRefused:
        self.metrics.auth_failures.labels(exc.code).inc()
        return ConnectionRefused(str(exc.code), {"code": str(exc.code), "message": exc.message})

    async def _open_sessions(
        self, admitted: list[tuple[int, Session, object]], outcomes: list[bool | Exception]
    ) -> None:
        """Subscribe the admitted sockets' own channels, read where their catch-ups start, and open them."""
        acquired = await self.subscriptions.acquire_all(
            [channel for _, session, _ in admitted for channel in session.personal_channels]
        )
        resumes = [Resume.from_auth(auth) for _, _, auth in admitted]
        starts = [
            self.recovery.start_query(session, resume)
            for (_, session, _), (resume, _) in zip(admitted, resumes, strict=True)
        ]
        queries = [query for query in starts if query is not None]
        try:
            answers = await self.pipeline.ask(joined(queries)) if queries else []
        except REDIS_ERRORS as exc:
            answers = [exc] * len(queries)
        positions = iter(answers)
        for (index, session, auth), (resume, valid), start in zip(admitted, resumes, starts, strict=True):
            position = None if start is None else next(positions)
            read = not isinstance(position, Exception)  # else: live only from here, and `sync` says incomplete
            topics = auth.get("subscriptions") if isinstance(auth, dict) else None
            catch_up = partial(self._start_sync, session, resume, valid and read, position if read else None, topics)
            outcomes[index] = self._open_session(session, acquired, catch_up)

    def _open_session(self, session: Session, acquired: set[str], catch_up: Callable[[], None]) -> bool | Exception:
        """Open an admitted socket whose channels are `acquired`; False if it closed meanwhile."""
        sid, channels = session.sid, session.personal_channels
        subscribed = all(channel in acquired for channel in channels)
        if not subscribed or not self.server.is_open(sid):
            for channel in channels:
                if channel in acquired:
                    self.subscriptions.release(channel)
            if not subscribed:
                return self._refusal(AuthError(AuthCode.UNAVAILABLE, "the node cannot reach Redis"))
            return False
        self.sessions[sid] = session
        self._schedule_expiry(session)
        session.catch_up = catch_up
        self.metrics.connections.inc()
        logger.debug("connected", extra={"sid": sid, "user": session.identity.user_id})
        return True

    def _revoked(self, revocation: Revocation) -> None:
        """A control message: close the matching sockets on this node within the second."""
        for session in list(self.sessions.values()):
            identity = session.identity
            if revocation.user_id == identity.user_id or (
                revocation.token_id is not None and revocation.token_id == identity.token_id
            ):
                self._disconnect_with(session.sid, "session_revoked", AuthCode.TOKEN_REVOKED)

    def _connected(self, sid: str) -> None:
        """The CONNECT answer is queued: start the socket's catch-up (its packets follow the answer)."""
        session = self.sessions.get(sid)
        if session is not None and session.catch_up is not None:
            start, session.catch_up = session.catch_up, None
            start()

    def _start_sync(
        self, session: Session, resume: Resume, resume_valid: bool, fresh_start: str | None, topics: object
    ) -> None:
        """Send `sync` at once when the catch-up needs no Redis read (the common connect), else start its task."""
        status = self.recovery.sync_at_once(session, fresh_start) if topics is None else None
        if status is None:
            session.sync_task = self._spawn(self._sync(session, resume, resume_valid, fresh_start, topics))
            return
        status["complete"] = resume_valid and status["complete"]
        self._send_sync(session, status)

    def _send_sync(self, session: Session, status: dict[str, Any]) -> None:
        if not session.closed:
            self.recovery.reached(session, status)  # no await from here to the packet
            self.server.emit(session.sid, "sync", status)

    async def _sync(
        self,
        session: Session,
        resume: Resume,
        resume_valid: bool,
        fresh_start: str | None,
        topics: object,
    ) -> None:
        """Catch the socket up on its streams and restore its topics (runs once the CONNECT reply is queued)."""
        async with self._catching_up:
            await self._catch_up(session, resume, resume_valid, fresh_start, topics)

    async def _catch_up(
        self,
        session: Session,
        resume: Resume,
        resume_valid: bool,
        fresh_start: str | None,
        topics: object,
    ) -> None:
        try:
            status = await self.recovery.sync(session, resume, fresh_start)
            status["complete"] = resume_valid and status["complete"]
        except REDIS_ERRORS as exc:
            logger.warning("stream sync failed; live only", extra={"sid": session.sid, "error": str(exc)})
            for channel in session.personal_channels:
                if not session.closed:
                    self.server.join(session.sid, channel)
            status = {"complete": False, "error": "unavailable"}
        if topics is not None and not session.closed:
            try:
                status["subscriptions"] = await self.subscriptions.subscribe(session, topics)
            except RequestError as exc:
                status["subscriptions"] = exc.ack()
        self._send_sync(session, status)

    def _on_disconnect(self, sid: str, reason: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        session.closed = True
        session.catch_up = None  # never started (closed while connecting): its partial holds the session
        self.admission.left(sid)
        self._expiries.clear(session)
        if session.sync_task is not None:
            session.sync_task.cancel()
        self.subscriptions.release_session(session)
        self.metrics.connections.dec()
        logger.debug("disconnected", extra={"sid": sid, "reason": reason})
        if not self.accepting and not self.sessions:
            self._drained.set()

    def _schedule_expiry(self, session: Session) -> None:
        delay = session.identity.expires_at + self.config.jwt_leeway_s - time.time()
        self._expiries.set(session, max(delay, 0.0))

    def _expire(self, session: Session) -> None:
        if session.closed:
            return
        self._disconnect_with(session.sid, "session_expired", AuthCode.TOKEN_EXPIRED)

    def _disconnect_with(self, sid: str, event: str, code: AuthCode) -> None:
        """Tell the client why, then disconnect it (a server disconnect: the client does not retry by itself)."""
        messages = {
            AuthCode.TOKEN_EXPIRED: "the token expired; reconnect with a new one",
            AuthCode.TOKEN_REVOKED: "access was revoked",
        }
        self.server.emit(sid, event, {"code": code, "message": messages.get(code, str(code))})
        self.server.disconnect(sid)

    async def _on_refresh(self, sid: str, data: object) -> dict[str, object]:
        """Replace the socket's token with a fresh one for the same user."""
        session = self.sessions.get(sid)
        if session is None:
            return RequestError("not_connected", "the socket is not connected").ack()
        token = data.get("token") if isinstance(data, dict) else None
        try:
            identity = await self.admission.verify(token)
        except AuthError as exc:
            self.metrics.auth_failures.labels(exc.code).inc()
            return RequestError(str(exc.code), exc.message).ack()
        if identity.user_id != session.identity.user_id:
            return RequestError(AuthCode.FORBIDDEN, "a refresh token must be for the same user").ack()
        if set(identity.teams) != set(session.identity.teams):
            return RequestError(AuthCode.FORBIDDEN, "teams changed; reconnect with the new token").ack()
        session.identity = identity
        session.user_patterns = self.policy.user_patterns(identity.claims)
        self._schedule_expiry(session)
        return {"ok": True, "expires_at": int(identity.expires_at)}

    def _with_session(self, handler: Callable[[Session, object], Awaitable[dict[str, object]]]) -> Callable[..., Any]:
        """Adapt a request handler to a Socket.IO event handler of a connected socket."""

        async def event(sid: str, data: object) -> dict[str, object]:
            session = self.sessions.get(sid)
            if session is None:
                return RequestError("not_connected", "the socket is not connected").ack()
            try:
                return await handler(session, data)
            except RequestError as exc:
                self.metrics.client_errors.labels(exc.code).inc()
                return exc.ack()

        return event
