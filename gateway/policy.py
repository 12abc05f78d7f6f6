"""Which market topics a user may subscribe to, decided over the token's claims.

A topic is allowed when it matches one of the node's `allowed_topics`
patterns, or one of the patterns the user's token lists in `topics_claim`.
Patterns are shell-style globs over the topic text (``binance:*``,
``*:ticker:*``, ``okx:book:BTC/USDT``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

MAX_CLAIM_PATTERNS: Final = 200


def compile_patterns(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any of the globs, or None when there are none."""
    parts = [fnmatch.translate(pattern) for pattern in patterns if pattern]
    return re.compile("|".join(parts)) if parts else None


class TopicPolicy:
    def __init__(self, allowed_topics: Iterable[str], topics_claim: str) -> None:
        self._node = compile_patterns(allowed_topics)
        self._claim = topics_claim

    def user_patterns(self, claims: Mapping[str, Any]) -> re.Pattern[str] | None:
        """The user's own patterns from their token, compiled once per connection."""
        if not self._claim:
            return None
        value = claims.get(self._claim)
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list):
            return None
        return compile_patterns(item.strip() for item in value[:MAX_CLAIM_PATTERNS] if isinstance(item, str))

    def allows(self, topic: str, user_patterns: re.Pattern[str] | None) -> bool:
        if self._node is not None and self._node.fullmatch(topic):
            return True
        return user_patterns is not None and user_patterns.fullmatch(topic) is not None
