"""The field rules the protos declare for requests, applied once, before any servicer runs.

- The `buf.validate` rules of request fields (required, lengths, ranges, finiteness, UUID and
  email forms), checked by protovalidate from the message descriptors, natively (2-10 µs a
  request).
- Request text holds no control characters (`errors.text_problem`): every string field, found by
  walking the request's descriptor, so that no servicer has to remember it.

A field whose rules say `ignore = IGNORE_ALWAYS` is left to its servicer by both: events are
checked one by one by the event rules, which keep a failing event among the rejected ones instead
of failing the call, and each FSA of a batch lookup gets an answer of its own.

Problems are answered as before: INVALID_ARGUMENT with `ErrorInfo` (FIELD_INVALID) and one
`BadRequest` field violation, with its reason, per problem. Cross-field and business rules stay in
the servicers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import protovalidate
from buf.validate import validate_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from quartet.errors.v1 import error_reason_pb2
from quartet.server.errors import Violations, text_problem

_FIELD_INVALID = error_reason_pb2.ErrorReason.Name(error_reason_pb2.FIELD_INVALID)
# (path, text) of every string a request holds, given the request.
TextWalk: TypeAlias = Callable[[Message, str], Iterator[tuple[str, str]]]


class RequestRules:
    """Checks requests against their declared rules; one per worker (its caches are per type)."""

    def __init__(self) -> None:
        self._validator = protovalidate.Validator()

    def check(self, request: Message, prefix: str = "") -> None:
        """Raise InvalidArgument listing every problem of request; `prefix` goes before each
        field path (a streamed message's position, such as "messages[3].")."""
        violations = Violations()
        for found in self._validator.collect_violations(request):
            field = found.proto.field  # none for a rule on a whole message
            path = _path(field.elements) if field is not None else ""
            violations.add(prefix + path, found.proto.message, _FIELD_INVALID)
        for path, text in _text_fields(request.DESCRIPTOR)(request, prefix):
            problem = text_problem(text)
            if problem is not None:
                violations.add(path, problem, _FIELD_INVALID)
        violations.raise_if_any()


def _path(elements: Any) -> str:
    """protovalidate's field path as quartet names fields: "events[2].session_id"."""
    parts = []
    for element in elements:
        part = element.field_name
        if element.subscript is not None:
            part += f"[{getattr(element.subscript, 'value', element.subscript)}]"
        parts.append(part)
    return ".".join(parts)


@functools.cache
def _text_fields(message: Descriptor) -> TextWalk:
    """The walk over the string fields of messages of this type, built once per type."""
    steps: list[TextWalk] = []
    for field in message.fields:
        if _ignored(field):
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            steps.append(_strings(field))
        elif field.message_type is not None and _walked(field.message_type):
            steps.append(_messages(field))
    if not steps:
        return _nothing

    def walk(request: Message, prefix: str) -> Iterator[tuple[str, str]]:
        for step in steps:
            yield from step(request, prefix)

    return walk


def _nothing(request: Message, prefix: str) -> Iterator[tuple[str, str]]:
    return iter(())


def _strings(field: FieldDescriptor) -> TextWalk:
    name = field.name
    if field.is_repeated:

        def repeated(request: Message, prefix: str) -> Iterator[tuple[str, str]]:
            for index, text in enumerate(getattr(request, name)):
                yield f"{prefix}{name}[{index}]", text

        return repeated

    def single(request: Message, prefix: str) -> Iterator[tuple[str, str]]:
        yield prefix + name, getattr(request, name)

    return single


def _messages(field: FieldDescriptor) -> TextWalk:
    name = field.name
    inner = _text_fields(field.message_type)
    if field.is_repeated:

        def repeated(request: Message, prefix: str) -> Iterator[tuple[str, str]]:
            for index, item in enumerate(getattr(request, name)):
                yield from inner(item, f"{prefix}{name}[{index}].")

        return repeated

    def single(request: Message, prefix: str) -> Iterator[tuple[str, str]]:
        if request.HasField(name):
            yield from inner(getattr(request, name), f"{prefix}{name}.")

    return single


def _ignored(field: FieldDescriptor) -> bool:
    rules = field.GetOptions().Extensions[validate_pb2.field]
    return bool(rules.ignore == validate_pb2.IGNORE_ALWAYS)


def _walked(message: Descriptor) -> bool:
    """Whether strings inside messages of this type are request text: not inside map entries
    (none in quartet's requests) nor google.protobuf's types (a Struct is JSON data, checked by
    the rules of what it holds: an event's data, an event type's schema)."""
    options = message.GetOptions()
    return not options.map_entry and not message.full_name.startswith("google.protobuf.")
