"""Apply the numbered migrations in migrations/ (Peewee's playhouse.migrations runner)."""

from __future__ import annotations

import fcntl
from pathlib import Path

import peewee
from playhouse import migrations

from quartet.storage import regions

MIGRATIONS = Path(__file__).parent / "migrations"

# Reference data: shipped with quartet and loaded by migrate(), never written by a call, so test
# cleanups leave it in place.
REFERENCE_MODELS: list[type[peewee.Model]] = [*regions.MODELS]

# Any constant works: it only has to be the same in every quartet process.
_PG_MIGRATION_LOCK = 0x71A27E7


def migrate(database: peewee.Database, target: str | None = None) -> list[str]:
    """Apply pending migrations (up to and including target) and return the names applied.

    Without a target, also load the reference data of this version (regions) unless the database
    already holds it. Concurrent starts (several replicas, or servers on one SQLite file) migrate
    one at a time, each after the one before has finished, so each migration is applied once: on
    PostgreSQL under an advisory lock, on SQLite under an flock() of `<database>.migratelock`
    (the runner's own transactions cannot serialise it: it reads which migrations are applied
    before it begins one).
    """
    with database.connection_context():
        runner = migrations.Runner(database, str(MIGRATIONS))
        if isinstance(database, peewee.PostgresqlDatabase):
            database.execute_sql("SELECT pg_advisory_lock(%s)", (_PG_MIGRATION_LOCK,))  # type: ignore[no-untyped-call]
            try:
                return _up(runner, database, target)
            finally:
                database.execute_sql("SELECT pg_advisory_unlock(%s)", (_PG_MIGRATION_LOCK,))  # type: ignore[no-untyped-call]
        with open(f"{database.database}.migratelock", "a") as lock:  # closing it unlocks
            fcntl.flock(lock, fcntl.LOCK_EX)
            return _up(runner, database, target)


def _up(runner: migrations.Runner, database: peewee.Database, target: str | None) -> list[str]:
    applied = list(runner.up(target))
    if target is None:
        regions.load(database)
    return applied
