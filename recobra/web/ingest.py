"""Group commit for ``POST /api/v1/events``: concurrent requests share one transaction.

Each request's events are checked first (422 before anything is queued), then handed
to the process's ``GroupCommit``. Its writer writes one transaction at a time;
requests that arrive while it is busy wait in a queue, and its next transaction takes
everything queued, in arrival order. Nothing waits on a timer: a lone request is
written at once, and under load each transaction carries the events of every request
that came in meanwhile. Statements and the commit's flush to disk are then paid once
per group rather than once per request, which is what lets a few processes take in
thousands of events a second.

One writer per process (``writers``); the processes still write at once. A second
writer per process made the groups smaller: at 1,000 single-event requests a second
over two processes it cost 5% more CPU, and p99 was 25-30 ms against 19-20 ms with
one; flat out at ten events per request it took in 8% more events, but with p99 at
49 ms against 40-42 (``benchmarks/ingest.py``, docs/benchmarks.md). On SQLite, which
has one writer at a time, a second one only waited for the lock.

What each request sees is unchanged:

* it is answered only after the transaction holding its events has committed;
* it is all or nothing: if the shared transaction fails, every request of the group
  is applied again on its own, in order, so one request's failure (a conflict with a
  worker, say) is answered to that request alone and never undoes another's events;
* an event id already applied, by an earlier request or earlier in the same group,
  is reported as a duplicate, exactly as if the requests had come one after another;
* immediate retries its events call for (a new card) run after the commit, for that
  request, outside the shared transaction, so a slow gateway never holds up others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from recobra.engine.commands import Command
from recobra.engine.service import HandleResult

log = logging.getLogger("recobra.web.ingest")

MAX_GROUP_EVENTS = 2000
"""Most events in one shared transaction (a larger request still goes alone)."""
WRITERS = 1
"""Transactions a process writes at once (see the module)."""

Apply = Callable[[Sequence[Command]], list[HandleResult]]
"""Applies events in one transaction and returns one result per event, in order."""


@dataclass(slots=True)
class _Request:
    commands: Sequence[Command]
    future: asyncio.Future[list[HandleResult]]


@dataclass(slots=True)
class GroupStats:
    """Counters for tests and metrics: how many transactions carried how many requests."""

    transactions: int = 0
    requests: int = 0
    events: int = 0
    fallbacks: int = 0
    """Groups whose shared transaction failed and whose requests were applied one by one."""
    largest: int = 0
    """Most requests in one transaction."""


@dataclass(slots=True)
class GroupCommit:
    """Applies the events of concurrent requests in shared transactions (see the module)."""

    apply: Apply
    max_events: int = MAX_GROUP_EVENTS
    writers: int = WRITERS
    stats: GroupStats = field(default_factory=GroupStats)
    _queue: list[_Request] = field(default_factory=list)
    _writing: set[asyncio.Task[None]] = field(default_factory=set)

    async def submit(self, commands: Sequence[Command]) -> list[HandleResult]:
        """Apply ``commands`` (all or nothing); returns once they are committed."""
        loop = asyncio.get_running_loop()
        request = _Request(commands, loop.create_future())
        self._queue.append(request)
        # A writer that has just finished counts no more, even before its done
        # callback has dropped it from the set: it will not look at the queue again.
        if sum(not w.done() for w in self._writing) < self.writers:
            writer = loop.create_task(self._write())
            self._writing.add(writer)
            writer.add_done_callback(self._writing.discard)
        # The writer task outlives a cancelled request: its events are written anyway
        # (as they would be had the client waited), and the others are answered.
        return await asyncio.shield(request.future)

    async def _write(self) -> None:
        """One writer: write groups until the queue is empty (one transaction at a time)."""
        while self._queue:
            group = self._take()
            try:
                outcomes, fell_back = await run_in_threadpool(self._apply_group, group)
            except BaseException:  # the loop is shutting down: nobody is answered
                for request in group + self._queue:
                    request.future.cancel()
                self._queue.clear()
                raise
            self._count(group, fell_back)
            for request, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)

    def _take(self) -> list[_Request]:
        """The queue's oldest requests, up to ``max_events`` events (at least one request)."""
        group = [self._queue[0]]
        size = len(group[0].commands)
        for request in self._queue[1:]:
            size += len(request.commands)
            if size > self.max_events:
                break
            group.append(request)
        del self._queue[: len(group)]
        return group

    def _count(self, group: list[_Request], fell_back: bool) -> None:
        stats = self.stats
        stats.transactions += 1 + (len(group) if fell_back else 0)
        stats.requests += len(group)
        stats.events += sum(len(r.commands) for r in group)
        stats.largest = max(stats.largest, len(group))
        stats.fallbacks += fell_back

    def _apply_group(self, group: list[_Request]) -> tuple[list[list[HandleResult] | Exception], bool]:
        """In a worker thread: one transaction for the group, or one per request if the
        shared one fails (then True)."""
        if len(group) == 1:
            return [self._apply_one(group[0])], False
        commands = [c for r in group for c in r.commands]
        try:
            results = self.apply(commands)
        except Exception as exc:
            log.info(
                "a shared transaction of %d requests failed (%s); applying them one by one", len(group), exc
            )
            return [self._apply_one(r) for r in group], True
        outcomes: list[list[HandleResult] | Exception] = []
        start = 0
        for request in group:
            end = start + len(request.commands)
            outcomes.append(results[start:end])
            start = end
        return outcomes, False

    def _apply_one(self, request: _Request) -> list[HandleResult] | Exception:
        try:
            return self.apply(request.commands)
        except Exception as exc:
            return exc


__all__ = ["MAX_GROUP_EVENTS", "WRITERS", "GroupCommit", "GroupStats"]
