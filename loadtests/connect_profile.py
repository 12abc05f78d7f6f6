"""Where the CPU of one connect goes: a connect storm against the gateway, sampled by py-spy.

    python -m loadtests.connect_profile --clients 5000            # storm, profile, breakdown table
    python -m loadtests.connect_profile --raw storm.txt           # the table of an existing py-spy raw file
    python -m loadtests.connect_profile --callgrind               # instructions per connect (see below)
    python -m loadtests.connect_profile --callgrind --keep cg.out # ... and its dump, for callgrind_annotate

Starts Redis and one gateway as `relay_bench --idle` does, attaches `py-spy record --native -r 200
-f raw` to the gateway, connects the clients (the same load client and tokens), then sorts every
sampled stack into the first step of a connect it belongs to (the STEPS below, matched on the
stack's frames) and prints each step's share of the gateway's busy samples. py-spy pauses the
process for every sample, so the storm runs several times slower than unprofiled; shares, not
times, are what it measures. Multiply them by `server_cpu_s / connected` of an unprofiled
`relay_bench --idle` run for microseconds per connect. Needs py-spy (`pip install py-spy`).

`--callgrind` counts instead of sampling: the gateway runs under valgrind's callgrind, counting
nothing until a warm-up of 50 connects is done, then every instruction its process executes in
user space during a storm of `--clients` (default 2,000) connects; it prints instructions per
connect. The count repeats within half a percent from run to run, whatever else the machine
does, where CPU-seconds per connect spread by 30% on a shared host: it tells whether a change to
the connect path made it cheaper, by how much, before a timed run can. What it does not see: the
kernel (system calls, the loopback's TCP), and the caches (a storm's cache misses, which cost a
connect two to three times its instructions' worth). Under callgrind the gateway runs about 50
times slower, so work driven by the clock would be counted many times over per connect: the
presence heartbeat and the Engine.IO pings are held off for this run (every 10 minutes instead
of 5 s and 25 s). Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from loadtests.load_client import ClientPool, ClientSpec
from loadtests.relay_bench import CONNECT_DEADLINE_S, HOST, Setup, Usage, client_specs, deploy, token

# Each step of a connect and the frames that mark its samples; a sample counts for the first step
# one of whose markers is in its stack (most specific first: the JWT check runs inside admission).
STEPS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("JWT verify (HS256: the HMAC check; PyJWT for anything else)", ("TokenVerifier.verify",)),
    ("Redis admission: revocations, cap claim, fresh-start position (one shared pipeline)", ("Batcher._serve",)),
    ("Redis: subscribe the user's channel (pub/sub)", ("Relay.acquire", "Subscriptions.acquire_all")),
    ("catch-up and the `sync` event (at once, or in a task)", ("GatewayNode._connected", "GatewayNode._sync")),
    ("admission and session bookkeeping (rate bucket, claims handed over, timers)", ("GatewayNode._on_connect",)),
    ("Socket.IO CONNECT answer", ("SocketIOServer._connect",)),
    ("Socket.IO packet read (header, JSON) and its handler task", ("SocketIOServer.message", "SocketIOServer._work")),
    ("WebSocket frames and Engine.IO session open", ("WebSocketConnection", "Engine.", "Session.")),
    ("TCP accept, HTTP request (plain or h11) and the 101 answer", ("HttpProtocol", "HttpServer", "RequestIntake")),
    ("presence heartbeat (renews every held claim each 5 s; not per connect)", ("Presence.run",)),
    ("kernel: socket writes", ("write (libc", "writev (libc")),
    ("kernel: socket reads and accepts", ("uv__read", "uv__server_io", "accept4", "read (libc")),
    ("garbage collector", ("gc_collect",)),
    ("redis-py, other (pool, connection upkeep)", ("redis/",)),
)
OTHER: Final = "event loop and the rest"
IDLE: Final = ("epoll_pwait",)


def breakdown(raw: str) -> list[tuple[str, float]]:
    """Each step's share of the busy samples in a py-spy raw (collapsed stacks) text, in STEPS order."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        if any(marker in leaf for marker in IDLE):
            continue
        step = next((name for name, markers in STEPS if any(m in stack for m in markers)), OTHER)
        counts[step] += int(number)
    busy = sum(counts.values()) or 1
    return [(name, counts[name] / busy) for name, _ in (*STEPS, (OTHER, ()))]


def print_breakdown(shares: list[tuple[str, float]], us_per_connect: float | None) -> None:
    width = max(len(name) for name, _ in shares)
    unit = "   us/connect" if us_per_connect else ""
    print(f"{'step':<{width}}  share{unit}")
    for name, share in shares:
        micros = f"  {share * us_per_connect:11.0f}" if us_per_connect else ""
        print(f"{name:<{width}}  {share * 100:4.1f}%{micros}")


