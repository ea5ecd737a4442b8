"""Events that grow with time: PostgreSQL's week partitions, migration 0009, and retention."""

from __future__ import annotations

import concurrent.futures
import datetime
import threading
import time
from collections.abc import Iterator

import peewee
import pytest

from quartet import storage
from quartet.server.settings import Settings, SettingsError
from quartet.server.testing import running_server
from quartet.storage import events, partitions, retention
from quartet.storage.base import utcnow
from tests.conftest import SECRET

NOW = utcnow().replace(microsecond=0)
DAY = datetime.timedelta(days=1)
AHEAD = datetime.timedelta(days=14)


def new_event(event_id: str, occur_time: datetime.datetime, session: str = "s1") -> events.NewEvent:
    return events.NewEvent(
        id=event_id,
        application_id=1,
        session_id=session,
        category="page interaction",
        name="pageview",
        data='{"host": "example.com", "path": "/"}',
        occur_time=occur_time,
        schema_version=1,
    )


def rejection(reason: str) -> events.Rejection:
    violation = {"field": "data", "description": "is wrong", "reason": reason}
    return events.Rejection(application_id=1, event="{}", violations=[violation])


def store(
    database: peewee.Database,
    new: list[events.NewEvent],
    rejected: list[events.Rejection] | None = None,
    now: datetime.datetime = NOW,
) -> set[str]:
    with database.connection_context(), database.atomic():
        return events.store(new, rejected or [], now)


@pytest.fixture
def database(database_url: str) -> Iterator[peewee.Database]:
    """The migrated test database, bound, without a server."""
    opened = storage.open_database(database_url)
    storage.bind(opened)
    yield opened
    storage.close(opened)


def stored(database: peewee.Database) -> list[tuple[str, datetime.datetime]]:
    with database.connection_context():
        return [(e.id, e.occur_time) for e in events.Event.select().order_by(events.Event.seq)]


def partition_names(database: peewee.Database) -> set[str]:
    with database.connection_context(), database.cursor() as cursor:  # type: ignore[no-untyped-call]
        return set(partitions.partitions(cursor))


# --- migration 0009 -----------------------------------------------------------------------------


def test_upgrading_a_database_holding_events_keeps_every_row(empty_database_url: str) -> None:
    database = storage.open_database(empty_database_url)
    storage.bind(database)
    try:
        storage.migrate(database, target="0008_account_security")
        rows = [
            ("old", NOW - 700 * DAY),
            ("last-month", NOW - 30 * DAY),
            ("today", NOW),
            ("ahead", NOW + datetime.timedelta(seconds=30)),
        ]
        insert = (
            "INSERT INTO event (id, application_id, session_id, category, name, data, occur_time,"
            " receive_time, schema_version) VALUES (?, 1, 's1', 'page interaction', 'pageview',"
            " '{}', ?, ?, 1)"
        ).replace("?", database.param)
        with database.connection_context():
            for event_id, occur_time in rows:
                database.execute_sql(insert, (event_id, occur_time, NOW))  # type: ignore[no-untyped-call]
        # Later migrations go on top; the one under test comes first.
        assert storage.migrate(database)[0] == "0009_event_partitions"
        assert stored(database) == rows
        with database.connection_context():
            assert [e.seq for e in events.Event.select().order_by(events.Event.seq)] == [1, 2, 3, 4]
            assert events.get_event("last-month").occur_time == NOW - 30 * DAY
            found = events.list_events(
                limit=10, occur_time_start=NOW - 31 * DAY, occur_time_end=NOW + DAY
            )
            assert [e.id for e in found] == ["last-month", "today", "ahead"]
            assert events.senders({"old", "ahead", "never"}) == {"old": 1, "ahead": 1}
        # A resend, even with another time, is still recognised; a new event goes on from seq 4.
        assert store(database, [new_event("old", NOW), new_event("new", NOW)]) == {"new"}
        with database.connection_context():
            assert events.get_event("new").seq == 5
        if isinstance(database, peewee.PostgresqlDatabase):
            week = partitions.name(partitions.period_start(NOW))
            assert {partitions.BEFORE, week} <= partition_names(database)
    finally:
        storage.close(database)


# --- partitions (PostgreSQL) --------------------------------------------------------------------


# Partitions are PostgreSQL's: these run there alone (and fail without it, as conftest says).
postgresql_only = pytest.mark.parametrize("backend", ["postgresql"])


@pytest.fixture
def partitioned(database: peewee.Database) -> peewee.Database:
    assert isinstance(database, peewee.PostgresqlDatabase)
    return database


@postgresql_only
def test_a_time_range_query_reads_only_the_partitions_of_its_range(
    partitioned: peewee.Database,
) -> None:
    """EXPLAIN of a ListEvents query names the partitions of its weeks, and no other."""
    weeks = [partitions.period_start(NOW) + partitions.PERIOD * n for n in range(4)]
    store(partitioned, [new_event(f"e{n}", week + DAY) for n, week in enumerate(weeks)])
    start, end = weeks[1] + DAY, weeks[2] + DAY  # within the next week and the one after
    query = events.events_query(session_id="s1", occur_time_start=start, occur_time_end=end)
    sql, params = query.limit(50).sql()
    with partitioned.connection_context():
        plan = "\n".join(row[0] for row in partitioned.execute_sql(f"EXPLAIN {sql}", params))  # type: ignore[no-untyped-call]
    read = {name for name in partition_names(partitioned) if name in plan}
    assert read == {partitions.name(weeks[1]), partitions.name(weeks[2])}, plan


