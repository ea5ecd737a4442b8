"""Events, rejected events and event types: the models, the bulk writes, and the queries."""

from __future__ import annotations

import datetime
import enum
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import peewee
import psycopg2

from quartet.storage import changes, partitions
from quartet.storage.base import BaseModel, as_datetime, copy_line, db, prepared, utcnow
from quartet.storage.errors import RecordNotFound


class EventType(BaseModel):
    """One version of the JSON Schema for events of a category and name."""

    id = peewee.BigAutoField()
    category = peewee.CharField(max_length=100)
    name = peewee.CharField(max_length=100)
    version = peewee.IntegerField()
    schema = peewee.TextField()  # JSON
    create_time = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("category", "name", "version"), True),)


class Event(BaseModel):
    """A stored event. `seq` is the arrival order; `id` the sender's (or our) UUID, unique, so a
    resent event is recognised by the database itself: by a unique index on SQLite, and on
    PostgreSQL, where the table is partitioned by week of `occur_time` (quartet.storage.partitions)
    and a unique index would have to include it, by the primary key of EventId. Find an event by
    id through `by_ids`, which reads EventId first there."""

    seq = peewee.BigAutoField()
    id = peewee.CharField(max_length=36, unique=True)
    application_id = peewee.BigIntegerField()
    session_id = peewee.CharField(max_length=36)
    category = peewee.CharField(max_length=100)
    name = peewee.CharField(max_length=100)
    data = peewee.TextField()  # JSON
    occur_time = peewee.DateTimeField()
    receive_time = peewee.DateTimeField()
    schema_version = peewee.IntegerField(default=0)

    class Meta:
        indexes = (
            # One per query the data team runs (by session, category, category and name, time),
            # each ending in the page order (occur_time, seq), so no query sorts. The application
            # filter rides on these: one more index would slow every insert down.
            (("session_id", "occur_time", "seq"), False),
            (("category", "occur_time", "seq"), False),
            (("category", "name", "occur_time", "seq"), False),
            (("occur_time", "seq"), False),
        )


class EventId(BaseModel):
    """PostgreSQL only: the id and time of every stored event, its id unique.

    A partitioned table's unique index must include the partition key, and (id, occur_time)
    would take a resend with another time (or another sender's event of that id) for a new
    event. So the writer claims each id here, in the transaction that inserts the event, and
    inserts only the events whose id it claimed. The time is the way to the one partition that
    holds the event. Deriving the partition key from the id instead is not possible: senders
    choose their ids, which need not say when the event occurred. Measured with
    scripts/bench_event_store.py: no slower, within the noise, than the unique index it replaces
    (docs/performance.md).
    """

    id = peewee.CharField(max_length=36, primary_key=True)
    occur_time = peewee.DateTimeField()

    class Meta:
        table_name = "event_ids"


class RejectedEvent(BaseModel):
    """An event that failed validation: the event as sent (JSON) and its violations (JSON).
    Its distinct reasons are rows of RejectedEventReason."""

    id = peewee.BigAutoField()
    application_id = peewee.BigIntegerField()
    event = peewee.TextField()
    violations = peewee.TextField()
    reject_time = peewee.DateTimeField()
    # The event's size as sent, in bytes (NULL for rejections older than migration 0007).
    size = peewee.BigIntegerField(null=True)
    # Set for an event too large to keep whole: the start of its data as JSON, `event` holding
    # the rest of it (its text fields cut short).
    data_prefix = peewee.TextField(null=True)
    # The latest replay (see store_replayed): a ReplayState value, NULL if never replayed; its
    # time; and the problems found then (JSON), if the event stayed rejected.
    replay_state = peewee.SmallIntegerField(null=True)
    replay_time = peewee.DateTimeField(null=True)
    replay_violations = peewee.TextField(null=True)

    class Meta:
        indexes = (
            (("reject_time", "id"), False),
            (("application_id", "reject_time", "id"), False),
        )


class RejectedEventReason(BaseModel):
    """One reason a rejected event was rejected for. Its key, (reason, reject_time, rejected_id),
    is the index that lists the rejected events of a reason newest first without reading the
    others (matching a list of reasons in one column could only scan them all)."""

    reason = peewee.CharField(max_length=100)
    reject_time = peewee.DateTimeField()
    rejected_id = peewee.BigIntegerField()  # rejected_event.id

    class Meta:
        primary_key = peewee.CompositeKey("reason", "reject_time", "rejected_id")


