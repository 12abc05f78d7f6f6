"""Instructions per delivery: the gateway's user-space cost of fan-out, counted by callgrind.

    python -m loadtests.fanout_profile                                   # 200 clients, one topic
    python -m loadtests.fanout_profile --clients 1000 --topics 10        # relay_bench's 20k/s shape
    python -m loadtests.fanout_profile --keep fanout.cg                  # ... and the dump, for callgrind_annotate

What `connect_profile --callgrind` is for connects, this is for relay_bench's load: the gateway runs
under valgrind's callgrind, `--clients` load clients connect and subscribe round-robin to `--topics`
topics, a warm-up of messages is relayed uncounted, then `--messages` trade events (relay_bench's
feed, paced at `--rate` a second) are relayed with every instruction of the gateway's process counted,
and it prints instructions per delivery and per message. Instructions are not time: the kernel's side
of each write (the loopback's TCP, most of a delivery's cost) is not seen, nor are cache misses; the
count says whether a change made the gateway's own part of a delivery cheaper, and by how much,
repeatably, where CPU-seconds per delivery spread by 10% or more between runs on a shared host.
The rate is kept low (50 messages a second) so that under callgrind, about 50 times slower, each
message still arrives in a loop turn of its own, as it does unprofiled at relay_bench's rates; a
higher rate would batch several messages a write and count less than the real load costs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from loadtests.connect_profile import (
    CALLGRIND_READY_TIMEOUT_S,
    callgrind_command,
    callgrind_control,
    dumped_instructions,
)
from loadtests.load_client import ClientPool
from loadtests.relay_bench import CONNECT_DEADLINE_S, HOST, Feed, Setup, client_specs, deploy, drain, topic_names

WARM_UP_MESSAGES: Final = 50


async def counted_fanout(args: argparse.Namespace, workdir: Path) -> tuple[int, int]:
    """Relay about `args.messages` messages through a gateway under callgrind; returns (messages, deliveries)."""
    topics = topic_names(args.topics)
    specs = client_specs(args.clients, topics)
    async with (
        deploy(
            Setup("gateway", None),
            args.clients,
            overrides={"GATEWAY_PING_INTERVAL_S": "600"},
            command=callgrind_command(workdir),
            ready_timeout_s=CALLGRIND_READY_TIMEOUT_S,
        ) as deployment,
        ClientPool(1) as pool,
    ):
        report = await pool.connect(HOST, deployment.port, specs, CONNECT_DEADLINE_S * 5)
        if report.connected != len(specs):
            raise SystemExit(f"{report.connected}/{len(specs)} clients connected: {report.errors}")
        subscribers = [sum(1 for spec in specs if spec.topic == topic) for topic in topics]
        feed = Feed(deployment.redis_url, topics, subscribers)
        server = str(deployment.servers[0].pid)
        await feed.run(args.rate, WARM_UP_MESSAGES / args.rate)
        await drain(pool)
        await pool.reset(1)
        await callgrind_control("--zero", server)
        await callgrind_control("--instr=on", server)
        offered = await feed.run(args.rate, args.messages / args.rate)  # deliveries: the last tick may fall outside
        drained = await drain(pool)
        await callgrind_control("--instr=off", server)
        await callgrind_control("--dump=fanout", server)
        deliveries = (await pool.tally()).received
        if not drained:
            raise SystemExit("deliveries were still arriving after the drain: the count would be partial")
        return round(offered / feed.deliveries_per_message), deliveries


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=200, help="load clients (default 200)")
    parser.add_argument("--topics", type=int, default=1, help="topics the clients are spread over (default 1)")
    parser.add_argument("--messages", type=int, default=500, help="messages counted (default 500)")
    parser.add_argument("--rate", type=float, default=50.0, help="messages published per second (default 50)")
    parser.add_argument("--keep", type=Path, help="copy the callgrind dump here, for callgrind_annotate")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fanout-callgrind-") as workdir:
        messages, deliveries = asyncio.run(counted_fanout(args, Path(workdir)))
        dumps = sorted(Path(workdir).glob("callgrind.*.1"))  # part 1: the counted dump (the exit's is part 2)
        if len(dumps) != 1:
            raise SystemExit(f"expected one callgrind dump, found {[d.name for d in dumps]}")
        if args.keep is not None:
            shutil.copyfile(dumps[0], args.keep)
        instructions = dumped_instructions(dumps[0])
    print(
        f"{messages:,} messages, {deliveries:,} deliveries: {instructions:,} instructions in the gateway's user space, "
        f"{instructions / deliveries:,.0f} per delivery, {instructions / messages:,.0f} per message"
    )


if __name__ == "__main__":
    main()
