"""Decoding the requests that send events, so that one event whose data protobuf cannot decode
costs that event alone, not its whole request.

Protobuf decoders stop at 100 levels of nested messages (upb, as C++ and Java do), and each
object in an event's data costs its Struct three: a request whose data nests 34 objects or more
cannot be decoded at all. Such a request is decoded again, still by protobuf's C decoder, as a
mirror of its type whose events hold their data as undecoded bytes; each event is then decoded
alone, and one that still fails keeps its data's bytes, undecoded, as an unknown field
(DATA_NOT_DECODED), so that the checker rejects that event alone, its size counted as sent.
Everything else that fails to decode is still a DecodeError, for the whole request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError, Message

from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc

M = TypeVar("M", bound=Message)

# The largest field number there is, which Event does not use: where data that could not be
# decoded is kept. (A client sending that field itself, without data, has its event rejected
# alike: no honest encoder writes it.)
DATA_NOT_DECODED = 2**29 - 1


def _mirror_pool() -> descriptor_pool.DescriptorPool:
    """event_service.proto again, in a pool of its own, with Event's data as bytes and a bytes
    field numbered DATA_NOT_DECODED: the same wire format, minus the data's nesting."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:  # after its own dependencies, as the pool requires
        for dependency in file.dependencies:
            if dependency.name not in added:
                add(dependency)
                added.add(dependency.name)
        if file is not pb.DESCRIPTOR:
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            pool.Add(proto)

    add(pb.DESCRIPTOR)
    mirror = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(mirror)
    (event,) = [m for m in mirror.message_type if m.name == "Event"]
    (data,) = [f for f in event.field if f.name == "data"]
    data.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    data.ClearField("type_name")
    event.field.add(
        name="data_not_decoded",
        number=DATA_NOT_DECODED,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    mirror.ClearField("service")
    pool.Add(mirror)
    return pool


_MIRROR = _mirror_pool()


# The methods whose requests send events, and their request types.
SENDING = {
    "SendEvent": pb.SendEventRequest,
    "SendEvents": pb.SendEventsRequest,
    "StreamEvents": pb.StreamEventsRequest,
}


def add_event_service(servicer: event_service_pb2_grpc.EventServiceServicer, server: Any) -> None:
    """add_EventServiceServicer_to_server, the sending methods decoding with
    event_request_decoder: the generated function's own handlers, so that no method is missed."""
    handlers = _Handlers()
    event_service_pb2_grpc.add_EventServiceServicer_to_server(servicer, handlers)  # type: ignore[arg-type]
    methods = {
        name: handler._replace(request_deserializer=event_request_decoder(SENDING[name]))
        if name in SENDING
        else handler
        for name, handler in handlers.methods.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(handlers.service, methods),)
    )
    server.add_registered_method_handlers(handlers.service, methods)


class _Handlers:
    """Stands in for the server to catch the handlers the generated function registers."""

    def __init__(self) -> None:
        self.service = ""
        self.methods: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, generic: Sequence[grpc.GenericRpcHandler]) -> None:
        pass  # built again from `methods`

    def add_registered_method_handlers(self, service: str, methods: dict[str, Any]) -> None:
        self.service, self.methods = service, methods


def event_request_decoder(message_class: type[M]) -> Callable[[bytes], M]:
    """message_class.FromString, but decoding again event by event what it cannot decode."""

    def decode(serialized: bytes) -> M:
        try:
            return message_class.FromString(serialized)
        except DecodeError:
            return _decode_event_by_event(message_class, serialized)

    return decode


def data_not_decoded(event: pb.Event) -> bool:
    """Whether event's data could not be decoded (see event_request_decoder)."""
    if event.HasField("data"):
        return False
    fields = unknown_fields.UnknownFieldSet(event)
    return any(fields[n].field_number == DATA_NOT_DECODED for n in range(len(fields)))


def _decode_event_by_event(message_class: type[M], serialized: bytes) -> M:
    name = message_class.DESCRIPTOR.full_name
    mirror: Any = message_factory.GetMessageClass(_MIRROR.FindMessageTypeByName(name))()
    mirror.ParseFromString(serialized)  # still a DecodeError if the data is not the cause
    if "events" in message_class.DESCRIPTOR.fields_by_name:  # SendEvents, StreamEvents
        events = [_event(event) for event in mirror.events]
        mirror.ClearField("events")
        batch = message_class.FromString(mirror.SerializeToString())
        batch.events.extend(events)  # type: ignore[attr-defined]
        return batch
    event = _event(mirror.event) if mirror.HasField("event") else None  # SendEvent
    mirror.ClearField("event")
    request = message_class.FromString(mirror.SerializeToString())
    if event is not None:
        request.event.CopyFrom(event)  # type: ignore[attr-defined]
    return request


def _event(mirror: Any) -> pb.Event:
    """The event of a mirror event: decoded whole, or without the data it cannot decode."""
    try:
        return pb.Event.FromString(mirror.SerializeToString())
    except DecodeError:
        mirror.data_not_decoded, mirror.data = mirror.data, b""
        mirror.ClearField("data")
        return pb.Event.FromString(mirror.SerializeToString())
