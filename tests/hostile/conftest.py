"""Helpers of the hostile-input suite: every reproduction of an attack on the edge lives here."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

Input = TypeVar("Input")


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Hostile input gets a clear error code, never a traceback (an ERROR log) an attacker can repeat."""
    caplog.set_level(logging.INFO)
    yield
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, errors


@contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Fail if the block uses more than `seconds` of this process's CPU.

    CPU time, not wall time: a busy CI machine slows the clock more than the work.
    The budgets are generous (10x and more what linear code needs here) and
    far below what the quadratic shapes they guard against cost. Where linear
    work itself takes seconds, `assert_linear` compares sizes instead.
    """
    start = time.process_time()
    yield
    used = time.process_time() - start
    assert used < seconds, f"used {used:.2f} s of CPU, budget {seconds} s"


def assert_linear(make: Callable[[int], Input], run: Callable[[Input], object], size: int) -> None:
    """Fail unless `run` on an input 8x larger costs under 24x the CPU (linear: 8x; quadratic: 64x).

    A ratio, not a budget: coverage tracing and a busy 2-core machine inflate both sizes alike, and
    caches favour the small input by up to 1.5x here, far from what separates linear from quadratic.
    Each size is timed twice, the garbage collector off, and its faster run kept.
    """
    small, large = make(size), make(8 * size)
    gc.collect()
    gc.disable()
    try:
        costs = []
        for value in (small, large):
            runs = []
            for _ in range(2):
                start = time.process_time()
                run(value)
                runs.append(time.process_time() - start)
            costs.append(min(runs))
    finally:
        gc.enable()
    assert costs[1] < 24 * costs[0], f"8x the input cost {costs[1] / costs[0]:.1f}x the CPU ({costs})"
