"""ExportEvents: the events matching a filter, in ListEvents' order, as NDJSON or Event messages.

The export reads the events a chunk at a time by their keyset position (occur_time, seq), the
order the indexes give, so that each read is a bounded index range whatever the table's size
(and, on a table partitioned by occur_time, touches only the partitions it needs). Each message
is yielded to gRPC, which sends it once the client's flow-control window has room: the server
holds one chunk and one message at a time, however many rows the export has.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.auth.authenticator import rechecked
from quartet.server.errors import Violations
from quartet.server.events.validation import canonical_uuid
from quartet.server.timestamps import optional_timestamp, to_timestamp
from quartet.storage import DatabaseRunner, events

Context = grpc.aio.ServicerContext[Any, Any]
# Rows read at a time: large enough that the query's own cost is small beside the rows'.
CHUNK = 5000
MAX_EVENTS = 1000  # per message of Event messages
# Room in each message for its other fields (last_event_id, event_count) and their tags.
_OVERHEAD = 64


async def export(
    runner: DatabaseRunner,
    request: pb.ExportEventsRequest,
    context: Context,
    max_message_bytes: int,
) -> AsyncIterator[pb.ExportEventsResponse]:
    """The ExportEvents call; the caller is checked again before each chunk read."""
    filters, after_event_id = _checked(request)
    after = await runner.run(events.export_position, after_event_id) if after_event_id else None
    budget = max_message_bytes - _OVERHEAD
    if request.format == pb.EXPORT_FORMAT_EVENTS:
        rows = rechecked(_chunks(runner, events.export_events, filters, after))
        messages = _event_messages(rows, budget)
    else:
        rows = rechecked(_chunks(runner, events.export_lines, filters, after))
        messages = _ndjson_messages(rows, budget)
    async for message in messages:
        yield message


Rows = list[tuple[Any, ...]]


async def _chunks(
    runner: DatabaseRunner,
    read: Callable[..., Rows],
    filters: dict[str, Any],
    after: events.ExportKey | None,
) -> AsyncIterator[Rows]:
    """The matching rows, CHUNK at a time, each ending in its keyset position. Each chunk is
    read in a database thread while the one before is being sent (the database and the
    network overlap; two chunks are held at most)."""
    reading = asyncio.ensure_future(runner.run(read, limit=CHUNK, after=after, **filters))
    try:
        while True:
            rows = await reading
            if len(rows) == CHUNK:
                after = rows[-1][-2:]
                reading = asyncio.ensure_future(
                    runner.run(read, limit=CHUNK, after=after, **filters)
                )
            if rows:
                yield rows
            if len(rows) < CHUNK:
                return
    finally:
        reading.cancel()  # the client went away: the read under way is not wanted


async def _ndjson_messages(
    chunks: AsyncIterator[Rows], budget: int
) -> AsyncIterator[pb.ExportEventsResponse]:
    """The lines, in messages of whole lines up to budget bytes (one line at least)."""
    lines: list[str] = []
    size = 0
    last = ""
    async for rows in chunks:
        for line, event_id, _, _ in rows:
            if lines and size + len(line) > budget:
                yield _ndjson(lines, last)
                lines, size = [], 0
            lines.append(line)
            size += len(line)
            last = event_id
    if lines:
        yield _ndjson(lines, last)


def _ndjson(lines: list[str], last: str) -> pb.ExportEventsResponse:
    return pb.ExportEventsResponse(
        ndjson="".join(lines).encode(), last_event_id=last, event_count=len(lines)
    )


async def _event_messages(
    chunks: AsyncIterator[Rows], budget: int
) -> AsyncIterator[pb.ExportEventsResponse]:
    """The rows as Event messages, up to MAX_EVENTS and budget bytes a message."""
    response = pb.ExportEventsResponse()
    size = 0
    async for rows in chunks:
        for row in rows:
            message = _event(row)
            added = message.ByteSize() + 6  # its tag and length
            if response.events and (size + added > budget or len(response.events) >= MAX_EVENTS):
                yield response
                response, size = pb.ExportEventsResponse(), 0
            response.events.append(message)
            response.last_event_id = message.id
            response.event_count += 1
            size += added
    if response.events:
        yield response


def _event(row: tuple[Any, ...]) -> pb.Event:
    event_id, session, category, name, data, app, receive, version, occur, _ = row
    message = pb.Event(
        id=event_id,
        session_id=session,
        category=category,
        name=name,
        occur_time=to_timestamp(_datetime(occur)),
        application_id=app,
        receive_time=to_timestamp(_datetime(receive)),
        schema_version=version,
    )
    message.data.update(json.loads(data))
    return message


def _datetime(value: datetime.datetime | str) -> datetime.datetime:
    """A stored time: a datetime from PostgreSQL, its ISO text from SQLite."""
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value


def _checked(request: pb.ExportEventsRequest) -> tuple[dict[str, Any], str]:
    """The filters (their field rules are the contract's) and the event to resume after."""
    violations = Violations()
    session_id = canonical_uuid(request.session_id, "session_id", violations, required=False)
    violations.check(not request.name or bool(request.category), "name", "needs `category` too")
    start = optional_timestamp(request, "occur_time_start", violations)
    end = optional_timestamp(request, "occur_time_end", violations)
    after = canonical_uuid(request.after_event_id, "after_event_id", violations, required=False)
    violations.raise_if_any()
    return {
        "session_id": session_id,
        "category": request.category,
        "name": request.name,
        "application_id": request.application_id,
        "occur_time_start": start,
        "occur_time_end": end,
    }, after
