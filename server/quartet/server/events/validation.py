"""The rules every sent event must pass, before it is stored or kept as rejected."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uuid_utils
from google.protobuf import json_format, struct_pb2

from quartet.errors.v1 import error_reason_pb2
from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.errors import FieldViolation, Violations, text_problem
from quartet.server.events.decoding import data_not_decoded
from quartet.server.events.registry import TEXT_LENGTH, Registry
from quartet.server.timestamps import from_timestamp
from quartet.storage.events import NewEvent, Rejection

# What is kept of an event rejected as too large: its text fields cut to this length, and this
# many characters of its data as JSON.
KEPT_TEXT_LENGTH = 256
DATA_PREFIX_LENGTH = 4096
_TEXT_FIELDS = ("id", "session_id", "category", "name")
# Objects and arrays an event's data may nest, itself the first. Each object costs a Struct three
# protobuf levels, and protobuf decoders (upb, C++, Java) stop at 100: 32 is the most whose
# deepest carrier, a RejectedEvent in a ListRejectedEventsResponse, every client can decode.
MAX_DATA_DEPTH = 32
_TOO_DEEP = (
    f"nests objects and arrays more than {MAX_DATA_DEPTH} deep; at most {MAX_DATA_DEPTH} are "
    "accepted (data itself is the first)"
)
# Control characters in data reported one by one, at most: each violation is returned and kept
# with the rejected event, so a payload full of them must not make either huge.
MAX_LISTED_CONTROLS = 10
# What compact ASCII JSON shows of a control character; data without one skips the walk.
_JSON_CONTROL = re.compile(r"\\u00[01][0-9a-f]|\\u007f|\\[bfnrt]")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_FIELD = error_reason_pb2.ErrorReason.Name(error_reason_pb2.FIELD_INVALID)
_REASON = error_reason_pb2.ErrorReason.Name
# A Struct's data holds no cycles to look for; built once, as json.dumps(..., separators=...)
# would build an encoder per call.
_compact_json = json.JSONEncoder(
    separators=(",", ":"), check_circular=False, allow_nan=False
).encode


@dataclass(frozen=True)
class Policy:
    """What the operator configured (see Settings)."""

    accept_unknown_types: bool
    clock_skew: datetime.timedelta
    max_event_bytes: int


class EventChecker:
    """Turns a sent event into a NewEvent to store, or a Rejection with every problem found."""

    def __init__(self, registry: Registry, policy: Policy) -> None:
        self._registry = registry
        self._policy = policy

    def check(
        self, event: pb.Event, application_id: int, now: datetime.datetime
    ) -> NewEvent | Rejection:
        problems = Violations()
        size = event.ByteSize()
        if size > self._policy.max_event_bytes:
            problems.add(
                "",
                f"is {size} bytes; at most {self._policy.max_event_bytes} are accepted",
                _REASON(error_reason_pb2.EVENT_TOO_LARGE),
            )
            return self._rejected(event, application_id, problems, size)
        event_id = canonical_uuid(event.id, "id", problems, required=False) or new_event_id()
        session_id = canonical_uuid(event.session_id, "session_id", problems, required=True)
        for field in ("category", "name"):
            text = getattr(event, field)
            if not text.strip() or len(text) > TEXT_LENGTH:
                problems.add(field, f"must be 1 to {TEXT_LENGTH} characters", _FIELD)
            else:
                problems.check_text(field, text, _FIELD)
        occur_time = self._occur_time(event, now, problems)
        if data_not_decoded(event):
            problems.add(
                "data",
                f"{_TOO_DEEP}; it was too deep for protobuf to decode, so it is not kept",
                _REASON(error_reason_pb2.LIMIT_EXCEEDED),
            )
            return self._rejected(event, application_id, problems, size, too_deep=True)
        data = struct_to_dict(event.data)
        try:
            data_json = _compact_json(data)
        except ValueError:  # NaN or an infinity: JSON has no such numbers
            data_json = ""
            problems.add("data", "holds NaN or an infinity, which JSON cannot hold", _FIELD)
        too_deep = _data_problems(data, data_json, problems)
        if too_deep:  # a schema check would recurse through all of it
            return self._rejected(event, application_id, problems, size, too_deep=True)
        schema = self._registry.get(event.category, event.name)
        if schema is None and not self._policy.accept_unknown_types:
            problems.add(
                "name",
                f'no schema is registered for category "{event.category}" and name '
                f'"{event.name}", and events of unknown types are rejected',
                _REASON(error_reason_pb2.EVENT_TYPE_UNKNOWN),
            )
        elif schema is not None and not schema.accepts(data):
            for path, message in schema.problems(data):
                problems.add(
                    f"data.{path}" if path else "data",
                    message,
                    _REASON(error_reason_pb2.EVENT_PAYLOAD_INVALID),
                )
        if problems or occur_time is None:
            return self._rejected(event, application_id, problems, size)
        return NewEvent(
            id=event_id,
            application_id=application_id,
            session_id=session_id,
            category=event.category,
            name=event.name,
            data=data_json,
            occur_time=occur_time,
            schema_version=schema.version if schema else 0,
        )

    def _occur_time(
        self, event: pb.Event, now: datetime.datetime, problems: Violations
    ) -> datetime.datetime | None:
        if not event.HasField("occur_time"):
            problems.add("occur_time", "is required", _FIELD)
            return None
        occur_time = from_timestamp(event.occur_time, "occur_time", problems)
        if occur_time is not None and occur_time > now + self._policy.clock_skew:
            skew = self._policy.clock_skew.total_seconds()
            problems.add(
                "occur_time",
                f"{occur_time.isoformat()}Z is in the future (more than {skew:g} s after the "
                f"server's clock, {now.isoformat()}Z)",
                _REASON(error_reason_pb2.EVENT_TIME_IN_FUTURE),
            )
        return occur_time

    def _rejected(
        self,
        event: pb.Event,
        application_id: int,
        problems: Violations,
        size: int,
        *,
        too_deep: bool = False,
    ) -> Rejection:
        """The rejection to keep: the event as sent, with its size. But one too large to store
        is kept without its data, and the first DATA_PREFIX_LENGTH characters of that (else a
        rejection would take the room the size limit protects); one JSON cannot hold whole
        without what it cannot hold (see _as_json); and one whose data nests too deep without
        that data (as a Struct no client could decode its listing), which goes to the prefix
        if it could be decoded at all."""
        violations = [  # shared checks (a timestamp's) give no reason: theirs is FIELD_INVALID
            {"field": v.field, "reason": v.reason or _FIELD, "description": v.description}
            for v in problems.items
        ]
        too_large = size > self._policy.max_event_bytes
        if too_deep:
            kept = pb.Event()
            kept.CopyFrom(event)
            kept.ClearField("data")
        elif not too_large:
            try:
                sent = json_format.MessageToJson(event, indent=None)
                return Rejection(application_id, sent, violations, size)
            except json_format.SerializeToJsonError:  # what JSON cannot hold: see _as_json
                kept = pb.Event()
                kept.CopyFrom(event)
        else:
            kept = pb.Event(
                **{field: getattr(event, field)[:KEPT_TEXT_LENGTH] for field in _TEXT_FIELDS}
            )
            if event.HasField("occur_time"):
                kept.occur_time.CopyFrom(event.occur_time)
        sent, holds_data = _as_json(kept)
        decoded = event.HasField("data") or not too_deep  # else there is nothing to show
        prefix = (
            json_prefix(event.data, DATA_PREFIX_LENGTH)
            if decoded and (too_large or too_deep or not holds_data)
            else None
        )
        return Rejection(application_id, sent, violations, size, data_prefix=prefix)


def new_event_id() -> str:
    """A time-ordered (version 7) UUID for an event sent without an id. New ids sort after the
    ones before them, so the unique index on event ids grows at its end, as an index on a
    sequence would; random (version 4) ids land all over it and made every SQLite insert of a
    batch cost 2-3 times as much (docs/performance.md)."""
    return str(uuid_utils.uuid7())


def canonical_uuid(value: str, field: str, problems: Violations, *, required: bool) -> str:
    """The canonical form of a UUID field ("" when absent and optional; a violation if bad)."""
    if _CANONICAL_UUID.match(value):  # what the SDK sends: skip parsing it (µs per event)
        return value
    if not value:
        if required:
            problems.add(field, "is required (a UUID)", _FIELD)
        return ""
    if not problems.check_text(field, value, _FIELD):
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        problems.add(field, f"{value[:80]!r} is not a UUID", _FIELD)
        return ""


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The JSON object a Struct holds (faster than json_format.MessageToDict, which is generic)."""
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    if kind == "null_value" or kind is None:
        return None
    return getattr(value, kind)