class EventRow(NamedTuple):
    """A stored event as the calls that show events read it, straight from the cursor (see
    prepared): the columns of EVENT_COLUMNS, in their order, its keyset position last."""

    id: str
    session_id: str
    category: str
    name: str
    data: str  # JSON
    application_id: int
    receive_time: datetime.datetime
    schema_version: int
    occur_time: datetime.datetime
    seq: int


EVENT_COLUMNS = (
    Event.id,
    Event.session_id,
    Event.category,
    Event.name,
    Event.data,
    Event.application_id,
    Event.receive_time,
    Event.schema_version,
    Event.occur_time,
    Event.seq,
)


def event_row(*values: Any) -> EventRow:
    """The EventRow of the driver's values of EVENT_COLUMNS."""
    event_id, session, category, name, data, app, receive, version, occur, seq = values
    return EventRow(
        event_id,
        session,
        category,
        name,
        data,
        app,
        as_datetime(receive),
        version,
        as_datetime(occur),
        seq,
    )


@dataclass(slots=True)  # not frozen: frozen dataclasses are slow to build, and this is per event
class NewEvent:
    """A validated event, ready to store."""

    id: str
    application_id: int
    session_id: str
    category: str
    name: str
    data: str  # JSON
    occur_time: datetime.datetime
    schema_version: int


@dataclass(slots=True)
class Rejection:
    """A rejected event, ready to store."""

    application_id: int
    event: str  # JSON of the event as sent (without its data when data_prefix is set)
    violations: list[dict[str, str]]
    size: int | None = None  # bytes, as sent
    data_prefix: str | None = None  # the start of the data of an event too large to keep whole


_COLUMNS = (
    "id, application_id, session_id, category, name, data, occur_time, receive_time, schema_version"
)


def store(
    events: Sequence[NewEvent], rejections: Sequence[Rejection], now: datetime.datetime
) -> set[str]:
    """Insert the events that are new and every rejection, in the caller's transaction.

    Returns the ids actually inserted: an id already stored, or repeated within `events`, is a
    resend and inserts nothing. The unique index on `event.id` (on PostgreSQL, the key of
    `event_ids`) is what guarantees it; the insert skips conflicts instead of failing, so one
    resent event never fails its whole batch.
    """
    database = db.obj
    fresh: dict[str, NewEvent] = {}
    for event in events:
        fresh.setdefault(event.id, event)
    inserted: set[str] = set()
    if fresh:
        inserted = _insert_new(database, list(fresh.values()), now)
    if rejections:
        _insert_rejections(rejections, now)
    return inserted


def _insert_rejections(rejections: Sequence[Rejection], now: datetime.datetime) -> None:
    """Insert the rejections, and a RejectedEventReason row for each of their distinct reasons."""
    for start in range(0, len(rejections), _CHUNK):
        chunk = rejections[start : start + _CHUNK]
        query = RejectedEvent.insert_many(
            [
                {
                    "application_id": r.application_id,
                    "event": r.event,
                    "violations": json.dumps(r.violations),
                    "reject_time": now,
                    "size": r.size,
                    "data_prefix": r.data_prefix,
                }
                for r in chunk
            ]
        ).returning(RejectedEvent.id)
        # A multi-row INSERT takes its ids in row order, each above the last (a PostgreSQL
        # sequence only grows; SQLite, one writer at a time, takes the largest rowid plus one),
        # while RETURNING lists them in no promised order: sorted, they match the rows.
        ids = sorted(row[0] for row in query.tuples().execute())
        if len(ids) != len(chunk):
            raise RuntimeError(f"inserted {len(chunk)} rejected events but got {len(ids)} ids")
        RejectedEventReason.insert_many(
            [
                (reason, now, rejected_id)
                for rejected_id, r in zip(ids, chunk, strict=True)
                for reason in sorted({v["reason"] for v in r.violations})
            ],
            fields=[
                RejectedEventReason.reason,
                RejectedEventReason.reject_time,
                RejectedEventReason.rejected_id,
            ],
        ).execute()


