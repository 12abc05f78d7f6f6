"""The gateway's own pages, with no build step: a demo at `/` and a status page at `/status`.

The files live in `gateway/static/` (the official socket.io-client's browser
bundle is vendored there, MIT) and are read once at start-up. The status
page's data, `/status.json`, shows every node and collector: outside the
local stack it needs `Authorization: Bearer <GATEWAY_ADMIN_TOKEN>` (without a
token configured it is off), unless `GATEWAY_STATUS_OPEN` opens it.
"""

from __future__ import annotations

import hmac
from importlib import resources
from typing import Final

import msgspec

from gateway.protocol.http import Request, Response
from gateway.status_board import StatusBoard
from shared.redis_target import REDIS_ERRORS

# Path -> (file in gateway/static, content type).
FILES: Final = {
    "/": ("demo.html", "text/html; charset=utf-8"),
    "/status": ("status.html", "text/html; charset=utf-8"),
    "/assets/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/assets/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/assets/table.js": ("table.js", "text/javascript; charset=utf-8"),
    "/assets/style.css": ("style.css", "text/css; charset=utf-8"),
    "/assets/socket.io.min.js": ("socket.io.min.js", "text/javascript; charset=utf-8"),
}
STATUS_JSON: Final = "/status.json"
# The pages run only this node's own scripts and talk only to it.
HEADERS: Final = [
    ("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
]
JSON: Final = "application/json"


class Pages:
    """Serves the pages and the status JSON."""

    def __init__(self, board: StatusBoard, *, admin_token: str, status_open: bool) -> None:
        self._board = board
        self._admin_token = admin_token
        self._status_open = status_open
        static = resources.files("gateway") / "static"
        self._files = {path: (static.joinpath(name).read_bytes(), kind) for path, (name, kind) in FILES.items()}

    def serves(self, path: str) -> bool:
        return path in self._files or path == STATUS_JSON

    async def respond(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed", headers=[("Allow", "GET, HEAD")])
        if request.path != STATUS_JSON:
            body, kind = self._files[request.path]
            return Response(200, body, content_type=kind, headers=HEADERS)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        try:
            snapshot = await self._board.snapshot()
        except REDIS_ERRORS:
            return _json(503, {"error": "Redis is unreachable; the status cannot be read"})
        return _json(200, snapshot)

    def _refusal(self, request: Request) -> Response | None:
        if self._status_open:
            return None
        if not self._admin_token:
            return _json(403, {"error": "the status page is off: set GATEWAY_ADMIN_TOKEN"})
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._admin_token.encode()):
            return _json(401, {"error": "send Authorization: Bearer <GATEWAY_ADMIN_TOKEN>"})
        return None


def _json(status: int, body: object) -> Response:
    return Response(status, msgspec.json.encode(body), content_type=JSON, headers=HEADERS)
