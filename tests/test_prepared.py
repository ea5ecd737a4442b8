"""Queries compiled once (`storage.base.prepared`): every shape of the score listing, and the
score lookup, answer exactly what Peewee's own query answers, on both databases; and SQLite
reads that run on the event loop (`DatabaseRunner.read`) keep the deadline and the errors."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import peewee
import pytest

from quartet import storage
from quartet.storage import accounts, base, scores
from quartet.storage.scores import Score


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
            row.__data__
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
        first = [row.__data__ for row in scores.list_scores(limit=7, **filters)]  # type: ignore[arg-type]
        again = [row.__data__ for row in scores.list_scores(limit=7, **filters)]  # type: ignore[arg-type]
        assert first == again == expected, filters
    compiled = {shape for (shape, kind), sql in base._statements.items() if sql is not None}
    assert len({s for s in compiled if s.startswith("list_scores")}) == 2 ** len(values)


def test_score_lookup_compiled_once_answers_as_peewee_does(database: peewee.Database) -> None:
    stored = scores.create_score(input_value=2.5, value=3.5, user_id=None, request_id="r1")
    for _ in range(2):  # compiled, then from the cache
        found = scores.find_score(stored.id)
        assert found is not None
        assert found.__data__ == Score.get_by_id(stored.id).__data__
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
