"""Raw clients of the edge, for the hostile suite: polling over aiohttp, WebSockets by hand."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp

from tests.harness import RawWebSocket, make_token, raw_websocket

SEPARATOR = "\x1e"


async def connected_websocket(url: str, token: str | None = None) -> RawWebSocket:
    """A raw WebSocket that completed the Engine.IO handshake and a Socket.IO CONNECT."""
    ws = await raw_websocket(url)
    assert (await ws.receive_text()).startswith("0{")
    await ws.send("40" + json.dumps({"token": token or make_token()}))
    assert (await ws.receive_text()).startswith("40{")
    return ws


async def next_text(ws: RawWebSocket, prefix: str, timeout: float = 5.0) -> str:
    """The next text message starting with `prefix`, skipping others (pings, `sync`)."""
    async with asyncio.timeout(timeout):
        while True:
            text = await ws.receive_text(timeout)
            if text.startswith(prefix):
                return text


async def close_code(ws: RawWebSocket, timeout: float = 5.0) -> int | None:
    """The code of the server's close frame, skipping text; None if it dropped the connection without one."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                opcode, payload = await ws.receive(timeout)
                if opcode == 0x8:
                    return int.from_bytes(payload[:2], "big")
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None


@dataclass
class Polling:
    """A hand-driven long-polling session."""

    http: aiohttp.ClientSession
    base: str
    sid: str

    @property
    def url(self) -> str:
        return f"{self.base}&sid={self.sid}"

    async def post(self, *packets: str) -> tuple[int, str]:
        async with self.http.post(self.url, data=SEPARATOR.join(packets).encode()) as response:
            return response.status, await response.text()

    async def get(self) -> tuple[int, list[str]]:
        async with self.http.get(self.url) as response:
            return response.status, (await response.text()).split(SEPARATOR)


async def open_polling(http: aiohttp.ClientSession, url: str) -> Polling:
    base = url + "/socket.io/?EIO=4&transport=polling"
    async with http.get(base) as response:
        assert response.status == 200, await response.text()
        sid = json.loads((await response.text())[1:])["sid"]
    return Polling(http, base, sid)
