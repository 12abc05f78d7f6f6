"""A short, bounded headless locust run against a real gateway, so the locustfile cannot rot."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path

import pytest

from tests.harness import SECRET, running_node

LOCUSTFILE = Path(__file__).parents[2] / "loadtests" / "locustfile.py"

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "ping_interval_s",
    [
        25.0,
        # Pings every 20 ms: one often comes between the handshake and the CONNECT's answer, which
        # the locustfile once read as the answer (a refusal "2") and counted against the gateway.
        0.02,
    ],
)
async def test_headless_locust_run_reports_every_measure(
    redis_url: str, tmp_path: Path, ping_interval_s: float
) -> None:
    async with running_node(redis_url, connect_burst_per_ip=1000, ping_interval_s=ping_interval_s) as node:
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "GATEWAY_JWT_SECRET": SECRET,
            "PUBLISH_RATE": "20",
            "NOTIFIED_USERS": "2",
            "PYTHONPATH": str(LOCUSTFILE.parents[1]),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--users",
            "10",
            "--spawn-rate",
            "10",
            "--run-time",
            "6s",
            "--host",
            node.url,
            "--csv",
            str(tmp_path / "run"),
            "--only-summary",
            "--loglevel",
            "WARNING",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:  # hung: never leave it publishing into the session's Redis
                process.kill()
                await process.wait()
    assert process.returncode == 0, output.decode()[-3000:]
    with (tmp_path / "run_stats.csv").open() as stats_file:
        rows = {row["Name"]: row for row in csv.DictReader(stats_file)}
    for name in ("connect", "subscribe", "market", "notification", "notifications:unread"):
        assert int(rows[name]["Request Count"]) > 0, f"no {name} measured: {sorted(rows)}"
        assert int(rows[name]["Failure Count"]) == 0, rows[name]
