"""What commands print: a table for people, or JSON or CSV for scripts, from one column list.

JSON is protobuf's JSON mapping of the messages with their proto field names (as in
docs/api.md), every field present (zeros and empty strings too): one object for one resource,
an array for a list. CSV has a header row, then the table's columns with plain values.
"""

from __future__ import annotations

import csv
import datetime
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import click
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.table import Table

Format = Literal["table", "json", "csv"]
M = TypeVar("M")
# Tables that do not reach a terminal (a pipe, a file) keep long lines whole.
UNBOUNDED_WIDTH = 10_000


@dataclass(frozen=True)
class Column(Generic[M]):
    """One column of a table (and of CSV): its header, and its value for an item."""

    header: str
    value: Callable[[M], object]
    justify: Literal["left", "right"] = "left"


def console(stream: Any = None) -> Console:
    stream = stream or sys.stdout
    terminal = stream.isatty()
    return Console(
        file=stream, highlight=False, width=None if terminal else UNBOUNDED_WIDTH, soft_wrap=False
    )


def as_dict(message: Message) -> dict[str, Any]:
    """A message as its JSON mapping, with proto field names and every field present."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def json_text(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def time_text(value: timestamp_pb2.Timestamp, present: bool = True) -> str:
    """A timestamp as ISO 8601 in UTC to the second ("" when unset)."""
    if not present or (value.seconds == 0 and value.nanos == 0):
        return ""
    moment = value.ToDatetime(datetime.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def print_list(
    items: Iterable[M],
    columns: Sequence[Column[M]],
    fmt: Format,
    *,
    to_json: Callable[[M], object] | None = None,
    empty: str = "none",
) -> int:
    """Print every item (items are fetched as they are printed in JSON and CSV); the count."""
    count = 0
    if fmt == "json":
        convert = to_json or (lambda item: as_dict(item))  # type: ignore[arg-type]
        out = sys.stdout
        out.write("[")
        for item in items:
            text = json_text(convert(item)).replace("\n", "\n  ")
            out.write(("," if count else "") + "\n  " + text)
            count += 1
        out.write("\n]\n" if count else "]\n")
        return count
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([c.header for c in columns])
        for item in items:
            writer.writerow([cell(c.value(item)) for c in columns])
            count += 1
        return count
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column.header, justify=column.justify, overflow="fold")
    for item in items:
        table.add_row(*(cell(c.value(item)) for c in columns))
        count += 1
    if count:
        console().print(table)
    else:
        click.echo(f"({empty})", err=True)
    return count


def print_one(message: Message, rows: Sequence[tuple[str, object]], fmt: Format) -> None:
    """One resource: its JSON mapping, or a two-column table of the rows given."""
    if fmt == "json":
        click.echo(json_text(as_dict(message)))
        return
    print_fields(rows)


def print_fields(rows: Sequence[tuple[str, object]]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, cell(value))
    console().print(table)