# Rows per INSERT statement: 9 parameters each stays far below SQLite's limit of 32766.
_CHUNK = 500


def _insert_new(
    database: peewee.Database, events: list[NewEvent], now: datetime.datetime
) -> set[str]:
    """Insert the events, skipping ids already stored; the ids actually inserted.

    ON CONFLICT DO NOTHING RETURNING reports exactly the new rows (SQLite 3.35+, PostgreSQL),
    so no query for existing ids is needed.
    """
    if isinstance(database, peewee.PostgresqlDatabase):
        return _copy_new(database, events, now)
    # SQLite gets the text Peewee itself stores for a datetime there, so both sort alike.
    received = now.isoformat(" ")
    row = f"({', '.join([database.param] * 9)})"
    cursor = database.cursor()  # type: ignore[no-untyped-call]
    inserted: set[str] = set()
    for start in range(0, len(events), _CHUNK):
        chunk = events[start : start + _CHUNK]
        values = [
            value
            for e in chunk
            for value in (
                e.id, e.application_id, e.session_id, e.category, e.name, e.data,
                e.occur_time.isoformat(" "), received, e.schema_version,
            )
        ]  # fmt: skip
        cursor.execute(
            f"INSERT INTO event ({_COLUMNS}) VALUES {', '.join([row] * len(chunk))} "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            values,
        )
        inserted.update(found[0] for found in cursor.fetchall())
    return inserted


# PostgreSQL takes the rows by COPY into a temporary table of this connection, and from there
# into `event` with one INSERT ... SELECT: a multi-row VALUES of thousands of literals cost twice
# as long per row, half of it in psycopg2 spelling them, half in PostgreSQL parsing them
# (docs/performance.md). `n` keeps the sent order, which `seq` (the arrival order) follows.
_STAGE = (
    "SET LOCAL client_min_messages = warning;"  # no notice that the table already exists
    " CREATE TEMPORARY TABLE IF NOT EXISTS event_stage (n integer, id text,"
    " application_id bigint, session_id text, category text, name text, data text,"
    " occur_time timestamp, receive_time timestamp, schema_version integer)"
    " ON COMMIT DELETE ROWS"
)
_TO_STAGE = f"COPY pg_temp.event_stage (n, {_COLUMNS}) FROM STDIN"
# The ids are claimed in event_ids first (see EventId); only the events whose id was claimed are
# inserted. Behind a savepoint: an event of a week without its partition fails the insert, which
# is tried again once the weeks exist (partitions.ensure).
_FROM_STAGE = (
    "SAVEPOINT event_insert;"
    " WITH staged AS (DELETE FROM pg_temp.event_stage RETURNING *),"
    " claimed AS (INSERT INTO event_ids (id, occur_time) SELECT id, occur_time FROM staged"
    " ON CONFLICT (id) DO NOTHING RETURNING id)"
    f" INSERT INTO event ({_COLUMNS}) SELECT {_COLUMNS} FROM staged JOIN claimed USING (id)"
    " ORDER BY n RETURNING id"
)
_NO_PARTITION = "23514"  # check_violation: "no partition of relation "event" found for row"


def _copy_new(
    database: peewee.Database, events: list[NewEvent], now: datetime.datetime
) -> set[str]:
    lines = []
    for n, e in enumerate(events):
        sent = (n, e.id, e.application_id, e.session_id, e.category, e.name, e.data)
        lines.append(copy_line((*sent, e.occur_time, now, e.schema_version)))
    with database.cursor() as cursor:  # type: ignore[no-untyped-call]
        cursor.execute(_STAGE)
        cursor.copy_expert(_TO_STAGE, io.StringIO("".join(lines)))
        try:
            cursor.execute(_FROM_STAGE)
        except psycopg2.Error as exc:
            if exc.pgcode != _NO_PARTITION:
                raise
            cursor.execute("ROLLBACK TO SAVEPOINT event_insert")
            partitions.ensure(cursor, (e.occur_time for e in events))
            cursor.execute(_FROM_STAGE)
        return {found[0] for found in cursor.fetchall()}


