"""Helpers of the hostile-input suite: every reproduction of an attack on the edge lives here."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


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

    CPU time, not wall time: a busy CI machine slows the clock, not the work.
    The budgets are generous (10x and more what linear code needs here) and
    far below what the quadratic shapes they guard against cost.
    """
    start = time.process_time()
    yield
    used = time.process_time() - start
    assert used < seconds, f"used {used:.2f} s of CPU, budget {seconds} s"
