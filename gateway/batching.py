"""Requests of many coroutines served together: one Redis round trip for many connects.

A connect storm brings hundreds of CONNECTs a second. Each asks Redis the same
kinds of question (revoked? under the cap? where does my stream end?); asked
one by one, each costs redis-py's per-command machinery and a round trip, which
dominated a connect's CPU. A `Batcher` keeps at most one call of its kind out at
a time: what is asked while it is out waits and goes in the next call, together
(group commit). A lone request goes at once; under a storm the calls grow with
the load instead of their number. The node serves CONNECTs themselves with one
(`GatewayNode._serve_connects`): each step of a connect runs for a whole batch.

A `SharedPipeline` does the same for Redis queries of every kind: connects'
revocation reads, cap claims and stream positions (a batch's as one `joined`
query), the presence heartbeat's renewals, all ride the one pipeline out. It
is written as RESP bytes on a connection of its own: redis-py cost about 110 us
of CPU per pipeline and 10 per command (measured here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Generic, TypeVar, cast

from shared import resp
from shared.redis_target import RedisTarget
from shared.resp import RespConnection

Item = TypeVar("Item")
Command = tuple[bytes | str | int, ...]  # a Redis command and its arguments
Result = TypeVar("Result")

# Requests one call serves at most; the rest go in the next call.
MAX_BATCH: Final = 256


class Batcher(Generic[Item, Result]):
    """Serves submitted items with calls of `run`, one call out at a time, each taking all that waits.

    `run(items)` returns one outcome per item, in order: its result, or an exception raised
    to that item's caller alone. An exception `run` itself raises (Redis unreachable) is raised
    to every caller of that call. The running call is a task held here (`close` ends it).
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]],
        *,
        max_items: int = MAX_BATCH,
    ) -> None:
        self._run = run
        self._max_items = max_items
        self._queued: list[tuple[Item, asyncio.Future[Result]]] = []
        self._call: asyncio.Task[None] | None = None
        self._scheduled = False

    async def submit(self, item: Item) -> Result:
        return await self.enqueue(item)

    def enqueue(self, item: Item) -> asyncio.Future[Result]:
        """Queue `item`; the future is its outcome (for a caller that waits without a coroutine of its own)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Result] = loop.create_future()
        self._queued.append((item, answer))
        if self._call is None and not self._scheduled:
            # After the callbacks already queued in this turn: their requests join this call.
            self._scheduled = True
            loop.call_soon(self._start)
        return answer

    def _start(self) -> None:
        self._scheduled = False
        if self._call is not None or not self._queued:
            return
        queued, self._queued = self._queued[: self._max_items], self._queued[self._max_items :]
        self._call = asyncio.get_running_loop().create_task(self._serve(queued))
        self._call.add_done_callback(partial(self._ended, queued))

    def _ended(self, queued: list[tuple[Item, asyncio.Future[Result]]], call: asyncio.Task[None]) -> None:
        for _, answer in queued:  # a call cancelled (`close`), even before it started, answered nobody
            if not answer.done():
                answer.cancel()
        self._call = None
        self._start()  # what was asked meanwhile

    async def _serve(self, queued: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            outcomes = await self._run([item for item, _ in queued])
        except Exception as exc:  # noqa: BLE001 - not handled here: raised to each caller
            for _, answer in queued:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for (_, answer), outcome in zip(queued, outcomes, strict=True):
            if answer.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(outcome, Exception):
                answer.set_exception(outcome)
            else:
                answer.set_result(outcome)

    async def settle(self) -> None:
        """Return once everything submitted before now has been served (new submissions may follow)."""
        while self._call is not None or self._queued:
            if self._call is None:  # its call starts later in this turn
                await asyncio.sleep(0)
            else:
                await asyncio.wait((self._call,))

    async def close(self) -> None:
        """End the running call and refuse what waits (their callers see CancelledError)."""
        queued, self._queued = self._queued, []
        for _, answer in queued:
            answer.cancel()
        call = self._call
        if call is not None:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Query(Generic[Result]):
    """One caller's commands in a shared pipeline, and how their replies become its answer.

    `answer` gets Redis's replies as hiredis reads them (RESP2: bytes, ints, lists; a failed
    command's as its ResponseError). In a cluster they come through redis-py's pipeline, which
    reshapes a few (XREVRANGE's rows become tuples with a dict): an answer reads only what both
    shapes share (a row's id is ``rows[0][0]`` in both).
    """

    commands: tuple[Command, ...]
    answer: Callable[[list[Any]], Result | Exception]


def answers(queries: Sequence[Query[Any]], replies: list[Any]) -> list[Any]:
    """Each query's answer (a result or an exception, returned, not raised) from the replies to all their commands."""
    outcomes = []
    start = 0
    for query in queries:
        end = start + len(query.commands)
        outcomes.append(query.answer(replies[start:end]))
        start = end
    return outcomes


def joined(queries: Sequence[Query[Any]]) -> Query[list[Any]]:
    """Several queries as one, for a caller that asks them together: one wait, and a list of their answers."""
    commands = tuple(command for query in queries for command in query.commands)
    return Query(commands, partial(answers, queries))


class SharedPipeline:
    """Queries of every caller and kind, sent to Redis in one pipeline per round trip (one out at a time).

    On a single Redis the pipeline is bytes on a connection of its own (`shared.resp`): no
    per-command machinery, and the connection's reply watchdog bounds a round trip. A cluster's
    goes through redis-py's cluster pipeline, which splits it by slot and follows MOVED and ASK.
    A lost connection fails the round trip on it (its callers see ConnectionError); the next
    round trip opens a new one.
    """

    def __init__(self, target: RedisTarget, *, timeout_s: float) -> None:
        self._target = target
        self._timeout_s = timeout_s  # a round trip as a whole
        self._batcher: Batcher[Query[Any], Any] = Batcher(self._run)
        self._connection: RespConnection | None = None  # a single Redis: opened by the first round trip
        self._cluster = (
            target.async_client(max_connections=2, socket_timeout=None, socket_connect_timeout=timeout_s)
            if target.cluster
            else None
        )

    async def ask(self, query: Query[Result]) -> Result:
        """The query's answer; raises what `answer` returned as an exception, or the pipeline's own failure."""
        return cast(Result, await self._batcher.submit(query))

    async def settle(self) -> None:
        """Return once every query asked before now is answered."""
        await self._batcher.settle()

    async def aclose(self) -> None:
        """Refuse what waits or is out (its callers see CancelledError), then close the connections."""
        await self._batcher.close()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._cluster is not None:
            await self._cluster.aclose()

    async def _run(self, queries: list[Query[Any]]) -> list[Any]:
        if not any(query.commands for query in queries):  # nothing to send (an empty `joined`): no reply to wait for
            return answers(queries, [])
        replies = await (self._cluster_round_trip(queries) if self._cluster is not None else self._round_trip(queries))
        return answers(queries, replies)

    async def _round_trip(self, queries: list[Query[Any]]) -> list[Any]:
        connection = self._connection
        if connection is None or not connection.is_open:
            connection = self._connection = await RespConnection.open(self._target, timeout_s=self._timeout_s)
        commands = [resp.command(*command) for query in queries for command in query.commands]
        return await connection.execute(b"".join(commands), len(commands))

    async def _cluster_round_trip(self, queries: list[Query[Any]]) -> list[Any]:
        assert self._cluster is not None
        pipe = self._cluster.pipeline(transaction=False)
        for query in queries:
            for command in query.commands:
                pipe.execute_command(*command)
        async with asyncio.timeout(self._timeout_s):
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
