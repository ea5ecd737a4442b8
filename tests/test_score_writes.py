"""Scores created together share one transaction (group commit), each in a savepoint of its own:
a score refused for its own reason (an unknown owner, a request_id another owner used) fails
alone and leaves nothing behind, and the others of its transaction are stored."""

from __future__ import annotations

from collections.abc import Iterator

import peewee
import pytest

from quartet import storage
from quartet.storage import accounts, scores
from quartet.storage.scores import NewScore, Score


@pytest.fixture
def database(database_url: str) -> Iterator[peewee.Database]:
    database = storage.open_database(database_url)
    storage.bind(database)
    try:
        with database.connection_context():
            yield database
    finally:
        storage.close(database)


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
