"""Several hosts: Redis, two gateway nodes, nginx, a backend and the clients each on a network namespace of
their own, so every message crosses veths and a bridge as it would cross a network.

The clients are the official socket.io-client (one node process, many sockets, from twenty addresses);
the backend publishes with shared.publisher from its own host. Under that load both nodes are restarted
in turn with SIGTERM, as a rolling deploy does, and afterwards every client is connected, has received
each of its notifications and its teams' execution updates exactly once and in order, and gets market
data again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import redis

from shared.embedded_redis import find_server_binary
from shared.events import ExecutionStatus, ExecutionUpdate, Notification, NotificationType, Ticker
from shared.publisher import SyncPublisher
from shared.topics import Exchange
from stack.balancer import nginx_binary, render
from tests.harness import SECRET, make_token
from tests.netns import Host, Network, network, unavailable

pytestmark = pytest.mark.e2e

JS_DIR: Final = Path(__file__).parent / "js"
CLIENTS: Final = 100
CLIENT_ADDRESSES: Final = 20  # enough that hashing by address puts clients on both nodes
TEAMS: Final = 4
TOPIC: Final = "binance:ticker:BTC/USDT"
GATEWAY_PORT: Final = 8000
NGINX_PORT: Final = 8080
# Per-address bursts below what one address would need if the nodes saw nginx's address for every
# client (about 50 connects each at the start): the test fails unless X-Forwarded-For is honored.
BURST_PER_ADDRESS: Final = 20
DEADLINE_S: Final = 20.0  # for each thing awaited; the whole test takes far less on an idle machine


@pytest.fixture
def hosts() -> Iterator[Network]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"several hosts need network namespaces: {reason}")
    with network() as made:
        yield made


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """A blocking GET (run on a host's thread): status and JSON body, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


async def settle(condition: Callable[[], object], what: Callable[[], str], timeout: float = DEADLINE_S) -> None:
    """Wait until `condition()` holds; past the deadline fail with `what()` (the state that is wrong)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what()}")
        await asyncio.sleep(0.05)


async def every_client(seen: list[Seen], condition: Callable[[int, Seen], bool], what: str) -> None:
    """Wait until `condition(index, client)` holds for every client; name those it does not hold for."""

    def lagging() -> list[int]:
        return [c for c, client in enumerate(seen) if not condition(c, client)]

    await settle(lambda: not lagging(), lambda: f"clients {lagging()[:20]} are not {what}")


async def serving(probe: Host, url: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
    """Wait until `url` answers 200 (asked from `probe`), and return its body."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await probe.call(get_json, url)
        if status == 200:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} answers {status} {body} after {timeout}s")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def process(argv: list[str], log: Path, **options: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """A process that is killed on exit if still running; its output goes to `log` (unless piped)."""
    with log.open("ab") as output:
        started = await asyncio.create_subprocess_exec(*argv, **{"stdout": output, "stderr": output, **options})
    try:
        yield started
    finally:
        if started.returncode is None:
            started.kill()
            await started.wait()


@dataclass
class Gateway:
    """One gateway node on its own host, started again after each stop (a rolling deploy)."""

    host: Host
    redis_url: str
    log: Path
    running: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:{GATEWAY_PORT}"

    async def start(self, probe: Host) -> None:
        env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "GATEWAY_JWT_SECRET": SECRET,
            "GATEWAY_HOST": self.host.address,
            "GATEWAY_PORT": str(GATEWAY_PORT),
            "GATEWAY_NODE_ID": self.host.netns,
            "GATEWAY_SHUTDOWN_TIMEOUT_S": "5",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_TRUST_FORWARDED_FOR": "true",
            "GATEWAY_CONNECT_BURST_PER_IP": str(BURST_PER_ADDRESS),
            "GATEWAY_HANDSHAKE_BURST_PER_IP": str(BURST_PER_ADDRESS),
        }
        with self.log.open("ab") as stderr:
            self.running = await asyncio.create_subprocess_exec(
                *self.host.argv(sys.executable, "-m", "gateway"), env=env, stderr=stderr
            )
        await serving(probe, f"{self.url}/readyz")

    async def stop(self) -> None:
        """SIGTERM: the node drains its clients (they reconnect through nginx) and exits cleanly."""
        assert self.running is not None
        self.running.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.running.wait(), DEADLINE_S) == 0, self.log.read_text()[-2000:]

    async def close(self) -> None:
        if self.running is not None and self.running.returncode is None:
            self.running.kill()
            await self.running.wait()


@dataclass
class Seen:
    """What one client has seen, from the fleet's lines."""

    connected: bool = False
    connects: int = 0
    notifications: list[str] = field(default_factory=list)
    executions: list[str] = field(default_factory=list)
    market: int = -1  # the newest ticker seq
    syncs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # every line but market data, for failures

    def told(self) -> str:
        return "\n".join(json.dumps(line) for line in self.history)

    def take(self, line: dict[str, Any]) -> None:
        if line["e"] != "market":
            self.history.append(line)
        match line["e"]:
            case "connect":
                self.connected, self.connects = True, self.connects + 1
            case "disconnect":
                self.connected = False
            case "connect_error":
                self.errors.append(line["message"])
            case "sync":
                self.syncs.append(line["status"])
            case "notification":
                self.notifications.append(line["id"])
            case "execution":
                self.executions.append(line["id"])
            case "market":
                self.market = max(self.market, line["seq"])


