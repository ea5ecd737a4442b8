"""EventService: send events (stored durably or kept as rejected), query them, manage schemas."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import orjson
from google.protobuf import json_format, struct_pb2

from quartet.errors.v1 import error_reason_pb2
from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc
from quartet.server import metrics
from quartet.server.auth import require_caller
from quartet.server.auth.authenticator import rechecked
from quartet.server.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    Violations,
)
from quartet.server.events import export, replay
from quartet.server.events.registry import Registry, Schema, SchemaInvalid
from quartet.server.events.validation import EventChecker, canonical_uuid, violations_of
from quartet.server.pagination import decode_page_token, page_size, paged_messages
from quartet.server.timestamps import optional_timestamp, to_timestamp
from quartet.storage import DatabaseRunner, events
from quartet.storage.base import utcnow
from quartet.storage.events import NewEvent, Rejection
from quartet.storage.writer import BatchWriter

if TYPE_CHECKING:  # tail.py builds its messages with this module's functions
    from quartet.server.events.tail import Tails

Context = grpc.aio.ServicerContext[Any, Any]
MAX_BATCH = 1000
STREAM_WINDOW = 4  # batches of one stream being written at once: pipelining with a bound
# A stream's reply lists this many rejected events at most (those first in the stream), so that
# neither the server's memory nor the reply grows with the stream; it counts them all.
MAX_LISTED_REJECTIONS = 1000

# What the writer answers for each item it was given.
STORED, DUPLICATE, REJECTED = "stored", "duplicate", "rejected"
# The id is that of an event another application sent. Answering it as a duplicate would hand
# one application another's event (applications may not read events) and let it believe its own
# was stored; instead the event is kept among the rejected events, with this violation.
ID_TAKEN = "id taken"
ID_TAKEN_VIOLATION = {
    "field": "id",
    "reason": error_reason_pb2.ErrorReason.Name(error_reason_pb2.RESOURCE_ALREADY_EXISTS),
    "description": "is the id of an event another application sent, so this event was not "
    "stored but kept among the rejected events; send it again with a new id",
}
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
    # Who sent the stored event of each id not inserted now: only resends need the query.
    senders = events.senders({e.id for e in new_events if e.id not in inserted})
    taken: list[Rejection] = []
    results: list[tuple[str, datetime.datetime]] = []
    for item in items:
        if isinstance(item, Rejection):
            results.append((REJECTED, now))
            for reason in {v["reason"] for v in item.violations}:
                metrics.event_rejections.labels(reason).inc()
        elif item.id in inserted:
            inserted.discard(item.id)  # a second copy in the same batch is a duplicate
            senders[item.id] = item.application_id
            results.append((STORED, now))
        elif senders.get(item.id, item.application_id) == item.application_id:
            results.append((DUPLICATE, now))
        else:
            taken.append(_id_taken(item))
            results.append((ID_TAKEN, now))
            metrics.event_rejections.labels(ID_TAKEN_VIOLATION["reason"]).inc()
    if taken:
        events.store([], taken, now)
    counts = collections.Counter(
        REJECTED if status == ID_TAKEN else status for status, _ in results
    )
    for outcome, count in counts.items():
        metrics.events.labels(outcome).inc(count)
    return results


def _id_taken(event: NewEvent) -> Rejection:
    """The rejection of an event whose id another application's event has: the event as sent
    (rebuilt from its checked fields), with ID_TAKEN_VIOLATION."""
    sent = new_event_message(event, receive_time=None)
    sent.ClearField("application_id")  # fields the server sets, not the sender
    sent.ClearField("schema_version")
    return Rejection(
        application_id=event.application_id,
        event=json_format.MessageToJson(sent, indent=None),
        violations=[ID_TAKEN_VIOLATION],
        size=sent.ByteSize(),
    )


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    def __init__(
        self,
        runner: DatabaseRunner,
        writer: BatchWriter[NewEvent | Rejection, tuple[str, datetime.datetime]],
        registry: Registry,
        checker: EventChecker,
        *,
        max_batch_bytes: int,
        max_page_bytes: int,
        tails: Tails,
    ) -> None:
        self._db = runner
        self._tails = tails
        self._writer = writer
        self._registry = registry
        self._checker = checker
        self._max_batch_bytes = max_batch_bytes
        self._max_page_bytes = max_page_bytes

    async def SendEvent(
        self, request: pb.SendEventRequest, context: Context
    ) -> pb.SendEventResponse:
        application_id = _sending_application()
        if not request.HasField("event"):
            raise InvalidArgument(
                "event is required", violations=[FieldViolation("event", "is required")]
            )
        await self._learn_types([request.event])
        item = self._checker.check(request.event, application_id, utcnow())
        [(status, receive_time)] = await self._submit([item])
        if isinstance(item, Rejection):
            raise InvalidArgument(
                "the event was rejected and kept among the rejected events",
                reason=error_reason_pb2.EVENT_REJECTED,
                violations=violations_of(item, "event."),
            )
        if status == ID_TAKEN:
            description = ID_TAKEN_VIOLATION["description"]
            raise AlreadyExists(
                f"event.id {description}",
                resource=("event", item.id),
                violations=[FieldViolation("event.id", description, ID_TAKEN_VIOLATION["reason"])],
            )
        if status == DUPLICATE:  # sent by this application before: its own event
            stored = await self._db.run(events.get_event, item.id)
            return pb.SendEventResponse(event=event_message(stored), duplicate=True)
        return pb.SendEventResponse(event=new_event_message(item, receive_time))

    async def SendEvents(
        self, request: pb.SendEventsRequest, context: Context
    ) -> pb.SendEventsResponse:
        application_id = _sending_application()
        _check_batch_size(request.events, "events")
        self._check_batch_bytes(request.ByteSize(), "events")
        await self._learn_types(request.events)
        items = self._check_all(request.events, application_id)
        outcomes = await self._submit(items)
        return pb.SendEventsResponse(
            results=[
                _result(item, status) for item, (status, _) in zip(items, outcomes, strict=True)
            ]
        )

    async def StreamEvents(
        self, request_iterator: AsyncIterator[pb.StreamEventsRequest], context: Context
    ) -> pb.StreamEventsResponse:
        application_id = _sending_application()
        summary = _StreamSummary()
        # Each message's batch is handed to the writer at once and the next message read while
        # it is written, up to STREAM_WINDOW batches in flight; the reply waits for them all.
        # A batch is folded into the summary as soon as it is written, so that a stream holds
        # its batches in flight and the rejections it lists, however long it runs.
        writing: set[asyncio.Task[_Written]] = set()
        offset = messages = 0
        try:
            async for message in rechecked(request_iterator):
                field = f"messages[{messages}].events"
                messages += 1
                _check_batch_size(message.events, field, allow_empty=True)
                self._check_batch_bytes(message.ByteSize(), field)
                await self._learn_types(message.events)
                items = self._check_all(message.events, application_id)
                writing.add(asyncio.ensure_future(self._write(offset, items)))
                offset += len(items)
                if len(writing) >= STREAM_WINDOW:
                    await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                for task in [task for task in writing if task.done()]:
                    writing.discard(task)
                    summary.add(task.result())
            while writing:
                done, writing = await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    summary.add(task.result())
        finally:
            for task in writing:  # after a failure: nobody waits for the rest any more
                task.cancel()
        return summary.response()

    async def _write(self, offset: int, items: list[NewEvent | Rejection]) -> _Written:
        """Write one streamed batch (its first event at position `offset` of the stream) and
        keep only what the reply needs of it."""
        written = _Written()
        statuses = await self._submit(items)
        for index, (item, (status, _)) in enumerate(zip(items, statuses, strict=True)):
            if status == STORED:
                written.stored += 1
            elif status == DUPLICATE:
                written.duplicates += 1
            else:
                result = _result(item, status)
                written.rejected.append(
                    pb.RejectedEventResult(
                        index=offset + index,
                        event_id=result.event_id,
                        violations=result.violations,
                    )
                )
        return written

    async def _submit(
        self, items: list[NewEvent | Rejection]
    ) -> list[tuple[str, datetime.datetime]]:
        """Write items, and wake this worker's tails (nothing to do when none is open)."""
        outcomes = await self._writer.submit(items)
        self._tails.stored()
        return outcomes

    async def GetEvent(self, request: pb.GetEventRequest, context: Context) -> pb.Event:
        violations = Violations()
        event_id = canonical_uuid(request.id, "id", violations, required=True)
        violations.raise_if_any()
        return event_message(await self._db.read(events.get_event, event_id))

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        violations = Violations()
        limit = page_size(request)
        after = decode_page_token(request, (datetime.datetime, int))
        session_id = canonical_uuid(request.session_id, "session_id", violations, required=False)
        violations.check(not request.name or bool(request.category), "name", "needs `category` too")
        start = optional_timestamp(request, "occur_time_start", violations)
        end = optional_timestamp(request, "occur_time_end", violations)
        violations.raise_if_any()
        rows = await self._db.read(
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
        page, token = paged_messages(
            request,
            rows,
            limit,
            lambda row: (row.occur_time, row.seq),
            event_message,
            self._max_page_bytes,
        )
        return pb.ListEventsResponse(events=page, next_page_token=token)

    async def TailEvents(
        self, request: pb.TailEventsRequest, context: Context
    ) -> AsyncIterator[pb.TailEventsResponse]:
        async for response in self._tails.tail(request, context):
            yield response

    async def ExportEvents(
        self, request: pb.ExportEventsRequest, context: Context
    ) -> AsyncIterator[pb.ExportEventsResponse]:
        async for response in export.export(self._db, request, context, self._max_page_bytes):
            yield response

    async def CountEvents(
        self, request: pb.CountEventsRequest, context: Context
    ) -> pb.CountEventsResponse:
        violations = Violations()
        limit = page_size(request)
        after = decode_page_token(request, (datetime.datetime, str, str))
        session_id = canonical_uuid(request.session_id, "session_id", violations, required=False)
        start = optional_timestamp(request, "occur_time_start", violations)
        end = optional_timestamp(request, "occur_time_end", violations)
        bucket = _BUCKETS.get(request.bucket, "")
        violations.check(bool(bucket), "bucket", "is required: a minute, an hour or a day")
        violations.check(start is not None, "occur_time_start", "is required")
        violations.check(end is not None, "occur_time_end", "is required")
        violations.raise_if_any()
        assert start is not None and end is not None
        violations.check(end > start, "occur_time_end", "must be after `occur_time_start`")
        violations.raise_if_any()
        _check_buckets(bucket, start, end)
        rows = await self._db.run(
            events.count_events,
            bucket,
            start,
            end,
            limit=limit + 1,
            after=after,
            application_id=request.application_id,
            session_id=session_id,
        )
        page, token = paged_messages(
            request,
            rows,
            limit,
            lambda row: row[:3],
            _count_message,
            self._max_page_bytes,
        )
        return pb.CountEventsResponse(counts=page, next_page_token=token)

    async def ReplayRejectedEvents(
        self, request: pb.ReplayRejectedEventsRequest, context: Context
    ) -> AsyncIterator[pb.ReplayRejectedEventsResponse]:
        progress = replay.replay(
            self._db,
            self._checker,
            request,
            ID_TAKEN_VIOLATION,
            self._tails.stored,
            self._learn_types,
        )
        async for response in progress:
            yield response

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
            replay_state=request.replay_state,
        )
        page, token = paged_messages(
            request,
            rows,
            limit,
            lambda row: (row.reject_time, row.id),
            rejected_message,
            self._max_page_bytes,
        )
        return pb.ListRejectedEventsResponse(rejected_events=page, next_page_token=token)

    async def CreateEventType(
        self, request: pb.CreateEventTypeRequest, context: Context
    ) -> pb.EventType:
        violations = Violations()
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
        limit = page_size(request)
        after = decode_page_token(request, (str, str))
        rows = await self._db.run(events.list_event_types, limit=limit + 1, after=after)
        # Schemas have no size limit of their own, so pages of them get the byte budget too.
        page, token = paged_messages(
            request,
            rows,
            limit,
            lambda row: (row.category, row.name),
            event_type_message,
            self._max_page_bytes,
        )
        return pb.ListEventTypesResponse(event_types=page, next_page_token=token)

    def _check_batch_bytes(self, size: int, field: str) -> None:
        """A batch larger than QUARTET_MAX_BATCH_BYTES fails as a whole (one ByteSize per batch,
        not per event, so the hot path pays about 0.4 µs an event for it)."""
        if size > self._max_batch_bytes:
            description = (
                f"holds {size} bytes of events; at most {self._max_batch_bytes} are accepted "
                "per batch: send fewer events at a time"
            )
            raise InvalidArgument(
                f"{field} {description}",
                reason=error_reason_pb2.LIMIT_EXCEEDED,
                metadata={"max_batch_bytes": str(self._max_batch_bytes)},
                violations=[
                    FieldViolation(
                        field,
                        description,
                        error_reason_pb2.ErrorReason.Name(error_reason_pb2.LIMIT_EXCEEDED),
                    )
                ],
            )

    async def _learn_types(self, sent: Sequence[pb.Event]) -> None:
        """Look up, in one query, the types of these events this process does not know: one
        registered through another process (or replica) is accepted at once, even before its
        announcement arrives here. A type found missing is not looked up again for a while
        (registry.MISSING_SECONDS), unless a registration is announced meanwhile."""
        unknown = self._registry.unknown((event.category, event.name) for event in sent)
        if unknown:
            since = self._registry.generation
            found = await self._db.read(events.latest_event_types_named, unknown)
            self._registry.learn(unknown, found, since)

    def _check_all(
        self, sent: Sequence[pb.Event], application_id: int
    ) -> list[NewEvent | Rejection]:
        now = utcnow()
        return [self._checker.check(event, application_id, now) for event in sent]


