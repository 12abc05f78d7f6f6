"""Which Redis channels each socket holds, and the topic subscriptions clients ask for.

The node subscribes in Redis to a channel while any of its sockets needs it
(`acquire_all` / `release`, counted by the relay). A topic subscription adds
the snapshot-on-subscribe: the latest value goes to the socket and the socket
joins the room with no await in between, so it sees no gap and no older value.
"""

from __future__ import annotations

import logging
from typing import Final

from gateway.config import GatewayConfig
from gateway.demand import Demand
from gateway.errors import RequestError
from gateway.fanout import Fanout
from gateway.metrics import GatewayMetrics
from gateway.policy import TopicPolicy
from gateway.protocol.sio import SocketIOServer
from gateway.relay import Relay
from gateway.sessions import Session
from shared import names
from shared.errors import TopicError
from shared.redis_target import REDIS_ERRORS, AsyncClient, get_many
from shared.topics import Topic

logger = logging.getLogger(__name__)


class TopicResult:
    """Per-topic outcomes of subscribe and unsubscribe (client contract)."""

    INVALID_TOPIC: Final = "invalid_topic"
    FORBIDDEN: Final = "forbidden"
    LIMIT_REACHED: Final = "limit_reached"
    UNAVAILABLE: Final = "unavailable"


def _result(topic: object, error: str | None = None, message: str | None = None) -> dict[str, object]:
    """One topic's outcome, the requested item echoed as it came."""
    if error is None:
        return {"topic": topic, "ok": True}
    return {"topic": topic, "ok": False, "error": error, "message": message or error}


