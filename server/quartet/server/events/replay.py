"""ReplayRejectedEvents: check rejected events again, against today's schemas, and store those
that pass, with their original ids, sessions, applications and times.

A replay reads the matching rejected events a chunk at a time (newest first, by the indexes of
ListRejectedEvents), checks each as SendEvent would, and records the chunk in one transaction:
the events stored and each rejected event's outcome together (`events.store_replayed`), so a
replay that fails midway leaves every chunk before complete and none half done. Ids make it
idempotent: an event already stored is counted, never stored again.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from quartet.errors.v1 import error_reason_pb2
from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.auth.authenticator import rechecked
from quartet.server.errors import Violations
from quartet.server.events.validation import EventChecker
from quartet.server.timestamps import optional_timestamp
from quartet.storage import DatabaseRunner, events
from quartet.storage.base import utcnow
from quartet.storage.events import NewEvent, ReplayState

Context = grpc.aio.ServicerContext[Any, Any]
CHUNK = 500  # rejected events read, checked and recorded at a time
# An event sent without an id was rejected without one (the id the server would have given it
# was never kept): its replay gets an id derived from its rejection, the same at every replay.
_REPLAY_IDS = uuid.UUID("0b2d8f3e-6c61-4f0c-9a43-6e1d2b7c5a90")
_NOT_KEPT = {
    "field": "data",
    "reason": error_reason_pb2.ErrorReason.Name(error_reason_pb2.FIELD_INVALID),
    "description": "was not kept whole when the event was rejected (see data_prefix), so the "
    "event cannot be replayed",
}


async def replay(
    runner: DatabaseRunner,
    checker: EventChecker,
    request: pb.ReplayRejectedEventsRequest,
    id_taken: dict[str, str],
    stored: Callable[[], None],
    learn_types: Callable[[Sequence[pb.Event]], Awaitable[None]],
) -> AsyncIterator[pb.ReplayRejectedEventsResponse]:
    """The ReplayRejectedEvents call: a progress message after each chunk (one, of zeros, when
    nothing matches). `stored()` is called after each chunk that stored events (it wakes tails);
    `learn_types` looks up the chunk's event types this process does not know (a type
    registered through another replica a moment ago, its announcement still on the way)."""
    filters, category, name = _checked(request)
    progress = pb.ReplayRejectedEventsResponse()
    sent_one = False
    async for rows in rechecked(_chunks(runner, filters)):
        now = utcnow()
        replayed: list[tuple[int, NewEvent | list[dict[str, str]]]] = []
        chosen: list[tuple[events.RejectedEvent, pb.Event, bool]] = []
        for row in rows:
            done = row.replay_state in (ReplayState.STORED, ReplayState.ALREADY_STORED)
            if done and not category:
                progress.already_stored_count += 1
                continue
            sent = sent_event(row.event)
            if (category and sent.category != category) or (name and sent.name != name):
                continue
            chosen.append((row, sent, done))
        await learn_types([sent for _, sent, done in chosen if not done])
        for row, sent, done in chosen:
            if done:
                progress.already_stored_count += 1
            elif row.data_prefix is not None:
                replayed.append((row.id, [*_violations(checker, sent, row, now), _NOT_KEPT]))
            else:
                replayed.append((row.id, _check(checker, sent, row, now)))
        if replayed:
            states = await runner.run(events.store_replayed, replayed, now, id_taken)
            progress.stored_count += states.count(ReplayState.STORED)
            progress.already_stored_count += states.count(ReplayState.ALREADY_STORED)
            progress.still_rejected_count += states.count(ReplayState.STILL_REJECTED)
            if ReplayState.STORED in states:
                stored()
        response = pb.ReplayRejectedEventsResponse()
        response.CopyFrom(progress)
        sent_one = True
        yield response
    if not sent_one:
        yield progress


# The fields of a rejected event's JSON that sent_event reads itself: what MessageToJson writes
# of the fields a sender sets.
_SENT_FIELDS = frozenset({"id", "sessionId", "category", "name", "data", "occurTime"})


def sent_event(text: str) -> pb.Event:
    """The event a rejected event's JSON holds. json_format.Parse would do, at 3-4 times the
    cost, most of a replay's time; it still reads what this does not expect."""
    document = json.loads(text)
    if not (
        isinstance(document, dict)
        and document.keys() <= _SENT_FIELDS
        and all(isinstance(document.get(k, ""), str) for k in _SENT_FIELDS - {"data"})
        and isinstance(document.get("data", {}), dict)
    ):
        return json_format.Parse(text, pb.Event(), ignore_unknown_fields=True)
    sent = pb.Event(
        id=document.get("id", ""),
        session_id=document.get("sessionId", ""),
        category=document.get("category", ""),
        name=document.get("name", ""),
    )
    if "data" in document:
        sent.data.update(document["data"])
    if "occurTime" in document:
        sent.occur_time.FromJsonString(document["occurTime"])
    return sent


async def _chunks(
    runner: DatabaseRunner, filters: dict[str, Any]
) -> AsyncIterator[list[events.RejectedEvent]]:
    """The matching rejected events, newest first, CHUNK at a time."""
    after: tuple[datetime.datetime, int] | None = None
    while True:
        rows = await runner.run(events.list_rejected, limit=CHUNK, after=after, **filters)
        if rows:
            yield rows
        if len(rows) < CHUNK:
            return
        after = (rows[-1].reject_time, rows[-1].id)


def _check(
    checker: EventChecker, sent: pb.Event, row: events.RejectedEvent, now: datetime.datetime
) -> NewEvent | list[dict[str, str]]:
    """What replaying the rejected event gives: the event to store, or its problems now."""
    if not sent.id:
        sent.id = str(uuid.uuid5(_REPLAY_IDS, str(row.id)))
    item = checker.check(sent, row.application_id, now)
    return item if isinstance(item, NewEvent) else item.violations


def _violations(
    checker: EventChecker, sent: pb.Event, row: events.RejectedEvent, now: datetime.datetime
) -> list[dict[str, str]]:
    """The problems the event kept without its data still has (its data aside)."""
    item = _check(checker, sent, row, now)
    if isinstance(item, NewEvent):
        return []
    return [v for v in item if v["field"] != "data" and not v["field"].startswith("data.")]


def _checked(request: pb.ReplayRejectedEventsRequest) -> tuple[dict[str, Any], str, str]:
    """The rejected events' filters, and the type's category and name (matched as rows are
    read: they are inside each rejected event's JSON)."""
    violations = Violations()
    violations.check(
        not request.reason or request.reason in error_reason_pb2.ErrorReason.keys(),
        "reason",
        "must be an ErrorReason value name, such as EVENT_PAYLOAD_INVALID",
    )
    violations.check(not request.name or bool(request.category), "name", "needs `category` too")
    start = optional_timestamp(request, "reject_time_start", violations)
    end = optional_timestamp(request, "reject_time_end", violations)
    violations.raise_if_any()
    filters = {
        "reason": request.reason,
        "application_id": request.application_id,
        "reject_time_start": start,
        "reject_time_end": end,
    }
    return filters, request.category, request.name
