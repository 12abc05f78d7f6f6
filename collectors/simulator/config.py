"""Settings of the exchange simulator, from defaults, SIM_* variables and command-line flags."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.config import setting
from shared.topics import Exchange

# Each exchange gets its own port: base port + this index, so URLs keep the real paths.
PORT_ORDER: Final[tuple[Exchange, ...]] = (
    Exchange.BINANCE,
    Exchange.COINBASE,
    Exchange.KRAKEN,
    Exchange.BYBIT,
    Exchange.OKX,
)


class Mode(StrEnum):
    SYNTHETIC = "synthetic"
    REPLAY = "replay"


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Local servers that speak the real exchanges' public market-data WebSocket protocols."""

    exchanges: list[Exchange] = setting(
        list(PORT_ORDER), "SIM_EXCHANGES", "exchanges to serve, comma separated", flag="--exchange"
    )
    host: str = setting("127.0.0.1", "SIM_HOST", "address to bind; loopback by default")
    port: int = setting(
        0,
        "SIM_PORT",
        "base port: an exchange listens on port + its index in binance,coinbase,kraken,bybit,okx; 0 picks free ports",
    )
    mode: Mode = setting(
        Mode.SYNTHETIC,
        "SIM_MODE",
        "synthetic (generated market for any symbol) or replay (recorded real traffic, other symbols synthetic)",
    )
    rate: float = setting(
        20.0, "SIM_RATE", "synthetic book updates per second per symbol (about a fifth of them are trades)"
    )
    speed: float = setting(1.0, "SIM_SPEED", "replay speed, 2.0 plays twice as fast")
    seed: int = setting(1, "SIM_SEED", "seed of the synthetic markets")
    book_levels: int = setting(100, "SIM_BOOK_LEVELS", "levels per side of a synthetic book")
    binance_weight_per_minute: int = setting(
        6000, "SIM_BINANCE_WEIGHT_PER_MINUTE", "Binance REST: request weight per minute before 429"
    )
    history_days: int = setting(
        2, "SIM_HISTORY_DAYS", "days of generated candle history (REST) before the day a synthetic market starts"
    )
    ping_interval: float = setting(20.0, "SIM_PING_INTERVAL", "seconds between Binance's WebSocket ping frames")
    pong_timeout: float = setting(60.0, "SIM_PONG_TIMEOUT", "seconds Binance waits for a pong before disconnecting")
    binance_max_incoming: int = setting(
        5, "SIM_BINANCE_MAX_INCOMING", "Binance: incoming frames per second before disconnect"
    )
    binance_max_streams: int = setting(1024, "SIM_BINANCE_MAX_STREAMS", "Binance: streams per connection")
    coinbase_subscribe_timeout: float = setting(
        5.0, "SIM_COINBASE_SUBSCRIBE_TIMEOUT", "Coinbase: seconds to send a subscribe before disconnect"
    )
    bybit_idle_timeout: float = setting(
        600.0, "SIM_BYBIT_IDLE_TIMEOUT", "Bybit: seconds without ping-pong or data before disconnect"
    )
    bybit_max_args: int = setting(10, "SIM_BYBIT_MAX_ARGS", "Bybit spot: args per subscribe")
    okx_idle_timeout: float = setting(
        30.0,
        "SIM_OKX_IDLE_TIMEOUT",
        "OKX: seconds without a subscription, or without any message pushed, before disconnect",
    )
    okx_real_checksum: bool = setting(
        False, "SIM_OKX_REAL_CHECKSUM", "OKX: send the real CRC32 in books (live OKX sends 0 since 2026-06-23)"
    )
    max_connections: int = setting(1000, "SIM_MAX_CONNECTIONS", "open connections per exchange")
    max_markets: int = setting(2000, "SIM_MAX_MARKETS", "symbols per exchange")
    max_queue: int = setting(
        20000,
        "SIM_MAX_QUEUE",
        "queued frames per connection before it is disconnected as a slow consumer, as exchanges do",
    )
    log_level: str = setting("info", "SIM_LOG_LEVEL", "log level")

    def __post_init__(self) -> None:
        if not self.exchanges or len(set(self.exchanges)) != len(self.exchanges):
            raise ValueError("exchanges must name each exchange at most once")
        if not 0 <= self.port <= 65535 - len(PORT_ORDER):
            raise ValueError(f"port must be 0..{65535 - len(PORT_ORDER)}")
        positive = {
            "rate": self.rate,
            "speed": self.speed,
            "book_levels": self.book_levels,
            "ping_interval": self.ping_interval,
            "pong_timeout": self.pong_timeout,
            "binance_max_incoming": self.binance_max_incoming,
            "binance_max_streams": self.binance_max_streams,
            "coinbase_subscribe_timeout": self.coinbase_subscribe_timeout,
            "bybit_idle_timeout": self.bybit_idle_timeout,
            "bybit_max_args": self.bybit_max_args,
            "okx_idle_timeout": self.okx_idle_timeout,
            "max_connections": self.max_connections,
            "max_markets": self.max_markets,
            "max_queue": self.max_queue,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.rate > 1_000_000:
            raise ValueError("rate must be at most 1000000")

    def port_for(self, exchange: Exchange) -> int:
        return self.port + PORT_ORDER.index(exchange) if self.port else 0