@dataclasses.dataclass(slots=True)
class _Written:
    """What became of one streamed batch."""

    stored: int = 0
    duplicates: int = 0
    rejected: list[pb.RejectedEventResult] = dataclasses.field(default_factory=list)


class _StreamSummary:
    """A stream's counts so far, and its first MAX_LISTED_REJECTIONS rejections by position."""

    def __init__(self) -> None:
        self._response = pb.StreamEventsResponse()
        self._rejected: list[pb.RejectedEventResult] = []

    def add(self, written: _Written) -> None:
        self._response.stored_count += written.stored
        self._response.duplicate_count += written.duplicates
        self._response.rejected_count += len(written.rejected)
        self._rejected += written.rejected
        if len(self._rejected) > MAX_LISTED_REJECTIONS:  # batches may finish out of order
            self._rejected.sort(key=_position)
            del self._rejected[MAX_LISTED_REJECTIONS:]

    def response(self) -> pb.StreamEventsResponse:
        self._response.rejected.extend(sorted(self._rejected, key=_position))
        return self._response


# CountBucket values, as count_events names them.
_BUCKETS = {
    pb.COUNT_BUCKET_MINUTE: "minute",
    pb.COUNT_BUCKET_HOUR: "hour",
    pb.COUNT_BUCKET_DAY: "day",
}
MAX_BUCKETS = 10_000


