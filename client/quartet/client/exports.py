"""Writing report messages to files as CSV or JSON, with the same flat columns in both.

A message becomes one flat row: each field is a column named as in the proto, a nested message's
fields are columns prefixed with its name (`favourite_compound_name`), a Timestamp is its ISO
8601 text in UTC, an enum its value's name. Numbers stay numbers in JSON (where protobuf's own
JSON writes 64-bit integers as strings).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any, Literal, TextIO, TypeAlias

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

Format = Literal["csv", "json"]
FORMATS: tuple[Format, ...] = ("csv", "json")
Destination: TypeAlias = "str | os.PathLike[str] | TextIO"
"""Where to write: a path (created or replaced), or a text file object (left open)."""


def columns(descriptor: Any, prefix: str = "") -> list[str]:
    """The flat column names of a message type, in field order."""
    names: list[str] = []
    for field in descriptor.fields:
        name = prefix + field.name
        if _nested(field):
            names += columns(field.message_type, f"{name}_")
        else:
            names.append(name)
    return names


def flat(message: Message, prefix: str = "") -> dict[str, Any]:
    """message as one flat row; an unset nested message's columns are None."""
    row: dict[str, Any] = {}
    field: Any
    for field in message.DESCRIPTOR.fields:
        name, value = prefix + field.name, getattr(message, field.name)
        if _nested(field):
            if message.HasField(field.name):
                row.update(flat(value, f"{name}_"))
            else:
                row.update(dict.fromkeys(columns(field.message_type, f"{name}_")))
        elif field.message_type is not None and field.message_type.full_name == _TIMESTAMP:
            present = message.HasField(field.name)
            row[name] = _iso(value) if present else None
        elif field.type == FieldDescriptor.TYPE_ENUM:
            row[name] = field.enum_type.values_by_number[value].name
        elif _repeated(field):
            row[name] = list(value)
        else:
            row[name] = value
    return row


def write(
    destination: Destination, messages: Iterable[Message], descriptor: Any, fmt: Format
) -> int:
    """Write messages (of the type `descriptor` describes) as a CSV table with a header row, or
    as a JSON array of objects; the number written. Rows are written as they come."""
    check_format(fmt)
    count = 0
    with _opened(destination) as out:
        if fmt == "csv":
            writer = csv.DictWriter(out, columns(descriptor), lineterminator="\n")
            writer.writeheader()
            for message in messages:
                writer.writerow({k: _cell(v) for k, v in flat(message).items()})
                count += 1
            return count
        out.write("[")
        for message in messages:
            out.write(",\n  " if count else "\n  ")
            out.write(json.dumps(flat(message), ensure_ascii=False))
            count += 1
        out.write("\n]\n" if count else "]\n")
    return count


def write_one(destination: Destination, message: Message, fmt: Format) -> None:
    """Write one message: a CSV table of one row, or a JSON object."""
    check_format(fmt)
    if fmt == "csv":
        write(destination, [message], message.DESCRIPTOR, fmt)
        return
    with _opened(destination) as out:
        out.write(json.dumps(flat(message), ensure_ascii=False, indent=2) + "\n")


_TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name


def check_format(fmt: str) -> None:
    """ValueError unless fmt is one of FORMATS: checked before any call is made."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def _repeated(field: Any) -> bool:
    return bool(field.is_repeated)


def _nested(field: Any) -> bool:
    """A singular message field other than a Timestamp: flattened into columns of its own."""
    return (
        field.message_type is not None
        and field.message_type.full_name != _TIMESTAMP
        and not _repeated(field)
    )


def _iso(value: timestamp_pb2.Timestamp) -> str:
    return value.ToDatetime().isoformat() + "Z"


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return ";".join(str(item) for item in value)
    return "" if value is None else value


@contextlib.contextmanager
def _opened(destination: Destination) -> Iterator[TextIO]:
    if isinstance(destination, str | os.PathLike):
        with open(destination, "w", encoding="utf-8", newline="") as out:
            yield out
    else:
        yield destination
