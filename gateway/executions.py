"""Client requests about stored execution updates: the current state of each of the user's teams' executions."""

from __future__ import annotations

import time

from gateway.errors import RequestError
from gateway.history import History
from gateway.metrics import GatewayMetrics
from gateway.sessions import Session
from shared import codec, names
from shared.errors import PayloadError
from shared.redis_target import REDIS_ERRORS


class ExecutionRequests:
    """The `executions:list` event: what a tab without execution state asks for instead of reconnecting."""

    def __init__(self, history: History, metrics: GatewayMetrics) -> None:
        self._history = history
        self._metrics = metrics

    async def states(self, session: Session, data: object = None) -> dict[str, object]:
        """Per team: the latest state of each running or recently finished execution, and the stream's position.

        The socket stays in its teams' rooms meanwhile, so an update published after the read arrives
        live; a client keeps the higher `version` of an execution (docs/protocol.md).
        """
        if data is not None:
            raise RequestError("bad_request", "executions:list takes no argument")
        now_ms = int(time.time() * 1000)
        teams: dict[str, object] = {}
        try:
            for team in session.identity.teams:
                items = []
                for entry in await self._history.execution_states(team, now_ms):
                    try:
                        update = codec.decode_stored_execution(entry.data)
                    except PayloadError:
                        self._metrics.messages_rejected.labels("stored").inc()
                        continue
                    if update.team_id == team:
                        items.append({"update": codec.to_builtins(update), "position": entry.position})
                position = await self._history.last_position(names.execution_stream(team))
                teams[team] = {"items": items, "position": position}
        except REDIS_ERRORS as exc:
            raise RequestError("unavailable", "executions are unavailable; retry") from exc
        return {"ok": True, "teams": teams}
