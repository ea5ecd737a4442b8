"""client.events: send analytics events (one, a batch, a stream, or buffered), query them."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import json
import os
import threading
import time
import uuid
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, BinaryIO, Literal, TypeVar

import grpc
import uuid_utils
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from quartet.client import _aio_base, _base
from quartet.client._base import Call, Closable, call, fields, timestamp
from quartet.client._errors import QuartetError
from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc

Event = pb.Event
SERVICE = pb.DESCRIPTOR.services_by_name["EventService"]
MAX_BATCH = 1000
# The server's default QUARTET_MAX_BATCH_BYTES: batches and streamed messages are split to stay
# under it (1000 events of 64 KiB would also exceed gRPC's 16 MiB message limit).
MAX_BATCH_BYTES = 8 * 1024 * 1024


def event(
    *,
    session_id: str | uuid.UUID,
    category: str,
    name: str,
    occurred_at: datetime.datetime | str,
    data: Mapping[str, Any] | None = None,
    event_id: str | uuid.UUID | None = None,
) -> pb.Event:
    """An Event message. `occurred_at` is an aware datetime, a naive one in UTC, or an ISO 8601
    string such as the original challenge's "2021-01-01 09:15:27.243860" (UTC). An id is set
    when none is given, so that a retried send is stored once: a time-ordered (version 7) UUID,
    which the server's unique index on ids takes far faster than a random one."""
    if isinstance(occurred_at, str):
        occurred_at = datetime.datetime.fromisoformat(occurred_at)
    message = pb.Event(
        id=str(event_id or uuid_utils.uuid7()),
        session_id=str(session_id),
        category=category,
        name=name,
        occur_time=timestamp(occurred_at),
    )
    if data is not None:
        message.data.update(data)
    return message


def _with_id(message: pb.Event) -> pb.Event:
    if message.id:
        return message
    copy = pb.Event()
    copy.CopyFrom(message)
    copy.id = str(uuid_utils.uuid7())
    return copy


Batch = TypeVar("Batch", pb.SendEventsRequest, pb.StreamEventsRequest)


def _holding(request_class: type[Batch], messages: list[pb.Event]) -> Batch:
    """request_class(events=messages). Protobuf copies each event by decoding it, which fails
    for data nesting 34 objects or more: those go in one by one (CopyFrom copies without
    decoding), for the server to reject and keep rather than the SDK to fail with DecodeError."""
    try:
        return request_class(events=messages)
    except DecodeError:
        request = request_class()
        for message in messages:
            request.events.add().CopyFrom(message)
        return request