@asynccontextmanager
async def fleet(client_host: Host, url: str, log: Path) -> AsyncIterator[list[Seen]]:
    """The clients, run by node on the client host; the list fills in as they report."""
    node = shutil.which("node")
    assert node, "node is required (test.sh installs it)"
    assert (JS_DIR / "node_modules" / "socket.io-client").is_dir(), "run `npm ci` in tests/e2e/js (test.sh does)"
    spec = [
        {
            "token": make_token(sub=f"u{c}", teams=[f"t{c % TEAMS}"], exp_in=600),
            # Half take the client's default path (long-polling, then an upgrade), which works only
            # if nginx keeps each client on one node.
            "transport": "websocket" if c % 2 else "upgrade",
            "address": client_host.addresses[c % CLIENT_ADDRESSES],
            "topics": [TOPIC],
        }
        for c in range(CLIENTS)
    ]
    seen = [Seen() for _ in range(CLIENTS)]
    argv = client_host.argv(node, str(JS_DIR / "fleet.mjs"), url, json.dumps(spec))
    async with process(argv, log, cwd=JS_DIR, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE) as run:
        assert run.stdout is not None and run.stdin is not None

        async def read() -> None:
            assert run.stdout is not None
            while line := await run.stdout.readline():
                record = json.loads(line)
                seen[record["c"]].take(record)

        reader = asyncio.create_task(read())
        try:
            yield seen
        finally:
            run.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.wait(), 5)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@dataclass
