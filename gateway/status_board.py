"""What the status page shows: every gateway node's and collector's status record, and this node's recent errors.

Each node writes its own record (`gateway:status:<node>`, a TTL of three
periods, so a dead node drops off) every few seconds; the page's JSON reads
all nodes' and collectors' records, this node's topics and its last errors.
Reads are bounded: at most MAX_RECORDS records of each kind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from shared import names
from shared.redis_target import REDIS_ERRORS, AsyncClient
from shared.status import (
    GatewayStatus,
    decode_gateway_status,
    decode_status,
    encode_gateway_status,
    read_records,
)

logger = logging.getLogger(__name__)

EVERY_S: Final = 5.0
TTL_S: Final = 15
MAX_RECORDS: Final = 500
MAX_RECENT_ERRORS: Final = 50
MAX_TOPICS_SHOWN: Final = 500
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


class RecentErrors(logging.Handler):
    """The last warnings and errors of the gateway's loggers, for the status page (a bounded ring)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[dict[str, object]] = deque(maxlen=MAX_RECENT_ERRORS)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        error = getattr(record, "error", None)
        if error:
            message = f"{message}: {error}"
        self.records.append(
            {
                "ts": int(record.created * 1000),
                "level": record.levelname,
                "logger": record.name,
                "message": message[:300],
            }
        )


class StatusBoard:
    """Writes this node's status record; gathers everything the status page shows."""

    def __init__(
        self,
        client: AsyncClient,
        own: Callable[[], GatewayStatus],
        topics: Callable[[], dict[str, int]],
    ) -> None:
        self._redis = client
        self._own = own
        self._topics = topics
        self.errors = RecentErrors()

    def attach(self) -> None:
        logging.getLogger("gateway").addHandler(self.errors)

    def detach(self) -> None:
        logging.getLogger("gateway").removeHandler(self.errors)

    async def run(self) -> None:
        while True:
            try:
                await self.publish()
            except REDIS_ERRORS as exc:
                logger.warning("writing the node's status failed", extra={"error": str(exc)})
            await asyncio.sleep(EVERY_S)

    async def publish(self) -> None:
        status = self._own()
        await self._redis.set(names.gateway_status_key(status.id), encode_gateway_status(status), ex=TTL_S)

    async def snapshot(self) -> dict[str, Any]:
        """The page's JSON: nodes, collectors, this node's topics, its recent errors."""
        own = self._own()
        others = await read_records(self._redis, names.GATEWAY_STATUS_PREFIX, decode_gateway_status, limit=MAX_RECORDS)
        nodes = [own, *(node for node in others if node.id != own.id)]  # this node's own record, fresh
        collectors = []
        for record in await read_records(self._redis, names.COLLECTOR_STATUS_PREFIX, decode_status, limit=MAX_RECORDS):
            hosts = {urlsplit(connection.url).hostname for connection in record.connections}
            collectors.append(
                {
                    "id": record.id,
                    "exchange": str(record.exchange),
                    "state": str(record.state),
                    "simulated": bool(hosts) and hosts <= LOOPBACK,
                    "connections": len(record.connections),
                    "topics": len(record.topics),
                    "stale": sum(1 for stream in record.streams if stream.stale),
                    "ts": record.ts,
                }
            )
        topics = sorted(self._topics().items(), key=lambda item: -item[1])[:MAX_TOPICS_SHOWN]
        return {
            "ts": int(time.time() * 1000),
            "nodes": sorted((msgspec.structs.asdict(node) for node in nodes), key=lambda node: str(node["id"])),
            "collectors": sorted(collectors, key=lambda collector: str(collector["id"])),
            "topics": [{"topic": topic, "subscribers": count} for topic, count in topics],
            "errors": list(reversed(self.errors.records)),
        }