def _data_problems(data: dict[str, Any], data_json: str, problems: Violations) -> bool:
    """Add a violation for each control character in data's keys or string values (tab and line
    breaks are text in a value), at the path that holds it (the first MAX_LISTED_CONTROLS; the
    violations are returned and kept with the event), and one if data nests deeper than
    MAX_DATA_DEPTH; True in that case. data_json ("" if unknown) spares most events the walk."""
    if data_json and (
        data_json.count("{") + data_json.count("[") <= MAX_DATA_DEPTH
        and not _JSON_CONTROL.search(data_json)
    ):
        return False
    found: list[tuple[str, str]] = []
    too_deep = _walk(data, "data", 1, found)
    found.sort()  # the same first ones whatever order the sender's map came in
    for path, description in found[:MAX_LISTED_CONTROLS]:
        problems.add(path, description, _FIELD)
    if len(found) > MAX_LISTED_CONTROLS:
        more = len(found) - MAX_LISTED_CONTROLS
        problems.add("data", f"holds {more} more control characters", _FIELD)
    if too_deep:
        problems.add("data", _TOO_DEEP, _REASON(error_reason_pb2.LIMIT_EXCEEDED))
    return too_deep


def _walk(value: Any, path: str, depth: int, found: list[tuple[str, str]]) -> bool:
    """_data_problems for value (at path, nested depth containers deep): (path, description) of
    each control character into found; True if too deep."""
    if isinstance(value, dict | list) and depth > MAX_DATA_DEPTH:
        return True
    if isinstance(value, dict):
        too_deep = False
        for key, item in value.items():
            if (problem := text_problem(key)) is not None:
                found.append((path, f"has a key {key[:80]!r} that {problem}"))
                key = key.encode("unicode_escape").decode("ascii")  # no control in paths
            too_deep |= _walk(item, f"{path}.{key}", depth + 1, found)
        return too_deep
    if isinstance(value, list):
        return any([_walk(item, f"{path}.{n}", depth + 1, found) for n, item in enumerate(value)])
    if isinstance(value, str) and (problem := text_problem(value, multiline=True)) is not None:
        found.append((path, problem))
    return False


