"""Apply the numbered migrations in migrations/ (Peewee's playhouse.migrations runner)."""

from __future__ import annotations

from pathlib import Path

import peewee
from playhouse import migrations

from quartet.storage.accounts import Account, RefreshToken
from quartet.storage.applications import ApiKey, Application
from quartet.storage.experiments import Compound, Experiment, ExperimentCompound, ExperimentUser
from quartet.storage.scores import Score

MIGRATIONS = Path(__file__).parent / "migrations"

# Every model, in dependency order; the drift test compares them with the migrated schema.
ALL_MODELS: list[type[peewee.Model]] = [
    Account,
    Score,
    RefreshToken,
    Application,
    ApiKey,
    ExperimentUser,
    Compound,
    Experiment,
    ExperimentCompound,
]

# Any constant works: it only has to be the same in every quartet process.
_PG_MIGRATION_LOCK = 0x71A27E7


def migrate(database: peewee.Database, target: str | None = None) -> list[str]:
    """Apply pending migrations (up to and including target) and return the names applied.

    On PostgreSQL an advisory lock makes concurrent starts (several replicas) migrate one at a time.
    """
    with database.connection_context():
        runner = migrations.Runner(database, str(MIGRATIONS))
        if isinstance(database, peewee.PostgresqlDatabase):
            database.execute_sql("SELECT pg_advisory_lock(%s)", (_PG_MIGRATION_LOCK,))  # type: ignore[no-untyped-call]
            try:
                return list(runner.up(target))
            finally:
                database.execute_sql("SELECT pg_advisory_unlock(%s)", (_PG_MIGRATION_LOCK,))  # type: ignore[no-untyped-call]
        return list(runner.up(target))
