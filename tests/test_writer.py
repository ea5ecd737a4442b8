"""The group-commit writer: what is submitted together shares a transaction; an idle writer
writes at once, a busy one waits a moment for the submissions right behind the first. And the
checkpointer that copies SQLite's log beside the writers."""

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

    async def one_after_another() -> None:
        for value in range(6):
            assert await batches.submit([value]) == [-value]

    asyncio.run(one_after_another())
    assert (batches.batches, batches.items_written) == (6, 6)
    batches.close()
    assert stored(database) == [0, 1, 2, 3, 4, 5]


def test_closing_while_a_batch_waits_still_writes_it(database: peewee.Database) -> None:
    batches = writer(database, delay=30.0)

    async def busy_then_close() -> list[int]:
        await batches.submit([1])
        waiting = asyncio.ensure_future(batches.submit([2]))  # waits for company, up to 30 s
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await asyncio.to_thread(batches.close)
        assert time.monotonic() - start < 10
        return await waiting

    assert asyncio.run(busy_then_close()) == [-2]
    assert stored(database) == [1, 2]


def test_the_checkpointer_keeps_the_log_from_growing(database: peewee.Database) -> None:
    """Commits keep coming, each adding pages to the log: once it holds restart_pages pages the
    checkpointer has it start over, so it stays a fraction of what was written."""
    with database.connection_context():
        database.execute_sql("CREATE TABLE blob (data BLOB)")  # type: ignore[no-untyped-call]
    checkpointer = storage.WalCheckpointer(database, interval=0.01, restart_pages=20)
    log = Path(f"{database.database}-wal")
    largest, written = 0, 0
    try:
        for _ in range(300):
            with database.connection_context(), database.atomic():
                database.execute_sql("INSERT INTO blob VALUES (?)", (bytes(20_000),))  # type: ignore[no-untyped-call]
            written += 20_000
            largest = max(largest, log.stat().st_size)
            time.sleep(0.002)
    finally:
        checkpointer.close()
    # Without the checkpointer the log would hold all that was written (the connections do not
    # checkpoint themselves); with it, a fraction, even when a loaded machine delays the child
    # process by some of the commits (CI once saw 30% of what was written).
    assert largest < written / 2, (largest, written)
    with database.connection_context():
        assert database.execute_sql("SELECT count(*) FROM blob").fetchone() == (300,)  # type: ignore[no-untyped-call]
