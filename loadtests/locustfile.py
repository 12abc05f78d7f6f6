"""Locust users that speak Socket.IO to a gateway, and a publisher that stamps what they receive.

Each user holds one WebSocket (a minimal Engine.IO v4 / Socket.IO v5 client, so
thousands fit in one locust process), connects with a JWT and reports to
locust's statistics:

* ``connect``: WebSocket open to Socket.IO CONNECT acknowledged;
* ``subscribe``: subscribe request to its ack;
* ``market`` / ``notification``: publish-to-receive latency of every message,
  from the stamp the publisher put in it (``recv_ts`` / ``created_at``).

When ``REDIS_URL`` is set, the process that runs the test (local or master) also
publishes market events and notifications at ``PUBLISH_RATE`` per second.
See loadtests/README.md for how to run it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import gevent
import jwt
import websocket
from locust import User, between, events, task
from locust.env import Environment

from shared.events import Notification, NotificationType, Side, Ticker, Trade
from shared.publisher import SyncPublisher
from shared.redis_target import RedisTarget
from shared.topics import Exchange

SECRET = os.environ.get("GATEWAY_JWT_SECRET", "loadtest-secret-loadtest-secret-01")
TOPICS = os.environ.get("LOAD_TOPICS", "binance:ticker:BTC/USDT,binance:trades:BTC/USDT").split(",")
PUBLISH_RATE = float(os.environ.get("PUBLISH_RATE", "50"))
NOTIFIED_USERS = int(os.environ.get("NOTIFIED_USERS", "20"))
# Notification ids are unique per user (a republished id is not delivered again): one prefix per run.
RUN_ID = os.urandom(4).hex()


class SocketIOClient:
    """Just enough Socket.IO over WebSocket for load: connect, call with ack, receive events."""

    def __init__(self, user: User, user_id: str) -> None:
        self._user = user
        self._user_id = user_id
        self._ws: websocket.WebSocket | None = None
        self._ack_id = 0
        self._acks: dict[int, tuple[str, float]] = {}
        self._reader: gevent.Greenlet | None = None

    def _fire(self, name: str, started: float, *, exception: Exception | None = None, length: int = 0) -> None:
        self._user.environment.events.request.fire(
            request_type="socketio",
            name=name,
            response_time=(time.time() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    def connect(self, host: str) -> bool:
        started = time.time()
        url = host.replace("http", "ws", 1).rstrip("/") + "/socket.io/?EIO=4&transport=websocket"
        token = jwt.encode({"sub": self._user_id, "exp": int(time.time()) + 3600}, SECRET)
        try:
            self._ws = websocket.create_connection(url, timeout=10)
            self._ws.recv()  # Engine.IO OPEN
            self._ws.send("40" + json.dumps({"token": token}))
            reply = self._connect_reply()
            if not reply.startswith("40"):
                raise ConnectionError(f"refused: {reply[:200]}")
        except Exception as exc:  # every failure is a locust failure, not a crash
            self._fire("connect", started, exception=exc)
            return False
        self._fire("connect", started)
        self._reader = gevent.spawn(self._read)
        return True

    def _connect_reply(self) -> str:
        """The CONNECT's answer (40... or 44...): an Engine.IO PING may come first under load (answered here)."""
        assert self._ws is not None
        while True:
            frame = str(self._ws.recv())
            if frame == "2":
                self._ws.send("3")
            elif frame.startswith(("40", "44")) or not frame.startswith("4"):
                return frame

    def call(self, event: str, data: Any) -> None:
        assert self._ws is not None
        self._ack_id += 1
        self._acks[self._ack_id] = (event, time.time())
        self._ws.send(f"42{self._ack_id}" + json.dumps([event, data]))

    def close(self) -> None:
        # The reader first, and waited for: two greenlets reading one socket (the reader, and
        # close() waiting for the server's close frame) could each take the other's frames.
        if self._reader is not None:
            self._reader.kill(block=True, timeout=2)
        if self._ws is not None:
            self._ws.close(timeout=1)

    def _read(self) -> None:
        assert self._ws is not None
        while True:
            try:
                frame = str(self._ws.recv())
            except Exception:  # the socket closed: the reader ends
                return
            if frame == "2":
                self._ws.send("3")  # Engine.IO pong
            elif frame.startswith("42["):
                self._on_event(frame)
            elif frame.startswith("43"):
                self._on_ack(frame)

    def _on_event(self, frame: str) -> None:
        name, *args = json.loads(frame[2:])
        now = time.time() * 1000
        if name == "market":
            stamp = args[1]["recv_ts"]
        elif name == "notification":
            stamp = args[0]["created_at"]
        else:
            return
        self._user.environment.events.request.fire(
            request_type="socketio",
            name=name,
            response_time=max(0.0, now - stamp),
            response_length=len(frame),
            exception=None,
            context={},
        )

    def _on_ack(self, frame: str) -> None:
        ack_id = int(frame[2 : frame.index("[")])
        event, started = self._acks.pop(ack_id, ("ack", time.time()))
        reply = json.loads(frame[frame.index("[") :])[0]
        error = None if reply.get("ok") else RuntimeError(str(reply.get("error")))
        self._fire(event, started, exception=error, length=len(frame))


