"""Token buckets for the gateway's rate limits (connection attempts per IP, events per socket)."""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from typing import Final

# Bounds the memory of per-IP buckets under a flood of distinct addresses;
# the least recently seen address is forgotten first (it starts full again).
MAX_TRACKED_KEYS: Final = 100_000


# One IPv6 client usually holds a whole /64 and can rotate through it freely,
# so per-address limits count the /64 as one address.
IPV6_PREFIX: Final = 64


# Addresses whose key is remembered: every accept and every CONNECT asks, and parsing an address costs
# more than the rest of a rate check. Bounded (a few MB) against a flood of distinct addresses.
ADDRESS_KEYS_CACHED: Final = 10_000


@functools.lru_cache(maxsize=ADDRESS_KEYS_CACHED)
def address_key(address: str) -> str:
    """The key a per-address limit counts under: an IPv4 address, or an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a Unix socket, a test): counted as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        # Every connect takes from four buckets: plain comparisons, not a call of min(), halve the cost.
        if now is None:
            now = time.monotonic()
        tokens = self._tokens + (now - self._stamp) * self._rate
        if tokens > self._burst:  # noqa: PLR1730 - min() is a call, this a comparison (see above)
            tokens = self._burst
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False


class KeyedBuckets:
    """One bucket per key (an IP address), with a bounded number of keys."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take()
