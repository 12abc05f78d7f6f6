"""`fanout-gateway --workers N`: N node processes on one port, started, restarted and drained together.

Each worker is the same command with `--workers 1 --reuse-port true` and a
node id of its own; SO_REUSEPORT lets the kernel spread new connections over
the workers, so one host's every core serves clients with no proxy in front.
WebSocket only: a long-polling session's requests could reach different
workers (for polling, run workers on ports of their own behind nginx, as
`fanout-local --balancer` does). SIGTERM or SIGINT reaches every worker,
which drains its clients (they reconnect elsewhere) within the shutdown
deadline; a worker that dies on its own is restarted with capped backoff.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Final

from gateway.config import GatewayConfig

logger = logging.getLogger(__name__)

RESTART_INITIAL_S: Final = 0.5
RESTART_MAX_S: Final = 10.0
STABLE_S: Final = 30.0  # a worker up this long has its restart backoff reset
PR_SET_PDEATHSIG: Final = 1  # prctl(2): the signal a process gets when its parent dies


async def run_workers(config: GatewayConfig, argv: Sequence[str], redis_url: str) -> int:
    """Run `config.workers` workers until a stop signal; the exit code is the worst of theirs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        codes = await asyncio.gather(
            *(_worker(config, argv, redis_url, index, stop) for index in range(config.workers))
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return max(codes)


async def _worker(config: GatewayConfig, argv: Sequence[str], redis_url: str, index: int, stop: asyncio.Event) -> int:
    """One worker's life: start it, restart it if it dies before `stop`, pass `stop` on as SIGTERM."""
    node_id = f"{config.name}-w{index + 1}"
    args = [*argv, "--workers", "1", "--reuse-port", "true", "--node-id", node_id, "--redis-url", redis_url]
    delay = RESTART_INITIAL_S
    while True:
        started = loop_time()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *args, preexec_fn=_die_with_parent if sys.platform == "linux" else None
        )
        stopping = asyncio.ensure_future(stop.wait())
        exited = asyncio.ensure_future(process.wait())
        await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            exited.cancel()
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            return await process.wait()
        stopping.cancel()
        code = process.returncode
        if loop_time() - started >= STABLE_S:
            delay = RESTART_INITIAL_S
        logger.error("a worker exited; restarting it", extra={"worker": node_id, "code": code, "retry_in_s": delay})
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            delay = min(delay * 2, RESTART_MAX_S)
        else:
            return 0


def _die_with_parent() -> None:
    """In the worker, before it runs: SIGTERM it (a drain) if the parent dies, even by SIGKILL (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def loop_time() -> float:
    return asyncio.get_running_loop().time()