class MarketWatcher(User):
    """Subscribes to market topics and watches them."""

    weight = 3
    wait_time = between(1, 2)

    def on_start(self) -> None:
        self.client = SocketIOClient(self, f"watcher-{id(self)}")
        if self.client.connect(self.host or ""):
            self.client.call("subscribe", TOPICS)

    def on_stop(self) -> None:
        self.client.close()

    @task
    def watch(self) -> None:
        """Messages arrive on the reader greenlet; this only keeps the user alive."""


class NotificationReceiver(User):
    """Receives the notifications the publisher sends to users notified-0 .. notified-N."""

    weight = 1
    wait_time = between(1, 2)

    def on_start(self) -> None:
        self.client = SocketIOClient(self, f"notified-{id(self) % NOTIFIED_USERS}")
        self.client.connect(self.host or "")

    def on_stop(self) -> None:
        self.client.close()

    @task
    def count_unread(self) -> None:
        self.client.call("notifications:unread", None)


class ConnectionChurn(User):
    """Connects, subscribes and leaves, over and over."""

    weight = 1
    wait_time = between(0.5, 1)

    @task
    def churn(self) -> None:
        client = SocketIOClient(self, f"churn-{id(self)}")
        if client.connect(self.host or ""):
            client.call("subscribe", TOPICS[:1])
            gevent.sleep(0.2)
        client.close()


def _publish(redis_url: str) -> None:
    """Publish stamped market events and notifications until the test stops."""
    publisher = SyncPublisher(RedisTarget.parse(redis_url).sync_client())
    seq = 0
    while True:
        seq += 1
        now = time.time() * 1000
        publisher.publish_market(
            [
                Ticker(
                    exchange=Exchange.BINANCE,
                    symbol="BTC/USDT",
                    ts=int(now),
                    recv_ts=now,
                    seq=seq,
                    bid="1.0",
                    ask="1.1",
                ),
                Trade(
                    exchange=Exchange.BINANCE,
                    symbol="BTC/USDT",
                    ts=int(now),
                    recv_ts=now,
                    seq=seq,
                    trade_id=str(seq),
                    price="1.05",
                    size="0.1",
                    side=Side.BUY,
                ),
            ]
        )
        publisher.publish(
            Notification(
                id=f"n{RUN_ID}-{seq}",
                user_id=f"notified-{seq % NOTIFIED_USERS}",
                type=NotificationType.INFO,
                title="load",
                message="test",
                created_at=int(now),
            )
        )
        gevent.sleep(1 / PUBLISH_RATE)


_publishers: list[gevent.Greenlet] = []


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def start_publisher(environment: Environment, **_kwargs: Any) -> None:
    """The local or master process publishes (workers only receive)."""
    redis_url = os.environ.get("REDIS_URL")
    is_worker = bool(environment.parsed_options and environment.parsed_options.worker)
    if redis_url and not is_worker:
        _publishers.append(gevent.spawn(_publish, redis_url))


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def stop_publisher(**_kwargs: Any) -> None:
    for greenlet in _publishers:
        greenlet.kill(block=False)
    _publishers.clear()
