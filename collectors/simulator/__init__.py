"""Exchange simulator: local servers that speak the live exchanges' public market-data
WebSocket protocols (Binance, Coinbase Advanced Trade, Kraken v2, Bybit v5 spot, OKX v5).

Used as the fake exchange in tests, by the run-everything-locally command when the real
exchanges cannot be reached, and by load tests. Start it with ``fanout-simulator`` or::

    async with Simulator(SimulatorConfig(exchanges=[Exchange.KRAKEN])) as sim:
        url = sim.url("kraken")          # ws://127.0.0.1:PORT/v2
        sim.server("kraken").gap("BTC/USD")
"""

from __future__ import annotations

from collectors.simulator.config import Mode, SimulatorConfig
from collectors.simulator.faults import DropMode, Fault, FaultError, FaultKind, SimulatorError
from collectors.simulator.server import ExchangeServer, Simulator

__all__ = [
    "DropMode",
    "ExchangeServer",
    "Fault",
    "FaultError",
    "FaultKind",
    "Mode",
    "Simulator",
    "SimulatorConfig",
    "SimulatorError",
]
