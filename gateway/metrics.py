"""Prometheus metrics of one gateway node, in a registry of its own.

Most are prometheus_client's own. The few counted for every relayed message (`LoopCounter`,
`LoopHistogram`) are plain numbers exported in the same format: prometheus_client takes a lock and a
few calls per increment, for threads the gateway does not have, and with one subscriber per topic
those calls were an eighth of a message's cost (loadtests/README.md, "Many topics").
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric


class LoopCount:
    """One label's value of a `LoopCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class LoopCounter:
    """A counter with one label, incremented from the event loop's thread only; exported as a Counter."""

    def __init__(self, name: str, documentation: str, label: str, registry: CollectorRegistry) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._label = label
        self._counts: dict[str, LoopCount] = {}
        registry.register(self)

    def labels(self, value: str) -> LoopCount:
        count = self._counts.get(value)
        if count is None:
            count = self._counts[value] = LoopCount()
        return count

    def total(self) -> int:
        """The sum over every label."""
        return sum(count.value for count in self._counts.values())

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, count in list(self._counts.items()):
            family.add_metric([value], count.value)
        return [family]


class LoopHistogram:
    """A histogram observed from the event loop's thread only; exported as a Histogram."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self._bounds) + 1)  # the last one: above every bound
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # a bucket holds the values up to its bound
        self._sum += value

    def collect(self) -> Iterable[Metric]:
        cumulative = list(accumulate(self._counts))
        buckets = [(repr(float(bound)), count) for bound, count in zip(self._bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        return [HistogramMetricFamily(self._name, self._documentation, buckets=buckets, sum_value=self._sum)]


class GatewayMetrics:
    """Every metric the node exports; names are part of the operations contract."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("gateway_connections", "Connected Socket.IO clients.", registry=r)
        self.subscriptions = Gauge("gateway_subscriptions", "Topic subscriptions of connected clients.", registry=r)
        self.redis_channels = Gauge("gateway_redis_channels", "Redis channels this node is subscribed to.", registry=r)
        self.redis_connected = Gauge(
            "gateway_redis_connected", "1 while every pub/sub connection (one per cluster master) is up.", registry=r
        )
        self.redis_pubsub_connections = Gauge(
            "gateway_redis_pubsub_connections", "Pub/sub connections held: one per cluster master.", registry=r
        )
        self.redis_channels_lost = Counter(
            "gateway_redis_channels_lost_total",
            "Channel subscriptions lost (connection lost, slot moved) and restored with a catch-up.",
            registry=r,
        )
        self.messages_in = LoopCounter(
            "gateway_messages_in_total", "Messages received from Redis, by kind.", "kind", registry=r
        )
        self.messages_out = LoopCounter(
            "gateway_messages_out_total", "Messages queued to clients, by kind.", "kind", registry=r
        )
        self.messages_rejected = Counter(
            "gateway_messages_rejected_total", "Redis messages dropped as invalid, by kind.", ["kind"], registry=r
        )
        self.auth_failures = Counter("gateway_auth_failures_total", "Refused tokens, by code.", ["code"], registry=r)
        self.client_errors = Counter(
            "gateway_client_errors_total", "Client events answered with an error, by code.", ["code"], registry=r
        )
        self.protocol_closes = Counter(
            "gateway_protocol_closes_total",
            "Transports closed for a protocol fault, by reason.",
            ["reason"],
            registry=r,
        )
        self.conflated = Counter(
            "gateway_conflated_total",
            "Market packets replaced by a newer one before a lagging socket took them.",
            registry=r,
        )
        self.slow_consumer_disconnects = Counter(
            "gateway_slow_consumer_disconnects_total",
            "Sockets disconnected because their send queue was full.",
            registry=r,
        )
        self.origins_refused = Counter(
            "gateway_origins_refused_total", "Browser requests refused for their Origin (CORS).", registry=r
        )
        self.handshakes_refused = Counter(
            "gateway_handshakes_refused_total",
            "New Engine.IO sessions refused for their address's handshake rate.",
            registry=r,
        )
        self.accepts_refused = Counter(
            "gateway_accepts_refused_total",
            "TCP connections answered 429 at once for their address's accept rate.",
            registry=r,
        )
        self.lagging_sockets = Gauge(
            "gateway_lagging_sockets", "Sockets whose market data is being conflated.", registry=r
        )
        self.relay_latency = LoopHistogram(
            "gateway_relay_latency_seconds",
            "From a market event's receive stamp to its fan-out on this node.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How much later than asked the event loop ran a timer (sampled 100 times a second).",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.gc_pause = Histogram(
            "gateway_gc_pause_seconds",
            "Pauses of the cyclic garbage collector, by generation (2: a full collection).",
            ["generation"],
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.gc_collected = Counter(
            "gateway_gc_collected_objects",
            "Objects in cycles the garbage collector freed, by generation (2: a full collection).",
            ["generation"],
            registry=r,
        )
        self.gc_censuses = Counter(
            "gateway_gc_censuses",
            "Garbage censuses (a forked copy of the process counting its cyclic garbage), by outcome: clean "
            "(none found: no full collection), garbage (found and collected), failed (collected anyway).",
            ["outcome"],
            registry=r,
        )


class ProtocolReports:
    """The protocol layer's reports (`engineio.Observer`, `sio.SocketObserver`), counted in the node's metrics."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def conflated(self) -> None:
        self._metrics.conflated.inc()

    def overflowed(self) -> None:
        self._metrics.slow_consumer_disconnects.inc()

    def origin_refused(self, origin: str) -> None:
        self._metrics.origins_refused.inc()

    def handshake_limited(self) -> None:
        self._metrics.handshakes_refused.inc()

    def protocol_closed(self, reason: str) -> None:
        self._metrics.protocol_closes.labels(reason).inc()

    def event_refused(self, code: str) -> None:
        self._metrics.client_errors.labels(code).inc()
