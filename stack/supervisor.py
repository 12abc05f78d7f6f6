"""Runs the system's processes as children: restarts one that dies, stops them all together.

One crashed process must not take the others down with it (a collector's
crash would otherwise disconnect every client). A child that exits on its own
is restarted after a capped, jittered backoff (0.5 s doubling to 30 s, reset
once it has stayed up 30 s), however often it dies: a crash-looping child is
retried at the cap for as long as the stack runs, each exit logged and
counted. A stop signal stops every child in reverse start order, each within
the drain grace. Each child leads a process group of its own, so what it
leaves behind when killed (nginx's workers hold the listening port) is killed
with it before the restart, and a terminal's Ctrl-C reaches only the stack,
which stops the children in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from collectors.feed.backoff import Backoff

logger = logging.getLogger(__name__)

RESTART_INITIAL_S: Final = 0.5
RESTART_MAX_S: Final = 30.0
STABLE_S: Final = 30.0  # a child up this long has its restart backoff reset
# Longer than a gateway's drain deadline (GATEWAY_SHUTDOWN_TIMEOUT_S, 10 s by default), so a drain is never cut short.
STOP_GRACE_S: Final = 15.0
PR_SET_PDEATHSIG: Final = 1  # prctl(2): the signal a process gets when its parent dies


@dataclass(frozen=True, slots=True)
class Service:
    """One child process: a name for the logs, its argv and extra environment.

    `binds` are the (host, port) pairs it will listen on, checked free before
    anything starts; `ready_url` answers 200 once it serves.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    binds: Sequence[tuple[str, int]] = ()
    ready_url: str | None = None


def python_module(
    name: str,
    module: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    binds: Sequence[tuple[str, int]] = (),
    ready_url: str | None = None,
) -> Service:
    return Service(name, [sys.executable, "-m", module, *args], dict(env or {}), binds, ready_url)


@dataclass(slots=True)
class ServiceState:
    """What the stack reports of one child: its pid, how often it was restarted, how it last exited."""

    pid: int | None = None
    restarts: int = 0
    last_exit: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"pid": self.pid, "restarts": self.restarts, "last_exit": self.last_exit}


def exit_reason(returncode: int) -> str:
    """`code 1` or `signal SIGKILL`, as the logs and stack.json say how a child ended."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
        return f"signal {-returncode}"
    return f"code {returncode}"


Changed = Callable[[Mapping[str, ServiceState]], None]


def _as_group_leader() -> None:
    """In the child, before it runs: lead its own process group, and get a SIGTERM (a drain) if the stack dies."""
    os.setsid()
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _Child:
    """One service's current process and its record."""

    def __init__(self, service: Service, env: Mapping[str, str]) -> None:
        self.service = service
        self._env = {**env, **service.env}
        self.state = ServiceState()
        self.process: asyncio.subprocess.Process | None = None

    async def spawn(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.service.argv,
            env=self._env,
            preexec_fn=_as_group_leader,  # setsid and prctl only: nothing that takes a lock after fork
        )
        self.state.pid = self.process.pid

    def kill_leftovers(self) -> None:
        """SIGKILL whatever is left of the child's process group (its own children outlive a kill -9)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def keep_running(self, stop: asyncio.Event, changed: Callable[[], None]) -> None:
        """Restart the child each time it exits on its own, until `stop` is set; `changed` after each change."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial=RESTART_INITIAL_S, maximum=RESTART_MAX_S)
        while self.process is not None:
            started = loop.time()
            if await _stopped_before(stop, self.process.wait()):
                return
            self.kill_leftovers()
            if loop.time() - started >= STABLE_S:
                backoff.reset()
            delay = backoff.next()
            self.state.last_exit = exit_reason(self.process.returncode or 0)
            logger.error(
                "a service exited; restarting it",
                extra={
                    "service": self.service.name,
                    "exit": self.state.last_exit,
                    "restarts": self.state.restarts,
                    "retry_in_s": round(delay, 2),
                },
            )
            self.state.pid = None
            changed()
            while True:
                if await _stopped_before(stop, asyncio.sleep(delay)):
                    return
                try:
                    await self.spawn()
                    break
                except OSError:  # its binary is gone, or no process can be made now: try again later
                    delay = backoff.next()
                    cannot = {"service": self.service.name, "retry_in_s": round(delay, 2)}
                    logger.exception("cannot start a service; retrying", extra=cannot)
            self.state.restarts += 1
            logger.info(
                "restarted",
                extra={"service": self.service.name, "pid": self.state.pid, "restarts": self.state.restarts},
            )
            changed()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace; then the rest of its process group."""
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                logger.warning("killing a child that ignored SIGTERM", extra={"service": self.service.name})
                process.kill()
                await process.wait()
        self.kill_leftovers()


async def _stopped_before(stop: asyncio.Event, work: Awaitable[object]) -> bool:
    """Await `work` unless `stop` is set first (then `work` is cancelled); True when stopped."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        working.cancel()
        stopping.cancel()
    return stop.is_set()


async def supervise(
    services: Sequence[Service],
    base_env: Mapping[str, str],
    started: Callable[[], Coroutine[object, object, None]] | None = None,
    changed: Changed | None = None,
) -> None:
    """Start every service in order and keep each running until SIGTERM or SIGINT; then stop them (reverse order).

    `started` runs once every child is spawned (to wait for readiness); it is cancelled when the stack stops.
    `changed` is called with every service's state whenever one exits or is restarted.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    children = [_Child(service, base_env) for service in services]
    states = {child.service.name: child.state for child in children}

    def report() -> None:
        if changed is not None:
            changed(states)

    try:
        for child in children:
            await child.spawn()
            logger.info("started", extra={"service": child.service.name, "pid": child.state.pid})
        report()
        async with asyncio.TaskGroup() as group:
            for child in children:
                group.create_task(child.keep_running(stop, report))
            waiting = group.create_task(started()) if started is not None else None
            await stop.wait()
            if waiting is not None:
                waiting.cancel()
    finally:
        for child in reversed(children):
            await child.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
