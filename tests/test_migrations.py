"""Migrations: upgrading a database that holds data, re-running, and model/schema drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from playhouse import migrations
from playhouse.schema_diff import diff_models

from quartet import storage
from quartet.storage.migrate import MIGRATIONS

FIRST = "0001_scores"


def all_migrations() -> list[str]:
    return [m.name for m in migrations.Migration.load_directory(str(MIGRATIONS))]


def test_upgrade_from_the_first_migration_keeps_every_row(empty_database_url: str) -> None:
    database = storage.open_database(empty_database_url)
    try:
        assert storage.migrate(database, target=FIRST) == [FIRST]
        with database.connection_context():
            database.execute_sql(  # type: ignore[no-untyped-call]
                "INSERT INTO account (email, create_time) VALUES ('a@example.com', '2023-04-09')"
            )
            for value in (1.0, 2.5):
                database.execute_sql(  # type: ignore[no-untyped-call]
                    "INSERT INTO score (user_id, input_value, value, create_time) "
                    "VALUES (1, %s, %s, '2023-04-09 05:31:09')".replace("%s", database.param),
                    (value - 1, value),
                )
        assert storage.migrate(database) == all_migrations()[1:]
        with database.connection_context():
            rows = database.execute_sql(  # type: ignore[no-untyped-call]
                "SELECT a.email, s.value FROM score s JOIN account a ON a.id = s.user_id "
                "ORDER BY s.id"
            ).fetchall()
        assert [tuple(r) for r in rows] == [("a@example.com", 1.0), ("a@example.com", 2.5)]
    finally:
        storage.close(database)


def test_migrating_twice_applies_nothing_the_second_time(empty_database_url: str) -> None:
    database = storage.open_database(empty_database_url)
    try:
        assert storage.migrate(database) == all_migrations()
        assert storage.migrate(database) == []
    finally:
        storage.close(database)


def test_models_match_the_migrated_schema(empty_database_url: str) -> None:
    database = storage.open_database(empty_database_url)
    try:
        storage.migrate(database)
        storage.bind(database)
        with database.connection_context():
            assert not diff_models(database, storage.ALL_MODELS)
    finally:
        storage.close(database)


def test_migrate_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    command = [sys.executable, "-m", "quartet.server", "migrate", "--database-url", url]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert first.stdout.strip() == f"applied: {', '.join(all_migrations())}"
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "the database is up to date"
