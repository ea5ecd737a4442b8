"""The demo-data command fills every service with data that passes the same rules as real use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import peewee

from quartet.client import Client
from quartet.server import demo


def test_demo_data_is_usable_through_the_api(
    db: peewee.Database, client: Client, target: str
) -> None:
    filled = demo.fill(db, users=5, sessions=40, experiments=60, seed=3)
    assert (filled.users, filled.scores) == (5, len(list(client.scores.iter())))
    assert filled.events == len(list(client.events.iter())) > 0
    assert filled.rejected == len(list(client.events.iter_rejected())) > 0
    assert {r.violations[0].reason for r in client.events.iter_rejected()} == {
        "EVENT_TIME_IN_FUTURE"
    }
    demo_user = next(a for a in client.auth.iter_accounts() if a.email != "admin@example.net")
    with Client(target) as user:
        user.login(demo_user.email, demo.DEMO_PASSWORD)
        assert {s.user_id for s in user.scores.iter()} <= {demo_user.id}
    with Client(target, token=filled.api_key) as application:
        application.events.list_types()  # the key works
    report = client.experiments.get_report()
    assert (report.user_count, report.experiment_count) == (12, 60)
    assert report.compound_count == len(demo.COMPOUNDS)
    favourites = {r.favourite_compound.name for r in client.experiments.iter_user_reports()}
    assert favourites - {""} <= {name for name, _ in demo.COMPOUNDS}


def test_demo_data_command(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "quartet.server",
        "demo-data",
        "--users",
        "3",
        "--sessions",
        "5",
    ]
    result = subprocess.run(
        [*command, "--database-url", f"sqlite:///{tmp_path}/demo.db"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("added 3 users (password 'quartet-demo')")
