"""Attack while serving: honest clients at 20,000 deliveries/s while one attacker runs each audit attack in turn.

    python -m loadtests.attack_bench                     # every attack, 10 s windows
    python -m loadtests.attack_bench --seconds 5 --attacks fragment_flood,ping_payloads

One gateway process with its default limits, a private Redis, 200 load clients (relay_bench's) on one
topic at 100 messages/s. A quiet window first, then for each attack (loadtests/attacks.py, in a
process of its own, from its own address) a window with the attack running, then a settle pause.
Printed per window: the honest clients' p50/p99 latency and fraction delivered, the node's RSS at the
start, at most and after the pause, whether the node ended the attacker's connections, and the
tracebacks (ERROR log lines) the node wrote. The goals (issue 9): p99 within 2 ms of the quiet window,
RSS after within 10% of the quiet one, every attacker connection ended, no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import uvloop

from loadtests.attacks import ATTACKS
from loadtests.load_client import raise_fd_limit
from loadtests.relay_bench import HOST, Options, Setup, loaded, measure, print_table, rss_kib

SETTLE_S: Final = 3.0
P99_SLACK_MS: Final = 2.0
RSS_SLACK: Final = 0.10
# The node as deployed: default limits and transports (relay_bench raises the per-address ones for its own clients).
DEPLOYED_SETTINGS: Final = {
    "GATEWAY_CONNECT_BURST_PER_IP": "50",
    "GATEWAY_CONNECT_RATE_PER_IP": "10",
    "GATEWAY_HANDSHAKE_BURST_PER_IP": "100",
    "GATEWAY_HANDSHAKE_RATE_PER_IP": "20",
    "GATEWAY_MAX_CONNECTIONS_PER_USER": "50",
    "GATEWAY_LOG_LEVEL": "info",
    # Both transports, as deployed (relay_bench's clients use WebSocket only): handshake floods over
    # long-polling must meet the handshake limit, not a cheap "Transport unknown".
    "GATEWAY_TRANSPORTS": "websocket,polling",
}


LAG_BOUNDS: Final = ("0.002", "0.005", "0.01")  # seconds: histogram buckets of gateway_event_loop_lag_seconds


async def loop_lag(port: int) -> dict[str, float]:
    """The node's loop-lag histogram: the sample count and the counts at or under each of LAG_BOUNDS."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    text = (await reader.read()).decode()
    writer.close()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gateway_event_loop_lag_seconds_count"):
            counts["count"] = float(line.split()[-1])
        for bound in LAG_BOUNDS:
            if line.startswith(f'gateway_event_loop_lag_seconds_bucket{{le="{bound}"}}'):
                counts[bound] = float(line.split()[-1])
    return counts


