"""The loop's own counter and histogram export exactly what prometheus_client's would, for the same observations."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import LoopCounter, LoopHistogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def exported(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines, without prometheus_client's `_created` stamps (the loop's metrics have none)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_a_loop_histogram_exports_what_a_prometheus_histogram_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x_seconds", "Latency.", BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "Latency.", buckets=BUCKETS, registry=theirs)
    rng = random.Random(7)
    values = [*BUCKETS, 0.0, 5.0, *(rng.expovariate(200) for _ in range(10_000))]  # bounds themselves included
    for value in values:
        loop.observe(value)
        reference.observe(value)
    assert exported(ours) == exported(theirs)


def test_a_loop_counter_exports_what_a_labelled_prometheus_counter_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("x_total", "Messages.", "kind", registry=ours)
    reference = Counter("x_total", "Messages.", ["kind"], registry=theirs)
    for kind, amount in (("market", 1), ("market", 5), ("notification", 2), ("market", 0)):
        loop.labels(kind).inc(amount)
        reference.labels(kind).inc(amount)
    assert exported(ours) == exported(theirs)
    assert loop.total() == 8
