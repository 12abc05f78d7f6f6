"""How deep free-form JSON may nest: one bound for everything read from clients and from Redis."""

from __future__ import annotations

from typing import Any, Final

# Nesting allowed in free-form JSON read from clients or Redis (a client's
# event, an execution's `result`): deeper than any real payload needs, far
# below where the parsers' recursion gives out (about 1,000 levels).
MAX_JSON_DEPTH: Final = 32


def deeper_than(value: object, limit: int) -> bool:
    """Whether decoded JSON nests lists and objects more than `limit` deep; iterative, linear in its size."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