@postgresql_only
def test_an_event_is_found_by_id_in_its_partition_alone(partitioned: peewee.Database) -> None:
    weeks = [partitions.period_start(NOW) + partitions.PERIOD * n for n in range(3)]
    store(partitioned, [new_event(f"e{n}", week + DAY) for n, week in enumerate(weeks)])
    sql, params = events.by_ids(events.Event.select(), ["e1"]).sql()
    with partitioned.connection_context():
        partitioned.execute_sql("SET enable_hashjoin = off")  # type: ignore[no-untyped-call]
        plan = "\n".join(
            row[0]
            for row in partitioned.execute_sql(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}", params)  # type: ignore[no-untyped-call]
        )
        partitioned.execute_sql("RESET ALL")  # type: ignore[no-untyped-call]
    executed = [line for line in plan.splitlines() if " on event_" in line and "never" not in line]
    assert [partitions.name(weeks[1]) in line for line in executed if "event_ids" not in line] == [
        True
    ], plan


@postgresql_only
def test_events_of_weeks_without_a_partition_get_one(partitioned: peewee.Database) -> None:
    """Weeks retention dropped, or far ahead (a large clock skew), are made as events need them;
    times before the partitioned weeks go to event_before."""
    far = NOW + 60 * DAY
    sent = [new_event("far", far), new_event("old", NOW - 3000 * DAY), new_event("now", NOW)]
    assert store(partitioned, sent) == {"far", "old", "now"}
    assert partitions.name(partitions.period_start(far)) in partition_names(partitioned)
    with partitioned.connection_context():
        homes = partitioned.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT id, tableoid::regclass::text FROM event"
        ).fetchall()
    assert dict(homes)["old"] == partitions.BEFORE
    # The same id, in another week, is a resend.
    assert store(partitioned, [new_event("far", NOW - 20 * DAY)]) == set()
    assert sorted(e for e, _ in stored(partitioned)) == ["far", "now", "old"]


@postgresql_only
def test_writers_needing_the_same_new_week_make_it_once(partitioned: peewee.Database) -> None:
    week = NOW + 90 * DAY
    barrier = threading.Barrier(4)

    def send(n: int) -> set[str]:
        barrier.wait()
        return store(partitioned, [new_event(f"w{n}-{i}", week) for i in range(50)])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        inserted = set().union(*pool.map(send, range(4)))
    assert len(inserted) == 200
    assert partitions.name(partitions.period_start(week)) in partition_names(partitioned)


@postgresql_only
def test_partitions_are_made_ahead_and_twice_is_harmless(partitioned: peewee.Database) -> None:
    retention.maintain(NOW, days=0, ahead=AHEAD)
    retention.maintain(NOW, days=0, ahead=AHEAD)
    names = partition_names(partitioned)
    for week in range(3):
        assert partitions.name(partitions.period_start(NOW + partitions.PERIOD * week)) in names


# --- retention ----------------------------------------------------------------------------------


def test_retention_removes_what_is_older_than_its_days(database: peewee.Database) -> None:
    # Retention counts from its `now`: a later one puts old events in week partitions (on
    # PostgreSQL every time before the test database was migrated is in event_before).
    now = NOW + 200 * DAY
    old, kept = now - 100 * DAY, now - 2 * DAY
    store(
        database,
        [new_event(f"old{n}", old + n * datetime.timedelta(minutes=1)) for n in range(2500)]
        + [new_event("kept", kept), new_event("ancient", NOW - 5000 * DAY)],
        [rejection("FIELD_INVALID"), rejection("EVENT_TOO_LARGE")],
        now=old,
    )
    store(database, [], [rejection("FIELD_INVALID")], now=kept)
    assert not retention.maintain(now, days=0, ahead=AHEAD)  # 0 keeps them forever
    assert len(stored(database)) == 2502

    removed = retention.maintain(now, days=30, ahead=AHEAD)
    assert [e for e, _ in stored(database)] == ["kept"]
    assert removed.rejected == 2
    with database.connection_context():
        assert [r.reject_time for r in events.list_rejected(limit=10)] == [kept]
        assert [r.reason for r in events.RejectedEventReason.select()] == ["FIELD_INVALID"]
        assert events.list_rejected(limit=10, reason="EVENT_TOO_LARGE") == []
        if isinstance(database, peewee.PostgresqlDatabase):
            assert [i.id for i in events.EventId.select()] == ["kept"]
            # Each week dropped whole (and any other week before the cutoff).
            last = old + 2500 * datetime.timedelta(minutes=1)
            weeks = {partitions.name(partitions.period_start(t)) for t in (old, last)}
            assert weeks <= set(removed.partitions)
            assert not weeks & partition_names(database)
            assert removed.events == 1  # "ancient", from event_before
        else:
            assert removed.events == 2501
    # What is gone may come again (a resend of an expired event): it is stored anew.
    assert store(database, [new_event("old0", old)]) == {"old0"}
    assert not retention.maintain(now, days=30, ahead=AHEAD).rejected


def test_the_server_applies_retention(database_url: str) -> None:
    opened = storage.open_database(database_url)
    storage.bind(opened)
    store(opened, [new_event("old", NOW - 40 * DAY), new_event("new", NOW)])
    storage.close(opened)
    settings = Settings(
        database_url=database_url,
        grace_seconds=0,
        db_threads=2,
        secret=SECRET,
        event_retention_days=30,
    )
    with running_server(settings):
        deadline = time.monotonic() + 30
        while [e for e, _ in stored(storage.base.db.obj)] != ["new"]:
            assert time.monotonic() < deadline, stored(storage.base.db.obj)
            time.sleep(0.1)


def test_retention_days_must_not_be_negative() -> None:
    with pytest.raises(SettingsError, match="QUARTET_EVENT_RETENTION_DAYS"):
        Settings.from_env({"QUARTET_EVENT_RETENTION_DAYS": "-1"})
    assert Settings.from_env({"QUARTET_EVENT_RETENTION_DAYS": "90"}).event_retention_days == 90
