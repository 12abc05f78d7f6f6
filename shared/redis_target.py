"""The one place that turns a Redis URL into clients: a single Redis, or a Redis Cluster.

``redis://[user:pass@]host:port[/db]`` (``rediss://`` with TLS) is one server.
``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://``)
names seed nodes of a Redis Cluster: the clients find every node from them.

What differs between the two is kept here: which client class serves the
keys (redis-py's RedisCluster follows MOVED and ASK and refreshes its slot
map), which pub/sub commands carry the channels (a cluster copies a classic
PUBLISH to every node, so it uses sharded SPUBLISH / SSUBSCRIBE, delivered
only by the channel's slot owner), and how the slot map is read for the
gateway's own pub/sub connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.retry
import redis.cluster
import redis.exceptions
from redis.backoff import NoBackoff
from redis.crc import key_slot

from shared.errors import ContractError

SINGLE_SCHEMES: Final = {"redis": False, "rediss": True}
CLUSTER_SCHEMES: Final = {"redis+cluster": False, "rediss+cluster": True}
DEFAULT_PORT: Final = 6379
SLOTS: Final = 16384
MAX_SEEDS: Final = 64

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncClient = redis.Redis | redis.cluster.RedisCluster


class RedisUrlError(ContractError, ValueError):
    """A Redis URL this project cannot use."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server to open a connection to (a single Redis, or one cluster node)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SlotRange:
    """Slots `first`..`last` (inclusive) are served by the master at `owner`."""

    first: int
    last: int
    owner: Endpoint


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL: where to connect, with which credentials, and whether it is a cluster."""

    cluster: bool
    seeds: tuple[Endpoint, ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False
    db: int = 0

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Parse a `redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://` URL; raises RedisUrlError."""
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in SINGLE_SCHEMES | CLUSTER_SCHEMES:
            raise RedisUrlError(
                f"unsupported Redis URL scheme {scheme!r} (redis, rediss, redis+cluster, rediss+cluster)"
            )
        cluster = scheme in CLUSTER_SCHEMES
        netloc, _, path = rest.partition("/")
        path = path.split("?", 1)[0]
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username, password = (unquote(user) or None, unquote(secret)) if colon else (None, unquote(user))
        seeds = tuple(_endpoint(part) for part in hosts.split(",")) if hosts else (Endpoint("127.0.0.1", DEFAULT_PORT),)
        if len(seeds) > MAX_SEEDS or (len(seeds) > 1 and not cluster):
            raise RedisUrlError("only a redis+cluster:// URL lists several hosts (at most 64)")
        db = 0
        if path:
            if not path.isdigit():
                raise RedisUrlError(f"the database must be a number, not {path!r}")
            db = int(path)
            if cluster and db != 0:
                raise RedisUrlError("a Redis Cluster has only database 0")
        tls = {**SINGLE_SCHEMES, **CLUSTER_SCHEMES}[scheme]
        return cls(cluster=cluster, seeds=seeds, username=username, password=password, tls=tls, db=db)

    def node_url(self, endpoint: Endpoint) -> str:
        """A `redis://` URL of one node, with this target's credentials."""
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{endpoint.port}/{self.db}"

    def async_client(self, *, max_connections: int | None = None, **options: Any) -> AsyncClient:
        """A client for keys and scripts: RedisCluster (MOVED/ASK followed) or a pooled Redis."""
        if self.cluster:
            seed = self.seeds[0]
            return ClusterClient(
                host=seed.host,
                port=seed.port,
                startup_nodes=[redis.asyncio.cluster.ClusterNode(s.host, s.port) for s in self.seeds],
                username=self.username,
                password=self.password,
                ssl=self.tls,
                max_connections=max_connections or 2**31,
                **options,
            )
        url = self.node_url(self.seeds[0])
        # A pooled connection Redis closed (a restart) fails its next command: try it once more on a new one.
        options.setdefault(
            "retry", redis.asyncio.retry.Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        )
        if max_connections is None:
            return redis.asyncio.Redis.from_url(url, **options)
        # A bounded pool that queues bursts instead of failing them with "Too many connections".
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=options.get("socket_timeout", 5), **options
        )
        return redis.asyncio.Redis.from_pool(pool)  # owns the pool: aclose() closes it

    def sync_client(self, **options: Any) -> SyncClient:
        """The blocking twin of `async_client`, for backend services and tools."""
        if self.cluster:
            return redis.cluster.RedisCluster(
                startup_nodes=[redis.cluster.ClusterNode(s.host, s.port) for s in self.seeds],  # type: ignore[no-untyped-call]
                username=self.username,
                password=self.password,
                ssl=self.tls,
                **options,
            )
        return redis.Redis.from_url(self.node_url(self.seeds[0]), **options)


