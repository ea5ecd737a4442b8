"""EventService: send events (stored durably or kept as rejected), query them, manage schemas."""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from quartet.errors.v1 import error_reason_pb2
from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc
from quartet.server import metrics
from quartet.server.auth import require_caller
from quartet.server.errors import FieldViolation, InvalidArgument, PermissionDenied, Violations
from quartet.server.events.registry import Registry, Schema, SchemaInvalid
from quartet.server.events.validation import (
    TEXT_LENGTH,
    EventChecker,
    canonical_uuid,
    violations_of,
)
from quartet.server.pagination import decode_page_token, page_size, paged
from quartet.server.timestamps import optional_timestamp, to_timestamp
from quartet.storage import DatabaseRunner, events
from quartet.storage.base import utcnow
from quartet.storage.events import NewEvent, Rejection
from quartet.storage.writer import BatchWriter

Context = grpc.aio.ServicerContext[Any, Any]
MAX_BATCH = 1000
STREAM_WINDOW = 4  # batches of one stream being written at once: pipelining with a bound

# What the writer answers for each item it was given.
STORED, DUPLICATE, REJECTED = "stored", "duplicate", "rejected"
_STATUS = {
    STORED: pb.EVENT_STATUS_STORED,
    DUPLICATE: pb.EVENT_STATUS_DUPLICATE,
    REJECTED: pb.EVENT_STATUS_REJECTED,
}


