"""Per-socket state: who is connected and what they subscribed to."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.auth import Identity
from shared import names


@dataclass(eq=False, slots=True)
class Session:
    """One connected socket.

    `topics` are committed subscriptions (in the room, counted by the relay);
    `pending` are reserved by a subscribe request still waiting for Redis, so
    they count against the cap without being delivered yet.
    """

    sid: str
    identity: Identity
    user_patterns: re.Pattern[str] | None
    topics: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    catch_up: Callable[[], None] | None = None  # starts the catch-up once the CONNECT answer is queued
    sync_task: asyncio.Task[None] | None = None
    closed: bool = False

    @property
    def personal_channels(self) -> list[str]:
        """The user's own channel and their teams' channels."""
        identity = self.identity
        return [names.user_channel(identity.user_id), *(names.team_channel(t) for t in identity.teams)]

    def reserved(self) -> int:
        return len(self.topics) + len(self.pending)
