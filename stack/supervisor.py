"""Runs the system's processes as children and stops them together.

A child that exits on its own takes the whole stack down (with its exit
code in the log): on one host a half-running system is worse than none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

logger = logging.getLogger(__name__)

STOP_GRACE_S: Final = 15.0


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


async def _stop(name: str, process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_S)
    except TimeoutError:
        logger.warning("killing a child that ignored SIGTERM", extra={"service": name})
        process.kill()
        await process.wait()


async def supervise(
    services: Sequence[Service],
    base_env: Mapping[str, str],
    started: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Start every service; on a signal or a child's exit, stop them all (reverse order).

    `started` runs once every child is spawned (to wait for readiness); it is cancelled when the stack stops.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    processes: list[tuple[str, asyncio.subprocess.Process]] = []
    exit_code = 0
    try:
        for service in services:
            process = await asyncio.create_subprocess_exec(*service.argv, env={**base_env, **service.env})
            processes.append((service.name, process))
            logger.info("started", extra={"service": service.name, "pid": process.pid})
        waits = {asyncio.ensure_future(p.wait()): name for name, p in processes}
        stopper = asyncio.ensure_future(stop.wait())
        watcher = asyncio.ensure_future(started()) if started is not None else None
        done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        for finished in done:
            if finished in waits:
                code = finished.result()
                logger.error("a service exited; stopping the stack", extra={"service": waits[finished], "code": code})
                exit_code = 1
        stopper.cancel()
        for future in waits:
            future.cancel()
    finally:
        for name, process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                await _stop(name, process)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return exit_code