def write_batch(items: list[NewEvent | Rejection]) -> list[tuple[str, datetime.datetime]]:
    """The writer's job for one transaction: store events and rejections, say what became of
    each, with the receive time."""
    now = utcnow()
    new_events = [item for item in items if isinstance(item, NewEvent)]
    inserted = events.store(
        new_events, [item for item in items if isinstance(item, Rejection)], now
    )
    results: list[tuple[str, datetime.datetime]] = []
    for item in items:
        if isinstance(item, Rejection):
            results.append((REJECTED, now))
            for reason in {v["reason"] for v in item.violations}:
                metrics.event_rejections.labels(reason).inc()
        elif item.id in inserted:
            inserted.discard(item.id)  # a second copy in the same batch is a duplicate
            results.append((STORED, now))
        else:
            results.append((DUPLICATE, now))
    for outcome, count in collections.Counter(status for status, _ in results).items():
        metrics.events.labels(outcome).inc(count)
    return results


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    def __init__(
        self,
        runner: DatabaseRunner,
        writer: BatchWriter[NewEvent | Rejection, tuple[str, datetime.datetime]],
        registry: Registry,
        checker: EventChecker,
    ) -> None:
        self._db = runner
        self._writer = writer
        self._registry = registry
        self._checker = checker

    async def SendEvent(
        self, request: pb.SendEventRequest, context: Context
    ) -> pb.SendEventResponse:
        application_id = _sending_application()
        if not request.HasField("event"):
            raise InvalidArgument(
                "event is required", violations=[FieldViolation("event", "is required")]
            )
        item = self._checker.check(request.event, application_id, utcnow())
        [(status, receive_time)] = await self._writer.submit([item])
        if isinstance(item, Rejection):
            raise InvalidArgument(
                "the event was rejected and kept among the rejected events",
                reason=error_reason_pb2.EVENT_REJECTED,
                violations=violations_of(item, "event."),
            )
        if status == DUPLICATE:
            stored = await self._db.run(events.get_event, item.id)
            return pb.SendEventResponse(event=event_message(stored), duplicate=True)
        return pb.SendEventResponse(event=new_event_message(item, receive_time))

    async def SendEvents(
        self, request: pb.SendEventsRequest, context: Context
    ) -> pb.SendEventsResponse:
        application_id = _sending_application()
        _check_batch_size(request.events, "events")
        items = self._check_all(request.events, application_id)
        outcomes = await self._writer.submit(items)
        return pb.SendEventsResponse(
            results=[
                _result(item, status) for item, (status, _) in zip(items, outcomes, strict=True)
            ]
        )

    async def StreamEvents(
        self, request_iterator: AsyncIterator[pb.StreamEventsRequest], context: Context
    ) -> pb.StreamEventsResponse:
        application_id = _sending_application()
        response = pb.StreamEventsResponse()
        # Each message's batch is handed to the writer at once and the next message read while
        # it is written, up to STREAM_WINDOW batches in flight; the reply waits for them all.
        pending: list[tuple[int, list[NewEvent | Rejection], asyncio.Task[Any]]] = []
        offset = 0
        try:
            async for message in request_iterator:
                field = f"messages[{len(pending)}].events"
                _check_batch_size(message.events, field, allow_empty=True)
                items = self._check_all(message.events, application_id)
                pending.append((offset, items, asyncio.ensure_future(self._writer.submit(items))))
                offset += len(items)
                writing = [task for _, _, task in pending if not task.done()]
                if len(writing) >= STREAM_WINDOW:
                    await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.gather(*(task for _, _, task in pending))
        finally:
            for _, _, task in pending:
                task.cancel()  # no-op for finished ones; nobody waits for the rest any more
        for start, items, task in pending:
            for index, (item, (status, _)) in enumerate(zip(items, await task, strict=True)):
                if status == STORED:
                    response.stored_count += 1
                elif status == DUPLICATE:
                    response.duplicate_count += 1
                else:
                    assert isinstance(item, Rejection)
                    response.rejected.append(
                        pb.RejectedEventResult(
                            index=start + index,
                            event_id=_sent_id(item),
                            violations=_violations(item),
                        )
                    )
        return response

    async def GetEvent(self, request: pb.GetEventRequest, context: Context) -> pb.Event:
        violations = Violations()
        event_id = canonical_uuid(request.id, "id", violations, required=True)
        violations.raise_if_any()
        return event_message(await self._db.run(events.get_event, event_id))

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        violations = Violations()
        limit = page_size(request)
        after = decode_page_token(request, (datetime.datetime, int))
        session_id = canonical_uuid(request.session_id, "session_id", violations, required=False)
        violations.check(not request.name or bool(request.category), "name", "needs `category` too")
        violations.check_text("category", request.category)
        violations.check_text("name", request.name)
        violations.check(request.application_id >= 0, "application_id", "must not be negative")
        start = optional_timestamp(request, "occur_time_start", violations)
        end = optional_timestamp(request, "occur_time_end", violations)
        violations.raise_if_any()
        rows = await self._db.run(
            events.list_events,
            limit=limit + 1,
            after=after,
            session_id=session_id,
            category=request.category,
            name=request.name,
            application_id=request.application_id,
            occur_time_start=start,
            occur_time_end=end,
            newest_first=request.newest_first,
        )
        page, token = paged(request, rows, limit, lambda row: (row.occur_time, row.seq))
        return pb.ListEventsResponse(
            events=[event_message(row) for row in page], next_page_token=token
        )

    async def ListRejectedEvents(
        self, request: pb.ListRejectedEventsRequest, context: Context
    ) -> pb.ListRejectedEventsResponse:
        violations = Violations()
        limit = page_size(request)
        after = decode_page_token(request, (datetime.datetime, int))
        violations.check(
            not request.reason or request.reason in error_reason_pb2.ErrorReason.keys(),
            "reason",
            "must be an ErrorReason value name, such as EVENT_TIME_IN_FUTURE",
        )
        violations.check(request.application_id >= 0, "application_id", "must not be negative")
        start = optional_timestamp(request, "reject_time_start", violations)
        end = optional_timestamp(request, "reject_time_end", violations)
        violations.raise_if_any()
        rows = await self._db.run(
            events.list_rejected,
            limit=limit + 1,
            after=after,
            reason=request.reason,
            application_id=request.application_id,
            reject_time_start=start,
            reject_time_end=end,
        )
        page, token = paged(request, rows, limit, lambda row: (row.reject_time, row.id))
        return pb.ListRejectedEventsResponse(
            rejected_events=[rejected_message(row) for row in page], next_page_token=token
        )

    async def CreateEventType(
        self, request: pb.CreateEventTypeRequest, context: Context
    ) -> pb.EventType:
        violations = Violations()
        for field in ("category", "name"):
            text = getattr(request, field)
            violations.check(
                bool(text.strip()) and len(text) <= TEXT_LENGTH,
                field,
                f"must be 1 to {TEXT_LENGTH} characters",
            )
            violations.check_text(field, text)
        document = json_format.MessageToDict(request.schema)
        violations.check(bool(document), "schema", "is required (a JSON Schema object)")
        if document:
            try:
                Schema.compile(0, document)
            except SchemaInvalid as error:
                violations.add("schema", f"is not a valid JSON Schema: {error}")
        violations.raise_if_any()
        row = await self._db.run(events.add_event_type, request.category, request.name, document)
        self._registry.add(row)
        return event_type_message(row)

    async def ListEventTypes(
        self, request: pb.ListEventTypesRequest, context: Context
    ) -> pb.ListEventTypesResponse:
        rows = await self._db.run(events.latest_event_types)
        return pb.ListEventTypesResponse(event_types=[event_type_message(row) for row in rows])

    def _check_all(
        self, sent: Sequence[pb.Event], application_id: int
    ) -> list[NewEvent | Rejection]:
        now = utcnow()
        return [self._checker.check(event, application_id, now) for event in sent]


