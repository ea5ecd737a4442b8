"""EventService ("The Eye"): validated, durable, idempotent event collection and its queries."""

from quartet.server.events.decoding import add_event_service
from quartet.server.events.registry import Registry, register_file
from quartet.server.events.service import EventServicer, write_batch
from quartet.server.events.validation import EventChecker, Policy

__all__ = [
    "EventChecker",
    "EventServicer",
    "Policy",
    "Registry",
    "add_event_service",
    "register_file",
    "write_batch",
]
