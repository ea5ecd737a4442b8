"""The model base class, the database proxy every model is bound to, and shared row helpers."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import peewee

# The database is chosen at run time from a URL (SQLite or PostgreSQL), which is what Peewee's
# DatabaseProxy is for. `quartet.storage.bind()` initialises it once per process.
db = peewee.DatabaseProxy()


R = TypeVar("R")  # a row of prepared()

# SQL compiled once per query shape and kind of database (placeholders and quoting differ).
_statements: dict[tuple[str, type], str | None] = {}


def prepared(
    shape: str, build: Callable[[], peewee.Query], params: Sequence[Any], row: Callable[..., R]
) -> list[R]:
    """The rows that build()'s query selects, as row(*columns), its SQL compiled only once.

    Peewee builds and compiles a query in Python on every call, about 150 µs under load, five
    times the cost of running it on SQLite; and it builds a model of each row, converting each
    value, several times the cost of reading the row (433 against 65 µs for a page of 50 events).
    So a query of a given `shape` (its structure without its values) is compiled once and then
    run with `params`, which must be its parameters in the order Peewee puts them: the first run
    checks that they are, and a shape whose parameters differ is never cached (compiled every
    time, as before). The driver's tuples go to `row`, which converts what needs it (see
    as_datetime)."""
    key = (shape, type(db.obj))
    sql = _statements.get(key)
    if sql is None:
        sql, expected = build().sql()
        if key not in _statements:
            _statements[key] = sql if list(expected) == list(params) else None
        params = expected
    return [row(*values) for values in db.obj.execute_sql(sql, params)]


def as_datetime(value: datetime.datetime | str) -> datetime.datetime:
    """A stored time as the driver gives it: a datetime from PostgreSQL, its ISO text from
    SQLite (which is how Peewee stores a DateTimeField there)."""
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value


def utcnow() -> datetime.datetime:
    """The current time as a naive UTC datetime: every timestamp column holds UTC."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class BaseModel(peewee.Model):
    """Base of every quartet model: bound to `db`, snake_case table names."""

    class Meta:
        database = db
        legacy_table_names = False


def copy_line(row: tuple[Any, ...]) -> str:
    """row as a line of PostgreSQL's COPY text format (None is NULL; str() spells the rest)."""
    return "\t".join([_copy_value(value) for value in row]) + "\n"


def _copy_value(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return str(value)
