"""Capped exponential backoff with jitter, reset after success.

Jitter spreads the reconnects of many collectors (or of one collector's
many connections) after an exchange-wide outage, so they do not all knock
at the same instant; the cap keeps the worst wait short enough that a
recovered exchange is picked up quickly.
"""

from __future__ import annotations

import random
from typing import Final

# Each delay is drawn from [base / 2, base]: never zero (no hot loop), never above the cap.
_JITTER_FLOOR: Final = 0.5
# Beyond this many doublings every base is the cap anyway; bounding it avoids a float overflow.
_MAX_EXPONENT: Final = 64


class Backoff:
    """Delays ``initial, 2*initial, 4*initial, ...`` up to ``maximum``, each jittered down by up to half."""

    __slots__ = ("_attempt", "_factor", "_initial", "_maximum", "_random")

    def __init__(
        self, *, initial: float, maximum: float, factor: float = 2.0, rng: random.Random | None = None
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError(f"bad backoff: initial={initial} maximum={maximum} factor={factor}")
        self._initial = initial
        self._maximum = maximum
        self._factor = factor
        self._attempt = 0
        self._random = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    @property
    def attempt(self) -> int:
        """Failures since the last reset."""
        return self._attempt

    def next(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        base = min(self._maximum, self._initial * self._factor ** min(self._attempt, _MAX_EXPONENT))
        self._attempt += 1
        return self._random.uniform(base * _JITTER_FLOOR, base)

    def reset(self) -> None:
        self._attempt = 0