def senders(ids: set[str]) -> dict[str, int]:
    """The application that sent the stored event of each of these ids (those stored)."""
    found: dict[str, int] = {}
    ordered = sorted(ids)
    for start in range(0, len(ordered), _CHUNK):
        query = by_ids(
            Event.select(Event.id, Event.application_id), ordered[start : start + _CHUNK]
        )
        found.update((row.id, row.application_id) for row in query)
    return found


def by_ids(query: peewee.ModelSelect[Event], ids: Sequence[str]) -> peewee.ModelSelect[Event]:
    """query, of the events of these ids. On PostgreSQL through EventId, whose times lead to
    the partitions that hold them (nothing indexes Event.id in a partition)."""
    if isinstance(db.obj, peewee.PostgresqlDatabase):
        query = query.join(
            EventId, on=(EventId.occur_time == Event.occur_time) & (EventId.id == Event.id)
        )
        return query.where(EventId.id.in_(ids))
    return query.where(Event.id.in_(ids))


def get_event(event_id: str) -> Event:
    event: Event | None = by_ids(Event.select(), [event_id]).first()
    if event is None:
        raise RecordNotFound("event", event_id)
    return event


EventKey = tuple[datetime.datetime, int]


def list_events(*, limit: int, **filters: Any) -> list[EventRow]:
    """Events in (occur_time, seq) order, or its reverse; see events_query for the filters.
    Compiled once per shape (which filters are given), then run with their values."""
    given = [filters.get(name) for name in _EVENT_FILTERS]
    params: list[object] = [value for value in given if value]
    params += [*(filters.get("after") or ()), limit]
    shape = "list_events" + "".join("01"[bool(value)] for value in given)
    shape += "01"[bool(filters.get("after"))] + "01"[bool(filters.get("newest_first"))]
    return prepared(
        shape,
        lambda: events_query(**filters).select(*EVENT_COLUMNS).limit(limit),
        params,
        event_row,
    )


# The filters of events_query whose values are parameters, in the order they appear in its SQL
# (an empty or zero value is no filter).
_EVENT_FILTERS = (
    "session_id",
    "category",
    "name",
    "application_id",
    "occur_time_start",
    "occur_time_end",
)


def events_query(
    *,
    after: EventKey | None = None,
    session_id: str = "",
    category: str = "",
    name: str = "",
    application_id: int = 0,
    occur_time_start: datetime.datetime | None = None,
    occur_time_end: datetime.datetime | None = None,
    newest_first: bool = False,
) -> peewee.ModelSelect[Event]:
    """The events query, after the keyset position `after`: each combination of filters is
    served by an index that also gives the order (tests/test_events.py checks the plans)."""
    query = _matching(Event.select(), session_id, category, name, application_id)
    if occur_time_start is not None:
        query = query.where(Event.occur_time >= occur_time_start)
    if occur_time_end is not None:
        query = query.where(Event.occur_time < occur_time_end)
    position = peewee.Tuple(Event.occur_time, Event.seq)
    if after is not None:
        query = query.where(
            position < peewee.Tuple(*after) if newest_first else position > peewee.Tuple(*after)
        )
    if newest_first:
        return query.order_by(Event.occur_time.desc(), Event.seq.desc())
    return query.order_by(Event.occur_time, Event.seq)


def _matching(
    query: peewee.ModelSelect[Event],
    session_id: str,
    category: str,
    name: str,
    application_id: int,
) -> peewee.ModelSelect[Event]:
    """query, of the events matching these filters (each unless empty)."""
    if session_id:
        query = query.where(Event.session_id == session_id)
    if category:
        query = query.where(Event.category == category)
    if name:
        query = query.where(Event.name == name)
    if application_id:
        query = query.where(Event.application_id == application_id)
    return query


class ReplayState(enum.IntEnum):
    """What the latest replay of a rejected event did: the values of quartet.events.v1's
    ReplayState, which `RejectedEvent.replay_state` holds (NULL for NOT_REPLAYED)."""

    NOT_REPLAYED = 1
    STORED = 2
    STILL_REJECTED = 3
    ALREADY_STORED = 4


