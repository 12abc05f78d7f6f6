"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from gateway.node import GatewayNode


def add_routes(app: web.Application, node: GatewayNode) -> None:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        body = {
            "ready": node.ready,
            "accepting": node.accepting,
            "redis": node.relay.ready,
            "connections": len(node.sessions),
        }
        return web.json_response(body, status=200 if node.ready else 503)

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(node.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
