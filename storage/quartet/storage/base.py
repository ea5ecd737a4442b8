"""The model base class, the database proxy every model is bound to, and shared row helpers."""

from __future__ import annotations

import datetime
from typing import Any

import peewee

# The database is chosen at run time from a URL (SQLite or PostgreSQL), which is what Peewee's
# DatabaseProxy is for. `quartet.storage.bind()` initialises it once per process.
db = peewee.DatabaseProxy()


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
