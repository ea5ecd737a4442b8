"""Decoding the requests that send events, so that one event whose data protobuf cannot decode
costs that event alone, not its whole request.

Protobuf decoders stop at 100 levels of nested messages (upb, as C++ and Java do), and each
object in an event's data costs its Struct three: a request whose data nests 34 objects or more
cannot be decoded at all. Such a request is decoded again event by event, an event that still
fails without its data: its data's bytes are kept, undecoded, as an unknown field of the event
(DATA_NOT_DECODED), so that the checker rejects that event alone, its size counted as sent.
Everything else that fails to decode is still a DecodeError, for the whole request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message

from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc

M = TypeVar("M", bound=Message)

# The largest field number there is, which Event does not use: where data that could not be
# decoded is kept. (A client sending that field itself, without data, has its event rejected
# alike: no honest encoder writes it.)
DATA_NOT_DECODED = 2**29 - 1
_EVENTS = 1  # the field holding the event (SendEventRequest) or events of each request
_DATA = pb.Event.DESCRIPTOR.fields_by_name["data"].number
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


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
    field = message_class.DESCRIPTOR.fields_by_number[_EVENTS]
    assert field.message_type is pb.Event.DESCRIPTOR, f"{message_class} sends no events"
    request = message_class()
    others = bytearray()
    events = []
    for number, wire_type, start, _, end in _fields(serialized):
        if number == _EVENTS and wire_type == _LENGTH_DELIMITED:
            events.append(_event(serialized[_payload_start(serialized, start) : end]))
        else:
            others += serialized[start:end]
    request.MergeFromString(bytes(others))
    if field.is_repeated:
        getattr(request, field.name).extend(events)
    else:
        for event in events:  # a message field sent twice is merged, as protobuf does
            getattr(request, field.name).MergeFrom(event)
    return request


def _event(serialized: bytes) -> pb.Event:
    try:
        return pb.Event.FromString(serialized)
    except DecodeError:
        pass
    rebuilt = bytearray()
    for number, wire_type, start, tag_end, end in _fields(serialized):
        if number == _DATA and wire_type == _LENGTH_DELIMITED:
            rebuilt += _varint(DATA_NOT_DECODED << 3 | _LENGTH_DELIMITED)
            rebuilt += serialized[tag_end:end]
        else:
            rebuilt += serialized[start:end]
    return pb.Event.FromString(bytes(rebuilt))  # still failing: the request is undecodable


def _fields(serialized: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start, end of tag, end) of each field of a message's encoding."""
    position = 0
    while position < len(serialized):
        start = position
        tag, position = _read_varint(serialized, position)
        number, wire_type = tag >> 3, tag & 7
        tag_end = position
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == _VARINT:
            _, position = _read_varint(serialized, position)
        elif wire_type == _FIXED64:
            position += 8
        elif wire_type == _FIXED32:
            position += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _read_varint(serialized, position)
            position += length
        else:  # groups: no quartet message has any
            raise DecodeError(f"wire type {wire_type}")
        if position > len(serialized):
            raise DecodeError("truncated message")
        yield number, wire_type, start, tag_end, position


def _payload_start(serialized: bytes, start: int) -> int:
    """Where the bytes of the length-delimited field at start begin (after tag and length)."""
    _, position = _read_varint(serialized, start)
    _, position = _read_varint(serialized, position)
    return position


def _read_varint(serialized: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    for offset in range(10):
        if position + offset >= len(serialized):
            break
        byte = serialized[position + offset]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position + offset + 1
        shift += 7
    raise DecodeError("truncated or overlong varint")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