def list_rejected(*, limit: int, **filters: Any) -> list[RejectedEvent]:
    """Rejected events newest first; see rejected_query for the filters."""
    return list(rejected_query(**filters).limit(limit))


def rejected_query(
    *,
    after: tuple[datetime.datetime, int] | None = None,
    reason: str = "",
    application_id: int = 0,
    reject_time_start: datetime.datetime | None = None,
    reject_time_end: datetime.datetime | None = None,
    replay_state: int = 0,
) -> peewee.ModelSelect[RejectedEvent]:
    """Rejected events newest first, after the keyset position `after`. With a reason, the rows
    come from that reason's range of RejectedEventReason's key, already in this order; the
    application and replay state filters ride on either (tests/test_events.py checks the plans).
    A replay_state of 0 is any."""
    query = RejectedEvent.select()
    time: peewee.Field = RejectedEvent.reject_time
    key: peewee.Field = RejectedEvent.id
    if reason:
        query = query.join(
            RejectedEventReason, on=(RejectedEventReason.rejected_id == RejectedEvent.id)
        ).where(RejectedEventReason.reason == reason)
        time, key = RejectedEventReason.reject_time, RejectedEventReason.rejected_id
    if application_id:
        query = query.where(RejectedEvent.application_id == application_id)
    if replay_state == ReplayState.NOT_REPLAYED:
        query = query.where(RejectedEvent.replay_state.is_null())
    elif replay_state:
        query = query.where(RejectedEvent.replay_state == replay_state)
    if reject_time_start is not None:
        query = query.where(time >= reject_time_start)
    if reject_time_end is not None:
        query = query.where(time < reject_time_end)
    if after is not None:
        query = query.where(peewee.Tuple(time, key) < peewee.Tuple(*after))
    return query.order_by(time.desc(), key.desc())


def store_replayed(
    replayed: Sequence[tuple[int, NewEvent | list[dict[str, str]]]],
    now: datetime.datetime,
    id_taken: dict[str, str],
) -> list[ReplayState]:
    """Record a replay of rejected events, in one transaction: each (rejected event id, the event
    to store or the problems found again). Stores the events whose id is new; an event whose id
    its application's stored event has is ALREADY_STORED, one whose id another application's
    event has STILL_REJECTED with the violation `id_taken`. Marks each rejected event with its
    outcome, which it returns in order."""
    with db.atomic():
        new_events = [item for _, item in replayed if isinstance(item, NewEvent)]
        inserted = store(new_events, [], now)
        known = senders({e.id for e in new_events if e.id not in inserted})
        states: list[ReplayState] = []
        problems: list[tuple[int, str]] = []
        for rejected_id, item in replayed:
            if isinstance(item, NewEvent):
                if item.id in inserted:
                    inserted.discard(item.id)  # a second copy in the same chunk is a duplicate
                    known[item.id] = item.application_id
                    states.append(ReplayState.STORED)
                    continue
                if known.get(item.id, item.application_id) == item.application_id:
                    states.append(ReplayState.ALREADY_STORED)
                    continue
                item = [id_taken]
            states.append(ReplayState.STILL_REJECTED)
            problems.append((rejected_id, json.dumps(item)))
        for state in (ReplayState.STORED, ReplayState.ALREADY_STORED):
            ids = [r for (r, _), s in zip(replayed, states, strict=True) if s == state]
            if ids:
                RejectedEvent.update(
                    replay_state=state, replay_time=now, replay_violations=None
                ).where(RejectedEvent.id.in_(ids)).execute()
        for rejected_id, violations in problems:
            RejectedEvent.update(
                replay_state=ReplayState.STILL_REJECTED,
                replay_time=now,
                replay_violations=violations,
            ).where(RejectedEvent.id == rejected_id).execute()
    return states


# The time buckets events are counted in: each an SQL expression of occur_time giving the start
# of its bucket (a timestamp on PostgreSQL; on SQLite the text Peewee stores times as), and the
# bucket's length. From this fixed table only: the expressions are SQL, not parameters.
BUCKETS: dict[str, tuple[str, str, datetime.timedelta]] = {
    "minute": (
        "date_trunc('minute', occur_time)",
        "strftime('%Y-%m-%d %H:%M:00', occur_time)",
        datetime.timedelta(minutes=1),
    ),
    "hour": (
        "date_trunc('hour', occur_time)",
        "strftime('%Y-%m-%d %H:00:00', occur_time)",
        datetime.timedelta(hours=1),
    ),
    "day": (
        "date_trunc('day', occur_time)",
        "strftime('%Y-%m-%d 00:00:00', occur_time)",
        datetime.timedelta(days=1),
    ),
}
CountKey = tuple[datetime.datetime, str, str]


