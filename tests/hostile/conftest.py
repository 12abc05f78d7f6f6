"""Helpers of the hostile-input suite: every reproduction of an attack on the edge lives here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Fail if the block uses more than `seconds` of this process's CPU.

    CPU time, not wall time: a busy CI machine slows the clock, not the work.
    The budgets are generous (10x and more what linear code needs here) and
    far below what the quadratic shapes they guard against cost.
    """
    start = time.process_time()
    yield
    used = time.process_time() - start
    assert used < seconds, f"used {used:.2f} s of CPU, budget {seconds} s"
