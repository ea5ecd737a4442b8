"""The model base class and the database proxy every model is bound to."""

from __future__ import annotations

import datetime

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