class Subscriptions:
    """Channel interest of the node's sockets, and the subscribe / unsubscribe requests."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        server: SocketIOServer,
        relay: Relay,
        fanout: Fanout,
        policy: TopicPolicy,
        client: AsyncClient,
        metrics: GatewayMetrics,
        demand: Demand,
    ) -> None:
        self.config = config
        self.demand = demand
        self.server = server
        self.relay = relay
        self.fanout = fanout
        self.policy = policy
        self.redis = client
        self.metrics = metrics

    def _topics_of(self, data: object) -> list[object]:
        if not isinstance(data, list):
            raise RequestError("bad_request", "send a list of topic strings")
        if len(data) > self.config.max_topics_per_request:
            raise RequestError("bad_request", f"at most {self.config.max_topics_per_request} topics per request")
        return data

    async def subscribe(self, session: Session, data: object) -> dict[str, object]:
        """A subscribe request's answer (also used for the topics a reconnecting client restores)."""
        requested = self._topics_of(data)
        results: list[dict[str, object]] = []
        wanted: dict[str, Topic] = {}
        for item in requested:
            try:
                topic = Topic.parse(item)
            except TopicError as exc:
                results.append(_result(item, TopicResult.INVALID_TOPIC, str(exc)))
                continue
            text = str(topic)
            if text in session.topics or text in session.pending:
                results.append(_result(text))
            elif not self.policy.allows(text, session.user_patterns):
                results.append(_result(text, TopicResult.FORBIDDEN, "this token may not subscribe to that topic"))
            elif session.reserved() >= self.config.max_subscriptions:
                results.append(
                    _result(
                        text,
                        TopicResult.LIMIT_REACHED,
                        f"at most {self.config.max_subscriptions} subscriptions per socket",
                    )
                )
            else:
                session.pending.add(text)
                wanted[text] = topic
                results.append(_result(text))
        if wanted:
            failed = await self._subscribe(session, list(wanted.values()))
            for index, result in enumerate(results):
                if result["ok"] and result["topic"] in failed:
                    results[index] = _result(
                        result["topic"], TopicResult.UNAVAILABLE, "the node cannot reach Redis; retry"
                    )
        await self._tell_collected(results)
        return {"ok": True, "results": results}

    async def _tell_collected(self, results: list[dict[str, object]]) -> None:
        """Add `collected` to each subscribed topic's result; lease those no collector serves (on demand)."""
        uncollected = []
        for result in results:
            collected = self.demand.collected(str(result["topic"])) if result["ok"] else None
            if collected is not None:
                result["collected"] = collected
                if not collected:
                    uncollected.append(str(result["topic"]))
        if uncollected:
            try:
                await self.demand.lease(uncollected)
            except REDIS_ERRORS as exc:
                logger.warning("could not lease topics for collection", extra={"error": str(exc)})

    async def _subscribe(self, session: Session, topics: list[Topic]) -> set[str]:
        """Subscribe `session` to `topics`; returns the topics that could not be subscribed."""
        channels = [names.market_channel(topic) for topic in topics]
        try:
            acquired = await self.acquire_all(channels)
            try:
                snapshots = [t for t, c in zip(topics, channels, strict=True) if c in acquired and t.has_snapshot]
                await self._load_latest(snapshots)
            except BaseException:
                for channel in acquired:  # no topic may stay subscribed in Redis on a failed request
                    self._release_topic(channel.removeprefix(names.MARKET_PREFIX))
                raise
        finally:
            session.pending.difference_update(str(topic) for topic in topics)
        if session.closed:
            for channel in acquired:
                self._release_topic(channel.removeprefix(names.MARKET_PREFIX))
            return set()
        failed = set()
        for topic, channel in zip(topics, channels, strict=True):
            if channel not in acquired:
                failed.add(str(topic))
                continue
            # No await between the snapshot and joining the room: nothing can
            # slip in between, so the client sees no gap and no older value.
            latest = self.fanout.latest(channel)
            if latest is not None:
                self.server.send(session.sid, latest, conflate_key=channel)
            self.server.join(session.sid, channel)
            session.topics.add(str(topic))
        self.metrics.subscriptions.inc(len(topics) - len(failed))
        return failed

    async def unsubscribe(self, session: Session, data: object) -> dict[str, object]:
        requested = self._topics_of(data)
        results = []
        for item in requested:
            try:
                text = str(Topic.parse(item))
            except TopicError as exc:
                results.append(_result(item, TopicResult.INVALID_TOPIC, str(exc)))
                continue
            if text in session.topics:
                session.topics.discard(text)
                self.server.leave(session.sid, names.market_channel(text))
                self._release_topic(text)
                self.metrics.subscriptions.dec()
            results.append(_result(item))
        return {"ok": True, "results": results}

    def release_session(self, session: Session) -> None:
        """Drop every channel a closed socket held: its user's, its teams' and its topics'."""
        for channel in session.personal_channels:
            self.release(channel)
        for topic in session.topics:
            self._release_topic(topic)
        self.metrics.subscriptions.dec(len(session.topics))

    def _release_topic(self, topic: str) -> None:
        self.release(names.market_channel(topic))

    def release(self, channel: str) -> None:
        self.relay.release(channel)
        if not self.relay.wants(channel):
            self.fanout.forget(channel)
            if channel.startswith(names.MARKET_PREFIX):
                self.demand.release(channel.removeprefix(names.MARKET_PREFIX))

    async def acquire_all(self, channels: list[str]) -> set[str]:
        """Subscribe the channels in Redis; returns those confirmed in time (the others are not held)."""
        acquired = await self.relay.acquire(channels)
        for channel in channels:
            if channel not in acquired:
                logger.warning("redis subscribe timed out", extra={"channel": channel})
        return acquired

    async def _load_latest(self, topics: list[Topic]) -> None:
        """Read latest values the node has not seen live yet."""
        channels = [names.market_channel(t) for t in topics]
        missing = [(t, c) for t, c in zip(topics, channels, strict=True) if self.fanout.latest(c) is None]
        if not missing:
            return
        try:
            values = await get_many(self.redis, [names.latest_key(t) for t, _ in missing])
        except REDIS_ERRORS as exc:
            logger.warning("latest values unavailable", extra={"error": str(exc)})
            return
        for (_, channel), value in zip(missing, values, strict=True):
            if isinstance(value, bytes):
                self.fanout.remember(channel, value)
