"""The fast paths of issue 18 keep behaviour.

Queries compiled once (`storage.base.prepared`): every shape of the score and event listings,
and the score lookup, answer exactly what Peewee's own query answers, on both databases. SQLite
reads that run on the event loop (`DatabaseRunner.read`) keep the deadline and the errors. Scores
created together share one transaction (group commit), each in a savepoint of its own: a score
refused for its own reason (an unknown owner, a request_id another owner used) fails alone and
leaves nothing behind, and the others of its transaction are stored."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from typing import TypeVar

import peewee
import pytest

from quartet import storage
from quartet.storage import accounts, applications, base, events, scores
from quartet.storage.scores import NewScore, Score

Row = TypeVar("Row", scores.ScoreRow, events.EventRow)


def row_of(row_type: type[Row], model: peewee.Model) -> Row:
    """What Peewee's own model of a row holds, as the row the fast path reads from the cursor."""
    return row_type(*(getattr(model, name) for name in row_type._fields))


@pytest.fixture
def database(database_url: str) -> Iterator[peewee.Database]:
    database = storage.open_database(database_url)
    storage.bind(database)
    try:
        with database.connection_context():
            yield database
    finally:
        storage.close(database)


def test_every_listing_shape_answers_as_peewee_does(database: peewee.Database) -> None:
    owner = accounts.create_account("owner@example.com", None, "user").id
    for i in range(30):
        scores.create_score(
            input_value=i, value=i + 1, user_id=owner if i % 2 else None, request_id=None
        )
    rows = list(Score.select().order_by(Score.id))
    middle = rows[15]
    values = {
        "score_greater_than": 3.0,
        "user_id": owner,
        "create_time_start": rows[2].create_time,
        "create_time_end": rows[28].create_time,
        "after": (middle.create_time, middle.id),
    }
    for chosen in itertools.product([False, True], repeat=len(values)):
        filters = {
            name: value for (name, value), on in zip(values.items(), chosen, strict=True) if on
        }
        expected = [
            row_of(scores.ScoreRow, row)
            for row in scores._list_query(  # Peewee's query, compiled for this call
                7,
                filters.get("after"),  # type: ignore[arg-type]
                filters.get("score_greater_than"),  # type: ignore[arg-type]
                filters.get("user_id"),  # type: ignore[arg-type]
                filters.get("create_time_start"),  # type: ignore[arg-type]
                filters.get("create_time_end"),  # type: ignore[arg-type]
                "",
            )
        ]
        first = scores.list_scores(limit=7, **filters)  # type: ignore[arg-type]
        again = scores.list_scores(limit=7, **filters)  # type: ignore[arg-type]
        assert first == again == expected, filters
    compiled = {shape for (shape, kind), sql in base._statements.items() if sql is not None}
    assert len({s for s in compiled if s.startswith("list_scores")}) == 2 ** len(values)


def test_every_event_listing_shape_answers_as_peewee_does(database: peewee.Database) -> None:
    apps = [applications.create_application(f"app{i}", f"key{i}", "hash")[0].id for i in (1, 2)]
    start = datetime.datetime(2024, 1, 1)
    sessions = [str(uuid.uuid4()) for _ in range(2)]
    events.Event.insert_many(
        [
            {
                "id": str(uuid.uuid4()),
                "application_id": apps[i % 2],
                "session_id": sessions[i % 3 % 2],
                "category": "page interaction",
                "name": ("pageview", "click")[i % 5 % 2],
                "data": json.dumps({"i": i}),
                "occur_time": start + datetime.timedelta(minutes=i // 2),
                "receive_time": start,
                "schema_version": 1,
            }
            for i in range(40)
        ]
    ).execute()
    middle = list(events.events_query().limit(20))[-1]
    values = {
        "session_id": sessions[0],
        "category": "page interaction",
        "name": "pageview",
        "application_id": apps[1],
        "occur_time_start": start + datetime.timedelta(minutes=2),
        "occur_time_end": start + datetime.timedelta(minutes=17),
        "after": (middle.occur_time, middle.seq),
        "newest_first": True,
    }
    for chosen in itertools.product([False, True], repeat=len(values)):
        filters = {
            name: value for (name, value), on in zip(values.items(), chosen, strict=True) if on
        }
        if "name" in filters and "category" not in filters:
            continue  # the service refuses a name without its category
        expected = [
            row_of(events.EventRow, row)
            for row in events.events_query(**filters).limit(6)  # type: ignore[arg-type]
        ]
        first = events.list_events(limit=6, **filters)
        again = events.list_events(limit=6, **filters)
        assert first == again == expected, filters
    compiled = [shape for (shape, kind), sql in base._statements.items() if sql is not None]
    assert len({s for s in compiled if s.startswith("list_events")}) == 3 * 2**6


def test_score_lookup_compiled_once_answers_as_peewee_does(database: peewee.Database) -> None:
    stored = scores.create_score(input_value=2.5, value=3.5, user_id=None, request_id="r1")
    for _ in range(2):  # compiled, then from the cache
        found = scores.find_score(stored.id)
        assert found is not None
        assert found == row_of(scores.ScoreRow, Score.get_by_id(stored.id))
        assert scores.find_score(stored.id + 1000) is None
    with pytest.raises(storage.RecordNotFound):
        scores.get_score(stored.id + 1000)


def test_reads_keep_the_deadline_and_count_an_unavailable_database(database_url: str) -> None:
    database = storage.open_database(database_url)
    storage.bind(database)
    runner = storage.DatabaseRunner(database, 1)

    async def read_past_deadline() -> None:
        storage.deadline.set(time.monotonic() - 1)
        await runner.read(scores.find_score, 1)

    def broken() -> None:
        raise storage.DatabaseUnavailable("gone")

    try:
        assert asyncio.run(runner.read(scores.find_score, 1)) is None
        with pytest.raises(storage.DeadlineExceeded):
            asyncio.run(read_past_deadline())
        with pytest.raises(storage.DatabaseUnavailable):
            asyncio.run(runner.read(broken))
        assert runner.unavailable == 1
    finally:
        runner.close()


def test_a_refused_score_fails_alone_in_its_transaction(database: peewee.Database) -> None:
    owner = accounts.create_account("owner@example.com", None, "user").id
    other = accounts.create_account("other@example.com", None, "user").id
    batch = [
        NewScore(1.0, 2.0, owner, "first"),
        NewScore(3.0, 4.0, owner + other + 100, None),  # no such account
        NewScore(5.0, 6.0, other, "first"),  # the request_id is the owner's
        NewScore(7.0, 8.0, owner, "first"),  # a repeat: the first score again
        NewScore(9.0, 10.0, None, None),
    ]
    with database.atomic():  # as the writer runs it: one transaction
        outcomes = scores.write_scores(batch)
    first, unknown, taken, repeat, last = outcomes
    assert isinstance(first, Score) and first.value == 2.0
    assert isinstance(unknown, storage.RecordNotFound)
    assert isinstance(taken, storage.RecordExists)
    assert isinstance(repeat, Score) and repeat.id == first.id
    assert isinstance(last, Score) and last.value == 10.0
    stored = sorted((s.input_value, s.user_id) for s in Score.select())
    assert stored == [(1.0, owner), (9.0, None)]