def lag_over(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Fraction of the window's loop-lag samples above each bound (a sample every 10 ms)."""
    samples = after["count"] - before["count"]
    return {
        f"loop_lag_over_{float(bound) * 1000:g}ms": (samples - (after[bound] - before[bound])) / max(samples, 1)
        for bound in LAG_BOUNDS
    }


def errors_in(log: Path, start: int) -> tuple[int, list[str]]:
    """ERROR lines the node logged after byte `start` of its log; and where the log ends now."""
    text = log.read_bytes()
    lines = text[start:].decode(errors="replace").splitlines()
    return len(text), [line for line in lines if '"level": "ERROR"' in line or "Traceback" in line]


def on_idle_cpu_only() -> None:
    """Run the attacker on CPU time nobody else wants (SCHED_IDLE).

    On a deployment the attacker has a machine of its own; here its CPU would be taken from the
    node and the honest clients. Niceness 10 still let it take a whole core from them on this
    2-core machine (honest p50 1.9 ms against 1.2); as SCHED_IDLE it makes 80-90% of the tries
    and the node does the same work for it (0.42 core in both, `connect_race`).
    """
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


async def attack(name: str, port: int, seconds: float, redis_url: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtests.attacks",
        name,
        HOST,
        str(port),
        str(seconds),
        redis_url,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=on_idle_cpu_only,
    )
    output, _ = await process.communicate()
    lines = output.decode().strip().splitlines()
    return json.loads(lines[-1]) if lines else {"attack": name, "error": f"exit {process.returncode}"}


async def run(names: list[str], seconds: float, clients: int) -> list[dict[str, Any]]:
    options = Options(
        clients=clients, topics=1, rate=20_000 / clients, seconds=seconds,
        client_processes=2, steps=[], scenario="load", idle=0,
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="attack-bench-") as workdir:
        log = Path(workdir) / "gateway.log"
        with log.open("wb") as sink:
            async with loaded(Setup("gateway", None), options, overrides=DEPLOYED_SETTINGS, log=sink.fileno()) as (
                deployment,
                pool,
                feed,
            ):
                redis_url = deployment.redis_url
                offset = 0
                lag = await loop_lag(deployment.port)
                quiet = await measure(deployment, pool, feed, options.rate, seconds)
                lag, lag_before = await loop_lag(deployment.port), lag
                offset, errors = errors_in(log, offset)
                results.append({"window": "quiet", **quiet, **lag_over(lag_before, lag), "errors": len(errors)})
                for name in names:
                    attacking = asyncio.create_task(attack(name, deployment.port, seconds, redis_url))
                    during = await measure(deployment, pool, feed, options.rate, seconds)
                    lag, lag_before = await loop_lag(deployment.port), lag
                    outcome = await attacking
                    await asyncio.sleep(SETTLE_S)
                    rss_after = rss_kib(deployment.server_pids())
                    offset, errors = errors_in(log, offset)
                    results.append(
                        {
                            "window": name,
                            **during,
                            **lag_over(lag_before, lag),
                            "rss_after_kib": rss_after,
                            "attacker_ended": outcome.get("disconnected"),
                            "attack_tries": outcome.get("tries"),
                            "attack_outcomes": outcome.get("outcomes"),
                            "errors": len(errors),
                            "error_lines": errors[:3],
                            "node_alive": all(server.returncode is None for server in deployment.servers),
                        }
                    )
    return results


def verdicts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    quiet = results[0]
    for result in results[1:]:
        result["p99_over_quiet_ms"] = result["latency_p99_ms"] - quiet["latency_p99_ms"]
        result["rss_after_vs_quiet"] = result["rss_after_kib"] / quiet["rss_end_kib"] - 1
        result["goals_met"] = (
            result["p99_over_quiet_ms"] <= P99_SLACK_MS
            and result["rss_after_vs_quiet"] <= RSS_SLACK
            and result["attacker_ended"] is not False
            and result["errors"] == 0
            and result["fraction_delivered"] >= 0.999
        )
    return results


def report(results: list[dict[str, Any]]) -> None:
    for result in results:
        print(json.dumps(result, default=str))
    keys = ["latency_p50_ms", "latency_p99_ms", "p99_over_quiet_ms", "loop_lag_over_2ms", "loop_lag_over_5ms",
            "fraction_delivered", "delivered_per_s", "rss_start_kib", "rss_max_kib", "rss_after_kib",
            "rss_after_vs_quiet", "attacker_ended", "attack_tries", "errors", "goals_met", "bound"]  # fmt: skip
    print()
    print_table(["window", *keys], [[r["window"], *(r.get(k, "") for k in keys)] for r in results])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each window (default 10)")
    parser.add_argument("--clients", type=int, default=200, help="honest clients (default 200)")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, of {', '.join(ATTACKS)}")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    names = args.attacks.split(",")
    if unknown := set(names) - set(ATTACKS):
        parser.error(f"unknown attack(s) {', '.join(sorted(unknown))}")
    raise_fd_limit()
    results = verdicts(uvloop.run(run(names, args.seconds, args.clients)))
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