class ClusterClient(redis.asyncio.cluster.RedisCluster):
    """redis-py's async RedisCluster, whose commands fail with a ConnectionError when their connection is
    closed under them.

    On CLUSTERDOWN (a cluster restarting) redis-py closes every connection of the client, including
    those other commands are using at that moment; such a command then fails inside redis-py's
    connection code with AttributeError (its stream already None), which no caller catching
    REDIS_ERRORS retries: a publisher's retry loop died of it, and so would the gateway's catch-up.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            if not _raised_in(exc, redis.asyncio.connection.__file__):
                raise  # a bug elsewhere, not a connection closed under the command
            raise redis.exceptions.ConnectionError(f"connection closed while in use: {exc}") from exc


def _raised_in(exc: BaseException, filename: str) -> bool:
    """Whether `exc` was raised by code of the module file `filename`."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename == filename


def _endpoint(text: str) -> Endpoint:
    host, colon, port = text.strip().rpartition(":")
    if not colon:
        host, port = port, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisUrlError(f"bad Redis host:port {text[:100]!r}")
    return Endpoint(host, int(port))


def is_cluster(client: object) -> bool:
    """Whether a client talks to a Redis Cluster (so channels are sharded)."""
    return isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster)


def publish_command(client: object) -> str:
    """PUBLISH on a single Redis; SPUBLISH in a cluster, where only the channel's slot owner delivers it."""
    return "SPUBLISH" if is_cluster(client) else "PUBLISH"


def slot_of(name: str) -> int:
    """The cluster slot of a key or sharded channel (its `{hash tag}` when it has one)."""
    return int(key_slot(name.encode()))


def parse_slots(reply: object, default_host: str) -> list[SlotRange]:
    """CLUSTER SLOTS's raw reply as slot ranges; anything malformed is skipped (the reply is untrusted).

    Each entry is `[first, last, [host, port, id, ...], replicas...]`; an empty host means
    "the address you reached me at" (`default_host`).
    """
    ranges: list[SlotRange] = []
    if not isinstance(reply, list):
        return ranges
    for entry in reply[:SLOTS]:
        if not (isinstance(entry, list) and len(entry) >= 3 and isinstance(entry[2], list) and len(entry[2]) >= 2):
            continue
        first, last, (host, port, *_) = entry[0], entry[1], entry[2]
        if not (isinstance(first, int) and isinstance(last, int) and isinstance(port, int)):
            continue
        if not (0 <= first <= last < SLOTS and 0 < port < 65536 and isinstance(host, bytes | str)):
            continue
        text = host.decode(errors="replace") if isinstance(host, bytes) else host
        ranges.append(SlotRange(first, last, Endpoint(text[:255] or default_host, port)))
    return ranges


async def get_many(client: AsyncClient, keys: list[str]) -> list[Any]:
    """GET of each key in one pipeline: unlike MGET, the keys may live in different cluster slots."""
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return list(await pipe.execute())


# What a Redis call raises when Redis (or part of a cluster) is unreachable or refuses: redis-py's
# RedisClusterException (no cluster node answers) is not a RedisError, so catch this tuple instead.
REDIS_ERRORS: Final = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
