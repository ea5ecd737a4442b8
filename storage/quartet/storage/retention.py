"""Keeping events for a while: the week partitions ahead (PostgreSQL), and retention.

`maintain` is what the server runs now and then, in one process per server (see
quartet.server.app). It is safe to run in several replicas at once: partitions change under an
advisory lock (quartet.storage.partitions), and a batch deleted by one is skipped by the others.

Retention keeps events for `days` days by occurrence time, and rejected events by rejection
time. On PostgreSQL a week partition goes whole once its last day is past; the events stored in
`event_before`, and on SQLite every event and every rejected event, go in batches of BATCH rows,
each its own short transaction, so that writers wait for one batch at most.
"""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass

import peewee
import psycopg2.errors

from quartet.storage import partitions
from quartet.storage.base import db

logger = logging.getLogger(__name__)

BATCH = 1000
# How long dropping a partition waits for its lock (an exclusive one on `event`, behind the
# queries running on it) before giving up until the next run; writers queue behind it meanwhile.
_DROP_LOCK_TIMEOUT = "500ms"


@dataclass
class Removed:
    """What one run of retention removed."""

    partitions: list[str]
    events: int  # deleted row by row (those of the partitions dropped are not counted)
    rejected: int

    def __bool__(self) -> bool:
        return bool(self.partitions or self.events or self.rejected)


def maintain(
    now: datetime.datetime,
    *,
    days: float,
    ahead: datetime.timedelta,
    stop: threading.Event | None = None,
) -> Removed:
    """Create the week partitions up to now + ahead (PostgreSQL), then remove the events and
    rejected events older than `days` days (none if days is 0), in a connection of its own.
    Once `stop` is set, it ends after the batch in progress (the rest is left for next time)."""
    database = db.obj
    with database.connection_context():
        return _maintain(database, now, days, ahead, stop or threading.Event())


def _maintain(
    database: peewee.Database,
    now: datetime.datetime,
    days: float,
    ahead: datetime.timedelta,
    stop: threading.Event,
) -> Removed:
    postgres = isinstance(database, peewee.PostgresqlDatabase)
    if postgres:
        with database.atomic(), database.cursor() as cursor:  # type: ignore[no-untyped-call]
            weeks = int(ahead / partitions.PERIOD) + 1
            partitions.ensure(cursor, [now + partitions.PERIOD * n for n in range(weeks + 1)])
    removed = Removed([], 0, 0)
    if days <= 0:
        return removed
    cutoff = now - datetime.timedelta(days=days)
    # As text, as Peewee stores a datetime in SQLite, so that both compare alike there.
    before = cutoff.isoformat(" ")
    if postgres:
        removed.partitions = _drop_partitions(database, cutoff, stop)
        removed.events = _delete_batches(database, stop, _DELETE_BEFORE, before)
    else:
        removed.events = _delete_batches(database, stop, _DELETE_EVENTS, before)
    removed.rejected = _delete_batches(database, stop, _DELETE_REJECTED, before)
    _delete_reasons(database, stop, before)
    return removed


# Each statement deletes up to BATCH rows older than its parameter, oldest first, and returns
# one row per row deleted. event_before's ids go from event_ids with its rows.
_DELETE_BEFORE = (
    "WITH gone AS (DELETE FROM event_before WHERE seq IN (SELECT seq FROM event_before"
    f" WHERE occur_time < %s ORDER BY occur_time LIMIT {BATCH}) RETURNING id),"
    " ids AS (DELETE FROM event_ids WHERE id IN (SELECT id FROM gone))"
    " SELECT 1 FROM gone"
)
_DELETE_EVENTS = (
    "DELETE FROM event WHERE seq IN (SELECT seq FROM event WHERE occur_time < %s"
    f" ORDER BY occur_time LIMIT {BATCH}) RETURNING 1"
)
_DELETE_REJECTED = (
    "DELETE FROM rejected_event WHERE id IN (SELECT id FROM rejected_event WHERE reject_time < %s"
    f" ORDER BY reject_time LIMIT {BATCH}) RETURNING 1"
)
# A rejected event's reasons, a reason at a time: the key is (reason, reject_time, rejected_id),
# each row deleted found by it.
_DELETE_REASONS = (
    "DELETE FROM rejected_event_reason WHERE (reason, reject_time, rejected_id) IN"
    " (SELECT reason, reject_time, rejected_id FROM rejected_event_reason WHERE reason = %s"
    f" AND reject_time < %s ORDER BY reject_time LIMIT {BATCH}) RETURNING 1"
)
# The distinct reasons, one key lookup each (a loose index scan) rather than reading them all.
_REASONS = (
    "WITH RECURSIVE r (reason) AS ("
    " SELECT min(reason) FROM rejected_event_reason UNION ALL"
    " SELECT (SELECT min(reason) FROM rejected_event_reason WHERE reason > r.reason)"
    " FROM r WHERE r.reason IS NOT NULL)"
    " SELECT reason FROM r WHERE reason IS NOT NULL"
)


def _delete_batches(
    database: peewee.Database, stop: threading.Event, sql: str, *params: object
) -> int:
    """Run sql, one transaction at a time, until it deletes less than a batch (or stop is
    set); the rows deleted."""
    sql = sql.replace("%s", database.param)
    total = 0
    while not stop.is_set():
        with database.atomic():
            deleted = len(database.execute_sql(sql, params).fetchall())  # type: ignore[no-untyped-call]
        total += deleted
        if deleted < BATCH:
            break
    return total


def _delete_reasons(database: peewee.Database, stop: threading.Event, before: str) -> None:
    reasons = [row[0] for row in database.execute_sql(_REASONS).fetchall()]  # type: ignore[no-untyped-call]
    for reason in reasons:
        _delete_batches(database, stop, _DELETE_REASONS, reason, before)


def _drop_partitions(
    database: peewee.Database, cutoff: datetime.datetime, stop: threading.Event
) -> list[str]:
    """Drop the week partitions wholly before cutoff, after deleting their events' ids from
    event_ids (in batches, by the partition's own key); the names dropped."""
    with database.cursor() as cursor:  # type: ignore[no-untyped-call]
        expired = partitions.expired(cursor, cutoff)
    dropped = []
    for table, _ in expired:
        last = 0
        while not stop.is_set():
            with database.atomic():
                ids = database.execute_sql(  # type: ignore[no-untyped-call]
                    f"WITH batch AS (SELECT seq, id FROM {table} WHERE seq > %s ORDER BY seq"
                    f" LIMIT {BATCH}), gone AS (DELETE FROM event_ids WHERE id IN"
                    " (SELECT id FROM batch)) SELECT max(seq), count(*) FROM batch",
                    (last,),
                ).fetchone()
            if not ids[1]:
                break
            last = ids[0]
        if stop.is_set():
            break
        try:
            with database.atomic(), database.cursor() as cursor:  # type: ignore[no-untyped-call]
                partitions.lock(cursor)
                cursor.execute(f"SET LOCAL lock_timeout = '{_DROP_LOCK_TIMEOUT}'")
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
        except psycopg2.errors.LockNotAvailable as exc:  # the lock timed out: next time
            logger.info("cannot drop the expired partition %s now: %s", table, exc)
            break
        dropped.append(table)
    return dropped
