"""TailEvents: follow the events that match a filter as they are stored, from any worker.

Each tail reads the database for the rows after its cursor (`quartet.storage.events.tail_events`,
which also keeps the store order exact on PostgreSQL), so an event stored by any worker reaches
every tail. It reads when this worker has just stored events (a wake-up costing ingest nothing
when no tail is open) and otherwise every POLL_SECONDS, which bounds the delay of events other
workers store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.auth.authenticator import rechecked
from quartet.server.errors import Violations
from quartet.server.events.service import event_message
from quartet.server.events.validation import canonical_uuid
from quartet.storage import DatabaseRunner, events

Context = grpc.aio.ServicerContext[Any, Any]
POLL_SECONDS = 0.25
# A tail woken by its worker's writes reads at most this often: under load a worker commits
# hundreds of times a second, and each tail reading after each commit would cost the database
# more than the writes themselves.
MIN_READ_SECONDS = 0.05
MAX_EVENTS = 500  # per message of the stream
# The events' messages lately built, by seq: tails of one worker that follow the same events
# build each message once (from JSON, the costly part) however many of them there are.
CACHED_MESSAGES = 10_000


class Tails:
    """The tails open on one worker, and what wakes them."""

    def __init__(self, runner: DatabaseRunner, *, poll_seconds: float = POLL_SECONDS) -> None:
        self._db = runner
        self._poll_seconds = poll_seconds
        self._waiting: set[asyncio.Event] = set()
        self._messages: collections.OrderedDict[int, pb.Event] = collections.OrderedDict()

    def stored(self) -> None:
        """This worker has just stored events: its tails read now, not at their next poll."""
        for wake in self._waiting:
            wake.set()

    async def tail(
        self, request: pb.TailEventsRequest, context: Context
    ) -> AsyncIterator[pb.TailEventsResponse]:
        """The TailEvents call: headers once the starting point is fixed, then the events. The
        caller is checked again before each read (a cache lookup; see `rechecked`)."""
        after, filters = _checked(request)
        cursor = await self._db.run(events.tail_cursor, after)
        await context.send_initial_metadata(())
        async for found in rechecked(self._follow(cursor, filters)):
            if found:
                yield pb.TailEventsResponse(events=found)

    async def _follow(
        self, cursor: events.TailCursor, filters: dict[str, Any]
    ) -> AsyncIterator[list[pb.Event]]:
        """Each read's events (often none), forever."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self._waiting.add(wake)
        try:
            while True:
                wake.clear()  # before reading: what is stored meanwhile wakes the next read
                read = loop.time()
                rows, more = await self._db.run(
                    events.tail_events, cursor, limit=MAX_EVENTS, **filters
                )
                yield [self._message(row) for row in rows]
                if not more:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self._poll_seconds)
                    await asyncio.sleep(read + MIN_READ_SECONDS - loop.time())
        finally:
            self._waiting.discard(wake)

    def _message(self, row: events.Event) -> pb.Event:
        message = self._messages.get(row.seq)
        if message is None:
            message = self._messages[row.seq] = event_message(row)
            if len(self._messages) > CACHED_MESSAGES:
                self._messages.popitem(last=False)
        return message


def _checked(request: pb.TailEventsRequest) -> tuple[str, dict[str, Any]]:
    """The event to resume after, and the filters, checked as ListEvents checks them; one of
    session and category is required, so that a tail follows a selection, not every event."""
    violations = Violations()
    session_id = canonical_uuid(request.session_id, "session_id", violations, required=False)
    violations.check(
        bool(request.session_id or request.category),
        "session_id",
        "is required unless `category` is set: a tail follows a session or a category",
    )
    violations.check(not request.name or bool(request.category), "name", "needs `category` too")
    violations.check_text("category", request.category)
    violations.check_text("name", request.name)
    violations.check(request.application_id >= 0, "application_id", "must not be negative")
    after = canonical_uuid(request.after_event_id, "after_event_id", violations, required=False)
    violations.raise_if_any()
    return after, {
        "session_id": session_id,
        "category": request.category,
        "name": request.name,
        "application_id": request.application_id,
    }
