"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.protocol.http import Request, Response

if TYPE_CHECKING:
    from gateway.node import GatewayNode

JSON = "application/json"


def respond(request: Request, node: GatewayNode) -> Response:
    """GET /healthz, /readyz or /metrics; anything else is 404 (or 405 for another method)."""
    if request.path not in ("/healthz", "/readyz", "/metrics"):
        return Response(404, b"not found")
    if request.method not in ("GET", "HEAD"):
        return Response(405, b"method not allowed", headers=[("Allow", "GET, HEAD")])
    if request.path == "/healthz":
        return Response(200, msgspec.json.encode({"status": "ok"}), content_type=JSON)
    if request.path == "/readyz":
        body = {
            "ready": node.ready,
            "accepting": node.accepting,
            "redis": node.relay.ready,
            "connections": len(node.sessions),
        }
        return Response(200 if node.ready else 503, msgspec.json.encode(body), content_type=JSON)
    return Response(200, generate_latest(node.metrics.registry), content_type=CONTENT_TYPE_LATEST)
