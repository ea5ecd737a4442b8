"""client.events: send analytics events (one, a batch, a stream, or buffered), query them."""

from __future__ import annotations

import builtins
import datetime
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2

from quartet.client._base import Closable, Transport, fields, pages, timestamp
from quartet.client._errors import QuartetError
from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc

Event = pb.Event
MAX_BATCH = 1000


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
    string such as the original challenge's "2021-01-01 09:15:27.243860" (UTC). A random id is
    set when none is given, so that a retried send is stored once."""
    if isinstance(occurred_at, str):
        occurred_at = datetime.datetime.fromisoformat(occurred_at)
    message = pb.Event(
        id=str(event_id or uuid.uuid4()),
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
    copy.id = str(uuid.uuid4())
    return copy


class Events:
    """The EventService, through `Client.events`. Send with an application's API key."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = event_service_pb2_grpc.EventServiceStub(transport.channel)

    def send(self, message: pb.Event, *, timeout: float | None = None) -> pb.SendEventResponse:
        """Send one event (see `quartet.client.event`) and wait until it is durably stored.

        A rejected event raises QuartetError INVALID_ARGUMENT, reason EVENT_REJECTED, with one
        field violation (and its own reason) per problem; it is kept among the rejected events.
        """
        request = pb.SendEventRequest(event=_with_id(message))
        return self._transport.invoke(self._stub.SendEvent, request, timeout)

    def send_batch(
        self, messages: Sequence[pb.Event], *, timeout: float | None = None
    ) -> pb.SendEventsResponse:
        """Send up to 1000 events in one call; one result per event, in order."""
        request = pb.SendEventsRequest(events=[_with_id(m) for m in messages])
        return self._transport.invoke(self._stub.SendEvents, request, timeout)

    def stream(
        self,
        messages: Iterable[pb.Event],
        *,
        batch_size: int = 500,
        timeout: float | None = None,
    ) -> pb.StreamEventsResponse:
        """Stream any number of events, batch_size per message; returns once all are stored
        (or rejected). Rejected events are reported by their position in `messages`."""
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        source = iter(messages)
        requests = (
            pb.StreamEventsRequest(events=[_with_id(m) for m in chunk])
            for chunk in iter(lambda: list(itertools.islice(source, batch_size)), [])
        )
        return self._transport.invoke_stream_unary(self._stub.StreamEvents, requests, timeout)

    def buffered(
        self,
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_pending: int = 100_000,
        on_rejected: Callable[[pb.Event, pb.EventResult], None] | None = None,
    ) -> BufferedSender:
        """A sender that batches events in the background; see BufferedSender."""
        return BufferedSender(
            self,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_pending=max_pending,
            on_rejected=on_rejected,
        )

    def get(self, event_id: str, *, timeout: float | None = None) -> pb.Event:
        request = pb.GetEventRequest(id=str(event_id))
        return self._transport.invoke(self._stub.GetEvent, request, timeout)

    def list(
        self,
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
    ) -> pb.ListEventsResponse:
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
        return self._transport.invoke(self._stub.ListEvents, request, timeout)

    def iter(self, *, page_size: int = 0, **filters: Any) -> Iterator[pb.Event]:
        """Every matching event (the filters of `list`), fetching page after page."""
        return pages(
            lambda token: self.list(page_size=page_size, page_token=token, **filters),
            lambda page: page.events,
        )

    def list_rejected(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        reason: str = "",
        application_id: int = 0,
        rejected_after: datetime.datetime | None = None,
        rejected_before: datetime.datetime | None = None,
        timeout: float | None = None,
    ) -> pb.ListRejectedEventsResponse:
        """One page of rejected events, newest first. `reason` is an ErrorReason name."""
        request = pb.ListRejectedEventsRequest(
            page_size=page_size,
            page_token=page_token,
            reason=reason,
            application_id=application_id,
            **fields(
                reject_time_start=timestamp(rejected_after),
                reject_time_end=timestamp(rejected_before),
            ),
        )
        return self._transport.invoke(self._stub.ListRejectedEvents, request, timeout)

    def iter_rejected(self, *, page_size: int = 0, **filters: Any) -> Iterator[pb.RejectedEvent]:
        return pages(
            lambda token: self.list_rejected(page_size=page_size, page_token=token, **filters),
            lambda page: page.rejected_events,
        )

    def create_type(
        self,
        category: str,
        name: str,
        schema: Mapping[str, Any],
        *,
        timeout: float | None = None,
    ) -> pb.EventType:
        """Register a JSON Schema as the next version of an event type (admins only)."""
        document = struct_pb2.Struct()
        document.update(schema)
        request = pb.CreateEventTypeRequest(category=category, name=name, schema=document)
        return self._transport.invoke(self._stub.CreateEventType, request, timeout)

    def list_types(self, *, timeout: float | None = None) -> builtins.list[pb.EventType]:
        """Every event type at its latest version."""
        request = pb.ListEventTypesRequest()
        return list(self._transport.invoke(self._stub.ListEventTypes, request, timeout).event_types)


