"""Several "hosts" on one machine: network namespaces joined by a bridge, so traffic crosses real interfaces.

Every address lives inside the test's own namespaces (the machine's namespace gets no address, route
or interface), and every namespace name carries the creating process's id and a random token, so
parallel runs never clash and a run killed outright is recognized and removed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

T = TypeVar("T")

PREFIX: Final = "fanout-"
SUBNET: Final = "10.213.0"  # a /24 that exists only inside each run's own namespaces
CLONE_NEWNET: Final = 0x40000000
OWNER_RE: Final = re.compile(rf"^{PREFIX}(\d+)-")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (a reason to skip), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _remove_namespace(name: str) -> None:
    """Kill what still runs in a namespace of ours, then delete it."""
    for pid in _ip("netns", "pids", name).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(RuntimeError):
        _ip("netns", "del", name)


def _reap_leftovers() -> None:
    """Remove namespaces left by runs whose process is gone (killed before its cleanup ran)."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        owner = OWNER_RE.match(name)
        if owner is None or int(owner[1]) == os.getpid():
            continue
        try:
            os.kill(int(owner[1]), 0)
        except ProcessLookupError:
            _remove_namespace(name)


def _enter(netns: str) -> None:
    """Move the calling thread (only it) into `netns`: sockets it opens from now on live there."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(fd)


@dataclass
class Host:
    """One namespace on the bridge: an address (or several), processes started in it, a thread in it."""

    netns: str
    addresses: list[str]
    _thread: ThreadPoolExecutor | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return self.addresses[0]

    def argv(self, *command: str) -> list[str]:
        """`command` run in this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *command]

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking `function` in a thread that lives in this namespace (its sockets connect from here).

        One thread per host, never the loop's shared pool: a pool thread moved into a namespace would
        stay there for every later caller.
        """
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, f"netns-{self.netns}", initializer=_enter, initargs=(self.netns,))
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)


class Network:
    """A bridge namespace and the hosts plugged into it; `close` removes every one, even after a failure."""

    def __init__(self) -> None:
        _reap_leftovers()
        self.name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.bridge = f"{self.name}-br"
        self.hosts: list[Host] = []
        self._made: list[str] = []
        try:
            self._add_namespace(self.bridge)
            _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def host(self, role: str, addresses: int = 1) -> Host:
        """A new host named `role` (at most 10 characters: it names the bridge port) with `addresses` addresses."""
        first = 2 + sum(len(host.addresses) for host in self.hosts)
        if first + addresses > 255:
            raise ValueError("the /24 is full")
        netns = f"{self.name}-{role}"
        self._add_namespace(netns)
        # Made inside the bridge namespace with the peer moved straight into the host's, so no
        # interface ever appears in the machine's own namespace; names only need to be unique there.
        port = f"p-{role}"
        _ip("-n", self.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("-n", self.bridge, "link", "set", port, "master", "br0", "up")
        host = Host(netns, [f"{SUBNET}.{first + n}" for n in range(addresses)])
        for address in host.addresses:
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        for name in reversed(self._made):
            _remove_namespace(name)
        self._made.clear()


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A fresh network of namespaces, removed on exit whatever happened inside."""
    made = Network()
    try:
        yield made
    finally:
        made.close()
