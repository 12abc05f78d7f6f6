"""Fault injection: what tests can break, and the state of faults still pending.

A fault is one JSON object (``POST /_sim/faults``) or the same `Fault` record passed to
`ExchangeServer.inject`:

    {"fault": "drop", "mode": "abort"}          every open connection, no close frame
    {"fault": "drop", "mode": "close", "code": 1001}
    {"fault": "stall", "seconds": 5}            stop sending and answering pings, stay open
    {"fault": "refuse", "seconds": 3, "status": 503}   new connections fail the handshake
    {"fault": "gap", "symbol": "BTCUSDT"}       skip the next book delta (a sequence gap)
    {"fault": "corrupt_checksum", "symbol": "BTC/USD"}
    {"fault": "malformed"}                      one frame that is not valid JSON
    {"fault": "clear"}                          end stalls and refusals, forget pending faults

``connection`` (an id from ``GET /_sim/stats``) limits drop, stall and malformed to one
connection. A stall hits the connections open at that moment only, so a client that
reconnects after noticing it gets a working connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import msgspec

MAX_FAULT_SECONDS: Final = 3600.0


class FaultKind(StrEnum):
    DROP = "drop"
    STALL = "stall"
    REFUSE = "refuse"
    GAP = "gap"
    CORRUPT_CHECKSUM = "corrupt_checksum"
    MALFORMED = "malformed"
    CLEAR = "clear"


class DropMode(StrEnum):
    ABORT = "abort"
    CLOSE = "close"


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One fault to inject; see the module docstring for each kind's fields."""

    fault: FaultKind
    seconds: float | None = None
    mode: DropMode = DropMode.ABORT
    code: int = 1001
    status: int = 503
    symbol: str | None = None
    connection: str | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and not 0 < self.seconds <= MAX_FAULT_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_FAULT_SECONDS}]")
        if self.fault is FaultKind.REFUSE and self.seconds is None:
            raise ValueError("refuse needs seconds")
        if self.fault in (FaultKind.GAP, FaultKind.CORRUPT_CHECKSUM) and not self.symbol:
            raise ValueError(f"{self.fault} needs a symbol")
        if not 1000 <= self.code <= 4999:
            raise ValueError("code must be a WebSocket close code (1000-4999)")
        if not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")


class SimulatorError(Exception):
    """Root of the simulator's own errors."""


class FaultError(SimulatorError, ValueError):
    """A fault that cannot be applied here (bad fields, unknown connection, no checksum)."""


_decoder: Final = msgspec.json.Decoder(Fault)


def decode_fault(body: bytes) -> Fault:
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FaultError(str(exc)) from exc


@dataclass(slots=True)
class FaultState:
    """Faults that act later: refusals until a time, and per-symbol one-shot book faults."""

    refuse_until: float = 0.0
    refuse_status: int = 503
    gaps: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    injected: dict[str, int] = field(default_factory=dict)

    def refusing(self, now: float) -> bool:
        return now < self.refuse_until

    def clear(self) -> None:
        self.refuse_until = 0.0
        self.gaps.clear()
        self.corrupt.clear()

    def take_corrupt(self, symbol: str) -> bool:
        """True once after a corruption was requested for `symbol`."""
        if symbol in self.corrupt:
            self.corrupt.discard(symbol)
            return True
        return False