def count_query(
    bucket: str,
    start: datetime.datetime,
    end: datetime.datetime,
    *,
    application_id: int = 0,
    session_id: str = "",
    after: CountKey | None = None,
) -> peewee.ModelSelect[Event]:
    """The events counted by (bucket start, category, name), in that order, of those that occurred
    in [start, end), after the keyset position `after`. The database reads only the range's rows,
    by the index on occur_time (or, for a session, its index); a page after `after` reads from
    that bucket on (tests/test_event_counts.py checks the plans)."""
    postgres, sqlite, _ = BUCKETS[bucket]
    expression = peewee.SQL(postgres if isinstance(db.obj, peewee.PostgresqlDatabase) else sqlite)
    if after is not None:
        start = max(start, after[0])
    query = _matching(
        Event.select(expression, Event.category, Event.name, peewee.fn.COUNT(peewee.SQL("*"))),
        session_id,
        "",
        "",
        application_id,
    ).where((Event.occur_time >= start) & (Event.occur_time < end))
    query = query.group_by(expression, Event.category, Event.name)
    if after is not None:
        first = after[0] if isinstance(db.obj, peewee.PostgresqlDatabase) else str(after[0])
        query = query.having(
            peewee.Tuple(expression, Event.category, Event.name)
            > peewee.Tuple(first, after[1], after[2])
        )
    return query.order_by(expression, Event.category, Event.name)


def count_events(
    bucket: str, start: datetime.datetime, end: datetime.datetime, *, limit: int, **filters: Any
) -> list[tuple[datetime.datetime, str, str, int]]:
    """Up to limit counts of count_query: (bucket start, category, name, count)."""
    rows: Any = count_query(bucket, start, end, **filters).limit(limit).tuples()
    return [
        (when if isinstance(when, datetime.datetime) else datetime.datetime.fromisoformat(when),
         category, name, count)
        for when, category, name, count in rows
    ]  # fmt: skip


# The keyset position of an exported event: its occur_time as the driver gives it (a datetime on
# PostgreSQL, the stored text on SQLite, which compares as that text) and its seq.
ExportKey = tuple[Any, int]


def export_events(*, limit: int, after: ExportKey | None, **filters: Any) -> list[tuple[Any, ...]]:
    """The next events of an export after `after` (see events_query for the filters), as the
    database driver's tuples of EVENT_COLUMNS: an export reads millions of rows, and models (or
    even Peewee's conversion of each value) would cost it several times the query's own time."""
    sql, params = events_query(after=after, **filters).select(*EVENT_COLUMNS).limit(limit).sql()
    return list(db.obj.execute_sql(sql, params).fetchall())


# An event as a line of NDJSON, spelled by the database: the protobuf JSON mapping's field
# names, times in RFC 3339 UTC, data as stored (JSON text holds line feeds between its tokens
# only, so they become spaces). Python formatting each line cost 4-5 times the query.
_NDJSON_LINE = {
    "postgresql": """'{"id":"' || id || '","sessionId":"' || session_id
        || '","category":' || to_json(category)::text || ',"name":' || to_json(name)::text
        || ',"data":' || replace(data, E'\\n', ' ')
        || ',"occurTime":"' || to_char(occur_time, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '","applicationId":' || application_id
        || ',"receiveTime":"' || to_char(receive_time, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '","schemaVersion":' || schema_version || E'}\\n'""",
    "sqlite": """'{"id":"' || id || '","sessionId":"' || session_id
        || '","category":' || json_quote(category) || ',"name":' || json_quote(name)
        || ',"data":' || replace(data, char(10), ' ')
        || ',"occurTime":"' || replace(occur_time, ' ', 'T')
        || 'Z","applicationId":' || application_id
        || ',"receiveTime":"' || replace(receive_time, ' ', 'T')
        || 'Z","schemaVersion":' || schema_version || '}' || char(10)""",
}


