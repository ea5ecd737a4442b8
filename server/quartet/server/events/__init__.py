"""EventService ("The Eye"): validated, durable, idempotent event collection and its queries."""

import datetime

from quartet.events.v1 import event_service_pb2
from quartet.server.events.decoding import add_event_service
from quartet.server.events.registry import Registry, register_file
from quartet.server.events.service import EventServicer, write_batch
from quartet.server.events.tail import Tails
from quartet.server.events.validation import EventChecker, Policy
from quartet.server.registration import Provided, Service
from quartet.storage import events


def _servicer(provided: Provided) -> EventServicer:
    """The servicer, on the app's event writer and event types (the app reloads and closes them)."""
    settings = provided.settings
    policy = Policy(
        accept_unknown_types=settings.unknown_event_types == "accept",
        clock_skew=datetime.timedelta(seconds=settings.event_clock_skew_seconds),
        max_event_bytes=settings.max_event_bytes,
    )
    return EventServicer(
        provided.runner,
        provided.event_writer,
        provided.event_types,
        EventChecker(provided.event_types, policy),
        max_batch_bytes=settings.max_batch_bytes,
        max_page_bytes=settings.max_page_bytes,
        tails=Tails(provided.runner),
    )


SERVICE = Service(
    descriptor=event_service_pb2.DESCRIPTOR.services_by_name["EventService"],
    servicer=_servicer,
    add_to_server=add_event_service,
    needs_database=True,
    models=(
        events.EventType,
        events.Event,
        events.EventId,
        events.RejectedEvent,
        events.RejectedEventReason,
    ),
)

__all__ = [
    "SERVICE",
    "EventChecker",
    "EventServicer",
    "Policy",
    "Registry",
    "add_event_service",
    "register_file",
    "write_batch",
]