# Failures worth retrying: the server or network is briefly unavailable. gRPC already retries
# UNAVAILABLE a few times; the sender keeps trying, since every event has an id.
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class BufferedSender(Closable):
    """Batches events in a background thread and sends them, for senders that must not wait.

    `add()` returns at once (blocking only while max_pending events are unsent). A batch goes
    out when batch_size events are waiting or flush_interval seconds have passed. Transient
    failures are retried with backoff (every event has an id, so nothing is stored twice);
    rejected events go to `on_rejected` and `rejected`. `flush()` waits until everything added
    so far is acknowledged; `close()` (or leaving the `with` block) flushes and stops. A
    permanent failure (bad credentials, say) stops the sender and is raised by the next add,
    flush or close.
    """

    def __init__(
        self,
        events: Events,
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_pending: int = 100_000,
        on_rejected: Callable[[pb.Event, pb.EventResult], None] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        self._events = events
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._on_rejected = on_rejected
        self._pending: list[pb.Event] = []
        self._unacknowledged = 0
        self._error: QuartetError | None = None
        self._closed = False
        self._flush_requested = False
        self._condition = threading.Condition()
        self.sent = 0
        self.rejected: list[tuple[pb.Event, pb.EventResult]] = []
        self._thread = threading.Thread(target=self._run, name="quartet-events", daemon=True)
        self._thread.start()

    def add(self, message: pb.Event) -> None:
        """Queue an event (see `quartet.client.event`)."""
        with self._condition:
            self._raise_if_failed()
            if self._closed:
                raise RuntimeError("the sender is closed")
            while self._unacknowledged >= self._max_pending and self._error is None:
                self._condition.wait()
            self._raise_if_failed()
            self._pending.append(_with_id(message))
            self._unacknowledged += 1
            if len(self._pending) >= self._batch_size:
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

    def _run(self) -> None:
        while True:
            with self._condition:
                deadline = time.monotonic() + self._flush_interval
                while (
                    len(self._pending) < self._batch_size
                    and not self._closed
                    and not self._flush_requested
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
                batch = self._pending[: self._batch_size]
                del self._pending[: self._batch_size]
                if not self._pending:
                    self._flush_requested = False
                if not batch and self._closed:
                    return
            if batch and not self._send(batch):
                return

    def _send(self, batch: list[pb.Event]) -> bool:
        delay = 0.1
        while True:
            try:
                response = self._events.send_batch(batch)
                break
            except QuartetError as error:
                if error.code not in _TRANSIENT:
                    with self._condition:
                        self._error = error
                        self._condition.notify_all()
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        rejected = [
            (message, result)
            for message, result in zip(batch, response.results, strict=True)
            if result.status == pb.EVENT_STATUS_REJECTED
        ]
        with self._condition:
            self.sent += len(batch) - len(rejected)
            self.rejected.extend(rejected)
            self._unacknowledged -= len(batch)
            self._condition.notify_all()
        if self._on_rejected is not None:
            for message, result in rejected:
                self._on_rejected(message, result)
        return True
