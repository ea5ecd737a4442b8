"""Migrations: upgrading a database that holds data, re-running, and model/schema drift."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

from playhouse import migrations

from quartet import storage
from quartet.storage import events
from quartet.storage.migrate import MIGRATIONS
from tests.helpers import schema_drift

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


def test_rejected_events_keep_their_reasons_in_rows_of_their_own(empty_database_url: str) -> None:
    """0006 turns each rejected event's ",A,B," reasons into rejected_event_reason rows."""
    database = storage.open_database(empty_database_url)
    try:
        storage.migrate(database, target="0005_regions")
        with database.connection_context():
            for reasons, when in [
                (",EVENT_TIME_IN_FUTURE,FIELD_INVALID,", "2023-04-09 05:31:09"),
                (",EVENT_TOO_LARGE,", "2023-04-10 05:31:09"),
            ]:
                database.execute_sql(  # type: ignore[no-untyped-call]
                    "INSERT INTO rejected_event (application_id, event, violations, reasons, "
                    "reject_time) VALUES (1, '{}', '[]', %s, %s)".replace("%s", database.param),
                    (reasons, when),
                )
        storage.migrate(database)
        storage.bind(database)
        with database.connection_context():
            rows = events.RejectedEventReason.select().order_by(
                events.RejectedEventReason.rejected_id, events.RejectedEventReason.reason
            )
            assert [(r.rejected_id, r.reason) for r in rows] == [
                (1, "EVENT_TIME_IN_FUTURE"),
                (1, "FIELD_INVALID"),
                (2, "EVENT_TOO_LARGE"),
            ]
            found = events.list_rejected(limit=10, reason="FIELD_INVALID")
            assert [(r.id, r.reject_time) for r in found] == [
                (1, datetime.datetime(2023, 4, 9, 5, 31, 9))
            ]
            assert [r.id for r in events.list_rejected(limit=10)] == [2, 1]
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
            assert not schema_drift(database)
    finally:
        storage.close(database)


def test_migrate_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    command = [sys.executable, "-m", "quartet.server", "migrate", "--database-url", url]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert first.stdout.strip() == f"applied: {', '.join(all_migrations())}"
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "the database is up to date"
