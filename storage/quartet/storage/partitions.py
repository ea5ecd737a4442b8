"""PostgreSQL's `event` table, range-partitioned by week of `occur_time`.

A query on a time range reads only the weeks it covers, and retention drops a week whole
(quartet.storage.retention) instead of deleting its rows one by one. The layout:

- `event_before`: every time before the week the table was partitioned in (migration 0009),
  MINVALUE up to that Monday. It holds the events stored before, and any event sent later with
  so old a time; retention deletes its expired rows in small batches.
- `event_pYYYYMMDD`: the week beginning on that Monday (UTC), created ahead of time by the
  server, and on demand by the writer for an event whose week has none (an event of last year,
  or one of a week retention dropped): such an insert fails, and is tried again once the weeks
  exist (`ensure`). Events are at most the clock skew in the future, but a time can be anything
  in the past, hence weeks on demand rather than a DEFAULT partition: a new partition would have
  to scan a default one, under lock, for rows of its range.

A partitioned table cannot have a unique index that leaves out the partition key, so the
unique index on `event.id` lives on in the table `event_ids` (see quartet.storage.events).

Weeks, not days: a year is 52 partitions, so that a query without a time range, which reads
and locks every partition, stays cheap; retention then keeps an event up to a week longer than
asked.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from typing import Any

PERIOD = datetime.timedelta(days=7)
BEFORE = "event_before"
# Serialises the changes of the partitions (creating, dropping) between workers and replicas.
_LOCK = 0x71A27E8

_BOUND = re.compile(r"'([^']*)'")


def period_start(time: datetime.datetime) -> datetime.datetime:
    """The Monday 00:00 starting the week of time (naive UTC)."""
    day = datetime.datetime.combine(time.date(), datetime.time())
    return day - datetime.timedelta(days=time.weekday())


def name(start: datetime.datetime) -> str:
    return f"event_p{start:%Y%m%d}"


def lock(cursor: Any) -> None:
    """Take the partition lock until the end of the transaction."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))


def partitions(cursor: Any) -> dict[str, tuple[datetime.datetime | None, datetime.datetime]]:
    """Each partition of `event`: name -> (lower bound, or None for MINVALUE; upper bound)."""
    cursor.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'event'::regclass"
    )
    found: dict[str, tuple[datetime.datetime | None, datetime.datetime]] = {}
    for relname, bound in cursor.fetchall():
        times = [datetime.datetime.fromisoformat(t) for t in _BOUND.findall(bound)]
        found[relname] = (None, times[0]) if "MINVALUE" in bound else (times[0], times[1])
    return found


def ensure(cursor: Any, times: Iterable[datetime.datetime]) -> list[str]:
    """Create the week partitions these times need and lack, in the caller's transaction (which
    holds the partition lock from then on); the names created.

    Each is created as a table of its own, then attached: ATTACH takes a SHARE UPDATE EXCLUSIVE
    lock on `event`, which writers and readers pass, where CREATE TABLE ... PARTITION OF would
    take an exclusive one. The new table is empty, so attaching it scans nothing."""
    lock(cursor)
    existing = partitions(cursor)
    created = []
    for start in sorted({period_start(t) for t in times}):
        if any(covered(start, bounds) for bounds in existing.values()):
            continue
        table = name(start)
        cursor.execute(
            f"CREATE TABLE {table} (LIKE event INCLUDING DEFAULTS INCLUDING CONSTRAINTS);"
            f" ALTER TABLE event ATTACH PARTITION {table} FOR VALUES FROM (%s) TO (%s)",
            (start, start + PERIOD),
        )
        existing[table] = (start, start + PERIOD)
        created.append(table)
    return created


def expired(cursor: Any, cutoff: datetime.datetime) -> list[tuple[str, datetime.datetime]]:
    """The week partitions whose every time is before cutoff, oldest first, with their start."""
    return sorted(
        ((table, low) for table, (low, high) in partitions(cursor).items()
         if low is not None and high <= cutoff),
        key=lambda found: found[1],
    )  # fmt: skip


def covered(
    start: datetime.datetime, bounds: tuple[datetime.datetime | None, datetime.datetime]
) -> bool:
    """Whether a partition of these bounds holds the week beginning at start."""
    low, high = bounds
    return (low is None or low <= start) and start < high
