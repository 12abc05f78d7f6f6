"""The admin HTTP API of one collector (aiohttp).

    GET    /status          the status record also published to Redis
    POST   /subscriptions   {"topics": ["binance:ticker:BTC/USDT"]} or {"symbols": [...], "channels": [...]}
    DELETE /subscriptions   the same body; unsubscribes
    GET    /metrics         Prometheus text, from this collector's own registry
    GET    /healthz         200 while running, 503 once terminated

It can make the collector open exchange connections, which the exchange
limits per address, so changes are guarded: they need `Authorization:
Bearer <COLLECTOR_ADMIN_TOKEN>` (without a configured token they are off)
and a JSON body, add at most `MAX_TOPICS_PER_REQUEST` topics at a time and
never more than `max_topics` in all. Every request must name an allowed Host
(loopback names and `COLLECTOR_ADMIN_HOSTS`: no DNS rebinding) and carry no
Origin but an allowed one (no cross-site request from an operator's browser).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collectors.config import ConfigError, topics_from
from collectors.feed.adapter import SubscriptionError
from collectors.feed.collector import Collector
from collectors.metrics import CollectorMetrics
from shared.status import ConnectionState, encode_status
from shared.topics import Topic

MAX_BODY_BYTES: Final = 64 * 1024
# Topics one request may add: a few exchange subscribe messages' worth, never a burst of new connections.
MAX_TOPICS_PER_REQUEST: Final = 50
LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]")


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    topics: list[str] = []
    symbols: list[str] = []
    channels: list[str] = []


_body_decoder: Final = msgspec.json.Decoder(_Body)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@dataclass(frozen=True, slots=True)
class AdminGuard:
    """Who may use the admin API: a token for changes, allowed Host names and Origins, a topic cap."""

    token: str = ""
    hosts: tuple[str, ...] = ()  # besides the loopback names
    origins: tuple[str, ...] = ()
    max_topics: int = 200

    def refusal(self, request: web.Request) -> web.Response | None:
        """Why `request` may not go on (checked for every request), or None."""
        host = (request.headers.get("Host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in LOOPBACK_HOSTS and name not in self.hosts:
            return _error(421, f"host {host[:100]!r} is not one this API answers to (COLLECTOR_ADMIN_HOSTS)")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.origins:
            return _error(403, "requests from web pages are refused (COLLECTOR_ADMIN_ORIGINS)")
        if request.method in ("GET", "HEAD"):
            return None
        return self._change_refusal(request)

    def _change_refusal(self, request: web.Request) -> web.Response | None:
        if not self.token:
            return _error(403, "changes are off: set COLLECTOR_ADMIN_TOKEN to allow them")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return _error(401, "send Authorization: Bearer <COLLECTOR_ADMIN_TOKEN>")
        if request.content_type != "application/json":
            return _error(415, "send the body as application/json")
        return None


class AdminApi:
    """Routes bound to one collector and its metrics."""

    def __init__(self, collector: Collector, metrics: CollectorMetrics, guard: AdminGuard) -> None:
        self._collector = collector
        self._metrics = metrics
        self._guard = guard

        @web.middleware
        async def guarded(request: web.Request, handler: Any) -> web.StreamResponse:
            refusal = guard.refusal(request)
            if refusal is not None:
                metrics.admin_refusals.labels(str(refusal.status)).inc()
                return refusal
            response: web.StreamResponse = await handler(request)
            return response

        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[guarded])
        self.app.router.add_get("/status", self.status)
        self.app.router.add_post("/subscriptions", self.subscribe)
        self.app.router.add_delete("/subscriptions", self.unsubscribe)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/healthz", self.healthz)

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(body=encode_status(self._collector.status()), content_type="application/json")

    async def subscribe(self, request: web.Request) -> web.Response:
        topics = await self._topics(request)
        if isinstance(topics, web.Response):
            return topics
        new = set(topics) - set(self._collector.topics)
        if len(new) > MAX_TOPICS_PER_REQUEST:
            return _error(413, f"add at most {MAX_TOPICS_PER_REQUEST} topics per request")
        if len(self._collector.topics) + len(new) > self._guard.max_topics:
            return _error(409, f"this collector serves at most {self._guard.max_topics} topics (COLLECTOR_MAX_TOPICS)")
        try:
            added = self._collector.add(topics)
        except SubscriptionError as exc:
            return _error(400, str(exc))
        return self._result("added", added)

    async def unsubscribe(self, request: web.Request) -> web.Response:
        topics = await self._topics(request)
        if isinstance(topics, web.Response):
            return topics
        return self._result("removed", self._collector.remove(topics))

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        state = self._collector.state
        code = 503 if state is ConnectionState.TERMINATED else 200
        return web.json_response({"state": str(state)}, status=code)

    async def _topics(self, request: web.Request) -> list[Topic] | web.Response:
        try:
            body = _body_decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            return _error(400, f"bad request body: {exc}")
        exchange = self._collector.adapter.exchange
        try:
            topics = topics_from(exchange, body.symbols, body.channels) if body.symbols or body.channels else []
            for text in body.topics:
                topic = Topic.parse(text)
                if topic.exchange is not exchange:
                    raise ConfigError(f"{text}: this collector serves {exchange}")
                topics.append(topic)
        except ValueError as exc:
            return _error(400, str(exc))
        if not topics:
            return _error(400, "name some topics, or symbols and channels")
        return topics

    def _result(self, verb: str, changed: list[Topic]) -> web.Response:
        payload: dict[str, Any] = {
            verb: [str(topic) for topic in changed],
            "topics": sorted(str(topic) for topic in self._collector.topics),
        }
        return web.json_response(payload)


async def start_admin(api: AdminApi, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Listen on `host`:`port` (0: any free port); returns the runner and the bound port."""
    runner = web.AppRunner(api.app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner, int(runner.addresses[0][1])
