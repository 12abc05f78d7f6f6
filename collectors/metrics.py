"""Prometheus metrics of one collector, in a registry of its own.

The hot path only bumps plain integers (frames per connection, events per
kind, drops in the sink); this exporter reads them at scrape time, so a
busy read loop pays nothing for metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

from collectors.feed.collector import Collector
from collectors.sink import Sink
from shared.status import ConnectionState


class CollectorMetrics(PromCollector):
    """Exports a `Collector` and its `Sink` as metrics, labelled by connection where it helps."""

    def __init__(self, collector: Collector, sink: Sink) -> None:
        self._collector = collector
        self._sink = sink
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        self.admin_refusals = Counter(
            "collector_admin_refusals_total",
            "Admin API requests refused (host, origin, token, body type), by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.demand_refusals = Counter(
            "collector_demand_refusals_total",
            "Topics gateways asked for that this collector does not collect, by reason (counted once each).",
            ["reason"],
            registry=self.registry,
        )

    def collect(self) -> Iterator[Metric]:
        collector, sink = self._collector, self._sink
        frames = CounterMetricFamily("collector_frames_received", "WebSocket frames received.", labels=["connection"])
        sent = CounterMetricFamily("collector_requests_sent", "Requests sent (subscribe, ping).", labels=["connection"])
        parse = CounterMetricFamily("collector_parse_errors", "Frames that could not be parsed.", labels=["connection"])
        reconnects = CounterMetricFamily("collector_reconnects", "Reconnections.", labels=["connection"])
        up = GaugeMetricFamily("collector_connection_up", "1 while the connection is open.", labels=["connection"])
        idle = GaugeMetricFamily(
            "collector_seconds_since_message", "Seconds since the last frame.", labels=["connection"]
        )
        now = time.time() * 1000
        for conn in collector.connections:
            labels = [conn.id]
            frames.add_metric(labels, conn.messages)
            sent.add_metric(labels, conn.sent)
            parse.add_metric(labels, conn.parse_errors)
            reconnects.add_metric(labels, conn.reconnects)
            up.add_metric(labels, 1.0 if conn.state is ConnectionState.CONNECTED else 0.0)
            if conn.last_message:
                idle.add_metric(labels, (now - conn.last_message) / 1000)
        yield from (frames, sent, parse, reconnects, up, idle)

        events = CounterMetricFamily("collector_events", "Normalized events published, by kind.", labels=["kind"])
        for kind, count in sorted(collector.events.items()):
            events.add_metric([str(kind)], count)
        yield events
        resyncs = CounterMetricFamily(
            "collector_book_resyncs", "Book resyncs after a gap or a bad checksum.", labels=["symbol", "reason"]
        )
        for (symbol, reason), count in sorted(collector.resync_reasons.items()):
            resyncs.add_metric([symbol, reason], count)
        yield resyncs
        stale = sum(status.stale for status in collector.stream_statuses())
        yield GaugeMetricFamily("collector_stale_streams", "Streams silent past their expected interval.", value=stale)
        yield GaugeMetricFamily("collector_topics", "Subscribed topics.", value=len(collector.topics))

        yield GaugeMetricFamily("collector_sink_queue_depth", "Events waiting for Redis.", value=len(sink))
        yield CounterMetricFamily("collector_sink_published", "Events published to Redis.", value=sink.published)
        yield CounterMetricFamily("collector_sink_dropped", "Events dropped, oldest first.", value=sink.dropped)
        yield CounterMetricFamily("collector_sink_errors", "Failed publishes to Redis.", value=sink.errors)
        yield GaugeMetricFamily("collector_redis_up", "1 while Redis takes our publishes.", value=float(sink.redis_up))
