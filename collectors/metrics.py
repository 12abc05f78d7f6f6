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
from collectors.storage import CandleStorage
from shared.status import ConnectionState


class CollectorMetrics(PromCollector):
    """Exports a `Collector` and its `Sink` as metrics, labelled by connection where it helps."""

    def __init__(self, collector: Collector, sink: Sink, storage: CandleStorage | None = None) -> None:
        self._collector = collector
        self._sink = sink
        self._storage = storage
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

        rest = collector.rest
        yield CounterMetricFamily("collector_rest_weight_spent", "REST request weight spent.", value=rest.spent)
        yield GaugeMetricFamily(
            "collector_rest_weight_available", "REST weight left in the budget.", value=rest.available
        )
        yield CounterMetricFamily(
            "collector_rest_wait_seconds", "Time REST calls waited for budget.", value=rest.waited_s
        )
        yield CounterMetricFamily(
            "collector_rest_throttled", "429/418 answers (all REST paused).", value=rest.throttled
        )
        yield from self._storage_metrics()

    def _storage_metrics(self) -> Iterator[Metric]:
        storage = self._storage
        if storage is None:
            return
        writer, loader = storage.writer, storage.loader
        yield GaugeMetricFamily(
            "collector_db_up", "1 while candles reach PostgreSQL.", value=float(bool(writer and writer.db_up))
        )
        if writer is not None:
            yield GaugeMetricFamily(
                "collector_candle_queue_depth", "Candles waiting for PostgreSQL.", value=len(writer)
            )
            yield CounterMetricFamily("collector_candles_written", "Live candle states written.", value=writer.written)
            yield CounterMetricFamily(
                "collector_candles_dropped", "Candles dropped, oldest first (queue full).", value=writer.dropped
            )
            yield CounterMetricFamily("collector_candle_write_errors", "Failed candle writes.", value=writer.errors)
        if loader is not None:
            yield CounterMetricFamily(
                "collector_history_candles", "Candles loaded from REST history.", value=loader.loaded
            )
            yield CounterMetricFamily("collector_history_requests", "REST history requests.", value=loader.requests)
            yield CounterMetricFamily(
                "collector_history_refused", "History pages refused as malformed.", value=loader.refused
            )
            yield CounterMetricFamily(
                "collector_history_failures", "History requests that failed.", value=loader.failures
            )