class Backend:
    """Publishes numbered notifications to every client's user, execution updates to every team and
    tickers, paced, until told to stop; run on the backend host's thread."""

    redis_url: str
    stop: threading.Event = field(default_factory=threading.Event)
    notifications: dict[str, list[str]] = field(default_factory=dict)
    executions: dict[str, list[str]] = field(default_factory=dict)
    ticker_seq: int = 0

    def notifications_of(self, client: int) -> list[str]:
        return self.notifications.get(f"u{client}", [])

    def executions_of(self, client: int) -> list[str]:
        return self.executions.get(f"t{client % TEAMS}", [])

    def run(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        publisher = SyncPublisher(client)
        tick = 0
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                now_ms = int(time.time() * 1000)
                user = f"u{tick % CLIENTS}"
                sent = self.notifications.setdefault(user, [])
                ident = f"{user}-{len(sent)}"
                publisher.publish(
                    Notification(
                        id=ident, user_id=user, type=NotificationType.INFO, title="t", message="m", created_at=now_ms
                    )
                )
                sent.append(ident)
                if tick % 10 == 0:  # 10 execution updates per second, one team after the other
                    team = f"t{tick // 10 % TEAMS}"
                    updates = self.executions.setdefault(team, [])
                    version = len(updates) + 1
                    publisher.publish(
                        ExecutionUpdate(
                            execution_id=f"{team}-run",
                            team_id=team,
                            status=ExecutionStatus.RUNNING,
                            progress=version % 100,
                            updated_at=now_ms,
                            version=version,
                        )
                    )
                    updates.append(f"{team}-run/{version}")
                if tick % 20 == 0:  # 5 tickers per second
                    self.ticker_seq += 1
                    publisher.publish_market(
                        [
                            Ticker(
                                exchange=Exchange.BINANCE,
                                symbol="BTC/USDT",
                                ts=now_ms,
                                recv_ts=time.time(),
                                seq=self.ticker_seq,
                                last="37000.5",
                            )
                        ]
                    )
                tick += 1
                next_at += 0.01  # 100 notifications per second in all
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            client.close()


async def test_rolling_restart_across_hosts_loses_nothing(hosts: Network, tmp_path: Path) -> None:
    redis_host = hosts.host("redis")
    gateway_hosts = [hosts.host("gw-a"), hosts.host("gw-b")]
    balancer_host = hosts.host("nginx")
    backend_host = hosts.host("backend")
    client_host = hosts.host("clients", CLIENT_ADDRESSES)

    redis_url = f"redis://{redis_host.address}:6379/0"
    redis_argv = redis_host.argv(
        *(find_server_binary(), "--bind", redis_host.address, "--port", "6379", "--protected-mode", "no"),
        *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
    )
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    conf = nginx_dir / "nginx.conf"
    conf.write_text(
        render(
            NGINX_PORT,
            [(host.address, GATEWAY_PORT) for host in gateway_hosts],
            nginx_dir,
            listen_host=balancer_host.address,
        )
    )
    nginx_argv = balancer_host.argv(nginx_binary(), "-p", str(nginx_dir), "-c", str(conf), "-g", "daemon off;")
    url = f"http://{balancer_host.address}:{NGINX_PORT}"
    gateways = [Gateway(host, redis_url, tmp_path / f"gateway-{n}.log") for n, host in enumerate(gateway_hosts)]
    backend = Backend(redis_url)

    async def per_node() -> list[int]:
        answers = [await client_host.call(get_json, f"{gateway.url}/readyz") for gateway in gateways]
        return [int(body.get("connections", -1)) for _, body in answers]

    async with process(redis_argv, tmp_path / "redis.log"), process(nginx_argv, tmp_path / "nginx.log"):
        try:
            for gateway in gateways:
                await gateway.start(client_host)
            await serving(client_host, f"{url}/healthz")
            async with fleet(client_host, url, tmp_path / "fleet.log") as seen:
                await every_client(seen, lambda _, client: len(client.syncs) == 1, "connected and synced")
                # Hashing by whole client address spreads the twenty addresses over both hosts.
                assert all(n > 0 for n in await per_node()), await per_node()

                publishing = asyncio.ensure_future(backend_host.call(backend.run))
                try:
                    await settle(lambda: backend.ticker_seq >= 2, lambda: "the backend publishes nothing")
                    for n, gateway in enumerate(gateways):
                        expected = sum(client.connects for client in seen) + (await per_node())[n]
                        await gateway.stop()
                        # Its clients are back, on the other node.
                        await settle(
                            lambda: sum(client.connects for client in seen) >= expected,  # noqa: B023 - awaited here
                            lambda: f"{sum(client.connects for client in seen)} connects of {expected}",  # noqa: B023
                        )
                        await every_client(seen, lambda _, client: client.connected, "connected")
                        await gateway.start(client_host)
                    mark = backend.ticker_seq
                    await every_client(seen, lambda _, client: client.market > mark, "receiving market data")
                finally:
                    backend.stop.set()
                    await publishing

                await every_client(
                    seen,
                    lambda c, client: (
                        len(client.notifications) >= len(backend.notifications_of(c))
                        and len(client.executions) >= len(backend.executions_of(c))
                    ),
                    "caught up",
                )
                for c, client in enumerate(seen):
                    assert client.notifications == backend.notifications_of(c), client.told()
                    assert client.executions == backend.executions_of(c), client.told()
                    assert client.connected and not client.errors, (c, client.errors)
                    # Every reconnect was a complete recovery: nothing trimmed, nothing given up.
                    for status in client.syncs:
                        assert status["notifications"]["complete"], (c, status)
                        assert all(team["complete"] for team in status["executions"].values()), (c, status)
                assert sum(await per_node()) == CLIENTS
        finally:
            for gateway in gateways:
                await gateway.close()
