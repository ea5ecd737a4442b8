"""The group-commit writer: what is submitted together shares a transaction; an idle writer
writes at once, a busy one waits a moment for the submissions right behind the first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest

from quartet import storage


@pytest.fixture
def database(tmp_path: Path) -> Iterator[peewee.Database]:
    database = storage.open_database(f"sqlite:///{tmp_path / 'writer.db'}")
    with database.connection_context():
        database.execute_sql("CREATE TABLE item (value INTEGER)")  # type: ignore[no-untyped-call]
    yield database
    storage.close(database)


def writer(database: peewee.Database, delay: float) -> storage.BatchWriter[int, int]:
    def write(items: list[int]) -> list[int]:
        database.cursor().executemany("INSERT INTO item VALUES (?)", [(i,) for i in items])  # type: ignore[no-untyped-call]
        return [-i for i in items]

    return storage.BatchWriter(database, write, delay=delay)


def stored(database: peewee.Database) -> list[int]:
    with database.connection_context():
        rows = database.execute_sql("SELECT value FROM item ORDER BY value").fetchall()  # type: ignore[no-untyped-call]
    return [row[0] for row in rows]


def test_an_idle_writer_commits_at_once(database: peewee.Database) -> None:
    batches = writer(database, delay=30.0)
    start = time.monotonic()
    assert asyncio.run(batches.submit([1, 2])) == [-1, -2]
    assert time.monotonic() - start < 10  # nowhere near the delay
    batches.close()
    assert stored(database) == [1, 2]


async def first_then_five_more(batches: storage.BatchWriter[int, int]) -> list[list[int]]:
    """One submission, then five more 20 ms apart, as single events arrive under load."""
    await batches.submit([0])

    async def later(value: int) -> list[int]:
        await asyncio.sleep(0.02 * value)
        return await batches.submit([value])

    return await asyncio.gather(*(later(value) for value in range(1, 6)))


def test_a_busy_writer_gathers_what_follows_into_one_transaction(
    database: peewee.Database,
) -> None:
    batches = writer(database, delay=1.0)
    assert asyncio.run(first_then_five_more(batches)) == [[-1], [-2], [-3], [-4], [-5]]
    assert (batches.batches, batches.items_written) == (2, 6)
    batches.close()
    assert stored(database) == [0, 1, 2, 3, 4, 5]


def test_without_a_delay_each_submission_found_alone_is_written_alone(
    database: peewee.Database,
) -> None:
    batches = writer(database, delay=0.0)
    asyncio.run(first_then_five_more(batches))
    assert (batches.batches, batches.items_written) == (6, 6)
    batches.close()
    assert stored(database) == [0, 1, 2, 3, 4, 5]
