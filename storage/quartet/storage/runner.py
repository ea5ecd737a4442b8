"""Run blocking storage functions off the event loop, each inside its own pooled connection."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import peewee

from quartet.storage.database import close, reads_never_block, unavailable
from quartet.storage.errors import DeadlineExceeded

P = ParamSpec("P")
T = TypeVar("T")

# The monotonic time by which the current call must finish, set by the server for each call. Work
# that starts after it is skipped: the caller has already given up.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


class DatabaseRunner:
    """A bounded thread pool for database work.

    Peewee is synchronous, so the asyncio server hands each unit of database work to one of
    `threads` threads. Each unit runs inside `connection_context()`, which takes a connection from
    the pool and returns it afterwards; writes open their own `atomic()` block inside.
    """

    def __init__(self, database: peewee.Database, threads: int) -> None:
        self.database = database
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="quartet-db")
        self.unavailable = 0  # units of work the database could not serve (a health hint)
        self._inline_reads = reads_never_block(database)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn(*args, **kwargs) in a database thread and return its result."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, lambda: context.run(self._call, fn, *args, **kwargs)
            )
        except Exception as exc:
            if unavailable(exc):
                self.unavailable += 1
            raise

    async def read(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn, which only reads, and return its result: on the event loop itself where a read
        cannot wait for anything (SQLite in WAL mode: readers never wait for the writer, and a
        keyed read takes microseconds), else in a database thread as `run` does.

        The hop to a thread and back cost more than the read itself: under load, the thread
        and the event loop took turns at the GIL, each turn a context switch
        (docs/performance.md)."""
        if not self._inline_reads:
            return await self.run(fn, *args, **kwargs)
        try:
            return self._call(fn, *args, **kwargs)
        except Exception as exc:
            if unavailable(exc):
                self.unavailable += 1
            raise

    def _call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        limit = deadline.get()
        if limit is not None and time.monotonic() >= limit:
            raise DeadlineExceeded("the deadline passed before the database work started")
        with self.database.connection_context():
            return fn(*args, **kwargs)

    def close(self) -> None:
        """Wait for running work, then close every pooled connection."""
        self._executor.shutdown(wait=True)
        close(self.database)
