"""The history of experiment data imports: one row per import that was published or refused.

A published import's row is written in the transaction that publishes its data set (so the row
and the data set it names are never seen apart), after the publish lock is taken (so ids follow
the order imports were published in). A refused import's row is written in a transaction of its
own, after its staged rows were discarded.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import peewee

from quartet.storage.base import BaseModel, utcnow

PUBLISHED, REFUSED = "published", "refused"
CALLER_LENGTH = 100


class ImportRecord(BaseModel):
    """One import, as the history keeps it."""

    id = peewee.BigAutoField()
    start_time = peewee.DateTimeField()
    finish_time = peewee.DateTimeField()
    caller = peewee.CharField(max_length=CALLER_LENGTH)
    user_rows = peewee.BigIntegerField()
    compound_rows = peewee.BigIntegerField()
    experiment_rows = peewee.BigIntegerField()
    outcome = peewee.CharField(max_length=16)  # PUBLISHED or REFUSED
    problem_count = peewee.BigIntegerField()

    class Meta:
        table_name = "experiment_import_record"


@dataclass(frozen=True)
class Attempt:
    """What is known of an import before its outcome: when it started, who sent it, and how
    many data rows each file held."""

    start_time: datetime.datetime
    caller: str
    user_rows: int = 0
    compound_rows: int = 0
    experiment_rows: int = 0


def record(attempt: Attempt, outcome: str, problem_count: int = 0) -> int:
    """Add the import's row, finished now, in the current transaction if any; its id."""
    row = ImportRecord.create(
        start_time=attempt.start_time,
        finish_time=utcnow(),
        caller=attempt.caller[:CALLER_LENGTH],
        user_rows=attempt.user_rows,
        compound_rows=attempt.compound_rows,
        experiment_rows=attempt.experiment_rows,
        outcome=outcome,
        problem_count=problem_count,
    )
    return int(row.id)


def list_imports(*, before: int | None, limit: int) -> list[ImportRecord]:
    """Up to `limit` imports with ids below `before`, newest (highest id) first."""
    query = ImportRecord.select().order_by(ImportRecord.id.desc()).limit(limit)
    if before is not None:
        query = query.where(ImportRecord.id < before)
    return list(query)