def export_lines(*, limit: int, after: ExportKey | None, **filters: Any) -> list[tuple[Any, ...]]:
    """export_events as (NDJSON line, id, occur_time, seq) tuples, the line built by the
    database (see _NDJSON_LINE)."""
    dialect = "postgresql" if isinstance(db.obj, peewee.PostgresqlDatabase) else "sqlite"
    line = peewee.SQL(_NDJSON_LINE[dialect])
    query = events_query(after=after, **filters).select(line, Event.id, Event.occur_time, Event.seq)
    sql, params = query.limit(limit).sql()
    return list(db.obj.execute_sql(sql, params).fetchall())


def export_position(event_id: str) -> ExportKey:
    """The export position of the stored event with this id; RecordNotFound if none."""
    sql, params = by_ids(Event.select(Event.occur_time, Event.seq), [event_id]).sql()
    row = db.obj.execute_sql(sql, params).fetchone()
    if row is None:
        raise RecordNotFound("event", event_id)
    return row[0], row[1]


def latest_event_types() -> list[EventType]:
    """Every event type at its latest version, ordered by category and name."""
    return list(event_types_query())


def latest_event_types_named(named: Sequence[tuple[str, str]]) -> list[EventType]:
    """The latest version of each of these event types (category, name) that exists, in one
    query. SQLite compares no lists of row values, so the query asks for every pair of the
    categories and names, a few more rows at most, and the unasked ones are dropped here."""
    if not named:
        return []
    categories = sorted({category for category, _ in named})
    names = sorted({name for _, name in named})
    query = event_types_query().where(
        EventType.category.in_(categories) & EventType.name.in_(names)
    )
    wanted = set(named)
    return [row for row in query if (row.category, row.name) in wanted]


def list_event_types(*, limit: int, after: tuple[str, str] | None = None) -> list[EventType]:
    """Up to limit event types at their latest version; see event_types_query."""
    return list(event_types_query(after=after).limit(limit))


def event_types_query(*, after: tuple[str, str] | None = None) -> peewee.ModelSelect[EventType]:
    """The latest version of each event type, ordered by category and name, after the keyset
    position `after` (a category and name). The versions are read in the order of the unique
    index on (category, name, version), keeping each that no later version follows, so that a
    page reads from its position on and sorts nothing (tests/test_event_type_pages.py checks the
    plans); a join with the grouped maximum would be sorted whole for each page on SQLite."""
    newer = EventType.alias("newer")
    query = EventType.select().where(
        ~peewee.fn.EXISTS(
            newer.select(newer.id).where(
                (newer.category == EventType.category)
                & (newer.name == EventType.name)
                & (newer.version > EventType.version)
            )
        )
    )
    if after is not None:
        query = query.where(peewee.Tuple(EventType.category, EventType.name) > peewee.Tuple(*after))
    return query.order_by(EventType.category, EventType.name)


# Concurrent registrations of one type that all lose the race, one after the other, this often.
_REGISTRATION_ATTEMPTS = 50


def add_event_type(category: str, name: str, schema: dict[str, Any]) -> EventType:
    """Register schema as the next version of the type (version 1 for a new type).

    Concurrent registrations of a type may read the same latest version (on PostgreSQL, whose
    transactions see what others committed before each statement; SQLite has one writer at a
    time): the unique index on (category, name, version) lets one of them insert it and makes
    the others fail, and those try again, now reading the winner's version.
    """
    for attempt in range(1, _REGISTRATION_ATTEMPTS + 1):
        try:
            with db.atomic():
                current = (
                    EventType.select(peewee.fn.MAX(EventType.version))
                    .where((EventType.category == category) & (EventType.name == name))
                    .scalar()
                )
                event_type: EventType = EventType.create(
                    category=category,
                    name=name,
                    version=(current or 0) + 1,
                    schema=json.dumps(schema),
                )
                changes.notify(changes.EVENT_TYPES, f"{category}/{name}")
                return event_type
        except peewee.IntegrityError:
            if attempt == _REGISTRATION_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