def _as_json(event: pb.Event) -> tuple[str, bool]:
    """The event as JSON, without what JSON cannot hold: timestamps out of Timestamp's range
    (their violations say so), and data holding NaN or an infinity; and whether data is whole.
    Changes event."""
    for field in ("occur_time", "receive_time"):
        if event.HasField(field):
            try:
                json_format.MessageToJson(getattr(event, field))
            except (json_format.SerializeToJsonError, ValueError):
                event.ClearField(field)
    try:
        return json_format.MessageToJson(event, indent=None), True
    except json_format.SerializeToJsonError:
        event.ClearField("data")
        return json_format.MessageToJson(event, indent=None), False


def json_prefix(data: struct_pb2.Struct, length: int) -> str:
    """The first `length` characters of data as compact JSON, converting no more of it than
    that needs (a too large event's data can be megabytes)."""
    parts: list[str] = []
    total = 0
    for part in _json_parts(data, length):
        parts.append(part)
        total += len(part)
        if total >= length:
            break
    return "".join(parts)[:length]


def _json_parts(struct: struct_pb2.Struct, length: int) -> Iterator[str]:
    yield "{"
    for n, (key, value) in enumerate(struct.fields.items()):
        # A string cut to `length` characters still starts its JSON text as the whole would.
        yield f"{',' if n else ''}{json.dumps(key[:length])}:"
        yield from _json_value_parts(value, length)
    yield "}"


def _json_value_parts(value: struct_pb2.Value, length: int) -> Iterator[str]:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        yield from _json_parts(value.struct_value, length)
    elif kind == "list_value":
        yield "["
        for n, item in enumerate(value.list_value.values):
            if n:
                yield ","
            yield from _json_value_parts(item, length)
        yield "]"
    elif kind == "string_value":
        yield json.dumps(value.string_value[:length])
    elif kind == "number_value" or kind == "bool_value":
        yield json.dumps(getattr(value, kind))
    else:
        yield "null"


def violations_of(rejection: Rejection, prefix: str = "") -> list[FieldViolation]:
    """A rejection's problems as field violations, their paths under prefix (e.g. "events[3].")."""
    return [
        FieldViolation(f"{prefix}{v['field']}".rstrip("."), v["description"], v["reason"])
        for v in rejection.violations
    ]