def _check_buckets(bucket: str, start: datetime.datetime, end: datetime.datetime) -> None:
    """A count spans at most MAX_BUCKETS buckets, counting the one `start` cuts into, so that
    a reply (of a single type, say) stays a few pages and the rows counted a bounded range."""
    length = events.BUCKETS[bucket][2]
    first = start - (start - datetime.datetime.min) % length
    spanned = -((first - end) // length)
    if spanned > MAX_BUCKETS:
        description = (
            f"spans {spanned} buckets of a {bucket} from `occur_time_start`; at most "
            f"{MAX_BUCKETS} are counted at once: count a shorter range, or by longer buckets"
        )
        raise InvalidArgument(
            f"occur_time_end {description}",
            reason=error_reason_pb2.LIMIT_EXCEEDED,
            metadata={"max_buckets": str(MAX_BUCKETS)},
            violations=[
                FieldViolation(
                    "occur_time_end",
                    description,
                    error_reason_pb2.ErrorReason.Name(error_reason_pb2.LIMIT_EXCEEDED),
                )
            ],
        )


def _count_message(row: tuple[datetime.datetime, str, str, int]) -> pb.EventCount:
    start, category, name, count = row
    return pb.EventCount(
        bucket_start_time=to_timestamp(start), category=category, name=name, count=count
    )


def _position(rejected: pb.RejectedEventResult) -> int:
    return rejected.index


def _sending_application() -> int:
    """The sending application's id (the policy admits applications only)."""
    caller = require_caller()
    assert caller.kind == "application", "the policy's rule for sends must admit applications"
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
    if status == ID_TAKEN:
        return pb.EventResult(
            event_id=item.id,
            status=pb.EVENT_STATUS_REJECTED,
            violations=[pb.Violation(**ID_TAKEN_VIOLATION)],
        )
    return pb.EventResult(event_id=item.id, status=_STATUS[status])


def _struct(text: str) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update(json.loads(text))
    return data


def new_event_message(event: NewEvent, receive_time: datetime.datetime | None) -> pb.Event:
    message = pb.Event(
        id=event.id,
        session_id=event.session_id,
        category=event.category,
        name=event.name,
        data=_struct(event.data),
        occur_time=to_timestamp(event.occur_time),
        application_id=event.application_id,
        schema_version=event.schema_version,
    )
    if receive_time is not None:
        message.receive_time.CopyFrom(to_timestamp(receive_time))
    return message


def event_message(row: events.Event | events.EventRow) -> pb.Event:
    message = pb.Event(
        id=row.id,
        session_id=row.session_id,
        category=row.category,
        name=row.name,
        occur_time=to_timestamp(row.occur_time),
        application_id=row.application_id,
        receive_time=to_timestamp(row.receive_time),
        schema_version=row.schema_version,
    )
    message.data.update(orjson.loads(row.data))  # in place: data=Struct(...) would copy it
    return message


def rejected_message(row: events.RejectedEvent) -> pb.RejectedEvent:
    sent = pb.Event()
    json_format.Parse(row.event, sent, ignore_unknown_fields=True)
    message = pb.RejectedEvent(
        id=row.id,
        application_id=row.application_id,
        event=sent,
        violations=[pb.Violation(**v) for v in json.loads(row.violations)],
        reject_time=to_timestamp(row.reject_time),
        size_bytes=row.size or 0,
        data_prefix=row.data_prefix or "",
        replay_state=pb.ReplayState.ValueType(row.replay_state or pb.REPLAY_STATE_NOT_REPLAYED),
        replay_violations=[pb.Violation(**v) for v in json.loads(row.replay_violations or "[]")],
    )
    if row.replay_time is not None:
        message.replay_time.CopyFrom(to_timestamp(row.replay_time))
    return message


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