def _sending_application() -> int:
    caller = require_caller()
    if caller.kind != "application":
        raise PermissionDenied(
            "events are sent with an application's API key, so that the sender is recorded; "
            "an admin can create one with CreateApplication"
        )
    return caller.id


def _check_batch_size(sent: Sequence[pb.Event], field: str, *, allow_empty: bool = False) -> None:
    if (not sent and not allow_empty) or len(sent) > MAX_BATCH:
        description = f"holds {len(sent)} events; 1 to {MAX_BATCH} are accepted"
        raise InvalidArgument(
            f"{field} {description}", violations=[FieldViolation(field, description)]
        )


def _sent_id(rejection: Rejection) -> str:
    return str(json.loads(rejection.event).get("id", ""))


def _violations(rejection: Rejection) -> list[pb.Violation]:
    return [pb.Violation(**v) for v in rejection.violations]


def _result(item: NewEvent | Rejection, status: str) -> pb.EventResult:
    if isinstance(item, Rejection):
        return pb.EventResult(
            event_id=_sent_id(item), status=pb.EVENT_STATUS_REJECTED, violations=_violations(item)
        )
    return pb.EventResult(event_id=item.id, status=_STATUS[status])


def _struct(text: str) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update(json.loads(text))
    return data


def new_event_message(event: NewEvent, receive_time: datetime.datetime) -> pb.Event:
    return pb.Event(
        id=event.id,
        session_id=event.session_id,
        category=event.category,
        name=event.name,
        data=_struct(event.data),
        occur_time=to_timestamp(event.occur_time),
        application_id=event.application_id,
        receive_time=to_timestamp(receive_time),
        schema_version=event.schema_version,
    )


def event_message(row: events.Event) -> pb.Event:
    return pb.Event(
        id=row.id,
        session_id=row.session_id,
        category=row.category,
        name=row.name,
        data=_struct(row.data),
        occur_time=to_timestamp(row.occur_time),
        application_id=row.application_id,
        receive_time=to_timestamp(row.receive_time),
        schema_version=row.schema_version,
    )


def rejected_message(row: events.RejectedEvent) -> pb.RejectedEvent:
    sent = pb.Event()
    json_format.Parse(row.event, sent, ignore_unknown_fields=True)
    return pb.RejectedEvent(
        id=row.id,
        application_id=row.application_id,
        event=sent,
        violations=[pb.Violation(**v) for v in json.loads(row.violations)],
        reject_time=to_timestamp(row.reject_time),
    )


def event_type_message(row: events.EventType) -> pb.EventType:
    schema = struct_pb2.Struct()
    schema.update(json.loads(row.schema))
    return pb.EventType(
        category=row.category,
        name=row.name,
        version=row.version,
        schema=schema,
        create_time=to_timestamp(row.create_time),
    )