async def storm(clients: int, output: Path) -> float:
    """Profile a storm of `clients` connects into `output`; returns the gateway's CPU per connect (us), profiled."""
    async with deploy(Setup("gateway", None), clients) as deployment, ClientPool(2) as pool:
        server = deployment.servers[0].pid
        specs = client_specs(clients, None)
        spy = await asyncio.create_subprocess_exec(
            *("py-spy", "record", "--native", "-r", "200", "-f", "raw", "-o", str(output), "--pid", str(server)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(1.0)  # py-spy attached
            roles = deployment.roles(pool.pids)
            before = Usage.now(roles)
            report = await pool.connect(HOST, deployment.port, specs, CONNECT_DEADLINE_S)
            after = Usage.now(roles)
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            await spy.wait()
        cpu = after.cpu_seconds("server", before)
        print(f"{report.connected} connected ({report.errors or 'no errors'}), profiled: {cpu:.2f} s gateway CPU")
        return cpu / max(report.connected, 1) * 1e6


# The gateway as `python -m gateway` runs it, with the presence heartbeat held off (see the module).
HELD_OFF_HEARTBEAT: Final = (
    "import sys, gateway.presence as presence; presence.HEARTBEAT_S = 600.0; "
    "from gateway.__main__ import main; sys.exit(main())"
)
WARM_UP_CONNECTS: Final = 50
CALLGRIND_READY_TIMEOUT_S: Final = 300.0  # the gateway starts under valgrind, uninstrumented but still slowly


async def callgrind_control(*args: str) -> None:
    control = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if await control.wait() != 0:
        raise SystemExit(f"callgrind_control {' '.join(args)} failed")


def dumped_instructions(path: Path) -> int:
    """The instruction total of one callgrind dump file."""
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):  # `summary:` is the count before the last zeroing
            return int(line.split()[1])
    raise ValueError(f"no totals in {path}")


def callgrind_command(workdir: Path) -> list[str]:
    """The gateway under callgrind, counting nothing until told (`callgrind_control --instr=on`); dumps in `workdir`."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={workdir}/callgrind.%p",
        f"--log-file={workdir}/valgrind.%p.log",
        sys.executable,
        "-c",
        HELD_OFF_HEARTBEAT,
    ]


async def counted_storm(clients: int, workdir: Path) -> None:
    """A storm of `clients` connects against a gateway under callgrind, counted (after a warm-up) into `workdir`."""
    command = callgrind_command(workdir)
    overrides = {"GATEWAY_PING_INTERVAL_S": "600"}
    async with (
        deploy(
            Setup("gateway", None),
            clients,
            overrides=overrides,
            command=command,
            ready_timeout_s=CALLGRIND_READY_TIMEOUT_S,
        ) as deployment,
        ClientPool(2) as pool,
    ):
        server = str(deployment.servers[0].pid)
        warm_up = [ClientSpec(token=token(f"warm-up-{i}"), topic=None) for i in range(WARM_UP_CONNECTS)]
        await pool.connect(HOST, deployment.port, warm_up, CONNECT_DEADLINE_S)
        await callgrind_control("--zero", server)
        await callgrind_control("--instr=on", server)
        report = await pool.connect(HOST, deployment.port, client_specs(clients, None), CONNECT_DEADLINE_S * 5)
        await asyncio.sleep(1.0)  # the last batch's `sync` events written
        await callgrind_control("--instr=off", server)
        await callgrind_control("--dump=storm", server)
        print(f"{report.connected} connected ({report.errors or 'no errors'})")
        if report.connected != clients:
            raise SystemExit("not every client connected: the count would not be per connect")


def count_instructions(clients: int, keep: Path | None = None) -> int:
    """The gateway's user-space instructions over a storm of `clients` connects (after a warm-up).

    With `keep`, the storm's dump is copied there, for `callgrind_annotate` (which C functions).
    """
    with tempfile.TemporaryDirectory(prefix="connect-callgrind-") as workdir:
        asyncio.run(counted_storm(clients, Path(workdir)))
        dumps = sorted(Path(workdir).glob("callgrind.*.1"))  # part 1: the storm's dump (the exit's is part 2)
        if len(dumps) != 1:
            raise SystemExit(f"expected one callgrind dump, found {[d.name for d in dumps]}")
        if keep is not None:
            shutil.copyfile(dumps[0], keep)
        return dumped_instructions(dumps[0])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, help="connects in the profiled storm (5,000; with --callgrind 2,000)")
    parser.add_argument("--raw", type=Path, help="only print the breakdown of this py-spy raw file")
    parser.add_argument("--us-per-connect", type=float, help="gateway CPU per connect, unprofiled (adds a us column)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions per connect instead (valgrind)")
    parser.add_argument("--keep", type=Path, help="copy the storm's profile (py-spy raw or callgrind dump) here")
    args = parser.parse_args(argv)
    if args.callgrind:
        clients = args.clients or 2000
        instructions = count_instructions(clients, args.keep)
        print(f"{instructions:,} instructions in the gateway's user space: {instructions / clients:,.0f} per connect")
        return
    args.clients = args.clients or 5000
    if args.raw is None:
        with tempfile.TemporaryDirectory(prefix="connect-profile-") as workdir:
            raw = Path(workdir) / "storm.txt"
            asyncio.run(storm(args.clients, raw))
            text = raw.read_text()
            if args.keep is not None:
                shutil.copyfile(raw, args.keep)
    else:
        text = args.raw.read_text()
    print_breakdown(breakdown(text), args.us_per_connect)


if __name__ == "__main__":
    main()