# A tail reads at most this many seq values past its cursor at a time, so that one read costs a
# bounded range of the primary key, however far behind the tail resumes.
TAIL_WINDOW = 5000
# Horizons a tail keeps waiting on (see TailCursor); a newer one replaces the oldest past this.
_TAIL_HORIZONS = 64


@dataclass(slots=True)
class TailCursor:
    """Where a tail stands in the store order (`seq`): every matching event up to `seq` was
    delivered, and no event can appear below it any more.

    On PostgreSQL, seq values are taken when a row is inserted but become visible when its
    transaction commits, so a transaction of another worker may commit seq 10 after seq 11 was
    read; reading past a gap could skip 10. `horizons` holds (top, xids): every seq value up to
    `top` not visible when it was read belongs to one of the transactions `xids` (in progress
    then), or to no event ever (a rolled back write, or an id already stored, which uses a value
    up). Once those transactions are over, everything up to `top` is final."""

    seq: int
    horizons: list[tuple[int, frozenset[int]]] = field(default_factory=list)


def tail_cursor(after_event_id: str = "") -> TailCursor:
    """A cursor after the event with this id (RecordNotFound if none), or after every event
    stored so far."""
    if after_event_id:
        row = by_ids(Event.select(Event.seq), [after_event_id]).first()
        if row is None:
            raise RecordNotFound("event", after_event_id)
        return TailCursor(row.seq)
    return TailCursor(Event.select(peewee.fn.MAX(Event.seq)).scalar() or 0)


def tail_events(
    cursor: TailCursor,
    *,
    limit: int,
    session_id: str = "",
    category: str = "",
    name: str = "",
    application_id: int = 0,
) -> tuple[list[Event], bool]:
    """The next matching events after cursor in store order (at most limit), moving the cursor
    past them; and whether more follow at once (the cursor is behind what is stored)."""
    end = cursor.seq + TAIL_WINDOW
    final, last = _final_seq(cursor, end)
    if final <= cursor.seq:
        return [], False
    query = _matching(
        Event.select().where((Event.seq > cursor.seq) & (Event.seq <= final)),
        session_id,
        category,
        name,
        application_id,
    )
    rows = list(query.order_by(Event.seq).limit(limit))
    cursor.seq = rows[-1].seq if len(rows) == limit else final
    return rows, len(rows) == limit or (final == end and last > end)


def _final_seq(cursor: TailCursor, end: int) -> tuple[int, int]:
    """The highest seq up to `end` up to which every event is visible now or never will be, and
    the highest seq visible (beyond `end` too)."""
    database = db.obj
    last = Event.select(peewee.fn.MAX(Event.seq)).scalar() or 0
    if not isinstance(database, peewee.PostgresqlDatabase):
        # SQLite has one writer at a time, whose rows take seq values above every committed
        # one: what is visible is final.
        return min(last, end), last
    # One statement, one snapshot: the transactions in progress, and the rows after the cursor.
    # A row's seq is taken after its transaction has an id (the writer COPYs to a temporary table
    # first), and before the rows above it were committed and read: so a value up to `top` not
    # visible here belongs to a transaction in this snapshot's list, or to no event.
    snapshot, top, count = database.execute_sql(  # type: ignore[no-untyped-call]
        "SELECT pg_current_snapshot()::text, max(seq), count(*) FROM event"
        " WHERE seq > %s AND seq <= %s",
        (cursor.seq, end),
    ).fetchone()
    if top is None:
        return cursor.seq, last
    running = frozenset(int(xid) for xid in snapshot.split(":")[2].split(",") if xid)
    if count == top - cursor.seq:  # no gap: everything up to top is visible
        cursor.horizons = [h for h in cursor.horizons if h[0] > top]
        return top, last
    final = cursor.seq
    waiting = []
    for horizon, xids in cursor.horizons:
        if xids.isdisjoint(running):  # all over (their ids are older than this snapshot's)
            final = max(final, horizon)
        else:
            waiting.append((horizon, xids))
    waiting = [h for h in waiting if h[0] > final]
    if not waiting or waiting[-1][0] < top:
        waiting.append((top, running))
    cursor.horizons = waiting[-_TAIL_HORIZONS:]
    return final, last
