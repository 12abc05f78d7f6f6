"""Gateway settings: every one from an environment variable or a CLI flag."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.protocol.engineio import Transport
from shared.config import setting
from shared.redis_target import RedisTarget


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """Settings of one gateway node."""

    host: str = setting("0.0.0.0", "GATEWAY_HOST", "Address to listen on.")
    port: int = setting(8000, "GATEWAY_PORT", "Port to listen on.")
    node_id: str = setting("", "GATEWAY_NODE_ID", "Name of this node in logs and metrics (default: host:port).")
    redis_url: str = setting(
        "",
        "REDIS_URL",
        "Redis URL (redis+cluster://host:port,... for a Redis Cluster); empty starts a private embedded Redis"
        " (local runs only).",
        flag="--redis-url",
    )
    log_level: str = setting("info", "GATEWAY_LOG_LEVEL", "Log level: debug, info, warning, error.")
    workers: int = setting(
        1,
        "GATEWAY_WORKERS",
        "Node processes on this host and port (SO_REUSEPORT: the kernel spreads connections); "
        "more than one needs GATEWAY_TRANSPORTS=websocket.",
    )
    reuse_port: bool = setting(
        False,
        "GATEWAY_REUSE_PORT",
        "Listen with SO_REUSEPORT beside other processes on the same port (what --workers sets for its workers).",
    )
    transports: list[Transport] = setting(
        [Transport.WEBSOCKET, Transport.POLLING],
        "GATEWAY_TRANSPORTS",
        "Allowed transports; `websocket` alone needs no sticky sessions.",
    )
    cors_origins: list[str] = setting(
        [],
        "GATEWAY_CORS_ORIGINS",
        "Origins allowed for browsers (comma-separated); `*` allows any (without credentials); "
        "empty allows same-origin only.",
    )
    jwt_secret: str = setting("", "GATEWAY_JWT_SECRET", "HS256 shared secret.")
    jwt_public_key: str = setting(
        "", "GATEWAY_JWT_PUBLIC_KEY", "PEM public key (RS256 or ES256), or a path to a PEM file."
    )
    jwks_url: str = setting("", "GATEWAY_JWKS_URL", "JWKS URL; keys are cached and refetched on an unknown `kid`.")
    jwt_algorithms: list[str] = setting(
        [],
        "GATEWAY_JWT_ALGORITHMS",
        "Accepted algorithms (default: HS256 with a secret, RS256,ES256 with a key or JWKS).",
    )
    jwt_issuer: str = setting("", "GATEWAY_JWT_ISSUER", "Required `iss` claim, when set.")
    jwt_audience: str = setting("", "GATEWAY_JWT_AUDIENCE", "Required `aud` claim, when set.")
    jwt_leeway_s: float = setting(10.0, "GATEWAY_JWT_LEEWAY_S", "Clock skew tolerated on exp, nbf and iat, in seconds.")
    teams_claim: str = setting(
        "teams", "GATEWAY_TEAMS_CLAIM", "Claim holding the user's team ids (a list or a comma-separated string)."
    )
    topics_claim: str = setting(
        "",
        "GATEWAY_TOPICS_CLAIM",
        "Claim listing topic patterns (glob, e.g. `binance:*`) a user may subscribe to; empty: any topic.",
    )
    allowed_topics: list[str] = setting(
        ["*"], "GATEWAY_ALLOWED_TOPICS", "Topic patterns (glob) any authenticated user may subscribe to."
    )
    admin_token: str = setting(
        "", "GATEWAY_ADMIN_TOKEN", "Bearer token of the status page's data (/status.json); empty: it is off."
    )
    status_open: bool = setting(
        False, "GATEWAY_STATUS_OPEN", "Serve /status.json without a token (the local stack does; never in production)."
    )
    on_demand: bool = setting(
        False,
        "GATEWAY_ON_DEMAND",
        "Ask collectors to collect the topics clients subscribe to that no collector serves (see COLLECTOR_ON_DEMAND).",
    )
    max_subscriptions: int = setting(100, "GATEWAY_MAX_SUBSCRIPTIONS", "Topics one socket may subscribe to at once.")
    max_topics_per_request: int = setting(
        100, "GATEWAY_MAX_TOPICS_PER_REQUEST", "Topics in one subscribe or unsubscribe request."
    )
    max_event_bytes: int = setting(
        16384,
        "GATEWAY_MAX_EVENT_BYTES",
        "Largest client packet (an event with its binary attachments, a CONNECT), in bytes; "
        "larger ones get a `payload_too_large` error ack or connect_error.",
    )
    max_packet_bytes: int = setting(
        65536,
        "GATEWAY_MAX_PACKET_BYTES",
        "Largest inbound transport message, in bytes; larger ones close the connection.",
    )
    connect_timeout_s: float = setting(
        5.0, "GATEWAY_CONNECT_TIMEOUT_S", "Seconds a transport may stay open without a Socket.IO CONNECT."
    )
    ping_interval_s: float = setting(25.0, "GATEWAY_PING_INTERVAL_S", "Engine.IO ping interval, in seconds.")
    ping_timeout_s: float = setting(20.0, "GATEWAY_PING_TIMEOUT_S", "Engine.IO ping timeout, in seconds.")
    conflate_above_bytes: int = setting(
        65536,
        "GATEWAY_CONFLATE_ABOVE_BYTES",
        "Unsent bytes past which a socket is lagging: its market data is conflated per topic (newest wins).",
    )
    max_buffered_bytes: int = setting(
        1048576,
        "GATEWAY_MAX_BUFFERED_BYTES",
        "Unsent bytes past which a socket that must not lose a message is disconnected (it recovers on reconnect).",
    )
    io_uring: bool = setting(
        True,
        "GATEWAY_IO_URING",
        "Write a fan-out to all its clients in one io_uring system call where the kernel allows it "
        "(Linux 5.6+, not refused by sysctl or seccomp; else, and when false, one write per client).",
    )
    accept_rate_per_ip: float = setting(
        100.0,
        "GATEWAY_ACCEPT_RATE_PER_IP",
        "TCP connections per second one address (an IPv6 /64) may open; past it the connection is reset "
        "before a byte of it is read. Not applied with GATEWAY_TRUST_FORWARDED_FOR (the peer is the proxy: "
        "limit there).",
    )
    accept_burst_per_ip: int = setting(
        200, "GATEWAY_ACCEPT_BURST_PER_IP", "TCP connections one address may open at once before the rate applies."
    )
    handshake_rate_per_ip: float = setting(
        20.0,
        "GATEWAY_HANDSHAKE_RATE_PER_IP",
        "New Engine.IO sessions per second one address (an IPv6 /64) may open; past it HTTP 429.",
    )
    handshake_burst_per_ip: int = setting(
        100, "GATEWAY_HANDSHAKE_BURST_PER_IP", "New sessions one address may open at once before the rate applies."
    )
    connect_rate_per_ip: float = setting(
        10.0,
        "GATEWAY_CONNECT_RATE_PER_IP",
        "Socket.IO connection attempts per second allowed from one address (an IPv6 /64).",
    )
    connect_burst_per_ip: int = setting(
        50, "GATEWAY_CONNECT_BURST_PER_IP", "Connection attempts one address may make at once before the rate applies."
    )
    trust_forwarded_for: bool = setting(
        False,
        "GATEWAY_TRUST_FORWARDED_FOR",
        "Take the client address from the last X-Forwarded-For entry (only behind a proxy that sets it).",
    )
    max_connections_per_user: int = setting(
        50, "GATEWAY_MAX_CONNECTIONS_PER_USER", "Sockets one user may hold across every node (counted in Redis)."
    )
    event_rate: float = setting(50.0, "GATEWAY_EVENT_RATE", "Packets (events, acks) per second one socket may send.")
    event_burst: int = setting(
        100, "GATEWAY_EVENT_BURST", "Packets one socket may send at once before the rate applies."
    )
    max_recovery: int = setting(
        1000,
        "GATEWAY_MAX_RECOVERY",
        "Records replayed per stream on reconnect; beyond it the client is told to resync by listing.",
    )
    history_max_age_s: float = setting(
        604800.0,
        "GATEWAY_HISTORY_MAX_AGE_S",
        "Age of the oldest notification or execution update publishers keep (must match their retention).",
    )
    database_url: str = setting(
        "",
        "DATABASE_URL",
        "PostgreSQL of the candle history; empty: history requests answer `unavailable`.",
        flag="--database-url",
    )
    candles_max_limit: int = setting(1000, "GATEWAY_CANDLES_MAX_LIMIT", "Most candles in one candle history page.")
    candles_cache_entries: int = setting(
        512, "GATEWAY_CANDLES_CACHE_ENTRIES", "Candle history pages kept in the node's LRU cache."
    )
    candles_timeout_s: float = setting(
        5.0, "GATEWAY_CANDLES_TIMEOUT_S", "Deadline of one candle history query, in seconds."
    )
    gc_full_interval_s: float = setting(
        3600.0,
        "GATEWAY_GC_FULL_INTERVAL_S",
        "How often the served process looks for leaked cycles (in between, what lives is frozen out of the "
        "collector's reach each second): a forked copy of it counts its cyclic garbage, and only if it finds "
        "some (or cannot tell) does the process collect everything itself, a pause of 240 ms with 10,000 clients "
        "measured (gateway/garbage.py).",
    )
    shutdown_timeout_s: float = setting(
        10.0, "GATEWAY_SHUTDOWN_TIMEOUT_S", "Deadline for a graceful shutdown on SIGTERM, in seconds."
    )

    def __post_init__(self) -> None:
        if self.redis_url:
            RedisTarget.parse(self.redis_url)  # raises RedisUrlError, a ValueError naming what is wrong
        if not (self.jwt_secret or self.jwt_public_key or self.jwks_url):
            raise ValueError("one of GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWKS_URL is required")
        if not self.transports:
            raise ValueError("GATEWAY_TRANSPORTS must name at least one transport")
        if not 1 <= self.workers <= 256:
            raise ValueError("GATEWAY_WORKERS must be between 1 and 256")
        if self.workers > 1 and Transport.POLLING in self.transports:
            raise ValueError(
                "GATEWAY_WORKERS > 1 needs GATEWAY_TRANSPORTS=websocket: a long-polling session's requests would "
                "reach different workers (run workers on their own ports behind nginx for polling)"
            )
        for name in (
            "max_subscriptions",
            "max_topics_per_request",
            "max_event_bytes",
            "max_packet_bytes",
            "max_recovery",
            "conflate_above_bytes",
            "candles_max_limit",
            "candles_cache_entries",
            "candles_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_buffered_bytes <= self.conflate_above_bytes:
            raise ValueError("GATEWAY_MAX_BUFFERED_BYTES must be larger than GATEWAY_CONFLATE_ABOVE_BYTES")

    @property
    def name(self) -> str:
        return self.node_id or f"{self.host}:{self.port}"
