"""How many locust users one load-generator core drives, and a churn soak (not a pytest test).

    python -m loadtests.locust_bench --users 100,300,1000,2000 --publish-rate 10 --seconds 20
    python -m loadtests.locust_bench --user-class ConnectionChurn --users 100 --seconds 90 --ping-interval-s 0.01

For each user count: a private Redis and one gateway process (relay_bench's `deploy`; the
per-address limits raised, since every locust user comes from 127.0.0.1), then one headless
locust process running `loadtests/locustfile.py` (or `--locustfile`), the chosen user class,
publishing at `--publish-rate` to its two topics, with `--reset-stats`, so its figures start
once every user is spawned. Users that hold a connection are counted on the gateway's port until all are
established; then, over `--seconds`, the CPU of the locust process (users and publisher), of
the gateway and of Redis is sampled from /proc. locust is stopped with SIGTERM (it writes its
CSV) and its `market` latency (publish stamp to a user's receive, whole milliseconds),
`connect` and `subscribe` rows are read from that CSV.

The question is which side limits: a locust process uses one core at most (gevent), so one
of them near a full core (`bound` names `locust`) or market latency growing while `server_cores`
stays low means the load generator, not the gateway, is what is measured. `--processes N`
passes locust's own option (N worker processes under a master); `locust_cores` sums them all.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import uvloop

from loadtests.load_client import raise_fd_limit
from loadtests.relay_bench import (
    HOST,
    SECRET,
    TCP_ESTABLISHED,
    Setup,
    Usage,
    deploy,
    jsonable,
    print_table,
    process_tree,
    rss_kib,
    tcp_sockets,
)

REPOSITORY: Final = Path(__file__).parents[1]
# User classes that keep one connection open each: the window starts once all are established.
HOLDING: Final = frozenset({"MarketWatcher", "NotificationReceiver"})
# Every user from one address: the gateway's per-address limits (at most a few hundred new
# connections a second) would measure admission, not locust.
UNLIMITED: Final = "100000"
SPAWN_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 30.0


def established(port: int) -> int:
    return sum(1 for sock in tcp_sockets() if sock.state == TCP_ESTABLISHED and sock.local[1] == port)


async def wait_established(port: int, count: int) -> None:
    """Until `count` connections are established on `port`, or SPAWN_TIMEOUT_S (the report shows how many were)."""
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while time.monotonic() < deadline:
        if established(port) >= count:
            return
        await asyncio.sleep(0.2)


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    with path.open() as stats:
        return {row["Name"]: row for row in csv.DictReader(stats)}


def number(row: dict[str, str] | None, column: str) -> float:
    if row is None or row.get(column) in (None, "", "N/A"):
        return math.nan
    return float(row[column])


async def stop_locust(locust: asyncio.subprocess.Process) -> None:
    """SIGTERM: locust stops its users and writes its CSV."""
    if locust.returncode is None:
        locust.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(locust.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            locust.kill()
            await locust.wait()


async def measure(users: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    overrides = {
        name: UNLIMITED
        for name in (
            "GATEWAY_ACCEPT_RATE_PER_IP",
            "GATEWAY_ACCEPT_BURST_PER_IP",
            "GATEWAY_HANDSHAKE_RATE_PER_IP",
            "GATEWAY_HANDSHAKE_BURST_PER_IP",
            "GATEWAY_CONNECT_RATE_PER_IP",
            "GATEWAY_CONNECT_BURST_PER_IP",
            "GATEWAY_MAX_CONNECTIONS_PER_USER",
        )
    }
    overrides["GATEWAY_PING_INTERVAL_S"] = str(args.ping_interval_s)
    prefix = workdir / f"{args.user_class}-{users}"
    async with deploy(Setup("gateway", None), users, overrides=overrides) as deployment:
        env = {
            **os.environ,
            "REDIS_URL": deployment.redis_url,
            "GATEWAY_JWT_SECRET": SECRET,
            "PUBLISH_RATE": str(args.publish_rate),
            "PYTHONPATH": str(REPOSITORY),
        }
        argv = [
            sys.executable, "-m", "locust", "-f", args.locustfile, "--headless", "--users", str(users),
            "--spawn-rate", str(args.spawn_rate), "--host", f"http://{HOST}:{deployment.port}",
            # A bound should this driver die: spawning, the window and a margin.
            "--run-time", f"{math.ceil(SPAWN_TIMEOUT_S + args.seconds + 60)}s",
            "--csv", str(prefix), "--reset-stats", "--only-summary", "--loglevel", "WARNING",
            *(["--processes", str(args.processes)] if args.processes > 1 else []), args.user_class,
        ]  # fmt: skip
        with (workdir / f"{prefix.name}.log").open("w") as log:
            locust = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)
        try:
            spawn_started = time.monotonic()
            if args.user_class in HOLDING:
                await wait_established(deployment.port, users)
            else:
                await asyncio.sleep(users / args.spawn_rate)
            spawn_s = time.monotonic() - spawn_started
            await asyncio.sleep(1)  # locust resets its statistics once spawned
            connected_start = established(deployment.port)
            locusts = process_tree(locust.pid)
            roles = {"locust": locusts, "server": deployment.server_pids(), "redis": [deployment.redis_pid]}
            before = Usage.now(roles)
            await asyncio.sleep(args.seconds)
            after = Usage.now(roles)
            connected_end = established(deployment.port)
            rss = rss_kib(deployment.server_pids())
            locust_rss = rss_kib(locusts)
        finally:
            await stop_locust(locust)
    rows = csv_rows(Path(f"{prefix}_stats.csv"))
    market, connect, subscribe = rows.get("market"), rows.get("connect"), rows.get("subscribe")
    return {
        "user_class": args.user_class,
        "users": users,
        "publish_rate": args.publish_rate,
        "locust_processes": args.processes,
        "spawn_s": spawn_s,
        "connected_start": connected_start,
        "connected_end": connected_end,
        "market_per_s": number(market, "Requests/s"),
        "market_p50_ms": number(market, "50%"),
        "market_p99_ms": number(market, "99%"),
        "market_max_ms": number(market, "Max Response Time"),
        "connects": number(connect, "Request Count"),
        "connect_failures": number(connect, "Failure Count"),
        "connect_p99_ms": number(connect, "99%"),
        "subscribes": number(subscribe, "Request Count"),
        "subscribe_failures": number(subscribe, "Failure Count"),
        **after.load(before),
        "locust_cpu_s": after.cpu_seconds("locust", before),
        "server_rss_kib": rss,
        "locust_rss_kib": locust_rss,
        "locust_exit": locust.returncode,
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="locust-bench-") as workdir:
        for users in (int(count) for count in args.users.split(",")):
            results.append(await measure(users, args, Path(workdir)))
            print(json.dumps(jsonable(results[-1])), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="100,300,1000,2000", help="comma-separated user counts, one run each")
    parser.add_argument(
        "--user-class",
        default="MarketWatcher",
        choices=["MarketWatcher", "NotificationReceiver", "ConnectionChurn"],
        help="the locustfile's user class (default MarketWatcher)",
    )
    parser.add_argument(
        "--publish-rate", type=float, default=10.0, help="publishes a second, each to both topics (default 10)"
    )
    parser.add_argument(
        "--locustfile",
        default=str(REPOSITORY / "loadtests" / "locustfile.py"),
        help="the locustfile to run (default loadtests/locustfile.py); it is run with the repository on PYTHONPATH",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="locust processes: 1 runs one; N > 1 passes locust's --processes N (N workers under a master)",
    )
    parser.add_argument("--spawn-rate", type=float, default=100.0, help="users started a second (default 100)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window once spawned (default 20)")
    parser.add_argument(
        "--ping-interval-s", type=float, default=25.0, help="the gateway's Engine.IO ping interval (default 25)"
    )
    args = parser.parse_args(argv)
    raise_fd_limit()
    results = uvloop.run(run(args))
    print_table(
        ["users", *(str(result["users"]) for result in results)],
        [[key, *(result[key] for result in results)] for key in list(results[0])[2:]],
    )


if __name__ == "__main__":
    main()
