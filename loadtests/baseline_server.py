"""The baseline the benchmark compares against: plain python-socketio, as most teams write it.

One AsyncServer on aiohttp, JWT checked in `connect`, `subscribe` joins rooms,
and a redis-py pub/sub listener that calls ``await sio.emit(..., room=topic)``
once per Redis message. Speaks the same client contract as the gateway for the
part the benchmark uses, so the same load runs against both.

    python -m loadtests.baseline_server --port 8100 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import jwt
import redis.asyncio
import socketio
from aiohttp import web

SECRET_ENV = "GATEWAY_JWT_SECRET"


def build(secret: str, redis_url: str) -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"])
    app = web.Application()
    sio.attach(app)

    async def connect(sid: str, _environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        try:
            jwt.decode((auth or {}).get("token", ""), secret, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            return False
        return True

    async def subscribe(sid: str, topics: list[str]) -> dict[str, Any]:
        for topic in topics:
            await sio.enter_room(sid, topic)
        return {"ok": True, "results": [{"topic": topic, "ok": True} for topic in topics]}

    sio.on("connect", connect)
    sio.on("subscribe", subscribe)

    async def relay(_app: web.Application) -> Any:
        client = redis.asyncio.Redis.from_url(redis_url)
        pubsub = client.pubsub()
        await pubsub.psubscribe("md:*")

        async def listen() -> None:
            async for message in pubsub.listen():
                if message["type"] == "pmessage":
                    topic = message["channel"].decode().removeprefix("md:")
                    await sio.emit("market", (topic, json.loads(message["data"])), room=topic)

        task = asyncio.create_task(listen())
        yield
        task.cancel()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()

    async def readyz(_request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app.router.add_get("/readyz", readyz)
    app.cleanup_ctx.append(relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    web.run_app(build(os.environ[SECRET_ENV], args.redis_url), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