def _batch_bytes(message: pb.Event) -> int:
    """What an event adds to a batch's size: its encoding, plus its field tag and length."""
    size = message.ByteSize()
    return size + 1 + max(1, (size.bit_length() + 6) // 7)


def _batches(
    messages: Iterable[pb.Event], max_events: int, max_bytes: int
) -> Iterator[list[pb.Event]]:
    """The messages (each with an id) in batches of at most max_events and max_bytes; an event
    larger than max_bytes alone goes in a batch of its own, for the server to refuse."""
    batch: list[pb.Event] = []
    size = 0
    for message in messages:
        message = _with_id(message)
        added = _batch_bytes(message)
        if batch and (len(batch) >= max_events or size + added > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += added
    if batch:
        yield batch


class EventCalls:
    """The EventService's unary calls, described once for both clients."""

    @staticmethod
    def send(message: pb.Event, *, timeout: float | None = None) -> Call[pb.SendEventResponse]:
        """Send one event (see `quartet.client.event`) and wait until it is durably stored.

        A rejected event raises QuartetError INVALID_ARGUMENT, reason EVENT_REJECTED, with one
        field violation (and its own reason) per problem; it is kept among the rejected events.
        """
        request = pb.SendEventRequest()
        request.event.CopyFrom(_with_id(message))  # the constructor's copy fails on deep data
        return call(SERVICE, "SendEvent", request, pb.SendEventResponse, timeout)

    @staticmethod
    def send_batch(
        messages: Sequence[pb.Event], *, timeout: float | None = None
    ) -> Call[pb.SendEventsResponse]:
        """Send up to 1000 events in one call; one result per event, in order."""
        request = _holding(pb.SendEventsRequest, [_with_id(m) for m in messages])
        return call(SERVICE, "SendEvents", request, pb.SendEventsResponse, timeout)

    @staticmethod
    def get(event_id: str | uuid.UUID, *, timeout: float | None = None) -> Call[pb.Event]:
        """The stored event with this id; QuartetError NOT_FOUND if there is none."""
        return call(SERVICE, "GetEvent", pb.GetEventRequest(id=str(event_id)), pb.Event, timeout)

    @staticmethod
    def list(
        *,
        page_size: int = 0,
        page_token: str = "",
        session_id: str | uuid.UUID = "",
        category: str = "",
        name: str = "",
        application_id: int = 0,
        occurred_after: datetime.datetime | None = None,
        occurred_before: datetime.datetime | None = None,
        newest_first: bool = False,
        timeout: float | None = None,
    ) -> Call[pb.ListEventsResponse]:
        """One page of events, by time of occurrence then arrival (reversed with newest_first).
        occurred_after is inclusive, occurred_before exclusive."""
        request = pb.ListEventsRequest(
            page_size=page_size,
            page_token=page_token,
            session_id=str(session_id),
            category=category,
            name=name,
            application_id=application_id,
            newest_first=newest_first,
            **fields(
                occur_time_start=timestamp(occurred_after),
                occur_time_end=timestamp(occurred_before),
            ),
        )
        return call(SERVICE, "ListEvents", request, pb.ListEventsResponse, timeout)

    @staticmethod
    def list_rejected(
        *,
        page_size: int = 0,
        page_token: str = "",
        reason: str = "",
        application_id: int = 0,
        rejected_after: datetime.datetime | None = None,
        rejected_before: datetime.datetime | None = None,
        replay_state: ReplayStateName = "",
        timeout: float | None = None,
    ) -> Call[pb.ListRejectedEventsResponse]:
        """One page of rejected events, newest first. `reason` is an ErrorReason name;
        `replay_state` ("not replayed", "stored", "still rejected" or "already stored") keeps
        those whose latest replay did that."""
        request = pb.ListRejectedEventsRequest(
            page_size=page_size,
            page_token=page_token,
            reason=reason,
            application_id=application_id,
            replay_state=_REPLAY_STATES[replay_state],
            **fields(
                reject_time_start=timestamp(rejected_after),
                reject_time_end=timestamp(rejected_before),
            ),
        )
        return call(SERVICE, "ListRejectedEvents", request, pb.ListRejectedEventsResponse, timeout)

    @staticmethod
    def count(
        bucket: Bucket,
        occurred_after: datetime.datetime,
        occurred_before: datetime.datetime,
        *,
        application_id: int = 0,
        session_id: str | uuid.UUID = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Call[pb.CountEventsResponse]:
        """One page of event counts by type per bucket ("minute", "hour" or "day", in UTC) of the
        events that occurred from occurred_after (inclusive) to occurred_before (exclusive), at
        most 10000 buckets apart; ordered by bucket, category and name."""
        request = pb.CountEventsRequest(
            bucket=_BUCKETS[bucket],
            occur_time_start=timestamp(occurred_after),
            occur_time_end=timestamp(occurred_before),
            application_id=application_id,
            session_id=str(session_id),
            page_size=page_size,
            page_token=page_token,
        )
        return call(SERVICE, "CountEvents", request, pb.CountEventsResponse, timeout)

    @staticmethod
    def create_type(
        category: str,
        name: str,
        schema: Mapping[str, Any],
        *,
        timeout: float | None = None,
    ) -> Call[pb.EventType]:
        """Register a JSON Schema as the next version of an event type (admins only)."""
        document = struct_pb2.Struct()
        document.update(schema)
        request = pb.CreateEventTypeRequest(category=category, name=name, schema=document)
        return call(SERVICE, "CreateEventType", request, pb.EventType, timeout)

    @staticmethod
    def list_types(
        *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Call[pb.ListEventTypesResponse]:
        """One page of event types, each at its latest version, by category and then name."""
        request = pb.ListEventTypesRequest(page_size=page_size, page_token=page_token)
        return call(SERVICE, "ListEventTypes", request, pb.ListEventTypesResponse, timeout)


Bucket = Literal["minute", "hour", "day"]
_BUCKETS: dict[str, pb.CountBucket.ValueType] = {
    "minute": pb.COUNT_BUCKET_MINUTE,
    "hour": pb.COUNT_BUCKET_HOUR,
    "day": pb.COUNT_BUCKET_DAY,
}
ReplayStateName = Literal["", "not replayed", "stored", "still rejected", "already stored"]
_REPLAY_STATES: dict[str, pb.ReplayState.ValueType] = {
    "": pb.REPLAY_STATE_UNSPECIFIED,
    "not replayed": pb.REPLAY_STATE_NOT_REPLAYED,
    "stored": pb.REPLAY_STATE_STORED,
    "still rejected": pb.REPLAY_STATE_STILL_REJECTED,
    "already stored": pb.REPLAY_STATE_ALREADY_STORED,
}
ExportFormat = Literal["ndjson", "events"]


def _export_request(
    export_format: ExportFormat,
    session_id: str | uuid.UUID,
    category: str,
    name: str,
    application_id: int,
    occurred_after: datetime.datetime | None,
    occurred_before: datetime.datetime | None,
    after_event_id: str | uuid.UUID,
) -> pb.ExportEventsRequest:
    return pb.ExportEventsRequest(
        format=pb.EXPORT_FORMAT_EVENTS if export_format == "events" else pb.EXPORT_FORMAT_NDJSON,
        session_id=str(session_id),
        category=category,
        name=name,
        application_id=application_id,
        after_event_id=str(after_event_id),
        **fields(
            occur_time_start=timestamp(occurred_after),
            occur_time_end=timestamp(occurred_before),
        ),
    )


def _filters(
    session_id: str | uuid.UUID,
    category: str,
    name: str,
    application_id: int,
    occurred_after: datetime.datetime | None,
    occurred_before: datetime.datetime | None,
) -> dict[str, Any]:
    """The filters of an export, as `export` takes them."""
    return {
        "session_id": session_id,
        "category": category,
        "name": name,
        "application_id": application_id,
        "occurred_after": occurred_after,
        "occurred_before": occurred_before,
    }


def _replay_request(
    reason: str,
    application_id: int,
    category: str,
    name: str,
    rejected_after: datetime.datetime | None,
    rejected_before: datetime.datetime | None,
) -> pb.ReplayRejectedEventsRequest:
    return pb.ReplayRejectedEventsRequest(
        reason=reason,
        application_id=application_id,
        category=category,
        name=name,
        **fields(
            reject_time_start=timestamp(rejected_after),
            reject_time_end=timestamp(rejected_before),
        ),
    )


class ExportFile(Closable):
    """The NDJSON file an export is written to: a new one, or, to resume, one a broken export
    left, cut back to its last whole line, whose event the export resumes after; and how long to
    wait before resuming after a failure (see retry_delay)."""

    def __init__(self, path: str | os.PathLike[str], *, resume: bool, retries: int) -> None:
        self.after_event_id = ""
        self.written = 0
        self._retries = retries
        self._failures = 0
        self._file: BinaryIO = open(path, "r+b" if resume and os.path.exists(path) else "wb")
        if resume:
            self.after_event_id = self._last_whole_line_id()

    def retry_delay(self, error: QuartetError) -> float:
        """The seconds to wait before resuming after error; error itself if it is not transient
        (see `_transient`) or the retries in a row are spent."""
        self._failures += 1
        if not _transient(error) or self._failures > self._retries:
            raise error
        return min(0.1 * 2.0**self._failures, 5.0)

    def _last_whole_line_id(self) -> str:
        """Cut the file after its last line feed; the id of the event on the line before."""
        end = self._file.seek(0, os.SEEK_END)
        tail = b""
        while end and tail.count(b"\n") < 2 and len(tail) < end:
            start = max(0, end - len(tail) - 65536)
            self._file.seek(start)
            tail = self._file.read(end - start)
            if start == 0:
                break
        cut = tail.rfind(b"\n") + 1
        self._file.truncate(end - len(tail) + cut)
        self._file.seek(0, os.SEEK_END)
        lines = tail[:cut].splitlines()
        return str(json.loads(lines[-1])["id"]) if lines else ""

    def write(self, response: pb.ExportEventsResponse) -> None:
        self._file.write(response.ndjson)
        self.after_event_id = response.last_event_id or self.after_event_id
        self.written += response.event_count
        self._failures = 0

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _events(page: pb.ListEventsResponse) -> Sequence[pb.Event]:
    return page.events


def _rejected_events(page: pb.ListRejectedEventsResponse) -> Sequence[pb.RejectedEvent]:
    return page.rejected_events


def _counts(page: pb.CountEventsResponse) -> Sequence[pb.EventCount]:
    return page.counts


def _event_types(page: pb.ListEventTypesResponse) -> Sequence[pb.EventType]:
    return page.event_types


def _stream_requests(
    messages: Iterable[pb.Event], batch_size: int, max_batch_bytes: int
) -> Iterator[pb.StreamEventsRequest]:
    """The messages of an event stream: batch_size events (and at most max_batch_bytes) each."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
    return (
        _holding(pb.StreamEventsRequest, batch)
        for batch in _batches(messages, batch_size, max_batch_bytes)
    )


def _tail_request(
    session_id: str | uuid.UUID,
    category: str,
    name: str,
    application_id: int,
    after_event_id: str | uuid.UUID,
) -> pb.TailEventsRequest:
    return pb.TailEventsRequest(
        session_id=str(session_id),
        category=category,
        name=name,
        application_id=application_id,
        after_event_id=str(after_event_id),
    )


class Events(_base.Service):
    """The EventService, through `Client.events`. Send with an application's API key."""

    SERVICE = SERVICE
    send = _base.unary(EventCalls.send)
    send_batch = _base.unary(EventCalls.send_batch)
    get = _base.unary(EventCalls.get)
    list = _base.unary(EventCalls.list)
    iter = _base.paged(EventCalls.list, _events)
    list_rejected = _base.unary(EventCalls.list_rejected)
    iter_rejected = _base.paged(EventCalls.list_rejected, _rejected_events)
    count = _base.unary(EventCalls.count)
    iter_counts = _base.paged(EventCalls.count, _counts)
    create_type = _base.unary(EventCalls.create_type)
    list_types = _base.unary(EventCalls.list_types)
    iter_types = _base.paged(EventCalls.list_types, _event_types)

    def __init__(self, transport: _base.Transport) -> None:
        super().__init__(transport)
        self._stub = event_service_pb2_grpc.EventServiceStub(transport.channel)

    def stream(
        self,
        messages: Iterable[pb.Event],
        *,
        batch_size: int = 500,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        timeout: float | None = None,
    ) -> pb.StreamEventsResponse:
        """Stream any number of events, batch_size (and at most max_batch_bytes) per message;
        returns once all are stored (or rejected). Rejected events are reported by their
        position in `messages` (the first 1000; `rejected_count` counts them all)."""
        requests = _stream_requests(messages, batch_size, max_batch_bytes)
        return self._transport.invoke_stream_unary(self._stub.StreamEvents, requests, timeout)

    def send_batches(
        self,
        messages: Iterable[pb.Event],
        *,
        batch_size: int = 500,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        timeout: float | None = None,
    ) -> Iterator[tuple[Sequence[pb.Event], pb.SendEventsResponse]]:
        """Send any number of events with SendEvents, batch_size (and at most max_batch_bytes)
        per call, as you iterate: yields each batch (its events, with their ids) and its
        results, one per event in order. Unlike `stream`, every rejected event's violations come
        back; `timeout` applies to each call. `messages` is read only as batches go out."""
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        for batch in _batches(messages, batch_size, max_batch_bytes):
            yield batch, self.send_batch(batch, timeout=timeout)

    def buffered(
        self,
        *,
        batch_size: int = 500,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        flush_interval: float = 1.0,
        max_pending: int = 100_000,
        give_up_after: float | None = 300.0,
        on_rejected: Callable[[pb.Event, pb.EventResult], None] | None = None,
    ) -> BufferedSender:
        """A sender that batches events in the background; see BufferedSender."""
        return BufferedSender(
            self,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            flush_interval=flush_interval,
            max_pending=max_pending,
            give_up_after=give_up_after,
            on_rejected=on_rejected,
        )

    def tail(
        self,
        *,
        session_id: str | uuid.UUID = "",
        category: str = "",
        name: str = "",
        application_id: int = 0,
        after_event_id: str | uuid.UUID = "",
        timeout: float | None = None,
    ) -> EventTail:
        """Follow the events matching the filters as they are stored (a session or a category is
        required), until you close the tail (or leave its `with` block), or for `timeout`
        seconds (None: no end). Returns once the server is following: every matching event
        stored from then on is yielded, in store order, within about a second. With
        after_event_id (the last event a previous tail yielded), it resumes after that event,
        missing and repeating none. Needs an analyst's or admin's credentials, like `list`."""
        request = _tail_request(session_id, category, name, application_id, after_event_id)
        return EventTail(self._transport.follow(self._stub.TailEvents, request, timeout))

    def export(
        self,
        *,
        format: ExportFormat = "ndjson",
        session_id: str | uuid.UUID = "",
        category: str = "",
        name: str = "",
        application_id: int = 0,
        occurred_after: datetime.datetime | None = None,
        occurred_before: datetime.datetime | None = None,
        after_event_id: str | uuid.UUID = "",
        timeout: float | None = None,
    ) -> Iterator[pb.ExportEventsResponse]:
        """The messages of an export of the matching events (the filters of `list`), in order:
        NDJSON text in each message's `ndjson`, or, with format="events", Event messages in its
        `events`. Each message's `last_event_id` is where to resume (`after_event_id`). No
        deadline unless `timeout`; stopping the iteration early cancels the export. Needs an
        analyst's or admin's credentials, like `list`."""
        request = _export_request(
            format, session_id, category, name, application_id, occurred_after,
            occurred_before, after_event_id,
        )  # fmt: skip
        return self._transport.invoke_server_stream(self._stub.ExportEvents, request, timeout)

    def export_to(
        self,
        path: str | os.PathLike[str],
        *,
        resume: bool = True,
        retries: int = 5,
        session_id: str | uuid.UUID = "",
        category: str = "",
        name: str = "",
        application_id: int = 0,
        occurred_after: datetime.datetime | None = None,
        occurred_before: datetime.datetime | None = None,
    ) -> int:
        """Export the matching events (the filters of `list`) to an NDJSON file at path, one
        event a line, and return how many were written. A transient failure (the server
        restarting, say) resumes after the last event received, up to `retries` times in a row;
        with resume (the default), a file a broken export left is continued after its last
        whole line, so run the same export again to finish it (a file of another export would
        be continued too: delete it, or pass resume=False to start afresh)."""
        filters = _filters(
            session_id, category, name, application_id, occurred_after, occurred_before
        )
        with ExportFile(path, resume=resume, retries=retries) as output:
            while True:
                try:
                    for response in self.export(after_event_id=output.after_event_id, **filters):
                        output.write(response)
                    return output.written
                except QuartetError as error:
                    time.sleep(output.retry_delay(error))

    def replay_rejected(
        self,
        *,
        reason: str = "",
        application_id: int = 0,
        category: str = "",
        name: str = "",
        rejected_after: datetime.datetime | None = None,
        rejected_before: datetime.datetime | None = None,
        timeout: float | None = None,
    ) -> Iterator[pb.ReplayRejectedEventsResponse]:
        """Replay the matching rejected events (admins only): check them against the schemas of
        now and store those that pass, with their original ids and times. Yields the progress,
        counts so far, after each chunk; the last is the totals. Safe to repeat: nothing is
        stored twice. No deadline unless `timeout`."""
        request = _replay_request(
            reason, application_id, category, name, rejected_after, rejected_before
        )
        return self._transport.invoke_server_stream(
            self._stub.ReplayRejectedEvents, request, timeout
        )


class EventTail(Closable, Iterator[pb.Event]):
    """The events of `Events.tail`, one at a time; close() it to stop following (from another
    thread too)."""

    def __init__(self, stream: _base.Stream[pb.TailEventsResponse]) -> None:
        self._stream = stream
        self._events: collections.deque[pb.Event] = collections.deque()

    def __iter__(self) -> EventTail:
        return self

    def __next__(self) -> pb.Event:
        while not self._events:
            self._events.extend(next(self._stream).events)
        return self._events.popleft()

    def close(self) -> None:
        self._stream.close()


class AsyncEvents(_aio_base.AsyncService):
    """The EventService, through `quartet.client.aio.Client.events`: the methods of `Events`,
    as coroutines (and async iterators for `iter*` and `tail`), but `buffered`."""

    SERVICE = SERVICE
    send = _aio_base.unary(EventCalls.send)
    send_batch = _aio_base.unary(EventCalls.send_batch)
    get = _aio_base.unary(EventCalls.get)
    list = _aio_base.unary(EventCalls.list)
    iter = _aio_base.paged(EventCalls.list, _events)
    list_rejected = _aio_base.unary(EventCalls.list_rejected)
    iter_rejected = _aio_base.paged(EventCalls.list_rejected, _rejected_events)
    count = _aio_base.unary(EventCalls.count)
    iter_counts = _aio_base.paged(EventCalls.count, _counts)
    create_type = _aio_base.unary(EventCalls.create_type)
    list_types = _aio_base.unary(EventCalls.list_types)
    iter_types = _aio_base.paged(EventCalls.list_types, _event_types)

    def __init__(self, transport: _aio_base.AsyncTransport) -> None:
        super().__init__(transport)
        self._stub = event_service_pb2_grpc.EventServiceStub(transport.channel)

    async def stream(
        self,
        messages: Iterable[pb.Event] | AsyncIterable[pb.Event],
        *,
        batch_size: int = 500,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        timeout: float | None = None,
    ) -> pb.StreamEventsResponse:
        """Stream any number of events (from an iterable or an async iterable): see
        `Events.stream`."""
        if isinstance(messages, AsyncIterable):
            requests: Any = _async_stream_requests(messages, batch_size, max_batch_bytes)
        else:
            requests = _stream_requests(messages, batch_size, max_batch_bytes)
        return await self._transport.invoke_stream_unary(self._stub.StreamEvents, requests, timeout)

    async def send_batches(
        self,
        messages: Iterable[pb.Event],
        *,
        batch_size: int = 500,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[Sequence[pb.Event], pb.SendEventsResponse]]:
        """Send any number of events, a batch per call (`async for`): see
        `Events.send_batches`."""
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        for batch in _batches(messages, batch_size, max_batch_bytes):
            yield batch, await self.send_batch(batch, timeout=timeout)

    async def tail(
        self,
        *,
        session_id: str | uuid.UUID = "",
        category: str = "",
        name: str = "",
        application_id: int = 0,
        after_event_id: str | uuid.UUID = "",
        timeout: float | None = None,
    ) -> AsyncEventTail:
        """Follow the matching events as they are stored (`async for`): see `Events.tail`.
        Returns once the server is following; `await tail.close()` (or leaving its
        `async with` block) stops it."""
        request = _tail_request(session_id, category, name, application_id, after_event_id)
        return AsyncEventTail(await self._transport.follow(self._stub.TailEvents, request, timeout))

    def export(
        self,
        *,
        format: ExportFormat = "ndjson",
        session_id: str | uuid.UUID = "",
        category: str = "",
        name: str = "",
        application_id: int = 0,
        occurred_after: datetime.datetime | None = None,
        occurred_before: datetime.datetime | None = None,
        after_event_id: str | uuid.UUID = "",
        timeout: float | None = None,
    ) -> AsyncIterator[pb.ExportEventsResponse]:
        """The messages of an export (`async for`): see `Events.export`."""
        request = _export_request(
            format, session_id, category, name, application_id, occurred_after,
            occurred_before, after_event_id,
        )  # fmt: skip
        return self._transport.invoke_server_stream(self._stub.ExportEvents, request, timeout)

    async def export_to(
        self,
        path: str | os.PathLike[str],
        *,
        resume: bool = True,
        retries: int = 5,
        session_id: str | uuid.UUID = "",
        category: str = "",
        name: str = "",
        application_id: int = 0,
        occurred_after: datetime.datetime | None = None,
        occurred_before: datetime.datetime | None = None,
    ) -> int:
        """Export the matching events to an NDJSON file: see `Events.export_to`."""
        filters = _filters(
            session_id, category, name, application_id, occurred_after, occurred_before
        )
        with ExportFile(path, resume=resume, retries=retries) as output:
            while True:
                try:
                    async for response in self.export(
                        after_event_id=output.after_event_id, **filters
                    ):
                        output.write(response)
                    return output.written
                except QuartetError as error:
                    await asyncio.sleep(output.retry_delay(error))

    def replay_rejected(
        self,
        *,
        reason: str = "",
        application_id: int = 0,
        category: str = "",
        name: str = "",
        rejected_after: datetime.datetime | None = None,
        rejected_before: datetime.datetime | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.ReplayRejectedEventsResponse]:
        """Replay the matching rejected events (`async for` the progress): see
        `Events.replay_rejected`."""
        request = _replay_request(
            reason, application_id, category, name, rejected_after, rejected_before
        )
        return self._transport.invoke_server_stream(
            self._stub.ReplayRejectedEvents, request, timeout
        )


async def _async_stream_requests(
    messages: AsyncIterable[pb.Event], batch_size: int, max_batch_bytes: int
) -> AsyncIterator[pb.StreamEventsRequest]:
    """_stream_requests of an async iterable: the events gathered into chunks of batch_size
    as they come, each split by bytes as the synchronous stream splits them."""
    chunk: list[pb.Event] = []
    async for message in messages:
        chunk.append(message)
        if len(chunk) >= batch_size:
            for request in _stream_requests(chunk, batch_size, max_batch_bytes):
                yield request
            chunk = []
    for request in _stream_requests(chunk, batch_size, max_batch_bytes):
        yield request


class AsyncEventTail(AsyncIterator[pb.Event]):
    """The events of `AsyncEvents.tail`, one at a time."""

    def __init__(self, stream: _aio_base.AsyncStream[pb.TailEventsResponse]) -> None:
        self._stream = stream
        self._events: collections.deque[pb.Event] = collections.deque()

    def __aiter__(self) -> AsyncEventTail:
        return self

    async def __anext__(self) -> pb.Event:
        while not self._events:
            self._events.extend((await self._stream.__anext__()).events)
        return self._events.popleft()

    async def close(self) -> None:
        await self._stream.close()

    async def __aenter__(self) -> AsyncEventTail:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclasses.dataclass
class EventsNotSent(QuartetError):
    """A BufferedSender stopped: the QuartetError that stopped it, and every event it had not
    sent (neither stored nor rejected), in the order added, so that nothing is lost silently."""

    unsent: list[pb.Event] = dataclasses.field(default_factory=list)
    """The events not sent: the batch that failed, and every one added after it."""

    @classmethod
    def of(cls, error: QuartetError, unsent: list[pb.Event]) -> EventsNotSent:
        copied = {f.name: getattr(error, f.name) for f in dataclasses.fields(QuartetError)}
        return cls(**copied, unsent=unsent)


def _transient(error: QuartetError) -> bool:
    """Whether a failed send may succeed if repeated (every event has an id, so repeating one
    never stores anything twice): the server is unreachable or restarting (UNAVAILABLE, also
    what a database outage answers), slow (DEADLINE_EXCEEDED), or at its limit of concurrent
    calls (RESOURCE_EXHAUSTED). A message over gRPC's size limit is RESOURCE_EXHAUSTED too,
    and never succeeds."""
    if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" not in (
        error.message
    )


class BufferedSender(Closable):
    """Batches events in a background thread and sends them, for senders that must not wait.

    `add()` returns at once (blocking only while max_pending events are unsent). A batch goes
    out when batch_size events, or max_batch_bytes of them, are waiting, or flush_interval
    seconds have passed. Transient failures (see `_transient`) are retried with backoff (every
    event has an id, so nothing is stored twice) for up to give_up_after seconds per batch
    (None: forever); rejected events go to `on_rejected` and `rejected`. `flush()` waits until
    everything added so far is acknowledged; `close()` (or leaving the `with` block) flushes
    and stops.

    A permanent failure (bad credentials, say), or giving up, stops the sender: the next add,
    flush or close raises EventsNotSent, a QuartetError whose `unsent` lists every event not
    sent (also `sender.unsent`), to keep or send again. An event larger than max_batch_bytes
    could never be sent: `add()` refuses it with ValueError.
    """

    def __init__(
        self,
        events: Events,
        *,
        batch_size: int = 500,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        flush_interval: float = 1.0,
        max_pending: int = 100_000,
        give_up_after: float | None = 300.0,
        on_rejected: Callable[[pb.Event, pb.EventResult], None] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        self._events = events
        self._batch_size = batch_size
        self._max_bytes = max_batch_bytes
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._give_up_after = give_up_after
        self._on_rejected = on_rejected
        self._pending: collections.deque[tuple[pb.Event, int]] = collections.deque()
        self._pending_bytes = 0
        self._unacknowledged = 0
        self._error: EventsNotSent | None = None
        self._closed = False
        self._flush_requested = False
        self._condition = threading.Condition()
        self.sent = 0
        self.batches = 0
        self.rejected: list[tuple[pb.Event, pb.EventResult]] = []
        self._thread = threading.Thread(target=self._run, name="quartet-events", daemon=True)
        self._thread.start()

    @property
    def unsent(self) -> list[pb.Event]:
        """The events a stopped sender did not send (empty while it runs)."""
        return list(self._error.unsent) if self._error is not None else []

    def add(self, message: pb.Event) -> None:
        """Queue an event (see `quartet.client.event`)."""
        message = _with_id(message)
        size = _batch_bytes(message)
        if size > self._max_bytes:
            raise ValueError(
                f"the event is {size} bytes, more than a whole batch may be "
                f"({self._max_bytes}); the server accepts events of 64 KiB by default"
            )
        with self._condition:
            self._raise_if_failed()
            if self._closed:
                raise RuntimeError("the sender is closed")
            while self._unacknowledged >= self._max_pending and self._error is None:
                self._condition.wait()
            self._raise_if_failed()
            self._pending.append((message, size))
            self._pending_bytes += size
            self._unacknowledged += 1
            if self._batch_ready():
                self._condition.notify_all()

    def flush(self) -> None:
        """Wait until every event added so far is stored or rejected."""
        with self._condition:
            self._flush_requested = True
            self._condition.notify_all()
            while self._unacknowledged and self._error is None:
                self._condition.wait()
            self._raise_if_failed()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _batch_ready(self) -> bool:
        return len(self._pending) >= self._batch_size or self._pending_bytes >= self._max_bytes

    def _run(self) -> None:
        while True:
            with self._condition:
                deadline = time.monotonic() + self._flush_interval
                while not self._batch_ready() and not self._closed and not self._flush_requested:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
                batch = self._take_batch()
                if not self._pending:
                    self._flush_requested = False
                if not batch and self._closed:
                    return
            if batch and not self._send(batch):
                return

    def _take_batch(self) -> list[pb.Event]:
        """Up to batch_size pending events and max_batch_bytes (at least one event)."""
        batch: list[pb.Event] = []
        size = 0
        while self._pending and len(batch) < self._batch_size:
            message, added = self._pending[0]
            if batch and size + added > self._max_bytes:
                break
            self._pending.popleft()
            self._pending_bytes -= added
            batch.append(message)
            size += added
        return batch

    def _send(self, batch: list[pb.Event]) -> bool:
        """Send one batch, retrying transient failures; False if the sender had to stop."""
        delay = 0.1
        give_up = None if self._give_up_after is None else time.monotonic() + self._give_up_after
        while True:
            try:
                response = self._events.send_batch(batch)
                break
            except QuartetError as error:
                if not _transient(error) or (give_up is not None and time.monotonic() > give_up):
                    self._stop(error, batch)
                    return False
            except Exception as error:  # a bug, say: still never lose the events silently
                self._stop(QuartetError(grpc.StatusCode.UNKNOWN, repr(error)), batch)
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        rejected = [
            (message, result)
            for message, result in zip(batch, response.results, strict=True)
            if result.status == pb.EVENT_STATUS_REJECTED
        ]
        with self._condition:
            self.sent += len(batch) - len(rejected)
            self.batches += 1
            self.rejected.extend(rejected)
            self._unacknowledged -= len(batch)
            self._condition.notify_all()
        if self._on_rejected is not None:
            for message, result in rejected:
                self._on_rejected(message, result)
        return True

    def _stop(self, error: QuartetError, batch: list[pb.Event]) -> None:
        with self._condition:
            unsent = batch + [message for message, _ in self._pending]
            self._pending.clear()
            self._pending_bytes = 0
            self._error = EventsNotSent.of(error, unsent)
            self._condition.notify_all()
