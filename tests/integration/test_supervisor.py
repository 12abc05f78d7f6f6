"""The stack's supervisor with real child processes: restarts, backoff, leftovers, ordered stop."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from stack.supervisor import RESTART_INITIAL_S, Service, ServiceState, supervise
from tests.harness import wait_until


def shell(name: str, script: str) -> Service:
    return Service(name, ["sh", "-c", script], {})


def trapping(name: str, log: Path) -> Service:
    """Runs until SIGTERM, then notes its name in `log` (so the stop order can be read)."""
    return shell(name, f'trap "echo {name} >> {log}; exit 0" TERM; while :; do sleep 0.05; done')


class Run:
    """`supervise()` in a task, with every state change kept."""

    def __init__(self, services: list[Service]) -> None:
        self.states: Mapping[str, ServiceState] = {}
        self.changes = 0
        self.task = asyncio.create_task(supervise(services, dict(os.environ), changed=self._changed))

    def _changed(self, states: Mapping[str, ServiceState]) -> None:
        self.states = states
        self.changes += 1

    async def stop(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's handler takes it, as the stack's would
        await asyncio.wait_for(self.task, 30)


def alive(pid: int | None) -> bool:
    try:
        os.kill(pid or 0, 0)
    except ProcessLookupError:
        return False
    return pid is not None


async def test_a_crash_looping_child_is_retried_with_growing_delays_and_the_others_keep_running(
    tmp_path: Path,
) -> None:
    starts = tmp_path / "starts"
    run = Run([shell("crasher", f"date +%s.%N >> {starts}; exit 3"), trapping("steady", tmp_path / "stopped")])
    await wait_until(lambda: starts.exists() and len(starts.read_text().split()) >= 4, timeout=30)  # 3 restarts
    steady = run.states["steady"]
    assert run.states["crasher"].last_exit == "code 3"
    assert steady.restarts == 0 and alive(steady.pid)
    times = [float(line) for line in starts.read_text().split()]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Jittered down by up to half: the n-th wait is in [d/2, d] for d = 0.5 s doubling.
    assert gaps[0] >= RESTART_INITIAL_S / 2, gaps
    assert gaps[2] >= 4 * RESTART_INITIAL_S / 2, f"the backoff doubles: {gaps}"
    await run.stop()
    assert not alive(steady.pid)


async def test_what_a_killed_child_leaves_is_killed_before_it_is_restarted(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A leader with a child of its own, as nginx's master and its workers.
    run = Run([shell("leader", f"sleep 300 & echo $! >> {pids}; wait")])
    await wait_until(lambda: pids.exists() and run.states.get("leader", ServiceState()).pid is not None, timeout=10)
    orphan = int(pids.read_text().split()[0])
    os.kill(run.states["leader"].pid or 0, signal.SIGKILL)
    await wait_until(lambda: run.states["leader"].restarts == 1 and run.states["leader"].pid is not None, timeout=10)
    assert run.states["leader"].last_exit == "signal SIGKILL"
    await wait_until(lambda: not alive(orphan), timeout=5)
    await run.stop()


async def test_a_stop_signal_stops_every_child_in_reverse_start_order(tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    run = Run([trapping(name, stopped) for name in ("redis", "collector", "gateway", "nginx")])
    await wait_until(lambda: run.changes >= 1 and all(state.pid for state in run.states.values()), timeout=10)
    await asyncio.sleep(0.3)  # each shell has set its trap
    await run.stop()
    assert stopped.read_text().split() == ["nginx", "gateway", "collector", "redis"]
    assert all(state.restarts == 0 for state in run.states.values()), "a stopped child is not restarted"


async def test_a_child_that_cannot_be_started_again_is_retried_until_it_can(tmp_path: Path) -> None:
    program = tmp_path / "program"
    program.write_text("#!/bin/sh\nexec sleep 300\n")
    program.chmod(0o755)
    run = Run([Service("program", [str(program)], {})])
    await wait_until(lambda: run.states.get("program", ServiceState()).pid is not None, timeout=10)
    hidden = program.rename(tmp_path / "elsewhere")
    os.kill(run.states["program"].pid or 0, signal.SIGKILL)
    await asyncio.sleep(3 * RESTART_INITIAL_S)  # a try or two fail: no such file
    assert run.states["program"].pid is None and not run.task.done()
    hidden.rename(program)
    await wait_until(lambda: run.states["program"].pid is not None, timeout=30)
    assert run.states["program"].restarts == 1
    await run.stop()
