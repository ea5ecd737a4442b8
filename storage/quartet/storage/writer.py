"""Group commit: one thread writes everything submitted meanwhile in one transaction.

A commit costs about the same for one row as for thousands (on PostgreSQL it waits for the WAL
to reach the disk). So concurrent callers hand their rows to a single writer thread and wait; the
writer takes whatever has queued up, writes it all in one transaction, commits, and only then
answers every caller. An answered caller's rows are durable; a failed transaction fails all its
callers, none of whose rows were kept, so they can retry.

Under load the writer also waits a moment (`delay`, as PostgreSQL's commit_delay) after the
first submission for those right behind it: single events arrive one at a time, each found the
writer idle, and every one of them cost a transaction of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import peewee

from quartet.storage.database import unavailable
from quartet.storage.errors import DeadlineExceeded
from quartet.storage.runner import deadline

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Submission(Generic[Item, Result]):
    items: Sequence[Item]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Result]]
    deadline: float | None
    submitted: float  # time.monotonic()


class BatchWriter(Generic[Item, Result]):
    """Writes submitted items in batches on its own thread, one transaction per batch.

    `write(items)` runs inside the transaction and returns one result per item, in order.
    `delay` is how long, in seconds, a batch waits after its first submission for more when the
    writer is busy (that submission came less than five delays after the last write ended); an
    idle writer writes at once.
    """

    def __init__(
        self,
        database: peewee.Database,
        write: Callable[[list[Item]], list[Result]],
        *,
        max_batch: int = 5000,
        delay: float = 0.0,
        name: str = "quartet-writer",
    ) -> None:
        self._database = database
        self._write = write
        self._max_batch = max_batch
        self._delay = delay
        self._last_write = -math.inf
        self._queue: queue.SimpleQueue[_Submission[Item, Result] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.batches = 0
        self.items_written = 0
        self.unavailable = 0  # batches the database could not take (see storage.unavailable)

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Queue items and wait until their transaction committed; their results, in order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Result]] = loop.create_future()
        self._queue.put(_Submission(items, loop, future, deadline.get(), time.monotonic()))
        return await future

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch, stopping = self._gather(first)
            self._write_batch(batch)
            self._last_write = time.monotonic()

    def _gather(
        self, first: _Submission[Item, Result]
    ) -> tuple[list[_Submission[Item, Result]], bool]:
        """first and the submissions queued behind it, up to max_batch items (waiting up to
        `delay` for them if busy); and whether close() was called."""
        batch, size = [first], len(first.items)
        # Counted from the submission: one that queued through the last write waited enough.
        busy = first.submitted - self._last_write < 5 * self._delay
        until = first.submitted + self._delay if busy else 0.0
        while size < self._max_batch:
            try:
                more = self._queue.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                return batch, False
            if more is None:
                return batch, True
            batch.append(more)
            size += len(more.items)
        return batch, False

    def _write_batch(self, batch: list[_Submission[Item, Result]]) -> None:
        now = time.monotonic()
        live = [s for s in batch if s.deadline is None or s.deadline > now]
        outcomes: list[tuple[_Submission[Item, Result], list[Result] | BaseException]] = [
            (s, DeadlineExceeded("the deadline passed before the write started"))
            for s in batch
            if s not in live
        ]
        items = [item for submission in live for item in submission.items]
        results: list[Result] = []  # what submissions without items get (StreamEvents allows one)
        try:
            if items:
                with self._database.connection_context(), self._database.atomic():
                    results = self._write(items)
                self.batches += 1
                self.items_written += len(items)
        except Exception as exc:
            if unavailable(exc):  # one line, not a traceback: an outage fails every batch
                self.unavailable += 1
                logger.warning(
                    "a batch of %d items failed, none was written: the database is unavailable: %s",
                    len(items),
                    exc,
                )
            else:
                logger.exception("a batch of %d items failed; none was written", len(items))
            outcomes += [(submission, exc) for submission in live]
        else:
            start = 0
            for submission in live:
                end = start + len(submission.items)
                outcomes.append((submission, results[start:end]))
                start = end
        _deliver(outcomes)


def _deliver(
    outcomes: list[tuple[_Submission[Item, Result], list[Result] | BaseException]],
) -> None:
    """Settle each waiting future on its own event loop: one wake-up per loop, not per caller."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Submission[Item, Result], object]]] = {}
    for submission, outcome in outcomes:
        by_loop.setdefault(submission.loop, []).append((submission, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _settle(settled: list[tuple[_Submission[Item, Result], object]]) -> None:
    for submission, outcome in settled:
        if submission.future.done():  # the caller went away (cancelled)
            continue
        if isinstance(outcome, BaseException):
            submission.future.set_exception(outcome)
        else:
            submission.future.set_result(outcome)  # type: ignore[arg-type]
